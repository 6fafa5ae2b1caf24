/**
 * MSI-X (PCI Local Bus 3.0 §6.8.2): the capability's layout and the vector table with its
 * pending-bit array, over shared state. The table and PBA sit in one of the function's memory
 * BARs; the device's BAR handler hands accesses in their ranges to {@linkcode MsixTable.read} /
 * {@linkcode MsixTable.write} (dword or qword accesses; anything else reads 0 and is dropped, as
 * the spec allows). A vector the guest masked (per entry or the whole function) sets its pending
 * bit instead of firing; unmasking fires it then.
 * @module
 */
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";
import type { MsiSink } from "../irq.ts";

/** Where the table and PBA are, as the capability says. */
export interface MsixSpec {
  /** Vectors (1..2048). */
  readonly vectors: number;
  /** BAR index (0-5) holding both structures. */
  readonly bar: number;
  /** Byte offset of the table in the BAR (8-aligned). */
  readonly tableOffset: number;
  /** Byte offset of the pending-bit array in the BAR (8-aligned). */
  readonly pbaOffset: number;
}

/** Bytes per table entry. */
export const MSIX_ENTRY_SIZE = 16;
/** Message control: MSI-X enable. */
export const MSIX_ENABLE = 0x8000;
/** Message control: function mask. */
export const MSIX_FUNCTION_MASK = 0x4000;
/** Vector control: entry masked. */
const ENTRY_MASKED = 1;

const W_LOCK = 0;
const W_CONTROL = 1; // message control as the guest last wrote it (enable, function mask)
const HEADER_WORDS = 2;

const MSI_WINDOW = 0xfee0_0000;

/** The vector table and PBA of one function, one object per thread. */
export class MsixTable {
  readonly spec: MsixSpec;
  readonly #w: Int32Array;
  readonly #table: Int32Array; // 4 words per entry
  readonly #pba: Int32Array; // 1 bit per vector
  readonly #sink: MsiSink | undefined;

  /** Bytes of shared state for `spec` (a multiple of 8). */
  static stateBytes(spec: MsixSpec): number {
    if (!(spec.vectors >= 1 && spec.vectors <= 2048)) {
      throw new RangeError(`MSI-X needs 1..2048 vectors, not ${spec.vectors}`);
    }
    const words = HEADER_WORDS + spec.vectors * 4 + Math.ceil(spec.vectors / 32);
    return Math.ceil(words / 2) * 8;
  }

  /** Puts the state at `byteOffset` of `sab` in its reset state: every entry masked. */
  static initState(sab: SharedArrayBuffer, byteOffset: number, spec: MsixSpec): void {
    const table = new Int32Array(sab, byteOffset + HEADER_WORDS * 4, spec.vectors * 4);
    for (let v = 0; v < spec.vectors; v++) table[v * 4 + 3] = ENTRY_MASKED;
  }

