/**
 * The synthetic debugger: a kernel-debugger transport between the guest (Windows KDNET on the
 * "VS#1" interface of CPUID 0x40000080-0x40000082) and a debugger on the host, carried as
 * datagrams over a `DebugTransport` (the VMM's is UDP, see `src/hyperv/host/syndbg_udp.ts`). Same
 * behaviour as KVM (arch/x86/kvm/hyperv.c, which forwards these to user space) plus QEMU
 * (hw/hyperv/syndbg.c, hw/hyperv/hyperv.c), which is the only public host implementation.
 *
 * The host picks the guest's interface through SYNDBG_OPTIONS.USE_HCALLS (set before the guest
 * runs; the guest reads it):
 *
 * - **MSRs** (USE_HCALLS clear). The guest writes the GPA of a send page to SEND_BUFFER, of a
 *   receive page to RECV_BUFFER and of a "pending" page to PENDING_BUFFER. Writing CONTROL with
 *   SEND (bit 0, size in bits 31:16) sends that many bytes of the send page as one datagram;
 *   with RECV (bit 1) one queued datagram is copied to the receive page. STATUS then reads
 *   SEND_SUCCESS, or RECV_SUCCESS with the received size in bits 31:16, or 0 when the send
 *   failed or nothing was queued. The first byte of the pending page is 1 while a datagram
 *   waits (set by `onReceivable` on the thread that watches the transport, cleared after a
 *   receive that leaves the queue empty). Payloads are the debugger's bytes, unwrapped.
 * - **Hypercalls** (USE_HCALLS set; without it they answer HV_STATUS_OPERATION_DENIED like
 *   KVM): `postDebugData`, `retrieveDebugData`, `resetDebugSession`, called by the hypercall
 *   handler with the guest's input and output blocks. As in QEMU the guest exchanges raw
 *   Ethernet/IPv4/UDP frames on this path: the UDP payload of a posted frame is what the
 *   debugger receives (other frames, e.g. ARP, are accepted and dropped), and a received
 *   datagram is handed back wrapped in a frame from the debugger's address to the guest's.
 *
 * Registers and the pending flag live in a SharedArrayBuffer (every vCPU worker and the main
 * thread build their own `SyntheticDebugger` over it). One lock covers each whole operation,
 * transport call included (the transport never blocks), so a datagram that arrives while a
 * vCPU is receiving cannot lose its pending flag to that vCPU's "queue empty" update.
 *
 * Nothing here throws at the guest: every guest value is bounds-checked and answered with the
 * protocol's failure (STATUS 0, an HV_STATUS), unexpected errors become that failure plus a
 * rate-limited log line.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { PAGE_SIZE } from "../kvm/guest_memory.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { withLock } from "./shared.ts";
import * as T from "./tlfs.ts";

/** What a send did: went out, the host buffer is full (retry later), or failed for good. */
export type DebugSendResult = "sent" | "busy" | "failed";

/**
 * Datagram transport to the host debugger. Implementations never block and never throw; each
 * thread that handles debugger MSRs or hypercalls has its own instance over the same endpoint.
 */
export interface DebugTransport {
  /** The debugger's IPv4 address (host-order integer) and port, reported by HvResetDebugSession. */
  readonly peer: { readonly address: number; readonly port: number };
  /** Sends `bytes` as one datagram. */
  send(bytes: Uint8Array): DebugSendResult;
  /**
   * Takes the next queued datagram into `into`: its full length (larger than `into.length`
   * when it did not fit and was cut: the caller drops it), or 0 when nothing is queued.
   */
  tryReceive(into: Uint8Array): number;
  /** True when a datagram is queued (nothing is taken). */
  hasPending(): boolean;
}

/** A transport with no debugger behind it: sends fail, nothing is ever received. */
export const NO_DEBUG_TRANSPORT: DebugTransport = Object.freeze({
  peer: Object.freeze({ address: 0, port: 0 }),
  send: (): DebugSendResult => "failed",
  tryReceive: () => 0,
  hasPending: () => false,
});

/** What the debugger needs from the VMM. */
export interface SyntheticDebuggerDeps {
  /** Guest RAM: the send, receive and pending pages. */
  memory: GuestMemory;
  /** The link to the host debugger; default `NO_DEBUG_TRANSPORT`. */
  transport?: DebugTransport;
}

/** Bytes of the Ethernet + IPv4 (no options) + UDP headers of a raw frame. */
export const RAW_FRAME_HEADER_BYTES = 14 + 20 + 8;

