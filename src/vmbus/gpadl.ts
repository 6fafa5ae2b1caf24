/**
 * GPADLs (guest physical address descriptor lists): the guest describes a buffer as a list of
 * `gpa_range`s (byte count, byte offset into the first page, page frame numbers) spread over one
 * GPADL_HEADER and any number of GPADL_BODY messages. This module validates that description,
 * keeps the table of GPADLs by handle, and builds scatter/gather views of a GPADL's bytes over
 * guest RAM (pages need not be contiguous).
 * @module
 */
import { type GuestMemory, PAGE_SIZE } from "../kvm/guest_memory.ts";

/** One validated `gpa_range`. */
export interface GpaRange {
  /** Bytes described by the range (> 0). */
  readonly byteCount: number;
  /** Offset of the first byte in the first page (< 4096). */
  readonly byteOffset: number;
  /** Guest page frame numbers, `ceil((byteOffset + byteCount) / 4096)` of them. */
  readonly pfns: readonly number[];
}

/** Why a GPA range list or GPADL message was refused. */
export type GpadlErrorCode =
  | "empty-range-list"
  | "truncated-range"
  | "zero-byte-count"
  | "offset-too-large"
  | "pfn-too-large"
  | "not-guest-ram"
  | "bad-range-length"
  | "too-much-data"
  | "duplicate-handle"
  | "unknown-handle"
  | "already-complete"
  | "too-many-gpadls";

/** A refused GPADL operation. Callers answer the guest with the protocol's failure status. */
export class GpadlError extends Error {
  /** Error class name. */
  override name = "GpadlError";
  /** Machine-readable reason. */
  readonly code: GpadlErrorCode;
  /** `message` says what was refused and why. */
  constructor(code: GpadlErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** PFNs must be below 2^41, so that `pfn * 4096` (< 2^53) is an exact integer. */
const PFN_HIGH_WORD_LIMIT = 0x200;

/**
 * Parses `count` `gpa_range`s from little-endian range data (`bytes[0, length)`). Returns the
 * ranges and the bytes they used (trailing bytes are allowed and ignored), or throws
 * `GpadlError`. Integer math stays exact: PFNs are checked to be below 2^41 before any multiply.
 */
export function parseGpaRanges(
  bytes: Uint8Array,
  count: number,
  length = bytes.length,
): { ranges: GpaRange[]; used: number } {
  if (count <= 0) {
    throw new GpadlError("empty-range-list", "a GPA range list needs at least one range");
  }
  const end = Math.min(length, bytes.length);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const ranges: GpaRange[] = [];
  let at = 0;
  for (let r = 0; r < count; r++) {
    if (at + 8 > end) throw new GpadlError("truncated-range", `range ${r} header is missing`);
    const byteCount = dv.getUint32(at, true);
    const byteOffset = dv.getUint32(at + 4, true);
    at += 8;
    if (byteCount === 0) throw new GpadlError("zero-byte-count", `range ${r} has no bytes`);
    if (byteOffset >= PAGE_SIZE) {
      throw new GpadlError("offset-too-large", `range ${r} byte offset ${byteOffset} >= 4096`);
    }
    const pages = Math.ceil((byteOffset + byteCount) / PAGE_SIZE);
    if (at + pages * 8 > end) {
      throw new GpadlError("truncated-range", `range ${r} needs ${pages} PFNs`);
    }
    const pfns = new Array<number>(pages);
    for (let i = 0; i < pages; i++, at += 8) {
      const lo = dv.getUint32(at, true);
      const hi = dv.getUint32(at + 4, true);
      const pfn = hi * 0x1_0000_0000 + lo;
      if (hi >= PFN_HIGH_WORD_LIMIT) {
        throw new GpadlError(
          "pfn-too-large",
          `range ${r} PFN 0x${pfn.toString(16)} is out of range`,
        );
      }
      pfns[i] = pfn;
    }
    ranges.push({ byteCount, byteOffset, pfns });
  }
  return { ranges, used: at };
}

/** Throws `GpadlError("not-guest-ram")` unless every page of every range is guest RAM. */
export function checkRangesInMemory(memory: GuestMemory, ranges: readonly GpaRange[]): void {
  for (const r of ranges) {
    for (const pfn of r.pfns) {
      if (!memory.contains(pfn * PAGE_SIZE, PAGE_SIZE)) {
        throw new GpadlError(
          "not-guest-ram",
          `page 0x${(pfn * PAGE_SIZE).toString(16)} is not guest RAM`,
        );
      }
    }
  }
}

/**
 * A scatter/gather view of guest bytes: a list of host views (adjacent pieces that are
 * contiguous in host memory are merged) read and written as one linear buffer.
 *
 * The views alias guest RAM: the guest can change the bytes at any time. Read each field once.
 */
export class SgBuffer {
  /** The pieces, in order. */
  readonly segments: readonly Uint8Array[];
  /** Total bytes. */
  readonly length: number;
  readonly #starts: number[];

  /** Joins `segments` (host views, in order) into one buffer. */
  constructor(segments: readonly Uint8Array[]) {
    const merged: Uint8Array[] = [];
    for (const s of segments) {
      if (s.length === 0) continue;
      const last = merged[merged.length - 1];
      if (last && last.buffer === s.buffer && last.byteOffset + last.length === s.byteOffset) {
        merged[merged.length - 1] = new Uint8Array(
          last.buffer,
          last.byteOffset,
          last.length + s.length,
        );
      } else {
        merged.push(s);
      }
    }
    this.segments = merged;
    this.#starts = [];
    let n = 0;
    for (const s of merged) {
      this.#starts.push(n);
      n += s.length;
    }
    this.length = n;
  }

  /**
   * Builds the view of `ranges` over `memory`; throws `GpadlError("not-guest-ram")` when a page
   * is not RAM.
   */
  static fromRanges(memory: GuestMemory, ranges: readonly GpaRange[]): SgBuffer {
    const segs: Uint8Array[] = [];
    for (const r of ranges) {
      let left = r.byteCount;
      for (let i = 0; i < r.pfns.length && left > 0; i++) {
        const start = i === 0 ? r.byteOffset : 0;
        const len = Math.min(PAGE_SIZE - start, left);
        const view = memory.trySlice(r.pfns[i]! * PAGE_SIZE + start, len);
        if (!view) {
          throw new GpadlError(
            "not-guest-ram",
            `page 0x${(r.pfns[i]! * PAGE_SIZE).toString(16)} is not guest RAM`,
          );
        }
        segs.push(view);
        left -= len;
      }
    }
    return new SgBuffer(segs);
  }

  #find(offset: number): number {
    // Binary search for the segment containing `offset`.
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  #check(offset: number, length: number): void {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
      offset + length > this.length
    ) {
      throw new RangeError(`range ${offset}+${length} is outside the ${this.length}-byte buffer`);
    }
  }

