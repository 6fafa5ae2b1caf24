/**
 * Host side of a VMBus ring buffer pair. A channel's ring GPADL holds two rings: pages
 * `[0, downstreamOffset)` are the guest-to-host ring (we read), pages `[downstreamOffset, n)` the
 * host-to-guest ring (we write). Each ring is a 4 KiB control page (`hv_ring_buffer`: write
 * index, read index, interrupt mask, pending send size, feature bits) followed by the data area.
 *
 * A packet is a `vmpacket_descriptor` (type, offset8, len8, flags, transaction id), an optional
 * type-specific extension (GPA-direct or transfer-page ranges), the payload padded to 8 bytes,
 * then an 8-byte trailer holding the packet's start offset. Linux maps the data area twice so it
 * never sees a wrap; the host handles the wrap explicitly (at most two copies).
 *
 * Guest-owned values are re-validated on every load; our own indices live in private fields and
 * are only published (never read back). A malformed ring throws `RingError`, which stops that
 * channel only.
 *
 * Speed: the data area is usually one contiguous host view (Linux allocates ring pages
 * physically contiguous). Reading a packet copies nothing but a descriptor extension: the device
 * copies the payload straight from the ring to where it keeps it (`RingPacket.copyPayload`, two
 * copies at most when it wraps), or parses it in place through a view of guest memory; only a
 * view of a payload that wraps (or crosses pages of a non-contiguous ring) is first copied into a
 * per-ring scratch buffer allocated once. Descriptors and trailers are read and written as
 * 32-bit words, and the hot path allocates nothing but the subarray a copy needs.
 *
 * Memory ordering (x86-64, little-endian host): control words are `Uint32Array` elements, so
 * every access is one aligned 32-bit access. Our index updates are `Atomics.store` (sequentially
 * consistent: the payload is visible before the index, and the store is a full fence before the
 * signalling decision reads the other side's index, as Linux's `virt_mb()`). A read pass ends
 * with one fence for two stores (`endRead`: read index, then the unmask as `Atomics.store`).
 * Guest-owned words are read with plain loads, which x86 orders as acquires; V8 does not cache
 * them across the `Atomics` stores and calls between reads. (`Atomics.load` costs ~20 ns here, a
 * plain load 1; an `Atomics.store` ~25 ns more than a plain store.)
 * @module
 */
import { type Gpadl, GpadlError, type GpaRange, parseGpaRanges } from "./gpadl.ts";
import type { GuestMemory } from "../kvm/guest_memory.ts";
import {
  HV_PAGE_SIZE,
  RING_FEATURE_PENDING_SEND_SIZE,
  RingControlWord,
  VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
  VmPacketType,
} from "./protocol.ts";

/** Size of a packet descriptor, in bytes. */
export const DESCRIPTOR_SIZE = 16;
/** Size of the trailer after every packet, in bytes. */
export const PACKET_TRAILER_SIZE = 8;
/** Size of the GPA-direct and transfer-page descriptor extensions (before their ranges). */
export const EXTENSION_HEADER_SIZE = 8;

/** Why a ring was declared corrupt. */
export type RingErrorCode =
  | "bad-layout"
  | "misaligned"
  | "invalid-pointer"
  | "invalid-available"
  | "invalid-descriptor"
  | "invalid-flags"
  | "invalid-type"
  | "invalid-ranges";