/** Smallest input block `postDebugData` accepts: the header, then up to 4088 data bytes. */
export const POST_DEBUG_DATA_INPUT_MIN = T.HV_INPUT_POST_DEBUG_DATA.size;
/** Smallest output block `retrieveDebugData` accepts (header; the data follow it). */
export const RETRIEVE_DEBUG_DATA_OUTPUT_MIN = T.HV_OUTPUT_RETRIEVE_DEBUG_DATA.size;

// u64 slots: the six registers, then the OPTIONS value a reset restores.
const S_CONTROL = 0;
const S_STATUS = 1;
const S_SEND = 2;
const S_RECV = 3;
const S_PENDING = 4;
const S_OPTIONS = 5;
const S_RESET_OPTIONS = 6;
const U64_SLOTS = 8;
// i32 slots after them.
const I_LOCK = U64_SLOTS * 2;
const I_PENDING_FLAG = I_LOCK + 1;
/** The guest's IPv4 address, learnt from the source of its posted frames. */
const I_TARGET_IP = I_LOCK + 2;
const STATE_BYTES = U64_SLOTS * 8 + 16;

/** Most datagrams HvResetDebugSession(PURGE_INCOMING_DATA) discards in one call. */
const PURGE_MAX = 1024;

const ETHERTYPE_IPV4 = 0x0800;
const IPPROTO_UDP = 17;
const IP_TTL = 64;

const log = getLogger("hyperv", "syndbg");
const limit = rateLimited();

