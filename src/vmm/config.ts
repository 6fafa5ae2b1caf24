/**
 * The VM configuration the CLI produces and the builder consumes, and the parsers for its
 * user-facing values (sizes, serial spec). Every bad value is a `UsageError` with one clear line.
 * @module
 */
import { UsageError } from "../util/errors.ts";
import type { DiskSpec } from "../devices/storage/mod.ts";

/** Where COM1 output goes. */
export type SerialSpec = { kind: "stdio" } | { kind: "file"; path: string } | { kind: "none" };

/** What to do when the guest reports a crash through the Hyper-V crash MSRs. */
export type OnCrash = "poweroff" | "pause" | "reset";

/** Everything needed to build and run one VM. */
export interface VmConfig {
  kernelPath: string;
  initrdPath?: string;
  cmdline: string;
  memoryBytes: number;
  cpus: number;
  serial: SerialSpec;
  noReboot: boolean;
  /** The `--hv` switch as given ("all", "none" or a list); parsed by the Hyper-V layer. */
  hv: string;
  hvKvmLeaves: boolean;
  onCrash: OnCrash;
  /** Unix socket path for the JSON-lines control socket (`--control`). */
  controlPath?: string;
  /** `--disk` specs, in order (LUN = position unless given). */
  disks: DiskSpec[];
  /** Seconds the guest's CMOS clock is off from the host at power-on (`--rtc-offset`). */
  rtcOffsetSeconds: number;
  /** Seconds a guest gets to shut down after SIGTERM/SIGINT before it is powered off. */
  shutdownTimeoutSeconds: number;
  /** Log level for every thread: error | warning | info | debug. */
  logLevel: string;
}

/** Largest vCPU count the machine supports (ACPI MADT, APIC ids). */
export const MAX_CPUS = 64;

/** Parses "512M", "2G", "1048576K", "4096" (MiB when no unit) into bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)([KMGT]?)(i?B)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${what}: '${text}' is not a size (examples: 512M, 2G)`);
  const n = Number(m[1]);
  const unit = (m[2] || "M").toUpperCase();
  const mult = { K: 1 << 10, M: 1 << 20, G: 1 << 30, T: 2 ** 40 }[unit]!;
  const bytes = n * mult;
  if (!Number.isSafeInteger(bytes)) throw new UsageError(`${what}: '${text}' is too large`);
  return bytes;
}

/** Parses `--serial stdio|file=PATH|none`. */
export function parseSerial(text: string): SerialSpec {
  if (text === "stdio" || text === "none") return { kind: text };
  if (text.startsWith("file=") && text.length > 5) return { kind: "file", path: text.slice(5) };
  throw new UsageError(`--serial: '${text}' is not one of stdio, file=PATH, none`);
}

/** Parses `--cpus N` (1..64). */
export function parseCpus(text: string): number {
  if (!/^\d+$/.test(text)) throw new UsageError(`--cpus: '${text}' is not a number`);
  const n = Number(text);
  if (n < 1 || n > MAX_CPUS) throw new UsageError(`--cpus: ${n} is outside 1..${MAX_CPUS}`);
  return n;
}

/** Parses `--on-crash`. */
export function parseOnCrash(text: string): OnCrash {
  if (text === "poweroff" || text === "pause" || text === "reset") return text;
  throw new UsageError(`--on-crash: '${text}' is not one of poweroff, pause, reset`);
}

/** Parses a whole number of seconds (0..86400). */
export function parseSeconds(text: string, what: string): number {
  if (!/^\d+$/.test(text) || Number(text) > 86400) {
    throw new UsageError(`${what}: '${text}' is not a number of seconds (0..86400)`);
  }
  return Number(text);
}

/** Parses a signed whole number of seconds (for `--rtc-offset`). */
export function parseSignedSeconds(text: string, what: string): number {
  if (!/^[+-]?\d+$/.test(text) || Math.abs(Number(text)) > 100 * 365 * 86400) {
    throw new UsageError(`${what}: '${text}' is not a number of seconds`);
  }
  return Number(text);
}