/** A ring that cannot be used: the channel stops, the VM goes on. */
export class RingError extends Error {
  /** Error class name. */
  override name = "RingError";
  /** Machine-readable reason. */
  readonly code: RingErrorCode;
  /** `message` says what is wrong with the ring. */
  constructor(code: RingErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

const EMPTY = new Uint8Array(0);
const ZEROS = new Uint8Array(8);

function align8(n: number): number {
  return (n + 7) & ~7;
}

/**
 * Total ring bytes (descriptor, extension, padded payload, trailer) a packet occupies.
 * `extLength` must be a multiple of 8.
 */
export function packetSize(extLength: number, payloadLength: number): number {
  return align8(DESCRIPTOR_SIZE + extLength + payloadLength) + PACKET_TRAILER_SIZE;
}

/**
 * The data area of one ring: one contiguous host view (`flat`) when the pages are adjacent in
 * host memory, else the list of 4 KiB pages. Offsets are `[0, size)`; copies wrap at `size`.
 */
export class RingData {
  /** Data area size in bytes (a multiple of 4096). */
  readonly size: number;
  /** The whole data area as one view, when contiguous. */
  readonly flat: Uint8Array | undefined;
  readonly #flatWords: Uint32Array | undefined;
  readonly #pages: readonly Uint8Array[];
  readonly #pageWords: readonly (Uint32Array | undefined)[];

  /** `pages` are 4 KiB host views of the data pages, in ring order. */
  constructor(pages: readonly Uint8Array[]) {
    if (pages.length === 0) {
      throw new RingError("bad-layout", "a ring needs at least one data page");
    }
    for (const p of pages) {
      if (p.length !== HV_PAGE_SIZE) throw new RingError("bad-layout", "ring pages must be 4 KiB");
    }
    this.size = pages.length * HV_PAGE_SIZE;
    this.#pages = pages;
    const first = pages[0]!;
    let contiguous = true;
    for (let i = 1; i < pages.length && contiguous; i++) {
      const p = pages[i]!;
      contiguous = p.buffer === first.buffer &&
        p.byteOffset === first.byteOffset + i * HV_PAGE_SIZE;
    }
    // Word views let descriptors and trailers (8-byte aligned in the ring) be read and written
    // as whole 32-bit words; a host buffer that is not 4-byte aligned gets none and takes the
    // copying path instead.
    const words = (p: Uint8Array, length: number) =>
      (p.byteOffset & 3) === 0 ? new Uint32Array(p.buffer, p.byteOffset, length / 4) : undefined;
    if (contiguous) {
      this.flat = new Uint8Array(first.buffer, first.byteOffset, this.size);
      this.#flatWords = words(first, this.size);
      this.#pageWords = [];
    } else {
      this.#pageWords = pages.map((p) => words(p, HV_PAGE_SIZE));
    }
  }

  /**
   * The host bytes that hold `[off, off+len)` contiguously (no wrap, and within one page when
   * the ring is paged), else `undefined`. The range starts at `localOffset(off)` in them.
   */
  bytesAt(off: number, len: number): Uint8Array | undefined {
    if (off + len > this.size) return undefined;
    if (this.flat) return this.flat;
    if ((off & (HV_PAGE_SIZE - 1)) + len > HV_PAGE_SIZE) return undefined;
    return this.#pages[off >>> 12];
  }

  /**
   * Like `bytesAt`, as 32-bit words (`off` 4-byte aligned): the range starts at word
   * `localOffset(off) >>> 2`. `undefined` also when the host view is not word-aligned.
   */
  wordsAt(off: number, len: number): Uint32Array | undefined {
    if (off + len > this.size) return undefined;
    if (this.flat) return this.#flatWords;
    if ((off & (HV_PAGE_SIZE - 1)) + len > HV_PAGE_SIZE) return undefined;
    return this.#pageWords[off >>> 12];
  }

  /** Where ring offset `off` is inside the view `bytesAt`/`wordsAt` returned. */
  localOffset(off: number): number {
    return this.flat ? off : off & (HV_PAGE_SIZE - 1);
  }

  #checkArgs(off: number, len: number): void {
    if (off < 0 || off >= this.size || len < 0 || len > this.size) {
      throw new RangeError(`ring access ${off}+${len} outside a ${this.size}-byte ring`);
    }
  }

  /** Copies `len` ring bytes starting at `off` (wrapping) into `dst[dstOff..]`. */
  copyOut(off: number, dst: Uint8Array, dstOff: number, len: number): void {
    this.#checkArgs(off, len);
    const flat = this.flat;
    if (flat) {
      const first = this.size - off;
      if (len <= first) {
        dst.set(flat.subarray(off, off + len), dstOff);
      } else {
        dst.set(flat.subarray(off), dstOff);
        dst.set(flat.subarray(0, len - first), dstOff + first);
      }
      return;
    }
    while (len > 0) {
      const page = this.#pages[off >>> 12]!;
      const o = off & (HV_PAGE_SIZE - 1);
      const n = Math.min(HV_PAGE_SIZE - o, len);
      dst.set(page.subarray(o, o + n), dstOff);
      off += n;
      if (off === this.size) off = 0;
      dstOff += n;
      len -= n;
    }
  }

  /** Copies `src[srcOff, srcOff+len)` into the ring at `off` (wrapping). */
  copyIn(off: number, src: Uint8Array, srcOff: number, len: number): void {
    this.#checkArgs(off, len);
    const flat = this.flat;
    if (flat) {
      const first = this.size - off;
      if (len <= first) {
        flat.set(
          srcOff === 0 && len === src.length ? src : src.subarray(srcOff, srcOff + len),
          off,
        );
      } else {
        flat.set(src.subarray(srcOff, srcOff + first), off);
        flat.set(src.subarray(srcOff + first, srcOff + len), 0);
      }
      return;
    }
    while (len > 0) {
      const page = this.#pages[off >>> 12]!;
      const o = off & (HV_PAGE_SIZE - 1);
      const n = Math.min(HV_PAGE_SIZE - o, len);
      page.set(src.subarray(srcOff, srcOff + n), o);
      off += n;
      if (off === this.size) off = 0;
      srcOff += n;
      len -= n;
    }
  }

  /** Writes `len` (< 8) zero bytes at `off` (wrapping). */
  zero(off: number, len: number): void {
    if (len <= 0) return;
    if (this.flat && off + len <= this.size) this.flat.fill(0, off, off + len);
    else this.copyIn(off, ZEROS, 0, len);
  }
}

function controlWords(control: Uint8Array): Uint32Array {
  if (control.length < HV_PAGE_SIZE) {
    throw new RingError("bad-layout", "ring control page is short");
  }
  if ((control.byteOffset & 3) !== 0) {
    throw new RingError("misaligned", "ring control page is not 4-byte aligned in host memory");
  }
  return new Uint32Array(control.buffer, control.byteOffset, HV_PAGE_SIZE / 4);
}

/**
 * A packet read from a ring. One object per ring is reused for every packet: it is valid until
 * the next `readPacket()` on that ring (for devices: until `onPacket` returns). The payload may
 * be guest memory that the guest can still modify: read each field once.
 *
 * Two ways to get at the payload:
 * - `copyPayload(dst)` copies (part of) it straight from the ring into the caller's buffer: one
 *   copy even when the payload wraps around the end of the ring. Use it for data the device
 *   keeps (a write's data, a request it queues).
 * - `data`/`payloadOffset` (or `payload`) give a view to parse in place. It is guest memory
 *   when the payload is contiguous in the host (`isContiguous`); otherwise the first access
 *   copies the payload into a per-ring scratch buffer.
 */
export class RingPacket {
  /** `VmPacketType` value (6 in-band, 7 transfer pages, 9 GPA direct, 11 completion). */
  type = 0;
  /** Descriptor flags (bit 0: completion requested). */
  flags = 0;
  /** Transaction id, low 32 bits. */
  tidLo = 0;
  /** Transaction id, high 32 bits. */
  tidHi = 0;
  /** Payload length in bytes (includes the sender's padding to 8 bytes). */
  payloadLength = 0;
  /** Stable copy of the descriptor extension (bytes 16..offset8*8 of the packet). */
  ext: Uint8Array = EMPTY;
  /** Bytes of `ext` that belong to this packet. */
  extLength = 0;
  /** Ranges in a GPA-direct or transfer-page packet. */
  rangeCount = 0;
  /** Transfer page set id of a transfer-page packet. */
  transferPageSetId = 0;
  #ring: RingData | undefined;
  /** Ring offset of the payload's first byte. */
  #start = 0;
  /** Backing view of the payload; `undefined` until a wrapped payload is copied to scratch. */
  #data: Uint8Array | undefined = EMPTY;
  #offset = 0;
  #contiguous = true;
  #scratch: Uint8Array | undefined;

