/**
 * The TAP backend of the synthetic NIC and the `--net` option parser. Each queue is one
 * non-blocking `/dev/net/tun` file attached to an existing tap device with
 * `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (plus `IFF_MULTI_QUEUE` for more than one queue), so the
 * guest's checksum and segmentation offloads pass to the host kernel as virtio-net headers.
 * Frames move with `readv`/`writev` between the tap and the device's scratch memory (a
 * 10-byte header buffer per queue, made once); the file is watched by the VMM's event loop,
 * never polled.
 *
 * No TUNSETOFFLOAD: the host kernel hands the tap only complete, checksummed frames of at most
 * the tap's MTU, which is what the guest's receive sub-allocations hold.
 * @module
 */
import { C, check, close, ERRNO, errno, libc, open, SysError } from "../../../ffi/libc.ts";
import { UsageError } from "../../util/errors.ts";
import type { NetBackend, NetQueue, RxInfo, TxOffload } from "./backend.ts";
import { hostAddress } from "./buffers.ts";

/** `--net tap=NAME[,mac=…][,queues=N][,mtu=N]`. */
export interface NetSpec {
  /** Tap device name. */
  readonly tap: string;
  /** MAC address (6 bytes). */
  readonly mac: Uint8Array;
  /** Queues (1: no vRSS). */
  readonly queues: number;
  /** MTU told to the guest. */
  readonly mtu: number;
}

/** Default MAC (QEMU's first NIC); give `mac=` for more than one. */
export const DEFAULT_MAC = "52:54:00:12:34:56";
/** Most queues accepted (Linux uses at most 8 vRSS channels). */
export const MAX_QUEUES = 8;

/** Parses `52:54:00:12:34:56`; undefined when malformed. */
export function parseMac(text: string): Uint8Array | undefined {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i
    .exec(text);
  if (!m) return undefined;
  return new Uint8Array(m.slice(1).map((h) => parseInt(h, 16)));
}

