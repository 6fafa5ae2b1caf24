/**
 * The fw_cfg device: items the firmware reads by key (signature, features, CPU count, the file
 * directory and named files), through the port interface (select at offset 0, one byte per read
 * at offset 1) or DMA (a big-endian descriptor address written to offsets 4 and 8; the low half
 * starts the transfer).
 *
 * The items are fixed at build time ({@linkcode FwCfgBuilder}); the only mutable state is the
 * selected key, the offset into it and the high half of the DMA address, kept in a
 * SharedArrayBuffer under one lock, so every vCPU thread can answer the ports over the same
 * state ({@linkcode FwCfgDevice} built per thread from {@linkcode FwCfgState}).
 *
 * Guest input is hostile: a descriptor outside RAM is ignored (there is nowhere to report), a
 * transfer whose buffer is not wholly guest RAM, a write to an item, or an unknown key sets the
 * descriptor's error bit, as QEMU does. Nothing throws.
 * @module
 */
import type { BusDevice } from "../bus.ts";
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";
import {
  FW_CFG_DMA_ACCESS,
  FW_CFG_DMA_CTL_ERROR,
  FW_CFG_DMA_CTL_READ,
  FW_CFG_DMA_CTL_SELECT,
  FW_CFG_DMA_CTL_SKIP,
  FW_CFG_DMA_CTL_WRITE,
  FW_CFG_DMA_SIGNATURE,
  FW_CFG_FILE,
  FW_CFG_FILE_DIR,
  FW_CFG_FILE_FIRST,
  FW_CFG_FILE_SLOTS,
  FW_CFG_ID,
  FW_CFG_MAX_FILE_PATH,
  FW_CFG_OFFSET_DATA,
  FW_CFG_OFFSET_DMA_HIGH,
  FW_CFG_OFFSET_DMA_LOW,
  FW_CFG_OFFSET_SELECTOR,
  FW_CFG_SIGNATURE,
  FW_CFG_SIGNATURE_BYTES,
  FW_CFG_VERSION,
  FW_CFG_VERSION_DMA,
  FW_CFG_WRITE_CHANNEL,
} from "./fw_cfg_protocol.ts";

/** One item: its key and its bytes (and its file name, for named files). */
export interface FwCfgItem {
  readonly key: number;
  readonly data: Uint8Array;
  readonly name?: string;
}

/** Everything a thread needs to answer fw_cfg accesses (structured-cloneable). */
export interface FwCfgState {
  /** Selector, offset, DMA address high half, lock, error counter. */
  readonly sab: SharedArrayBuffer;
  /** Every item, signature and file directory included. */
  readonly items: readonly FwCfgItem[];
}

/** What DMA may touch: guest RAM (`GuestMemory` satisfies it). */
export interface DmaMemory {
  /** A view of `[gpa, gpa+length)` when it is wholly RAM, else undefined. */
  trySlice(gpa: number, length: number): Uint8Array | undefined;
}

/** Collects items and files, then seals them with the signature, ID and file directory. */
export class FwCfgBuilder {
  readonly #items = new Map<number, FwCfgItem>();
  readonly #files: { name: string; key: number; size: number }[] = [];

  /** Adds (or replaces) the item `key`. */
  addItem(key: number, data: Uint8Array): this {
    if (!Number.isInteger(key) || key < 0 || key > 0xffff || key === FW_CFG_FILE_DIR) {
      throw new RangeError(`fw_cfg key 0x${key.toString(16)} is not usable`);
    }
    if (key >= FW_CFG_FILE_FIRST && key < FW_CFG_FILE_FIRST + FW_CFG_FILE_SLOTS) {
      throw new RangeError(`fw_cfg key 0x${key.toString(16)} is reserved for named files`);
    }
    this.#items.set(key, { key, data });
    return this;
  }

