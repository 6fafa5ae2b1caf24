/**
 * The user's side of a run, kept out of the builder: the console (COM1 on stdio or a file, raw
 * terminal mode, stdin forwarded to the current boot's COM1) and signals (SIGINT/SIGTERM ask the
 * guest to shut down through the shutdown IC, a second one forces power-off).
 * @module
 */
import { C, open } from "../../ffi/libc.ts";
import type { ShutdownIc } from "../devices/ic/mod.ts";
import { UsageError } from "../util/errors.ts";
import { getLogger } from "../util/log.ts";
import type { VmConfig } from "./config.ts";

const log = getLogger("machine");

/** Where host input goes: the current boot's COM1 (none between boots). */
export interface ConsoleInput {
  target: { pushInput(b: Uint8Array): number } | undefined;
}

/** Opens COM1's output: stdout, a file (created or truncated, as asked), or none (-1). */
export function openSerial(config: VmConfig): number {
  switch (config.serial.kind) {
    case "stdio":
      return 1;
    case "none":
      return -1;
    case "file":
      try {
        return open(config.serial.path, C.O_WRONLY | C.O_CREAT | 0o1000, /* O_TRUNC */ 0o644);
      } catch (e) {
        throw new UsageError(`--serial file=${config.serial.path}: ${(e as Error).message}`);
      }
  }
}

/** Puts the terminal in raw mode when COM1 is on a TTY; `restore` undoes it (idempotent). */
export function enterRawMode(config: VmConfig): { restore(): void } | undefined {
  if (config.serial.kind !== "stdio" || !Deno.stdin.isTerminal()) return undefined;
  Deno.stdin.setRaw(true);
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    try {
      Deno.stdin.setRaw(false);
    } catch { /* terminal gone */ }
  };
  globalThis.addEventListener("unload", restore);
  return { restore };
}

/**
 * Forwards stdin to the console's COM1 for the whole run (stdin can be read by one reader only),
 * holding back what the UART's receive ring cannot take yet.
 */
export function forwardStdin(input: ConsoleInput): { stop(): void } {
  let stopped = false;
  const reader = Deno.stdin.readable.getReader();
  (async () => {
    try {
      while (!stopped) {
        const { value, done } = await reader.read();
        if (done || !value) return;
        let rest = value;
        while (!stopped && rest.length > 0) {
          const com1 = input.target;
          if (com1) rest = rest.subarray(com1.pushInput(rest));
          if (rest.length > 0) await new Promise((r) => setTimeout(r, 5)); // guest is draining
        }
      }
    } catch { /* stdin closed */ }
  })();
  return {
    stop() {
      stopped = true;
      reader.cancel().catch(() => {});
    },
  };
}

/**
 * SIGINT/SIGTERM during a boot: the first asks the guest to shut down (shutdown IC) and forces
 * power-off after `shutdownTimeoutSeconds`; a second signal, or a guest without the IC, calls
 * `force` at once. `close()` removes the listeners and the timer.
 */
export function watchSignals(o: {
  shutdownTimeoutSeconds: number;
  shutdownIc: () => ShutdownIc | undefined;
  force: (signal: Deno.Signal) => void;
}): { close(): void } {
  let shutdownAsked = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const handlers = (["SIGINT", "SIGTERM"] as const).map((sig) => {
    const force = () => o.force(sig);
    const h = () => {
      const ic = o.shutdownIc();
      if (shutdownAsked || !ic?.isReady) return force();
      shutdownAsked = true;
      console.error(
        `hyperdeno: ${sig}: asking the guest to shut down (again to force; forced in ${o.shutdownTimeoutSeconds} s)`,
      );
      timer = setTimeout(force, o.shutdownTimeoutSeconds * 1000);
      ic.request("poweroff").then(
        (r) => log.info("guest answered the shutdown request: {status}", { status: r.status }),
        (e) => {
          log.warning("shutdown request failed: {error}", { error: String(e) });
          force();
        },
      );
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  return {
    close() {
      if (timer !== undefined) clearTimeout(timer);
      for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
    },
  };
}

/** Resolves on the first SIGINT or SIGTERM. */
export function waitForSignal(): Promise<void> {
  return new Promise((resolve) => {
    const h = () => {
      Deno.removeSignalListener("SIGINT", h);
      Deno.removeSignalListener("SIGTERM", h);
      resolve();
    };
    Deno.addSignalListener("SIGINT", h);
    Deno.addSignalListener("SIGTERM", h);
  });
}
