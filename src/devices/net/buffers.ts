/**
 * Host-address views of guest buffers for the network data path. Frames move between the tap,
 * the device's scratch buffers and guest memory with `memcpy`/`read`/`write` on plain numbers
 * (host addresses), so the hot path makes no typed-array view and no pointer object per packet.
 *
 * Addresses come from views that stay mapped while they are used: guest RAM (mapped for the
 * whole boot) and scratch buffers the device keeps referenced.
 * @module
 */
import { hostCalls } from "../../../ffi/libc.ts";
import type { GuestMemory } from "../../kvm/guest_memory.ts";
import { PAGE_SIZE } from "../../kvm/guest_memory.ts";

/** Host address of the first byte of `view` (the caller keeps `view` alive). */
export function hostAddress(view: Uint8Array): number {
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(view as Uint8Array<ArrayBuffer>)));
}

/** Copies `length` bytes from host address `src` to `dst`. */
export function copyHost(dst: number, src: number, length: number): void {
  if (length > 0) hostCalls.memcpy(dst, src, length);
}

/**
 * A guest buffer described by a GPADL (pages need not be contiguous), addressed by offset, with
 * bounds-checked copies to and from host addresses.
 */
export class HostBuffer {
  /** Bytes in the buffer. */
  readonly length: number;
  readonly #starts: Float64Array;
  readonly #addrs: Float64Array;
  readonly #lens: Float64Array;

  /** The buffer over `segments` (host views in order, e.g. `SgBuffer.segments`). */
  constructor(segments: readonly Uint8Array[]) {
    const n = segments.length;
    this.#starts = new Float64Array(n);
    this.#addrs = new Float64Array(n);
    this.#lens = new Float64Array(n);
    let at = 0;
    for (let i = 0; i < n; i++) {
      const s = segments[i]!;
      this.#starts[i] = at;
      this.#addrs[i] = hostAddress(s);
      this.#lens[i] = s.length;
      at += s.length;
    }
    this.length = at;
  }

  #find(offset: number): number {
    const starts = this.#starts;
    let lo = 0;
    let hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid]! <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** True when `[offset, offset+length)` lies inside the buffer. */
  contains(offset: number, length: number): boolean {
    return offset >= 0 && length >= 0 && offset + length <= this.length;
  }

  /** Copies buffer bytes `[offset, offset+length)` to host address `dst`; false if outside. */
  copyOut(offset: number, dst: number, length: number): boolean {
    return this.#copy(offset, dst, length, false);
  }

  /** Copies `length` bytes from host address `src` into the buffer at `offset`; false if outside. */
  copyIn(offset: number, src: number, length: number): boolean {
    return this.#copy(offset, src, length, true);
  }

  /** Walks the buffer's pieces over `[offset, offset+length)`, copying to or from `host`. */
  #copy(offset: number, host: number, length: number, intoBuffer: boolean): boolean {
    if (!this.contains(offset, length)) return false;
    let i = this.#find(offset);
    let o = offset - this.#starts[i]!;
    let done = 0;
    while (done < length) {
      const n = Math.min(this.#lens[i]! - o, length - done);
      const piece = this.#addrs[i]! + o;
      if (intoBuffer) hostCalls.memcpy(piece, host + done, n);
      else hostCalls.memcpy(host + done, piece, n);
      done += n;
      i++;
      o = 0;
    }
    return true;
  }
}

/**
 * Guest RAM by host address: `copyOut(gpa, dst, length)` for GPA-direct page lists. Region host
 * addresses are looked up once.
 */
export class GuestRam {
  readonly #memory: GuestMemory;
  readonly #bases = new Map<Uint8Array, number>();

  constructor(memory: GuestMemory) {
    this.#memory = memory;
  }

  /** Host address of `[gpa, gpa+length)` when it is RAM within one region, else -1. */
  address(gpa: number, length: number): number {
    const r = this.#memory.regionOf(gpa, length);
    if (!r) return -1;
    let base = this.#bases.get(r.bytes);
    if (base === undefined) this.#bases.set(r.bytes, base = hostAddress(r.bytes));
    return base + (gpa - r.gpa);
  }
}

/** Bytes in a guest page (GPA-direct ranges are split at page boundaries). */
export const GUEST_PAGE = PAGE_SIZE;
