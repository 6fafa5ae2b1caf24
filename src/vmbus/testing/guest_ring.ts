/**
 * The guest side of a VMBus ring, written independently of `../ring.ts` from Linux's
 * `drivers/hv/ring_buffer.c` (hv_ringbuffer_write, hv_pkt_iter_first/next/close), so tests check
 * the host against the client's algorithm rather than against itself. Byte-at-a-time and simple
 * on purpose; not for production.
 * @module
 */
import type { GuestMemory } from "../../kvm/guest_memory.ts";

const PAGE = 4096;

/** A packet as the guest sees it. */
export interface GuestPacket {
  readonly type: number;
  readonly flags: number;
  readonly transactionId: bigint;
  /** Bytes 16..offset8*8 (descriptor extension). */
  readonly ext: Uint8Array;
  /** Bytes offset8*8..len8*8 (payload, padded). */
  readonly payload: Uint8Array;
}

/** One ring (control page + data pages) addressed through guest physical pages. */
export class GuestRingView {
  /** Control page view. */
  readonly control: DataView;
  /** Data area size. */
  readonly size: number;
  readonly #pages: Uint8Array[];

  /** `pageGpas[0]` is the control page; the rest are data pages in ring order. */
  constructor(memory: GuestMemory, pageGpas: readonly number[]) {
    const ctl = memory.slice(pageGpas[0]!, PAGE);
    this.control = new DataView(ctl.buffer, ctl.byteOffset, PAGE);
    this.#pages = pageGpas.slice(1).map((g) => memory.slice(g, PAGE));
    this.size = this.#pages.length * PAGE;
  }

  get writeIndex(): number {
    return this.control.getUint32(0, true);
  }
  set writeIndex(v: number) {
    this.control.setUint32(0, v, true);
  }
  get readIndex(): number {
    return this.control.getUint32(4, true);
  }
  set readIndex(v: number) {
    this.control.setUint32(4, v, true);
  }
  get interruptMask(): number {
    return this.control.getUint32(8, true);
  }
  set interruptMask(v: number) {
    this.control.setUint32(8, v, true);
  }
  get pendingSendSize(): number {
    return this.control.getUint32(12, true);
  }
  set pendingSendSize(v: number) {
    this.control.setUint32(12, v, true);
  }
  get featureBits(): number {
    return this.control.getUint32(64, true);
  }
  set featureBits(v: number) {
    this.control.setUint32(64, v, true);
  }

  /** Byte `off` of the data area (wrapping). */
  get(off: number): number {
    off %= this.size;
    return this.#pages[Math.floor(off / PAGE)]![off % PAGE]!;
  }

  /** Sets byte `off` of the data area (wrapping). */
  put(off: number, v: number): void {
    off %= this.size;
    this.#pages[Math.floor(off / PAGE)]![off % PAGE] = v;
  }

  /** Copies bytes in (wrapping). */
  putBytes(off: number, src: Uint8Array): void {
    for (let i = 0; i < src.length; i++) this.put(off + i, src[i]!);
  }

  /** Copies bytes out (wrapping). */
  getBytes(off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len; i++) out[i] = this.get(off + i);
    return out;
  }

  /** Linux hv_ringbuffer_init: indices 0, feature bit set. */
  init(): void {
    for (let i = 0; i < 128; i += 4) this.control.setUint32(i, 0, true);
    this.featureBits = 1;
  }

  /** hv_get_bytes_to_write. */
  bytesToWrite(): number {
    const r = this.readIndex;
    const w = this.writeIndex;
    return w >= r ? this.size - (w - r) : r - w;
  }
}

/** Encodes a raw packet: descriptor, ext, payload padded to 8, no trailer. */
export function encodePacket(
  type: number,
  flags: number,
  transactionId: bigint,
  ext: Uint8Array,
  payload: Uint8Array,
): Uint8Array {
  const hdr = 16 + ext.length;
  const total = (hdr + payload.length + 7) & ~7;
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  dv.setUint16(0, type, true);
  dv.setUint16(2, hdr >> 3, true);
  dv.setUint16(4, total >> 3, true);
  dv.setUint16(6, flags, true);
  dv.setBigUint64(8, BigInt.asUintN(64, transactionId), true);
  out.set(ext, 16);
  out.set(payload, hdr);
  return out;
}

/** The guest's outbound ring (host reads it). */
export class GuestRingWriter {
  /** The ring. */
  readonly ring: GuestRingView;
  constructor(ring: GuestRingView) {
    this.ring = ring;
  }

  /**
   * hv_ringbuffer_write: writes `packet` (descriptor..padding) plus the trailer. Returns
   * `"full"`, or whether the host needs a signal (hv_signal_on_write).
   */
  write(packet: Uint8Array): "full" | "signal" | "no-signal" {
    const r = this.ring;
    const total = packet.length + 8;
    if (r.bytesToWrite() <= total) return "full";
    const oldWrite = r.writeIndex;
    r.putBytes(oldWrite, packet);
    // Trailer: (u64)old write index << 32.
    const trailer = new Uint8Array(8);
    new DataView(trailer.buffer).setUint32(4, oldWrite, true);
    r.putBytes(oldWrite + packet.length, trailer);
    r.writeIndex = (oldWrite + total) % r.size;
    if (r.interruptMask !== 0) return "no-signal";
    return oldWrite === r.readIndex ? "signal" : "no-signal";
  }
}

/** The guest's inbound ring (host writes it). */
export class GuestRingReader {
  /** The ring. */
  readonly ring: GuestRingView;
  constructor(ring: GuestRingView) {
    this.ring = ring;
  }

  /** True when the host left packets. */
  hasData(): boolean {
    return this.ring.writeIndex !== this.ring.readIndex;
  }

  /**
   * Reads one packet (copying) and publishes the read index (hv_pkt_iter_close). Returns the
   * packet (or null when empty) and whether the host must be signalled (pending_send_sz). Throws
   * on a malformed host packet: the host must never write one.
   */
  read(): { packet: GuestPacket | null; signal: boolean } {
    const r = this.ring;
    const start = r.readIndex;
    const w = r.writeIndex;
    if (w === start) return { packet: null, signal: false };
    const avail = w >= start ? w - start : r.size - start + w;
    const desc = new DataView(r.getBytes(start, 16).buffer);
    const type = desc.getUint16(0, true);
    const offset8 = desc.getUint16(2, true);
    const len8 = desc.getUint16(4, true);
    const flags = desc.getUint16(6, true);
    const tid = desc.getBigUint64(8, true);
    const len = len8 * 8;
    if (offset8 < 2 || len8 < offset8 || len + 8 > avail) {
      throw new Error(
        `host wrote a malformed packet: offset8 ${offset8} len8 ${len8} avail ${avail}`,
      );
    }
    const trailer = new DataView(r.getBytes(start + len, 8).buffer);
    if (trailer.getUint32(4, true) !== start || trailer.getUint32(0, true) !== 0) {
      throw new Error("host wrote a bad packet trailer");
    }
    const packet: GuestPacket = {
      type,
      flags,
      transactionId: tid,
      ext: r.getBytes(start + 16, offset8 * 8 - 16),
      payload: r.getBytes(start + offset8 * 8, len - offset8 * 8),
    };
    const next = (start + len + 8) % r.size;
    r.readIndex = next;
    // hv_pkt_iter_close
    let signal = false;
    if (r.featureBits & 1) {
      const pending = r.pendingSendSize;
      if (pending) {
        const currWrite = r.bytesToWrite();
        const bytesRead = len + 8;
        signal = !(currWrite - bytesRead > pending) && currWrite > pending;
      }
    }
    return { packet, signal };
  }
}