/** Formats a MAC as `52:54:00:12:34:56`. */
export function formatMac(mac: Uint8Array): string {
  return [...mac.subarray(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** Parses `--net tap=NAME[,mac=52:54:…][,queues=N][,mtu=N]`; throws `UsageError`. */
export function parseNetSpec(text: string): NetSpec {
  let tap: string | undefined;
  let mac = parseMac(DEFAULT_MAC)!;
  let queues = 1;
  let mtu = 1500;
  for (const part of text.split(",")) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? "" : part.slice(eq + 1);
    switch (key) {
      case "tap":
        if (!/^[A-Za-z0-9_.-]{1,15}$/.test(value)) {
          throw new UsageError(
            `--net: tap name '${value}' is not a network interface name (1-15 of A-Z a-z 0-9 _ . -)`,
          );
        }
        tap = value;
        break;
      case "mac": {
        const m = parseMac(value);
        if (!m) throw new UsageError(`--net: mac '${value}' is not like ${DEFAULT_MAC}`);
        if ((m[0]! & 1) !== 0 || m.every((b) => b === 0)) {
          throw new UsageError(`--net: mac ${value} is not a unicast address (Linux refuses it)`);
        }
        mac = m;
        break;
      }
      case "queues":
        queues = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!(queues >= 1 && queues <= MAX_QUEUES)) {
          throw new UsageError(`--net: queues '${value}' is not a number from 1 to ${MAX_QUEUES}`);
        }
        break;
      case "mtu":
        mtu = /^\d+$/.test(value) ? Number(value) : NaN;
        if (!(mtu >= 68 && mtu <= 65521)) {
          throw new UsageError(`--net: mtu '${value}' is not a number from 68 to 65521`);
        }
        break;
      default:
        throw new UsageError(
          `--net: unknown option '${key}' in '${text}'; valid: tap=NAME, mac=, queues=, mtu=`,
        );
    }
  }
  if (tap === undefined) {
    throw new UsageError(`--net: '${text}' names no tap device; use tap=NAME[,mac=…][,queues=N]`);
  }
  return { tap, mac, queues, mtu };
}

/** Watches file descriptors (the VMM's event loop). */
export interface FdWatcher {
  add(fd: number, callback: (events: number) => void): void;
  remove(fd: number): void;
}

/** Size of `struct virtio_net_hdr` (the tap default header). */
const VNET_HDR_SIZE = 10;
/** `VIRTIO_NET_HDR_F_NEEDS_CSUM` and `_DATA_VALID`. */
const VNET_F_NEEDS_CSUM = 1;
const VNET_F_DATA_VALID = 2;
const IFREQ_SIZE = 40;

class TapQueue implements NetQueue {
  readonly fd: number;
  readonly #owner: TapBackend;
  readonly #hdr = new Uint8Array(VNET_HDR_SIZE);
  readonly #hdrView = new DataView(this.#hdr.buffer);
  /** Two iovecs: the header, then the frame (address and length set per call). */
  readonly #iov = new Uint8Array(32);
  readonly #iovWords = new Uint32Array(this.#iov.buffer);
  constructor(owner: TapBackend, fd: number) {
    this.#owner = owner;
    this.fd = fd;
    const a = hostAddress(this.#hdr);
    this.#iovWords[0] = a % 0x1_0000_0000;
    this.#iovWords[1] = Math.floor(a / 0x1_0000_0000);
    this.#iovWords[2] = VNET_HDR_SIZE;
    this.#iovWords[3] = 0;
  }

  #setFrame(addr: number, length: number): void {
    const w = this.#iovWords;
    w[4] = addr % 0x1_0000_0000;
    w[5] = Math.floor(addr / 0x1_0000_0000);
    w[6] = length;
    w[7] = 0;
  }

  read(dst: number, max: number, info: RxInfo): number {
    this.#setFrame(dst, max);
    const n = Number(libc.readv(this.fd, this.#iov, 2));
    if (n < 0) {
      const e = errno();
      if (e === ERRNO.EAGAIN || e === ERRNO.EINTR) return 0;
      this.#owner.errors++;
      return -1;
    }
    if (n <= VNET_HDR_SIZE) return 0;
    info.csumValid = (this.#hdr[0]! & VNET_F_DATA_VALID) !== 0;
    return n - VNET_HDR_SIZE;
  }

  write(frame: number, length: number, _headroom: number, o: TxOffload): boolean {
    const h = this.#hdrView;
    h.setUint8(0, o.needsCsum ? VNET_F_NEEDS_CSUM : 0);
    h.setUint8(1, o.gsoType);
    h.setUint16(2, o.hdrLen, true);
    h.setUint16(4, o.gsoSize, true);
    h.setUint16(6, o.csumStart, true);
    h.setUint16(8, o.csumOffset, true);
    this.#setFrame(frame, length);
    const n = Number(libc.writev(this.fd, this.#iov, 2));
    if (n < 0) {
      this.#owner.errors++;
      return false;
    }
    return true;
  }

  watch(onReadable: (() => void) | undefined): void {
    this.#callback = onReadable;
    this.sync();
  }

  #callback: (() => void) | undefined;
  #registered: FdWatcher | undefined;
  readonly #fire = () => this.#callback?.();

  /** Registers with the owner's current watcher while a callback is set. @internal */
  sync(): void {
    const want = this.#callback ? this.#owner.watcher : undefined;
    if (this.#registered === want) return;
    if (this.#registered) this.#registered.remove(this.fd);
    this.#registered = undefined;
    if (want) {
      want.add(this.fd, this.#fire);
      this.#registered = want;
    }
  }
}

/** A tap device opened for the NIC. */
export class TapBackend implements NetBackend {
  /** @inheritdoc */
  readonly queues: TapQueue[] = [];
  /** @inheritdoc */
  readonly description: string;
  /** @inheritdoc */
  readonly headroom = 0;
  /** The spec it was opened with. */
  readonly spec: NetSpec;
  /** Failed reads and writes (not EAGAIN). */
  errors = 0;
  /** @internal The event loop the queues register with. */
  watcher: FdWatcher | undefined;

  constructor(spec: NetSpec, fds: number[]) {
    this.spec = spec;
    this.description = `tap:${spec.tap}`;
    for (const fd of fds) this.queues.push(new TapQueue(this, fd));
  }

  /** Watches the queues with `watcher` (the current boot's loop), or stops (`undefined`). */
  bind(watcher: FdWatcher | undefined): void {
    this.watcher = watcher;
    for (const q of this.queues) q.sync();
  }

  /** @inheritdoc */
  close(): void {
    this.bind(undefined);
    for (const q of this.queues) close(q.fd);
    this.queues.length = 0;
  }
}

/**
 * Opens `spec.queues` files on the existing tap device `spec.tap`. Every way it can fail that
 * the user can fix (no tun driver, no such tap, busy, no permission, not multi-queue) is a
 * `UsageError` with one line saying what to do.
 */
export function openTap(spec: NetSpec): TapBackend {
  const name = spec.tap;
  const sys = `/sys/class/net/${name}`;
  let isTun = false;
  try {
    Deno.statSync(sys);
  } catch {
    throw new UsageError(
      `--net: tap device '${name}' does not exist; create it first: ` +
        `ip tuntap add dev ${name} mode tap${spec.queues > 1 ? " multi_queue" : ""}`,
    );
  }
  try {
    isTun = Deno.statSync(`${sys}/tun_flags`).isFile;
  } catch { /* not a tun/tap */ }
  if (!isTun) throw new UsageError(`--net: '${name}' is not a tap device`);
  const fds: number[] = [];
  try {
    for (let q = 0; q < spec.queues; q++) fds.push(attachQueue(spec));
  } catch (e) {
    fds.forEach(close);
    throw e;
  }
  return new TapBackend(spec, fds);
}

function attachQueue(spec: NetSpec): number {
  const name = spec.tap;
  let fd: number;
  try {
    fd = open("/dev/net/tun", C.O_RDWR | C.O_NONBLOCK);
  } catch (e) {
    const code = e instanceof SysError ? e.code : "";
    if (code === "ENOENT" || code === "ENODEV") {
      throw new UsageError(
        "--net: /dev/net/tun does not exist (load the tun module: modprobe tun)",
      );
    }
    if (code === "EACCES" || code === "EPERM") {
      throw new UsageError("--net: no permission to open /dev/net/tun");
    }
    throw new UsageError(`--net: cannot open /dev/net/tun: ${(e as Error).message}`);
  }
  const ifr = new Uint8Array(IFREQ_SIZE);
  new TextEncoder().encodeInto(name, ifr);
  let flags = C.IFF_TAP | C.IFF_NO_PI | C.IFF_VNET_HDR;
  if (spec.queues > 1) flags |= C.IFF_MULTI_QUEUE;
  new DataView(ifr.buffer).setUint16(16, flags, true);
  try {
    check("ioctl(TUNSETIFF)", libc.ioctl_buf(fd, BigInt(C.TUNSETIFF), ifr));
  } catch (e) {
    close(fd);
    const code = e instanceof SysError ? e.code : "";
    if (code === "EPERM" || code === "EACCES") {
      throw new UsageError(
        `--net: no permission to attach to tap '${name}' (needs CAP_NET_ADMIN, or create it ` +
          `with 'ip tuntap add dev ${name} mode tap user $USER')`,
      );
    }
    if (code === "EBUSY") {
      throw new UsageError(`--net: tap '${name}' is busy (another process has it open)`);
    }
    if (code === "EINVAL") {
      throw new UsageError(
        spec.queues > 1
          ? `--net: tap '${name}' was not created with multi_queue, which queues=${spec.queues} needs`
          : `--net: tap '${name}' refused the attach (created with multi_queue? then give queues=N)`,
      );
    }
    throw new UsageError(`--net: cannot attach to tap '${name}': ${(e as Error).message}`);
  }
  return fd;
}
