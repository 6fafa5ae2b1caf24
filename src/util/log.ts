/**
 * Logging for every layer: one logtape category tree rooted at "hyperdeno", plus a rate limiter
 * for lines a guest can trigger (a hostile guest must not be able to flood the host log).
 * @module
 */
import { getLogger as logtapeGetLogger, type Logger } from "@logtape/logtape";

/** Top-level categories, one per layer. */
export type LogLayer =
  | "kvm"
  | "vcpu"
  | "machine"
  | "hyperv"
  | "vmbus"
  | "dev"
  | "console"
  | "cli"
  | "test";

/** Returns the logger for `layer` (and an optional sub-name such as a device name). */
export function getLogger(layer: LogLayer, name?: string): Logger {
  return logtapeGetLogger(name ? ["hyperdeno", layer, name] : ["hyperdeno", layer]);
}

/**
 * Returns a function that runs `emit` at most `perWindow` times every `windowMs` and counts the
 * rest; the first call after a suppressed burst reports how many were dropped.
 */
export function rateLimited(
  perWindow = 10,
  windowMs = 5000,
): (emit: (suppressed: number) => void) => void {
  let windowStart = 0;
  let count = 0;
  let suppressed = 0;
  return (emit) => {
    const now = performance.now();
    if (now - windowStart > windowMs) {
      windowStart = now;
      count = 0;
    }
    if (count < perWindow) {
      count++;
      emit(suppressed);
      suppressed = 0;
    } else {
      suppressed++;
    }
  };
}