  /**
   * Points the packet at a payload of `length` bytes at ring offset `start` of `ring`
   * (validated by the caller); `direct` is the host view holding it contiguously, if any.
   * @internal Called by `IncomingRing.readPacket`.
   */
  _setPayload(ring: RingData, start: number, length: number, direct: Uint8Array | undefined) {
    this.#ring = ring;
    this.#start = start;
    this.payloadLength = length;
    this.#data = direct;
    this.#contiguous = direct !== undefined;
    this.#offset = direct ? ring.localOffset(start) : 0;
  }

  /** True when `data` is a view of guest memory (reading it copies nothing). */
  get isContiguous(): boolean {
    return this.#contiguous;
  }

  /** Backing bytes of the payload (guest memory, or a scratch copy of a wrapped payload). */
  get data(): Uint8Array {
    return this.#data ?? this.#materialize();
  }

  /** Offset of the payload in `data`. */
  get payloadOffset(): number {
    if (this.#data === undefined) this.#materialize();
    return this.#offset;
  }

  /**
   * Copies payload bytes `[from, from+length)` into `dst` at `dstOffset`, straight from the
   * ring (wrapping as needed, no intermediate copy). Defaults: the whole payload to the start
   * of `dst`. Throws `RangeError` when the range is outside the payload or `dst`.
   */
  copyPayload(
    dst: Uint8Array,
    dstOffset = 0,
    from = 0,
    length: number = this.payloadLength - from,
  ): void {
    if (
      !Number.isInteger(from) || !Number.isInteger(length) || !Number.isInteger(dstOffset) ||
      from < 0 || length < 0 || from + length > this.payloadLength || dstOffset < 0 ||
      dstOffset + length > dst.length
    ) {
      throw new RangeError(
        `cannot copy payload bytes ${from}+${length} of ${this.payloadLength} to ${dstOffset} of ${dst.length}`,
      );
    }
    if (length === 0) return;
    const data = this.#data;
    if (data !== undefined) {
      const at = this.#offset + from;
      dst.set(data.subarray(at, at + length), dstOffset);
      return;
    }
    const ring = this.#ring!;
    let off = this.#start + from;
    if (off >= ring.size) off -= ring.size;
    ring.copyOut(off, dst, dstOffset, length);
  }

  #materialize(): Uint8Array {
    const ring = this.#ring!;
    // Ring-sized: any payload fits, and it is allocated once per ring.
    const scratch = this.#scratch ??= new Uint8Array(ring.size);
    ring.copyOut(this.#start, scratch, 0, this.payloadLength);
    this.#data = scratch;
    this.#offset = 0;
    return scratch;
  }

  /** True when the sender asked for a completion packet. */
  get completionRequested(): boolean {
    return (this.flags & VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) !== 0;
  }

  /** The transaction id (allocates a bigint; `tidLo`/`tidHi` do not). */
  get transactionId(): bigint {
    return (BigInt(this.tidHi) << 32n) | BigInt(this.tidLo);
  }

  /** A view of the payload (allocates a view object; valid as long as the packet). */
  get payload(): Uint8Array {
    return this.data.subarray(this.payloadOffset, this.payloadOffset + this.payloadLength);
  }

  /** The GPA ranges of a GPA-direct packet (validated when read; allocates). */
  gpaRanges(): GpaRange[] {
    if (this.type !== VmPacketType.DATA_USING_GPA_DIRECT) return [];
    return parseGpaRanges(
      this.ext.subarray(EXTENSION_HEADER_SIZE, this.extLength),
      this.rangeCount,
    ).ranges;
  }

  /** The ranges of a transfer-page packet (allocates). */
  transferPageRanges(): { byteCount: number; byteOffset: number }[] {
    if (this.type !== VmPacketType.DATA_USING_XFER_PAGES) return [];
    const dv = new DataView(this.ext.buffer, this.ext.byteOffset, this.extLength);
    const out = [];
    for (let i = 0; i < this.rangeCount; i++) {
      const at = EXTENSION_HEADER_SIZE + i * 8;
      out.push({ byteCount: dv.getUint32(at, true), byteOffset: dv.getUint32(at + 4, true) });
    }
    return out;
  }
}

/**
 * Checks GPA range data without allocating: `count` ranges in `dv[at, end)`. Returns the bytes
 * used or -1 when invalid (same rules as `parseGpaRanges`).
 */
function validateRanges(dv: DataView, at: number, end: number, count: number): number {
  const start = at;
  for (let r = 0; r < count; r++) {
    if (at + 8 > end) return -1;
    const byteCount = dv.getUint32(at, true);
    const byteOffset = dv.getUint32(at + 4, true);
    at += 8;
    if (byteCount === 0 || byteOffset >= HV_PAGE_SIZE) return -1;
    const pages = Math.ceil((byteOffset + byteCount) / HV_PAGE_SIZE);
    if (at + pages * 8 > end) return -1;
    for (let i = 0; i < pages; i++, at += 8) {
      if (dv.getUint32(at + 4, true) >= 0x200) return -1;
    }
  }
  return at - start;
}

/** The ring the host reads: guest-to-host ("upstream"). */
export class IncomingRing {
  /** The data area. */
  readonly data: RingData;
  /** The packet object `readPacket` fills (reused). */
  readonly packet: RingPacket = new RingPacket();
  readonly #ctrl: Uint32Array;
  readonly #size: number;
  #next: number;
  #committed: number;
  #lastStart = -1;
  /** A descriptor that wraps or straddles pages is copied here (as bytes, read as words). */
  readonly #descWords = new Uint32Array(DESCRIPTOR_SIZE / 4);
  readonly #descBytes = new Uint8Array(this.#descWords.buffer);
  #ext = new Uint8Array(64);
  #extView = new DataView(this.#ext.buffer);