  /** A zero-copy view of `[offset, offset+length)` when it lies in one piece, else `undefined`. */
  view(offset: number, length: number): Uint8Array | undefined {
    this.#check(offset, length);
    if (length === 0) return new Uint8Array(0);
    const i = this.#find(offset);
    const s = this.segments[i]!;
    const o = offset - this.#starts[i]!;
    return o + length <= s.length ? s.subarray(o, o + length) : undefined;
  }

  /** Copies `dst.length` bytes starting at `offset` into `dst`. Throws `RangeError` if outside. */
  read(offset: number, dst: Uint8Array): void {
    this.#check(offset, dst.length);
    let done = 0;
    let i = this.#find(offset);
    let o = offset - (this.#starts[i] ?? 0);
    while (done < dst.length) {
      const s = this.segments[i]!;
      const n = Math.min(s.length - o, dst.length - done);
      dst.set(s.subarray(o, o + n), done);
      done += n;
      i++;
      o = 0;
    }
  }

  /** Copies `src` into the buffer at `offset`. Throws `RangeError` if outside. */
  write(offset: number, src: Uint8Array): void {
    this.#check(offset, src.length);
    let done = 0;
    let i = this.#find(offset);
    let o = offset - (this.#starts[i] ?? 0);
    while (done < src.length) {
      const s = this.segments[i]!;
      const n = Math.min(s.length - o, src.length - done);
      s.set(src.subarray(done, done + n), o);
      done += n;
      i++;
      o = 0;
    }
  }
}

/** Life cycle of a GPADL. */
export type GpadlState = "building" | "ready" | "tearing-down";

/** One GPADL: its handle, owning channel, range description and users. */
export class Gpadl {
  /** Guest-chosen handle. */
  readonly id: number;
  /** Relid of the channel it was created on. */
  readonly relid: number;
  /** Number of ranges declared in GPADL_HEADER. */
  readonly rangeCount: number;
  /** Range data bytes declared in GPADL_HEADER (`range_buflen`). */
  readonly rangeBufLen: number;
  /** Current state. */
  state: GpadlState = "building";
  /** Validated ranges (once `ready`). */
  ranges: readonly GpaRange[] = [];
  /** Sum of the ranges' byte counts (once `ready`). */
  byteLength = 0;
  /** How many users hold the GPADL (an open ring, device acquisitions); teardown waits for 0. */
  users = 0;
  #data: Uint8Array;
  #filled = 0;
  #sg: SgBuffer | undefined;

  /** Starts a GPADL as declared by GPADL_HEADER (use `GpadlTable.begin`). */
  constructor(id: number, relid: number, rangeCount: number, rangeBufLen: number) {
    this.id = id;
    this.relid = relid;
    this.rangeCount = rangeCount;
    this.rangeBufLen = rangeBufLen;
    this.#data = new Uint8Array(rangeBufLen);
  }

  /** Range data still expected, in bytes. */
  get missing(): number {
    return this.rangeBufLen - this.#filled;
  }

  /**
   * Appends range data from a header or body message. Extra bytes beyond `range_buflen` are
   * ignored. Returns true when the description is complete (then call `finish`).
   */
  append(chunk: Uint8Array): boolean {
    if (this.state !== "building") {
      throw new GpadlError("already-complete", `GPADL ${this.id} is complete`);
    }
    const n = Math.min(chunk.length, this.missing);
    this.#data.set(chunk.subarray(0, n), this.#filled);
    this.#filled += n;
    return this.#filled === this.rangeBufLen;
  }

  /** Parses and checks the complete description against guest RAM; throws `GpadlError`. */
  finish(memory: GuestMemory): void {
    const { ranges } = parseGpaRanges(this.#data, this.rangeCount, this.#filled);
    checkRangesInMemory(memory, ranges);
    this.ranges = ranges;
    this.byteLength = ranges.reduce((n, r) => n + r.byteCount, 0);
    this.state = "ready";
    this.#data = new Uint8Array(0);
  }

  /**
   * Host views of each 4 KiB page when the GPADL is one page-aligned range of whole pages (the
   * shape ring buffers need), else `undefined`.
   */
  pageViews(memory: GuestMemory): Uint8Array[] | undefined {
    if (this.state === "building" || this.ranges.length !== 1) return undefined;
    const r = this.ranges[0]!;
    if (r.byteOffset !== 0 || r.byteCount % PAGE_SIZE !== 0) return undefined;
    const pages: Uint8Array[] = [];
    for (const pfn of r.pfns) {
      const v = memory.trySlice(pfn * PAGE_SIZE, PAGE_SIZE);
      if (!v) return undefined;
      pages.push(v);
    }
    return pages;
  }

  /** A scatter/gather view of the whole GPADL (ready GPADLs only; built once, then cached). */
  buffer(memory: GuestMemory): SgBuffer {
    return this.#sg ??= SgBuffer.fromRanges(memory, this.ranges);
  }
}

/** Range data bytes a single GPADL may declare (`range_buflen` is a u16). */
export const MAX_RANGE_BUF_LEN = 0xffff;

/** GPADLs by handle. Handles are unique across channels (GPADL_BODY carries no relid). */
export class GpadlTable {
  readonly #byId = new Map<number, Gpadl>();
  readonly #limit: number;

  /** `limit` caps the number of GPADLs a guest can hold (hostile-guest memory bound). */
  constructor(limit = 1024) {
    this.#limit = limit;
  }

  /** Number of GPADLs in any state. */
  get size(): number {
    return this.#byId.size;
  }

  /** Looks a GPADL up by handle. */
  get(id: number): Gpadl | undefined {
    return this.#byId.get(id);
  }

  /** All GPADLs. */
  values(): IterableIterator<Gpadl> {
    return this.#byId.values();
  }

  /** Starts a GPADL from a GPADL_HEADER; throws `GpadlError` for a duplicate handle or overflow. */
  begin(id: number, relid: number, rangeCount: number, rangeBufLen: number): Gpadl {
    if (this.#byId.has(id)) {
      throw new GpadlError("duplicate-handle", `GPADL handle ${id} is in use`);
    }
    if (this.#byId.size >= this.#limit) {
      throw new GpadlError("too-many-gpadls", `the guest already holds ${this.#limit} GPADLs`);
    }
    if (rangeCount === 0) throw new GpadlError("empty-range-list", `GPADL ${id} has no ranges`);
    if (rangeBufLen < 16 || rangeBufLen % 8 !== 0 || rangeBufLen > MAX_RANGE_BUF_LEN) {
      throw new GpadlError(
        "bad-range-length",
        `GPADL ${id} range_buflen ${rangeBufLen} is invalid`,
      );
    }
    const g = new Gpadl(id, relid, rangeCount, rangeBufLen);
    this.#byId.set(id, g);
    return g;
  }

  /** Removes a GPADL. */
  delete(id: number): void {
    this.#byId.delete(id);
  }

  /** Removes every GPADL of channel `relid`. */
  deleteForChannel(relid: number): void {
    for (const [id, g] of this.#byId) if (g.relid === relid) this.#byId.delete(id);
  }

  /** Removes everything. */
  clear(): void {
    this.#byId.clear();
  }
}