  /** Adds a named file; returns its key. Names are unique, at most 55 bytes. */
  addFile(name: string, data: Uint8Array): number {
    const bytes = new TextEncoder().encode(name);
    if (bytes.length === 0 || bytes.length >= FW_CFG_MAX_FILE_PATH) {
      throw new RangeError(`fw_cfg file name '${name}' must be 1-55 bytes`);
    }
    if (this.#files.some((f) => f.name === name)) {
      throw new RangeError(`fw_cfg file '${name}' is already there`);
    }
    if (this.#files.length >= FW_CFG_FILE_SLOTS) {
      throw new RangeError(`fw_cfg holds ${FW_CFG_FILE_SLOTS} files at most`);
    }
    const key = FW_CFG_FILE_FIRST + this.#files.length;
    this.#files.push({ name, key, size: data.length });
    this.#items.set(key, { key, data, name });
    return key;
  }

  /** The items with the signature, the ID (port + DMA) and the directory, sorted by name. */
  build(): FwCfgState {
    const id = new Uint8Array(4);
    new DataView(id.buffer).setUint32(0, FW_CFG_VERSION | FW_CFG_VERSION_DMA, true);
    const files = [...this.#files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const dir = new Uint8Array(4 + files.length * FW_CFG_FILE.size);
    new DataView(dir.buffer).setUint32(0, files.length, false);
    files.forEach((f, i) =>
      FW_CFG_FILE.encode(
        { size: f.size, select: f.key, name: new TextEncoder().encode(f.name) },
        dir,
        4 + i * FW_CFG_FILE.size,
      )
    );
    const items = new Map(this.#items);
    items.set(FW_CFG_SIGNATURE, { key: FW_CFG_SIGNATURE, data: FW_CFG_SIGNATURE_BYTES.slice() });
    items.set(FW_CFG_ID, { key: FW_CFG_ID, data: id });
    items.set(FW_CFG_FILE_DIR, { key: FW_CFG_FILE_DIR, data: dir });
    return {
      sab: new SharedArrayBuffer(W_WORDS * 4),
      items: [...items.values()].sort((a, b) => a.key - b.key),
    };
  }
}

// Shared words.
const W_LOCK = 0;
const W_KEY = 1; // selected key, or -1 for none
const W_OFFSET = 2; // offset into the selected item
const W_DMA_HIGH = 3; // high half of the DMA address, as written
const W_DMA_ERRORS = 4; // transfers answered with the error bit
const W_WORDS = 8;
const NO_ITEM = -1;

/** A thread's fw_cfg device over the shared state. */
export class FwCfgDevice implements BusDevice {
  readonly #w: Int32Array;
  readonly #items = new Map<number, Uint8Array>();
  readonly #memory: DmaMemory;

  readonly #names = new Map<number, string>();
  readonly #trace: ((what: string) => void) | undefined;

  /** `trace`, when given, hears each selection and DMA transfer (for debug logs). */
  constructor(state: FwCfgState, memory: DmaMemory, trace?: (what: string) => void) {
    this.#w = new Int32Array(state.sab);
    for (const it of state.items) {
      this.#items.set(it.key, it.data);
      if (it.name) this.#names.set(it.key, it.name);
    }
    this.#memory = memory;
    this.#trace = trace;
  }

  /** Transfers answered with the error bit so far (for tests and status). */
  get dmaErrors(): number {
    return Atomics.load(this.#w, W_DMA_ERRORS);
  }

  /** Port reads: a data byte at offset 1, the DMA signature at 4..11, else all-ones. */
  read(offset: number, data: Uint8Array): void {
    if (offset === FW_CFG_OFFSET_DATA && data.length === 1) {
      lockAcquire(this.#w, W_LOCK);
      try {
        data[0] = this.#readByte();
      } finally {
        lockRelease(this.#w, W_LOCK);
      }
      return;
    }
    for (let i = 0; i < data.length; i++) {
      const at = offset + i - FW_CFG_OFFSET_DMA_HIGH;
      data[i] = at >= 0 && at < FW_CFG_DMA_SIGNATURE.length ? FW_CFG_DMA_SIGNATURE[at]! : 0xff;
    }
  }

  /** Port writes: select (16-bit at 0), DMA high then low half (32-bit at 4 and 8). */
  write(offset: number, data: Uint8Array): void {
    if (offset === FW_CFG_OFFSET_SELECTOR && data.length === 2) {
      lockAcquire(this.#w, W_LOCK);
      this.#select(data[0]! | (data[1]! << 8));
      lockRelease(this.#w, W_LOCK);
      return;
    }
    if (data.length !== 4) return; // data-port writes are ignored, as in QEMU since 2.4
    const be = ((data[0]! << 24) | (data[1]! << 16) | (data[2]! << 8) | data[3]!) >>> 0;
    if (offset === FW_CFG_OFFSET_DMA_HIGH) {
      Atomics.store(this.#w, W_DMA_HIGH, be | 0);
    } else if (offset === FW_CFG_OFFSET_DMA_LOW) {
      const high = Atomics.exchange(this.#w, W_DMA_HIGH, 0) >>> 0;
      lockAcquire(this.#w, W_LOCK);
      try {
        this.#dma(high * 0x1_0000_0000 + be);
      } finally {
        lockRelease(this.#w, W_LOCK);
      }
    }
  }

  #select(key: number): void {
    const k = key & ~FW_CFG_WRITE_CHANNEL;
    this.#w[W_KEY] = this.#items.has(k) ? k : NO_ITEM;
    this.#w[W_OFFSET] = 0;
    this.#trace?.(`select 0x${k.toString(16)} ${this.#names.get(k) ?? ""}`);
  }

  #readByte(): number {
    const item = this.#items.get(this.#w[W_KEY]!);
    const at = this.#w[W_OFFSET]!;
    if (!item || at >= item.length) return 0;
    this.#w[W_OFFSET] = at + 1;
    return item[at]!;
  }

  /** Runs the descriptor at `gpa` (an address below 2^64, maybe not RAM). */
  #dma(gpa: number): void {
    const desc = this.#memory.trySlice(gpa, FW_CFG_DMA_ACCESS.size);
    if (!desc) {
      Atomics.add(this.#w, W_DMA_ERRORS, 1);
      return; // no RAM to read the request from or write the status to
    }
    let control = FW_CFG_DMA_ACCESS.get(desc, 0, "control");
    let length = FW_CFG_DMA_ACCESS.get(desc, 0, "length");
    const address = FW_CFG_DMA_ACCESS.get(desc, 0, "address");
    if (control & FW_CFG_DMA_CTL_SELECT) this.#select(control >>> 16);
    const op = control & FW_CFG_DMA_CTL_READ
      ? "read"
      : control & FW_CFG_DMA_CTL_WRITE
      ? "write"
      : control & FW_CFG_DMA_CTL_SKIP
      ? "skip"
      : "none";
    if (op === "none") length = 0;
    let error = false;
    if (length > 0) {
      const item = this.#items.get(this.#w[W_KEY]!);
      const at = this.#w[W_OFFSET]!;
      const avail = item ? Math.max(0, item.length - at) : 0;
      const n = Math.min(avail, length);
      if (op === "write") {
        error = true; // no item is writable
      } else if (op === "read") {
        const dst = address <= BigInt(Number.MAX_SAFE_INTEGER)
          ? this.#memory.trySlice(Number(address), length)
          : undefined;
        if (!dst) error = true;
        else {
          if (n > 0) dst.set(item!.subarray(at, at + n));
          dst.fill(0, n); // past the item's end, reads are zeros
        }
      }
      if (!error) this.#w[W_OFFSET] = at + n;
    }
    if (error) {
      this.#trace?.(`dma ${op} of ${length} bytes at 0x${address.toString(16)} refused`);
    }
    control = error ? FW_CFG_DMA_CTL_ERROR : 0;
    if (error) Atomics.add(this.#w, W_DMA_ERRORS, 1);
    FW_CFG_DMA_ACCESS.set(desc, 0, "control", control);
  }
}
