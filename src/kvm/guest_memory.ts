/**
 * Guest physical memory as seen by the VMM: a set of RAM regions, each a byte view over the
 * host mapping that KVM also maps into the guest. Every thread builds its own `GuestMemory`
 * over the same host addresses; unit tests build one over plain ArrayBuffers.
 *
 * All accessors bounds-check: a range that is not entirely inside one region is refused
 * (`GuestMemoryError` from the throwing forms, `undefined` from `trySlice`). Guest-supplied
 * addresses are hostile; callers turn the refusal into the protocol's error.
 * @module
 */
import { GuestMemoryError } from "../util/errors.ts";

/** One contiguous range of guest RAM and the host bytes behind it. */
export interface GuestRegion {
  /** Guest physical address of the first byte. */
  readonly gpa: number;
  /** Host view of the region; its length is the region size. */
  readonly bytes: Uint8Array;
}

/** A RAM region as `GuestMemory` stores it: its bytes, a DataView over them, its end GPA. */
export interface GuestRegionView extends GuestRegion {
  /** Guest physical address one past the last byte. */
  readonly end: number;
  /** DataView over `bytes`. */
  readonly view: DataView;
}

/** Page size of the x86 guest, in bytes. */
export const PAGE_SIZE = 4096;

/** Guest RAM: bounds-checked, zero-copy access by guest physical address. */
export class GuestMemory {
  readonly #regions: GuestRegionView[];

  constructor(regions: readonly GuestRegion[]) {
    this.#regions = [...regions]
      .sort((a, b) => a.gpa - b.gpa)
      .map((r) => ({
        gpa: r.gpa,
        end: r.gpa + r.bytes.length,
        bytes: r.bytes,
        view: new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength),
      }));
    for (let i = 1; i < this.#regions.length; i++) {
      if (this.#regions[i]!.gpa < this.#regions[i - 1]!.end) {
        throw new Error("guest memory regions overlap");
      }
    }
  }

  /** The regions, in address order. */
  get regions(): readonly GuestRegion[] {
    return this.#regions;
  }

  /** Total bytes of guest RAM. */
  get size(): number {
    return this.#regions.reduce((n, r) => n + r.bytes.length, 0);
  }

  #find(gpa: number, length: number) {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(length) || gpa < 0 || length < 0) {
      return undefined;
    }
    for (const r of this.#regions) {
      if (gpa >= r.gpa && gpa + length <= r.end) return r;
    }
    return undefined;
  }

  /** True when `[gpa, gpa+length)` is entirely guest RAM in one region. */
  contains(gpa: number, length: number): boolean {
    return this.#find(gpa, length) !== undefined;
  }

  /**
   * The region holding all of `[gpa, gpa+length)`, or `undefined` when that is not RAM. It is
   * the stored record, not a copy: hot paths (the hypercall exit) read it in place at
   * `gpa - region.gpa` without allocating a view per access.
   */
  regionOf(gpa: number, length: number): GuestRegionView | undefined {
    return this.#find(gpa, length);
  }

  /** A zero-copy view of `[gpa, gpa+length)`, or `undefined` when it is not RAM. */
  trySlice(gpa: number, length: number): Uint8Array | undefined {
    const r = this.#find(gpa, length);
    return r ? r.bytes.subarray(gpa - r.gpa, gpa - r.gpa + length) : undefined;
  }

  /** A zero-copy view of `[gpa, gpa+length)`; throws `GuestMemoryError` when it is not RAM. */
  slice(gpa: number, length: number): Uint8Array {
    const s = this.trySlice(gpa, length);
    if (!s) throw new GuestMemoryError(gpa, length);
    return s;
  }

  /** Copies guest bytes at `gpa` into `dst`. */
  read(gpa: number, dst: Uint8Array): void {
    dst.set(this.slice(gpa, dst.length));
  }

  /** Copies `src` into guest memory at `gpa`. */
  write(gpa: number, src: Uint8Array): void {
    this.slice(gpa, src.length).set(src);
  }

  #dv(gpa: number, length: number): [DataView, number] {
    const r = this.#find(gpa, length);
    if (!r) throw new GuestMemoryError(gpa, length);
    return [r.view, gpa - r.gpa];
  }

  /** Little-endian loads and stores; each throws `GuestMemoryError` outside RAM. */
  readU8(gpa: number): number {
    const [v, o] = this.#dv(gpa, 1);
    return v.getUint8(o);
  }
  readU16(gpa: number): number {
    const [v, o] = this.#dv(gpa, 2);
    return v.getUint16(o, true);
  }
  readU32(gpa: number): number {
    const [v, o] = this.#dv(gpa, 4);
    return v.getUint32(o, true);
  }
  readU64(gpa: number): bigint {
    const [v, o] = this.#dv(gpa, 8);
    return v.getBigUint64(o, true);
  }
  writeU8(gpa: number, value: number): void {
    const [v, o] = this.#dv(gpa, 1);
    v.setUint8(o, value);
  }
  writeU16(gpa: number, value: number): void {
    const [v, o] = this.#dv(gpa, 2);
    v.setUint16(o, value, true);
  }
  writeU32(gpa: number, value: number): void {
    const [v, o] = this.#dv(gpa, 4);
    v.setUint32(o, value, true);
  }
  writeU64(gpa: number, value: bigint): void {
    const [v, o] = this.#dv(gpa, 8);
    v.setBigUint64(o, BigInt.asUintN(64, value), true);
  }
}