/** The partition's synthetic debugger, as seen from one thread. */
export class SyntheticDebugger {
  /**
   * Allocates the shared state: every register zero except SYNDBG_OPTIONS, which is
   * USE_HCALLS when `useHypercalls` (the guest then debugs through hypercalls), and returns to
   * that value on reset.
   */
  static createState(options: { useHypercalls?: boolean } = {}): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(STATE_BYTES);
    const u64 = new BigUint64Array(sab, 0, U64_SLOTS);
    const initial = options.useHypercalls ? T.HV_SYNDBG_OPTION_USE_HCALLS : 0n;
    u64[S_RESET_OPTIONS] = initial;
    u64[S_OPTIONS] = initial;
    return sab;
  }

  readonly #u64: BigUint64Array;
  readonly #i32: Int32Array;
  readonly #memory: GuestMemory;
  readonly #transport: DebugTransport;
  /** Receives that must not land in guest memory (purge). */
  readonly #scratch = new Uint8Array(PAGE_SIZE);

  constructor(state: SharedArrayBuffer, deps: SyntheticDebuggerDeps) {
    if (state.byteLength < STATE_BYTES) throw new RangeError("SyntheticDebugger: state too small");
    this.#u64 = new BigUint64Array(state, 0, U64_SLOTS);
    this.#i32 = new Int32Array(state);
    this.#memory = deps.memory;
    this.#transport = deps.transport ?? NO_DEBUG_TRANSPORT;
  }

  /** Back to the power-on state (system reset): registers zero, OPTIONS as configured. */
  reset(): void {
    withLock(this.#i32, I_LOCK, () => {
      for (let i = 0; i < S_RESET_OPTIONS; i++) Atomics.store(this.#u64, i, 0n);
      Atomics.store(this.#u64, S_OPTIONS, Atomics.load(this.#u64, S_RESET_OPTIONS));
      Atomics.store(this.#i32, I_PENDING_FLAG, 0);
      Atomics.store(this.#i32, I_TARGET_IP, 0);
    });
  }

  /** SYNDBG_OPTIONS now. */
  get options(): bigint {
    return Atomics.load(this.#u64, S_OPTIONS);
  }

  /** True while the guest was told that a datagram waits (the pending page's byte). */
  get pending(): boolean {
    return Atomics.load(this.#i32, I_PENDING_FLAG) !== 0;
  }

  // --- MSRs ---------------------------------------------------------------------------------

  /** RDMSR of a SYNDBG MSR (0x400000F1-0x400000F5, 0x400000FF); `undefined` for any other. */
  readMsr(index: number): bigint | undefined {
    const slot = msrSlot(index);
    return slot === undefined ? undefined : Atomics.load(this.#u64, slot);
  }

  /**
   * WRMSR of a SYNDBG MSR: every value is stored (as KVM does); CONTROL then runs a send or a
   * receive and PENDING_BUFFER publishes the pending flag to its new page. `false` (#GP) only
   * for an index that is not a SYNDBG MSR. Never throws.
   */
  writeMsr(index: number, value: bigint): boolean {
    const slot = msrSlot(index);
    if (slot === undefined) return false;
    value = BigInt.asUintN(64, value);
    try {
      withLock(this.#i32, I_LOCK, () => {
        Atomics.store(this.#u64, slot, value);
        if (slot === S_CONTROL) this.#control(value);
        else if (slot === S_PENDING) this.#publishPending();
      });
    } catch (e) {
      this.#error("wrmsr", e);
      Atomics.store(this.#u64, S_STATUS, 0n);
    }
    return true;
  }

  /** CONTROL write (lock held): SEND wins over RECV, as in QEMU. */
  #control(control: bigint): void {
    let status = 0n;
    if (control & T.HV_SYNDBG_CONTROL_SEND) {
      const size = Number(
        (control >> T.HV_SYNDBG_CONTROL_SEND_SIZE_SHIFT) & T.HV_SYNDBG_CONTROL_SEND_SIZE_MASK,
      );
      const data = size <= PAGE_SIZE ? this.#guestBytes(S_SEND, size) : undefined;
      if (!data) {
        this.#warn("send of {size} bytes from {gpa}: not a page of guest RAM", size, S_SEND);
      } else if (this.#transport.send(data) === "sent") {
        status = T.HV_SYNDBG_STATUS_SEND_SUCCESS;
      }
    } else if (control & T.HV_SYNDBG_CONTROL_RECV) {
      const page = this.#guestBytes(S_RECV, PAGE_SIZE);
      if (!page) {
        this.#warn("receive into {gpa}: not a page of guest RAM", PAGE_SIZE, S_RECV);
      } else {
        const n = this.#transport.tryReceive(page);
        if (n > PAGE_SIZE) {
          this.#dropped(n, PAGE_SIZE);
        } else if (n > 0) {
          status = T.HV_SYNDBG_STATUS_RECV_SUCCESS |
            (BigInt(n) << T.HV_SYNDBG_STATUS_SIZE_SHIFT);
        }
        this.#setPending(this.#transport.hasPending());
      }
    }
    Atomics.store(this.#u64, S_STATUS, status);
  }

  /**
   * The transport has a datagram queued (called by the thread that watches it, typically on
   * an edge-triggered readiness event): sets the pending flag and the pending page's byte.
   * Never throws.
   */
  onReceivable(): void {
    try {
      withLock(this.#i32, I_LOCK, () => this.#setPending(true));
    } catch (e) {
      this.#error("pending", e);
    }
  }

  /** Lock held. */
  #setPending(on: boolean): void {
    Atomics.store(this.#i32, I_PENDING_FLAG, on ? 1 : 0);
    this.#publishPending();
  }

  /** Writes the pending flag to the first byte of the pending page (lock held). */
  #publishPending(): void {
    const page = this.#guestBytes(S_PENDING, 1);
    if (page) page[0] = Atomics.load(this.#i32, I_PENDING_FLAG) !== 0 ? 1 : 0;
  }

  /**
   * Guest bytes at the GPA held in register `slot`, or `undefined` when the register is 0 (no
   * page, as in QEMU) or the range is not guest RAM.
   */
  #guestBytes(slot: number, length: number): Uint8Array | undefined {
    const gpa = Atomics.load(this.#u64, slot);
    if (gpa === 0n || gpa > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    return this.#memory.trySlice(Number(gpa), length);
  }

  // --- Hypercalls ---------------------------------------------------------------------------

  /**
   * HvPostDebugData (0x0069, slow calls only). Sends the UDP payload of the raw frame the guest
   * posts.
   *
   * @param input The input block at the input GPA: `HV_INPUT_POST_DEBUG_DATA` (u32 count, u32
   *   options) then `count` bytes of frame. Pass the bytes from the input GPA to the end of its
   *   page (at least 8): `count` must fit in them and be at most 4088.
   * @param output The output block at the output GPA, at least 4 bytes:
   *   `HV_OUTPUT_POST_DEBUG_DATA` (u32 pendingCount, the bytes not sent).
   * @returns HV_STATUS_SUCCESS (sent, or not an IPv4/UDP frame and dropped),
   *   HV_STATUS_INSUFFICIENT_BUFFERS (host buffer full: pendingCount = count, post again),
   *   HV_STATUS_INSUFFICIENT_MEMORY (the send failed), HV_STATUS_INVALID_PARAMETER (count too
   *   large, undefined option bits, blocks too short), HV_STATUS_OPERATION_DENIED (the host did
   *   not set SYNDBG_OPTIONS.USE_HCALLS). Never throws.
   */
  postDebugData(input: Uint8Array, output: Uint8Array): number {
    return this.#hypercall("HvPostDebugData", () => {
      const IN = T.HV_INPUT_POST_DEBUG_DATA;
      const OUT = T.HV_OUTPUT_POST_DEBUG_DATA;
      if (!this.#hypercallsAllowed()) return T.HV_STATUS_OPERATION_DENIED;
      if (input.length < IN.size || output.length < OUT.size) return T.HV_STATUS_INVALID_PARAMETER;
      const count = IN.get(input, 0, "count");
      const options = IN.get(input, 0, "options");
      if (
        (options & ~T.HV_DEBUG_POST_OPTIONS_VALID) !== 0 ||
        count > T.HV_DEBUG_MAXIMUM_DATA_SIZE || count > input.length - IN.size
      ) {
        return T.HV_STATUS_INVALID_PARAMETER;
      }
      const frame = input.subarray(IN.size, IN.size + count);
      const udp = parseUdpFrame(frame);
      let status: number = T.HV_STATUS_SUCCESS;
      let pendingCount = 0;
      if (!udp) {
        // ARP and the like: accepted and dropped, as QEMU does (the debugger speaks UDP only).
        limit((n) =>
          log.debug("dropped a {count}-byte frame that is not IPv4/UDP{dropped}", {
            count,
            dropped: n ? ` (${n} similar suppressed)` : "",
          })
        );
      } else {
        withLock(this.#i32, I_LOCK, () => {
          Atomics.store(this.#i32, I_TARGET_IP, udp.sourceIp | 0);
          const sent = this.#transport.send(frame.subarray(udp.offset, udp.offset + udp.length));
          if (sent === "busy") {
            status = T.HV_STATUS_INSUFFICIENT_BUFFERS;
            pendingCount = count;
          } else if (sent === "failed") {
            status = T.HV_STATUS_INSUFFICIENT_MEMORY;
            pendingCount = count;
          }
        });
      }
      OUT.set(output, 0, "pendingCount", pendingCount);
      return status;
    });
  }

  /**
   * HvRetrieveDebugData (0x006A, slow calls only). Hands one queued datagram to the guest as a
   * raw Ethernet/IPv4/UDP frame. Never waits: `timeout` is accepted and ignored (QEMU too);
   * the guest polls.
   *
   * @param input The input block at the input GPA, at least 16 bytes:
   *   `HV_INPUT_RETRIEVE_DEBUG_DATA` (u32 count: the guest's buffer size, at most 4088; u32
   *   options; u64 timeout in 100 ns).
   * @param output The output block at the output GPA: `HV_OUTPUT_RETRIEVE_DEBUG_DATA` (u32
   *   retrievedCount, u32 remainingCount) then the frame. Pass the bytes from the output GPA
   *   to the end of its page; the frame gets min(count, output.length - 8) bytes at most.
   * @returns HV_STATUS_SUCCESS (retrievedCount = frame size, remainingCount = count - it),
   *   HV_STATUS_NO_DATA (nothing queued, or a datagram too large for the buffer was dropped:
   *   retrievedCount 0, remainingCount = count), HV_STATUS_INVALID_PARAMETER (count too large
   *   or too small for a frame header, undefined option bits, blocks too short),
   *   HV_STATUS_OPERATION_DENIED (no USE_HCALLS). Never throws.
   */
  retrieveDebugData(input: Uint8Array, output: Uint8Array): number {
    return this.#hypercall("HvRetrieveDebugData", () => {
      const IN = T.HV_INPUT_RETRIEVE_DEBUG_DATA;
      const OUT = T.HV_OUTPUT_RETRIEVE_DEBUG_DATA;
      if (!this.#hypercallsAllowed()) return T.HV_STATUS_OPERATION_DENIED;
      if (input.length < IN.size || output.length < OUT.size) return T.HV_STATUS_INVALID_PARAMETER;
      const count = IN.get(input, 0, "count");
      const options = IN.get(input, 0, "options");
      const capacity = Math.min(count, output.length - OUT.size);
      if (
        (options & ~T.HV_DEBUG_RETRIEVE_OPTIONS_VALID) !== 0 ||
        count > T.HV_DEBUG_MAXIMUM_DATA_SIZE || capacity <= RAW_FRAME_HEADER_BYTES
      ) {
        return T.HV_STATUS_INVALID_PARAMETER;
      }
      const frame = output.subarray(OUT.size, OUT.size + capacity);
      const room = capacity - RAW_FRAME_HEADER_BYTES;
      let retrieved = 0;
      withLock(this.#i32, I_LOCK, () => {
        const n = this.#transport.tryReceive(frame.subarray(RAW_FRAME_HEADER_BYTES));
        if (n > room) {
          this.#dropped(n, room);
        } else if (n > 0) {
          writeUdpFrameHeader(frame, n, {
            sourceIp: this.#transport.peer.address,
            destinationIp: Atomics.load(this.#i32, I_TARGET_IP) >>> 0,
            port: this.#transport.peer.port,
          });
          retrieved = RAW_FRAME_HEADER_BYTES + n;
        }
        this.#setPending(this.#transport.hasPending());
      });
      OUT.set(output, 0, "retrievedCount", retrieved);
      OUT.set(output, 0, "remainingCount", count - retrieved);
      return retrieved > 0 ? T.HV_STATUS_SUCCESS : T.HV_STATUS_NO_DATA;
    });
  }

  /**
   * HvResetDebugSession (0x006B, slow calls only). Reports where the debugger is and, with
   * HV_DEBUG_PURGE_INCOMING_DATA, discards what it sent so far (nothing is ever held
   * outgoing).
   *
   * @param input The input block at the input GPA, at least 4 bytes:
   *   `HV_INPUT_RESET_DEBUG_SESSION` (u32 options).
   * @param output The output block at the output GPA, at least 24 bytes:
   *   `HV_OUTPUT_RESET_DEBUG_SESSION` (host and target IPv4 and port: both the debugger's, as
   *   host-order integers; MACs zero), as QEMU reports it.
   * @returns HV_STATUS_SUCCESS, HV_STATUS_INVALID_PARAMETER (undefined option bits, blocks too
   *   short), HV_STATUS_OPERATION_DENIED (no USE_HCALLS). Never throws.
   */
  resetDebugSession(input: Uint8Array, output: Uint8Array): number {
    return this.#hypercall("HvResetDebugSession", () => {
      const IN = T.HV_INPUT_RESET_DEBUG_SESSION;
      const OUT = T.HV_OUTPUT_RESET_DEBUG_SESSION;
      if (!this.#hypercallsAllowed()) return T.HV_STATUS_OPERATION_DENIED;
      if (input.length < IN.size || output.length < OUT.size) return T.HV_STATUS_INVALID_PARAMETER;
      const options = IN.get(input, 0, "options");
      if ((options & ~T.HV_DEBUG_RESET_OPTIONS_VALID) !== 0) return T.HV_STATUS_INVALID_PARAMETER;
      if (options & T.HV_DEBUG_PURGE_INCOMING_DATA) {
        withLock(this.#i32, I_LOCK, () => {
          for (let i = 0; i < PURGE_MAX && this.#transport.tryReceive(this.#scratch) > 0; i++) {
            // discarded
          }
          this.#setPending(this.#transport.hasPending());
        });
      }
      const { address, port } = this.#transport.peer;
      OUT.encode({
        hostIp: address,
        targetIp: address,
        hostPort: port,
        targetPort: port,
      }, output);
      return T.HV_STATUS_SUCCESS;
    });
  }

  #hypercallsAllowed(): boolean {
    return (this.options & T.HV_SYNDBG_OPTION_USE_HCALLS) !== 0n;
  }

  #hypercall(name: string, run: () => number): number {
    try {
      return run();
    } catch (e) {
      this.#error(name, e);
      return T.HV_STATUS_INVALID_HYPERCALL_INPUT;
    }
  }

  #warn(message: string, size: number, slot: number): void {
    limit((n) =>
      log.warn(`${message}{dropped}`, {
        size,
        gpa: `0x${Atomics.load(this.#u64, slot).toString(16)}`,
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
  }

  #dropped(length: number, room: number): void {
    limit((n) =>
      log.warn("dropped a {length}-byte datagram from the debugger: room for {room}{dropped}", {
        length,
        room,
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
  }

  #error(op: string, e: unknown): void {
    limit((n) =>
      log.error("{op} failed: {error}{dropped}", {
        op,
        error: e instanceof Error ? e.stack ?? e.message : String(e),
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
  }
}

/** State slot of a SYNDBG MSR, or `undefined`. */
function msrSlot(index: number): number | undefined {
  if (index === T.HV_X64_MSR_SYNDBG_OPTIONS) return S_OPTIONS;
  if (index >= T.HV_X64_MSR_SYNDBG_CONTROL && index <= T.HV_X64_MSR_SYNDBG_PENDING_BUFFER) {
    return S_CONTROL + index - T.HV_X64_MSR_SYNDBG_CONTROL;
  }
  return undefined;
}

// --- Raw frames (the hypercall path) ---------------------------------------------------------

/** Where the UDP payload of a raw frame is, and who sent it. */
export interface UdpFrame {
  /** Offset of the payload in the frame. */
  readonly offset: number;
  /** Payload bytes. */
  readonly length: number;
  /** IPv4 source address, host order. */
  readonly sourceIp: number;
}

function be16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function be32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

function putBe16(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}

function putBe32(b: Uint8Array, at: number, v: number): void {
  putBe16(b, at, v >>> 16);
  putBe16(b, at + 2, v & 0xffff);
}

/**
 * Locates the UDP payload of an Ethernet II / IPv4 / UDP frame, or `undefined` for anything
 * else (other ethertypes, IP options that overrun, fragments, lengths that do not add up). The
 * payload ends where the UDP and IP lengths say, so Ethernet padding is not sent on.
 */
export function parseUdpFrame(frame: Uint8Array): UdpFrame | undefined {
  if (frame.length < RAW_FRAME_HEADER_BYTES || be16(frame, 12) !== ETHERTYPE_IPV4) return undefined;
  const ip = 14;
  const versionIhl = frame[ip]!;
  const ihl = (versionIhl & 0xf) * 4;
  if (versionIhl >> 4 !== 4 || ihl < 20 || frame[ip + 9] !== IPPROTO_UDP) return undefined;
  if ((be16(frame, ip + 6) & 0x3fff) !== 0) return undefined; // a fragment (MF or an offset)
  const udp = ip + ihl;
  const ipTotal = be16(frame, ip + 2);
  if (udp + 8 > frame.length || ipTotal < ihl + 8) return undefined;
  const udpLength = be16(frame, udp + 4);
  const end = Math.min(frame.length, ip + ipTotal, udp + udpLength);
  if (udpLength < 8 || end < udp + 8) return undefined;
  return { offset: udp + 8, length: end - udp - 8, sourceIp: be32(frame, ip + 12) };
}

function onesComplementSum(b: Uint8Array, from: number, to: number, sum: number): number {
  for (let i = from; i + 1 < to; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if ((to - from) & 1) sum += b[to - 1]! << 8;
  return sum;
}

function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/**
 * Writes the 42 header bytes of an Ethernet/IPv4/UDP frame in front of the `payloadLength`
 * bytes already at `frame[42..]`: zero MACs, TTL 64, `port` as both UDP ports, valid IPv4 and
 * UDP checksums (the shape QEMU gives the guest).
 */
export function writeUdpFrameHeader(
  frame: Uint8Array,
  payloadLength: number,
  addr: { sourceIp: number; destinationIp: number; port: number },
): void {
  frame.fill(0, 0, RAW_FRAME_HEADER_BYTES);
  putBe16(frame, 12, ETHERTYPE_IPV4);
  const ip = 14;
  const udp = ip + 20;
  frame[ip] = 0x45;
  putBe16(frame, ip + 2, 20 + 8 + payloadLength);
  frame[ip + 8] = IP_TTL;
  frame[ip + 9] = IPPROTO_UDP;
  putBe32(frame, ip + 12, addr.sourceIp);
  putBe32(frame, ip + 16, addr.destinationIp);
  putBe16(frame, ip + 10, ~fold(onesComplementSum(frame, ip, udp, 0)) & 0xffff);
  const udpLength = 8 + payloadLength;
  putBe16(frame, udp, addr.port);
  putBe16(frame, udp + 2, addr.port);
  putBe16(frame, udp + 4, udpLength);
  // Pseudo-header: source, destination, protocol, UDP length.
  let sum = onesComplementSum(frame, ip + 12, ip + 20, 0) + IPPROTO_UDP + udpLength;
  sum = onesComplementSum(frame, udp, udp + udpLength, sum);
  const check = ~fold(sum) & 0xffff;
  putBe16(frame, udp + 6, check === 0 ? 0xffff : check);
}