  /** Shared state of its own: every entry masked, nothing pending (the reset state). */
  static createState(spec: MsixSpec): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(MsixTable.stateBytes(spec));
    MsixTable.initState(sab, 0, spec);
    return sab;
  }

  /** This thread's view of the state at `byteOffset` of `state`; messages go to `sink`. */
  constructor(
    state: SharedArrayBuffer,
    spec: MsixSpec,
    sink: MsiSink | undefined,
    byteOffset = 0,
  ) {
    this.spec = spec;
    this.#w = new Int32Array(state, byteOffset, HEADER_WORDS);
    this.#table = new Int32Array(state, byteOffset + HEADER_WORDS * 4, spec.vectors * 4);
    this.#pba = new Int32Array(
      state,
      byteOffset + (HEADER_WORDS + spec.vectors * 4) * 4,
      Math.ceil(spec.vectors / 32),
    );
    this.#sink = sink;
  }

  /** Bytes of the table in the BAR. */
  get tableSize(): number {
    return this.spec.vectors * MSIX_ENTRY_SIZE;
  }

  /** Bytes of the PBA in the BAR (whole qwords). */
  get pbaSize(): number {
    return Math.ceil(this.spec.vectors / 64) * 8;
  }

  /** MSI-X enabled by the guest. */
  get enabled(): boolean {
    return (Atomics.load(this.#w, W_CONTROL) & MSIX_ENABLE) !== 0;
  }

  /** The capability's message control was written (config space): enable and function mask. */
  setControl(control: number): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      this.#w[W_CONTROL] = control & (MSIX_ENABLE | MSIX_FUNCTION_MASK);
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
    this.#firePending();
  }

  /** Whether `offset` (into the BAR) falls in the table or PBA. */
  claims(offset: number): boolean {
    const s = this.spec;
    return (offset >= s.tableOffset && offset < s.tableOffset + this.tableSize) ||
      (offset >= s.pbaOffset && offset < s.pbaOffset + this.pbaSize);
  }

  /** Guest read at `offset` into the BAR (table or PBA). */
  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if ((data.length !== 4 && data.length !== 8) || offset & 3) return;
    for (let i = 0; i < data.length; i += 4) {
      const v = this.#readDword(offset + i);
      data[i] = v;
      data[i + 1] = v >>> 8;
      data[i + 2] = v >>> 16;
      data[i + 3] = v >>> 24;
    }
  }

  /** Guest write at `offset` into the BAR (table entries; the PBA is read-only). */
  write(offset: number, data: Uint8Array): void {
    if ((data.length !== 4 && data.length !== 8) || offset & 3) return;
    const s = this.spec;
    let unmasked = false;
    lockAcquire(this.#w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i += 4) {
        const at = offset + i - s.tableOffset;
        if (at < 0 || at >= this.tableSize) continue;
        const word = at >> 2;
        const v = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
        if ((word & 3) === 3) {
          const was = this.#table[word]!;
          this.#table[word] = v & ENTRY_MASKED;
          if (was & ENTRY_MASKED && !(v & ENTRY_MASKED)) unmasked = true;
        } else {
          this.#table[word] = v;
        }
      }
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
    if (unmasked) this.#firePending();
  }

  /**
   * The device raises `vector`: delivered when enabled and unmasked (and its address is in the
   * APIC window), else left pending. Returns false when MSI-X is off.
   */
  signal(vector: number): boolean {
    if (!this.enabled) return false;
    if (vector < 0 || vector >= this.spec.vectors) return true;
    let message: [number, number] | undefined;
    lockAcquire(this.#w, W_LOCK);
    try {
      if (this.#masked(vector)) {
        Atomics.or(this.#pba, vector >> 5, 1 << (vector & 31));
      } else message = this.#message(vector);
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
    if (message) this.#deliver(message);
    return true;
  }

  #readDword(offset: number): number {
    const s = this.spec;
    if (offset >= s.tableOffset && offset < s.tableOffset + this.tableSize) {
      return this.#table[(offset - s.tableOffset) >> 2]!;
    }
    const at = offset - s.pbaOffset;
    if (at >= 0 && at < this.pbaSize) {
      const word = at >> 2;
      return word < this.#pba.length ? Atomics.load(this.#pba, word) : 0;
    }
    return 0;
  }

  #masked(vector: number): boolean {
    return (this.#w[W_CONTROL]! & MSIX_FUNCTION_MASK) !== 0 ||
      (this.#table[vector * 4 + 3]! & ENTRY_MASKED) !== 0;
  }

  #message(vector: number): [number, number] | undefined {
    const lo = this.#table[vector * 4]! >>> 0;
    const hi = this.#table[vector * 4 + 1]! >>> 0;
    if (hi !== 0 || (lo & 0xfff0_0000) >>> 0 !== MSI_WINDOW) return undefined; // nowhere
    return [lo, this.#table[vector * 4 + 2]! >>> 0];
  }

  #deliver([address, data]: [number, number]): void {
    this.#sink?.signalMsi(address, data);
  }

  /** Fires every pending vector that is no longer masked (after an unmask or enable). */
  #firePending(): void {
    if (!this.enabled) return;
    const fire: [number, number][] = [];
    lockAcquire(this.#w, W_LOCK);
    try {
      for (let word = 0; word < this.#pba.length; word++) {
        let bits = this.#pba[word]!;
        while (bits) {
          const bit = 31 - Math.clz32(bits);
          bits &= ~(1 << bit);
          const vector = word * 32 + bit;
          if (this.#masked(vector)) continue;
          Atomics.and(this.#pba, word, ~(1 << bit));
          const m = this.#message(vector);
          if (m) fire.push(m);
        }
      }
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
    for (const m of fire) this.#deliver(m);
  }
}
