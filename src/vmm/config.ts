/**
 * The VM configuration the CLI produces and the builder consumes, and the parsers for its
 * user-facing values (sizes, serial spec). Every bad value is a `UsageError` with one clear line.
 * @module
 */
import { checkSocketPath } from "../util/unix_socket.ts";
import { UsageError } from "../util/errors.ts";
import type { DiskSpec } from "../devices/storage/mod.ts";
import type { NetSpec } from "../devices/net/tap.ts";
import { type HvFeatures, parseHvFeatures } from "../hyperv/features.ts";
import type { FirmwareSpec } from "./firmware.ts";

/** Where COM1 output goes. */
export type SerialSpec = { kind: "stdio" } | { kind: "file"; path: string } | { kind: "none" };

/** Where the synthetic debugger sends the guest's kernel-debugger datagrams (`--syndbg`). */
export interface SyndbgSpec {
  /** The debugger's IPv4 address, host-order integer. */
  address: number;
  port: number;
  /** The guest uses the debug hypercalls instead of the MSRs (SYNDBG_OPTIONS.USE_HCALLS). */
  hypercalls: boolean;
}

/** Where the VNC server listens (`--vnc`). */
export type VncSpec =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; hostname: string; port: number; loopback: boolean };

/** What to do when the guest reports a crash through the Hyper-V crash MSRs. */
export type OnCrash = "poweroff" | "pause" | "reset";

/** Everything needed to build and run one VM. */
export interface VmConfig {
  /** Linux bzImage for direct boot; empty when `firmware` is given. */
  kernelPath: string;
  /** `--firmware uefi`: boot OVMF from flash instead of a kernel. */
  firmware?: FirmwareSpec;
  initrdPath?: string;
  cmdline: string;
  memoryBytes: number;
  cpus: number;
  serial: SerialSpec;
  noReboot: boolean;
  /** The `--hv` switch as given ("all", "none" or a list); parsed by the Hyper-V layer. */
  hv: string;
  hvKvmLeaves: boolean;
  /** The synthetic debugger's UDP peer (`--syndbg`); absent = no debugger, no `syndbg`. */
  syndbg?: SyndbgSpec;
  onCrash: OnCrash;
  /** VNC server address (`--vnc`); absent = no VNC. */
  vnc?: VncSpec;
  /** VNC authentication password (`--vnc-password`). */
  vncPassword?: string;
  /** Web console address (`--web`); absent = none. */
  web?: { hostname: string; port: number };
  /** Unix socket path for the JSON-lines control socket (`--control`). */
  controlPath?: string;
  /** `--cdrom` images (read-only ATAPI CD-ROMs on the AHCI controller), in order. */
  cdroms: string[];
  /** SATA disks and CD-ROMs in command-line order: AHCI port i takes the i-th (boot order). */
  sataOrder?: ("disk" | "cdrom")[];
  /** hv_sock unix socket base path (`--vsock`): guest port P is `PATH_P`. */
  vsockPath?: string;
  /** `--disk` specs, in order (LUN = position unless given). */
  disks: DiskSpec[];
  /** `--net` specs: one synthetic NIC per tap, in order. */
  nets?: NetSpec[];
  /** Seconds the guest's CMOS clock is off from the host at power-on (`--rtc-offset`). */
  rtcOffsetSeconds: number;
  /** Seconds a guest gets to shut down after SIGTERM/SIGINT before it is powered off. */
  shutdownTimeoutSeconds: number;
  /** Log level for every thread: error | warning | info | debug. */
  logLevel: string;
  /** The display (`--display`): none, or a bochs-display offering this mode in its EDID. */
  display: DisplaySpec;
}

/** `--display none | bochs[,WIDTHxHEIGHT]`. */
export type DisplaySpec =
  | { kind: "none" }
  | { kind: "bochs"; width: number; height: number };

/** Parses `--display none|bochs[,WxH]` (default mode 1024x768). */
export function parseDisplay(text: string): DisplaySpec {
  if (text === "none") return { kind: "none" };
  const m = /^bochs(?:,(\d+)x(\d+))?$/.exec(text);
  if (!m) throw new UsageError(`--display: '${text}' is not one of none, bochs, bochs,WxH`);
  const width = m[1] ? Number(m[1]) : 1024;
  const height = m[2] ? Number(m[2]) : 768;
  if (width < 320 || width > 2560 || height < 200 || height > 1600 || width % 8 !== 0) {
    throw new UsageError(
      `--display: mode ${width}x${height} is outside 320x200..2560x1600 (width a multiple of 8)`,
    );
  }
  return { kind: "bochs", width, height };
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

/** Debugger host when `--syndbg` gives only a port. */
export const SYNDBG_DEFAULT_HOST = "127.0.0.1";

function parseIpv4(text: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const parts = m.slice(1).map(Number);
  if (parts.some((p) => p > 255)) return undefined;
  return parts.reduce((a, p) => a * 256 + p, 0);
}

/**
 * Parses `--syndbg [HOST:]PORT[,hcalls][,allow-remote]`: the UDP endpoint where the kernel
 * debugger listens (HOST an IPv4 address, default 127.0.0.1), `hcalls` to have the guest use
 * the debug hypercalls instead of the MSRs. The link is plain unauthenticated UDP, so a host
 * outside 127.0.0.0/8 is refused unless `allow-remote` says it is meant.
 */
export function parseSyndbg(text: string): SyndbgSpec {
  const [endpoint = "", ...flags] = text.split(",");
  let hypercalls = false;
  let allowRemote = false;
  for (const f of flags) {
    if (f === "hcalls") hypercalls = true;
    else if (f === "allow-remote") allowRemote = true;
    else {
      throw new UsageError(`--syndbg: unknown option '${f}'; valid: hcalls, allow-remote`);
    }
  }
  const colon = endpoint.lastIndexOf(":");
  const hostText = colon >= 0 ? endpoint.slice(0, colon) : SYNDBG_DEFAULT_HOST;
  const portText = colon >= 0 ? endpoint.slice(colon + 1) : endpoint;
  if (endpoint === "") {
    throw new UsageError(
      "--syndbg needs [HOST:]PORT of the debugger, e.g. 50000 or 127.0.0.1:50000",
    );
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535)) {
    throw new UsageError(`--syndbg: port '${portText}' is not a number from 1 to 65535`);
  }
  const address = parseIpv4(hostText);
  if (address === undefined) {
    throw new UsageError(
      `--syndbg: '${hostText}' is not an IPv4 address such as 127.0.0.1 (names are not resolved)`,
    );
  }
  const first = address >>> 24;
  if (first === 0 || first >= 224) {
    throw new UsageError(`--syndbg: ${hostText} is not a unicast host address`);
  }
  if (first !== 127 && !allowRemote) {
    throw new UsageError(
      `--syndbg: ${hostText} is not a loopback address; the debugger link is unauthenticated ` +
        `UDP, add ',allow-remote' to send it to another host`,
    );
  }
  return { address, port, hypercalls };
}