  /** Takes over a ring whose control page is `control`; validates its read index. */
  constructor(control: Uint8Array, data: RingData) {
    this.#ctrl = controlWords(control);
    this.data = data;
    this.#size = data.size;
    const r = this.#ctrl[RingControlWord.READ_INDEX]!;
    this.#check(r, "read");
    this.#next = r;
    this.#committed = r;
  }

  #check(index: number, what: string): void {
    if (index >= this.#size || (index & 7) !== 0) {
      throw new RingError(
        "invalid-pointer",
        `ring ${what} index 0x${index.toString(16)} is invalid`,
      );
    }
  }

  #loadWrite(): number {
    const w = this.#ctrl[RingControlWord.WRITE_INDEX]!;
    this.#check(w, "write");
    return w;
  }

  /** Data area size in bytes. */
  get size(): number {
    return this.#size;
  }

  /** Bytes of packets in the ring (from its current indices), for status displays. */
  get bytesUsed(): number {
    const w = this.#ctrl[RingControlWord.WRITE_INDEX]! % this.#size;
    const r = this.#ctrl[RingControlWord.READ_INDEX]! % this.#size;
    return (w - r + this.#size) % this.#size;
  }

  /** True when no unread packet is in the ring. Throws `RingError` on a bad write index. */
  isEmpty(): boolean {
    return this.#loadWrite() === this.#next;
  }

  /**
   * Sets (true) or clears the interrupt mask: masked means "do not signal me". Masking is a
   * plain store: seen late, it only costs the guest a signal it could have saved. Unmasking is
   * a full fence, so a following `isEmpty()` sees what the guest wrote while masked.
   */
  setInterruptMask(masked: boolean): void {
    if (masked) this.#ctrl[RingControlWord.INTERRUPT_MASK] = 1;
    else Atomics.store(this.#ctrl, RingControlWord.INTERRUPT_MASK, 0);
  }

  /** True when the guest advertised `feat_pending_send_sz` on this ring. */
  get guestSupportsPendingSendSize(): boolean {
    return (this.#ctrl[RingControlWord.FEATURE_BITS]! &
      RING_FEATURE_PENDING_SEND_SIZE) !== 0;
  }

  /**
   * Parses the next packet and advances the private read position (publish it with
   * `commitRead`). Returns `null` when the ring is empty; throws `RingError` when it is corrupt.
   */
  readPacket(): RingPacket | null {
    const size = this.#size;
    const w = this.#loadWrite();
    const r = this.#next;
    if (w === r) return null;
    const avail = w > r ? w - r : size - r + w;
    if (avail < DESCRIPTOR_SIZE + PACKET_TRAILER_SIZE) {
      throw new RingError("invalid-available", `only ${avail} bytes in the ring`);
    }
    const data = this.data;
    let words = data.wordsAt(r, DESCRIPTOR_SIZE);
    let at: number;
    if (words) {
      at = data.localOffset(r) >>> 2;
    } else {
      data.copyOut(r, this.#descBytes, 0, DESCRIPTOR_SIZE);
      words = this.#descWords;
      at = 0;
    }
    // Little-endian host: word 0 is type | offset8 << 16, word 1 is len8 | flags << 16.
    const w0 = words[at]!;
    const w1 = words[at + 1]!;
    const tidLo = words[at + 2]!;
    const tidHi = words[at + 3]!;
    const type = w0 & 0xffff;
    const offset8 = w0 >>> 16;
    const len8 = w1 & 0xffff;
    const flags = w1 >>> 16;
    const hdr = offset8 * 8;
    const len = len8 * 8;
    if (offset8 < 2 || len8 < offset8 || len + PACKET_TRAILER_SIZE > avail) {
      throw new RingError(
        "invalid-descriptor",
        `packet offset8 ${offset8} len8 ${len8} does not fit ${avail} available bytes`,
      );
    }
    if ((flags & ~VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED) !== 0) {
      throw new RingError("invalid-flags", `packet flags 0x${flags.toString(16)} are unknown`);
    }
    const pkt = this.packet;
    pkt.rangeCount = 0;
    pkt.transferPageSetId = 0;
    const extLen = hdr - DESCRIPTOR_SIZE;
    switch (type) {
      case VmPacketType.DATA_INBAND:
      case VmPacketType.COMP:
        pkt.extLength = 0;
        break;
      case VmPacketType.DATA_USING_GPA_DIRECT:
      case VmPacketType.DATA_USING_XFER_PAGES: {
        if (extLen < EXTENSION_HEADER_SIZE) {
          throw new RingError("invalid-descriptor", `packet type ${type} header is too short`);
        }
        if (this.#ext.length < extLen) {
          this.#ext = new Uint8Array(Math.max(extLen, this.#ext.length * 2));
          this.#extView = new DataView(this.#ext.buffer);
        }
        data.copyOut((r + DESCRIPTOR_SIZE) % size, this.#ext, 0, extLen);
        const ev = this.#extView;
        const count = ev.getUint32(4, true);
        if (type === VmPacketType.DATA_USING_GPA_DIRECT) {
          if (count === 0 || validateRanges(ev, EXTENSION_HEADER_SIZE, extLen, count) < 0) {
            throw new RingError("invalid-ranges", `GPA-direct packet has invalid ranges`);
          }
        } else {
          if (count > (extLen - EXTENSION_HEADER_SIZE) / 8) {
            throw new RingError("invalid-ranges", `transfer-page packet has ${count} ranges`);
          }
          pkt.transferPageSetId = ev.getUint16(0, true);
        }
        pkt.rangeCount = count;
        pkt.ext = this.#ext;
        pkt.extLength = extLen;
        break;
      }
      default:
        throw new RingError("invalid-type", `packet type ${type} is not supported`);
    }
    pkt.type = type;
    pkt.flags = flags;
    pkt.tidLo = tidLo;
    pkt.tidHi = tidHi;
    // The payload is not copied here: the device copies it where it wants it (`copyPayload`),
    // or a view is made on demand (`data`).
    let start = r + hdr;
    if (start >= size) start -= size;
    const payloadLength = len - hdr;
    pkt._setPayload(data, start, payloadLength, data.bytesAt(start, payloadLength));
    this.#lastStart = r;
    let next = r + len + PACKET_TRAILER_SIZE;
    if (next >= size) next -= size;
    this.#next = next;
    return pkt;
  }

  /** Puts the packet returned by the last `readPacket` back (it will be read again). */
  rewind(): void {
    if (this.#lastStart >= 0) this.#next = this.#lastStart;
    this.#lastStart = -1;
  }

  /**
   * Publishes the read index. Returns true when the guest must be signalled: it set
   * `pending_send_sz` and this read moved free space from below it to at least it.
   */
  commitRead(): boolean {
    this.#lastStart = -1;
    const next = this.#next;
    const old = this.#committed;
    if (next === old) return false;
    Atomics.store(this.#ctrl, RingControlWord.READ_INDEX, next);
    this.#committed = next;
    return this.#guestWaits(old, next);
  }

  /**
   * `commitRead` only when the guest waits for ring space (`pending_send_sz` set, one plain
   * load otherwise), so that a long read pass does not keep a blocked guest waiting until its
   * end. Returns true when the guest must be signalled now. Like `commitRead`, it ends what
   * `rewind` can undo.
   */
  commitIfGuestWaits(): boolean {
    if (this.#ctrl[RingControlWord.PENDING_SEND_SIZE] === 0) return false;
    return this.commitRead();
  }

  /**
   * Ends a read pass: `commitRead` and `setInterruptMask(false)` behind one fence instead of
   * two. Returns true when the guest must be signalled (as `commitRead`). The caller must then
   * re-check the ring (`isEmpty()`): the guest does not signal what it wrote while masked.
   */
  endRead(): boolean {
    this.#lastStart = -1;
    const ctrl = this.#ctrl;
    const next = this.#next;
    const old = this.#committed;
    // A plain store: the unmask's fence below orders it after the payload reads (x86 keeps
    // loads before later stores) and before the loads of pending_send_sz and the write index.
    if (next !== old) {
      ctrl[RingControlWord.READ_INDEX] = next;
      this.#committed = next;
    }
    Atomics.store(ctrl, RingControlWord.INTERRUPT_MASK, 0);
    return next !== old && this.#guestWaits(old, next);
  }

  /**
   * True when moving the read index from `old` to `next` took free space from below the
   * guest's `pending_send_sz` to at least it (Linux `hv_pkt_iter_close`). Call after a fence.
   */
  #guestWaits(old: number, next: number): boolean {
    const ctrl = this.#ctrl;
    // Some writers use "size - 1"; free space only comes in 8-byte steps.
    const pending = ctrl[RingControlWord.PENDING_SEND_SIZE]! & ~7;
    if (pending === 0) return false;
    const w = ctrl[RingControlWord.WRITE_INDEX]!;
    if (w >= this.#size || (w & 7) !== 0) return false;
    return this.#free(w, old) < pending && this.#free(w, next) >= pending;
  }

  #free(w: number, r: number): number {
    return (r > w ? r - w : this.#size - (w - r)) - 8;
  }
}

/** Outcome of `OutgoingRing.writePacket`. */
export const WriteResult = {
  /** No room: `pending_send_sz` is set; retry when the guest signals. */
  FULL: 0,
  /** Written; the guest needs no signal. */
  WRITTEN: 1,
  /** Written into an empty ring with interrupts unmasked: signal the guest. */
  WRITTEN_SIGNAL: 2,
} as const;

/** A `WriteResult` value. */
export type WriteResult = typeof WriteResult[keyof typeof WriteResult];

/** The ring the host writes: host-to-guest ("downstream"). */
export class OutgoingRing {
  /** The data area. */
  readonly data: RingData;
  readonly #ctrl: Uint32Array;
  readonly #size: number;
  #write: number;
  #pending = 0;
  /** Descriptor then trailer, built here when they wrap or straddle pages in the ring. */
  readonly #hdrWords = new Uint32Array((DESCRIPTOR_SIZE + PACKET_TRAILER_SIZE) / 4);
  readonly #hdr = new Uint8Array(this.#hdrWords.buffer);

  /**
   * Takes over a ring whose control page is `control`: validates its write index, advertises
   * `feat_pending_send_sz` and clears `pending_send_sz`.
   */
  constructor(control: Uint8Array, data: RingData) {
    this.#ctrl = controlWords(control);
    this.data = data;
    this.#size = data.size;
    const w = this.#ctrl[RingControlWord.WRITE_INDEX]!;
    if (w >= this.#size || (w & 7) !== 0) {
      throw new RingError("invalid-pointer", `ring write index 0x${w.toString(16)} is invalid`);
    }
    this.#write = w;
    Atomics.or(this.#ctrl, RingControlWord.FEATURE_BITS, RING_FEATURE_PENDING_SEND_SIZE);
    Atomics.store(this.#ctrl, RingControlWord.PENDING_SEND_SIZE, 0);
  }

  /** Data area size in bytes. */
  get size(): number {
    return this.#size;
  }

  /** Bytes of packets in the ring (from its current indices), for status displays. */
  get bytesUsed(): number {
    const w = this.#ctrl[RingControlWord.WRITE_INDEX]! % this.#size;
    const r = this.#ctrl[RingControlWord.READ_INDEX]! % this.#size;
    return (w - r + this.#size) % this.#size;
  }

  /** Largest packet (`packetSize`) the ring can ever hold. */
  get maxPacketSize(): number {
    return this.#size - 8;
  }

  /** Bytes the host is waiting for (0 when not blocked). */
  get pendingSendSize(): number {
    return this.#pending;
  }

  #loadRead(): number {
    const r = this.#ctrl[RingControlWord.READ_INDEX]!;
    if (r >= this.#size || (r & 7) !== 0) {
      throw new RingError("invalid-pointer", `ring read index 0x${r.toString(16)} is invalid`);
    }
    return r;
  }

  /** True when a packet of `bytes` (see `packetSize`) fits now. Throws `RingError`. */
  hasSpace(bytes: number): boolean {
    const r = this.#loadRead();
    const w = this.#write;
    const used = w >= r ? w - r : this.#size - r + w;
    // The ring is never filled completely: full and empty must differ.
    return this.#size - used > bytes;
  }

  /** Withdraws a `pending_send_sz` request. */
  clearPending(): void {
    if (this.#pending !== 0) {
      this.#pending = 0;
      Atomics.store(this.#ctrl, RingControlWord.PENDING_SEND_SIZE, 0);
    }
  }

  /**
   * Writes one packet: descriptor (`type`, `flags`, transaction id), `ext` (a multiple of 8
   * bytes, or null), `payload` (padded to 8 bytes), trailer. Throws `RangeError` when the packet
   * can never fit and `RingError` when the guest corrupted the read index. When the ring is
   * full, sets `pending_send_sz` and returns `WriteResult.FULL`.
   */
  writePacket(
    type: number,
    flags: number,
    tidLo: number,
    tidHi: number,
    ext: Uint8Array | null,
    payload: Uint8Array | null,
  ): WriteResult {
    const extLen = ext ? ext.length : 0;
    const payLen = payload ? payload.length : 0;
    if ((extLen & 7) !== 0) {
      throw new RangeError("descriptor extension must be a multiple of 8 bytes");
    }
    const hdr = DESCRIPTOR_SIZE + extLen;
    const total = align8(hdr + payLen);
    const need = total + PACKET_TRAILER_SIZE;
    if (total > 0xffff * 8 || need >= this.#size) {
      throw new RangeError(`a ${payLen}-byte packet can never fit a ${this.#size}-byte ring`);
    }
    const size = this.#size;
    const ctrl = this.#ctrl;
    const r = this.#loadRead();
    const w = this.#write;
    const used = w >= r ? w - r : size - r + w;
    if (size - used <= need) {
      this.#pending = need;
      Atomics.store(ctrl, RingControlWord.PENDING_SEND_SIZE, need);
      return WriteResult.FULL;
    }
    const data = this.data;
    // Little-endian host: type | offset8 << 16, len8 | flags << 16, transaction id.
    const w0 = (type & 0xffff) | ((hdr >>> 3) << 16);
    const w1 = (total >>> 3) | ((flags & 0xffff) << 16);
    const dw = data.wordsAt(w, DESCRIPTOR_SIZE);
    if (dw) {
      const at = data.localOffset(w) >>> 2;
      dw[at] = w0;
      dw[at + 1] = w1;
      dw[at + 2] = tidLo;
      dw[at + 3] = tidHi;
    } else {
      const hw = this.#hdrWords;
      hw[0] = w0;
      hw[1] = w1;
      hw[2] = tidLo;
      hw[3] = tidHi;
      data.copyIn(w, this.#hdr, 0, DESCRIPTOR_SIZE);
    }
    let off = w + DESCRIPTOR_SIZE;
    if (off >= size) off -= size;
    if (extLen > 0) {
      data.copyIn(off, ext!, 0, extLen);
      off += extLen;
      if (off >= size) off -= size;
    }
    if (payLen > 0) {
      data.copyIn(off, payload!, 0, payLen);
      off += payLen;
      if (off >= size) off -= size;
    }
    const pad = total - hdr - payLen;
    if (pad > 0) {
      data.zero(off, pad);
      off += pad;
      if (off >= size) off -= size;
    }
    const tw = data.wordsAt(off, PACKET_TRAILER_SIZE);
    if (tw) {
      const at = data.localOffset(off) >>> 2;
      tw[at] = 0;
      tw[at + 1] = w;
    } else {
      this.#hdrWords[4] = 0;
      this.#hdrWords[5] = w;
      data.copyIn(off, this.#hdr, DESCRIPTOR_SIZE, PACKET_TRAILER_SIZE);
    }
    off += PACKET_TRAILER_SIZE;
    if (off >= size) off -= size;
    if (this.#pending !== 0) {
      this.#pending = 0;
      Atomics.store(ctrl, RingControlWord.PENDING_SEND_SIZE, 0);
    }
    this.#write = off;
    Atomics.store(ctrl, RingControlWord.WRITE_INDEX, off);
    // Signal only on the empty -> non-empty transition, and only when the guest wants it.
    if (ctrl[RingControlWord.INTERRUPT_MASK]! !== 0) return WriteResult.WRITTEN;
    return ctrl[RingControlWord.READ_INDEX]! === w
      ? WriteResult.WRITTEN_SIGNAL
      : WriteResult.WRITTEN;
  }
}

/** The two rings of an open channel. */
export interface RingPair {
  /** Guest-to-host ring (host reads). */
  readonly incoming: IncomingRing;
  /** Host-to-guest ring (host writes). */
  readonly outgoing: OutgoingRing;
}

/**
 * Builds the ring pair of a channel from its ring GPADL: one page-aligned range of whole pages,
 * the host-to-guest ring starting `downstreamOffset` pages in, each ring at least a control page
 * and one data page. Throws `RingError`.
 */
export function openRingPair(
  memory: GuestMemory,
  gpadl: Gpadl,
  downstreamOffset: number,
): RingPair {
  let pages: Uint8Array[] | undefined;
  try {
    pages = gpadl.pageViews(memory);
  } catch (e) {
    if (!(e instanceof GpadlError)) throw e;
  }
  if (!pages) {
    throw new RingError(
      "bad-layout",
      `ring GPADL ${gpadl.id} is not one page-aligned range of guest RAM`,
    );
  }
  if (downstreamOffset < 2 || pages.length - downstreamOffset < 2) {
    throw new RingError(
      "bad-layout",
      `downstream offset ${downstreamOffset} does not split ${pages.length} ring pages in two rings`,
    );
  }
  const incoming = new IncomingRing(pages[0]!, new RingData(pages.slice(1, downstreamOffset)));
  const outgoing = new OutgoingRing(
    pages[downstreamOffset]!,
    new RingData(pages.slice(downstreamOffset + 1)),
  );
  return { incoming, outgoing };
}