/**
 * The `--hv` feature set of `config`, checked against `--syndbg`: `all` includes `syndbg` when
 * a debugger is given, `--syndbg` needs `syndbg` on, and `syndbg` without `--syndbg` is refused
 * (it would tell Windows a debugger transport exists when none does).
 */
export function hvFeaturesOf(config: Pick<VmConfig, "hv" | "syndbg">): HvFeatures {
  const features = parseHvFeatures(config.hv, { syndbg: config.syndbg !== undefined });
  if (config.syndbg && !features.enabled.syndbg) {
    throw new UsageError(
      `--syndbg needs the syndbg enlightenment, which '--hv ${config.hv}' leaves off: ` +
        `add syndbg to the --hv list`,
    );
  }
  if (!config.syndbg && features.enabled.syndbg) {
    throw new UsageError(
      "--hv syndbg needs --syndbg [HOST:]PORT, the UDP endpoint of the kernel debugger",
    );
  }
  return features;
}

/**
 * Checks every flag that names a path the VMM will create (sockets): nothing there, or a stale
 * socket. Throws a `UsageError` naming the flag and the path otherwise; changes nothing.
 */
export async function checkPathFlags(config: VmConfig): Promise<void> {
  if (config.controlPath !== undefined) await checkSocketPath(config.controlPath, "--control");
  if (config.vsockPath !== undefined) await checkSocketPath(config.vsockPath, "--vsock");
  if (config.vnc?.kind === "unix") await checkSocketPath(config.vnc.path, "--vnc");
}

/**
 * Parses `--vnc unix:PATH | HOST:PORT` and checks `--vnc-password`: an address outside
 * 127.0.0.0/8 needs a password (VNC authentication; the link itself stays unencrypted), and a
 * password is at most 8 bytes (VNC ignores the rest, so a longer one would be a false promise).
 */
export function parseVnc(
  text: string | undefined,
  password: string | undefined,
): VncSpec | undefined {
  if (text === undefined) {
    if (password !== undefined) throw new UsageError("--vnc-password needs --vnc");
    return undefined;
  }
  if (password !== undefined) {
    const bytes = new TextEncoder().encode(password).length;
    if (bytes === 0 || bytes > 8) {
      throw new UsageError(
        `--vnc-password: VNC authentication uses 1 to 8 bytes of password, this one has ${bytes}`,
      );
    }
  }
  if (text.startsWith("unix:")) {
    const path = text.slice(5);
    if (path === "") throw new UsageError("--vnc unix:PATH needs a socket path");
    return { kind: "unix", path };
  }
  const colon = text.lastIndexOf(":");
  const hostname = colon > 0 ? text.slice(0, colon) : "";
  const portText = colon > 0 ? text.slice(colon + 1) : "";
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  const address = parseIpv4(hostname);
  if (address === undefined || !(port >= 1 && port <= 65535)) {
    throw new UsageError(
      `--vnc: '${text}' is not unix:PATH or IPV4:PORT (e.g. 127.0.0.1:5900; names are not resolved)`,
    );
  }
  const loopback = address >>> 24 === 127;
  if (!loopback && password === undefined) {
    throw new UsageError(
      `--vnc: ${hostname} is not a loopback address; anyone who reaches it gets the guest's ` +
        `console, so give --vnc-password (the link stays unencrypted: tunnel it over SSH)`,
    );
  }
  return { kind: "tcp", hostname, port, loopback };
}

/** Parses `--web IPV4:PORT`; outside 127.0.0.0/8 only with `--web-allow-remote`. */
export function parseWeb(
  text: string | undefined,
  allowRemote: boolean,
): { hostname: string; port: number } | undefined {
  if (text === undefined) {
    if (allowRemote) throw new UsageError("--web-allow-remote needs --web");
    return undefined;
  }
  const colon = text.lastIndexOf(":");
  const hostname = colon > 0 ? text.slice(0, colon) : "";
  const portText = colon > 0 ? text.slice(colon + 1) : "";
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  const address = parseIpv4(hostname);
  if (address === undefined || !(port >= 0 && port <= 65535)) {
    throw new UsageError(`--web: '${text}' is not IPV4:PORT (e.g. 127.0.0.1:8080)`);
  }
  if (address >>> 24 !== 127 && !allowRemote) {
    throw new UsageError(
      `--web: ${hostname} is not a loopback address; add --web-allow-remote if the console ` +
        "(plain HTTP, guarded by the token only) is meant to be reachable from elsewhere",
    );
  }
  return { hostname, port };
}
