/**
 * A CFI parallel flash with the Intel command set, as the UEFI variable store (QEMU
 * `pflash_cfi01` semantics, the subset OVMF drives):
 *
 * - **Array mode** (after reset, read array 0xFF, clear status 0x50): reads return the contents.
 *   The machine maps the contents as a read-only memslot then, so reads never exit; writes always
 *   exit as MMIO and reach {@linkcode PflashDevice.write}.
 * - **Command mode** (after any other command): reads return the status register (program,
 *   erase, status, lock), the identifier codes (0x90) or the CFI query table (0x98), so the
 *   memslot must be unmapped and reads exit too. {@linkcode FlashMapping.setArrayMode} tells
 *   the machine when to flip.
 *
 * Commands: program 0x10/0x40 + data (one access of 1-8 bytes), block erase 0x20 + confirm 0xD0
 * (the 4 KiB sector becomes 0xFF), clear status 0x50, read status 0x70, read ID 0x90, CFI query
 * 0x98, lock setup 0x60 + 0x01/0xD0 (accepted, no effect), read array 0xFF/0xF0/0x00. Anything
 * else returns to array mode, as QEMU does. Changed bytes are reported to the
 * {@linkcode FlashStore}, which is flushed each time the device goes back to array mode.
 *
 * State (mode, command, cycle, status) sits in a SharedArrayBuffer under one lock, so any vCPU
 * thread can take the exit. Guest accesses never throw.
 * @module
 */
import type { BusDevice } from "../bus.ts";
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";
import {
  cfiTable,
  CMD_BLOCK_ERASE,
  CMD_CFI_QUERY,
  CMD_CLEAR_STATUS,
  CMD_CONFIRM,
  CMD_LOCK_SET,
  CMD_LOCK_SETUP,
  CMD_PROGRAM,
  CMD_PROGRAM_ALT,
  CMD_READ_ARRAY,
  CMD_READ_ID,
  CMD_READ_STATUS,
  FLASH_DEVICE_ID,
  FLASH_MANUFACTURER_ID,
  FLASH_SECTOR_SIZE,
  STATUS_ERASE_ERROR,
  STATUS_PROGRAM_ERROR,
  STATUS_READY,
} from "./pflash_protocol.ts";

/** Where the flash contents live and how changes reach their file. */
export interface FlashStore {
  /** The contents; also what the read-only memslot maps in array mode. */
  readonly bytes: Uint8Array;
  /** `[offset, offset+length)` of `bytes` was just changed by the guest. */
  changed(offset: number, length: number): void;
  /** Pushes the changes so far towards the file (called on each return to array mode). */
  flush(): void;
}

/** The machine's side of a mode flip: map the contents read-only, or unmap them. */
export interface FlashMapping {
  /** `true`: reads go straight to the contents; `false`: reads exit to the device. */
  setArrayMode(arrayMode: boolean): void;
}

/** Options of a flash device. */
export interface PflashOptions {
  /** Programs and erases fail with the status error bits (default false). */
  readonly readOnly?: boolean;
  /** Mode flips go here (default: nowhere, for tests and a fully trapped flash). */
  readonly mapping?: FlashMapping;
  /** Erase block size (default 4 KiB). */
  readonly sectorSize?: number;
}

// Shared words.
const W_LOCK = 0;
const W_COMMAND = 1; // 0 = read array
const W_CYCLE = 2; // 0 = expecting a command, 1 = expecting data/confirm
const W_STATUS = 3;
const W_ARRAY = 4; // 1 in array mode
const W_PROGRAMS = 5; // counters, for tests and status
const W_ERASES = 6;
const W_WORDS = 8;

/** A new shared state (array mode, status clear). */
export function createPflashState(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(W_WORDS * 4);
  new Int32Array(sab)[W_ARRAY] = 1;
  return sab;
}

/** One thread's view of a flash device. */
export class PflashDevice implements BusDevice {
  readonly #w: Int32Array;
  readonly #store: FlashStore;
  readonly #bytes: Uint8Array;
  readonly #readOnly: boolean;
  readonly #mapping: FlashMapping | undefined;
  readonly #sector: number;
  readonly #cfi: Uint8Array;

  constructor(state: SharedArrayBuffer, store: FlashStore, options: PflashOptions = {}) {
    this.#w = new Int32Array(state);
    this.#store = store;
    this.#bytes = store.bytes;
    this.#readOnly = options.readOnly ?? false;
    this.#mapping = options.mapping;
    this.#sector = options.sectorSize ?? FLASH_SECTOR_SIZE;
    if (this.#bytes.length % this.#sector !== 0 || this.#bytes.length === 0) {
      throw new RangeError(
        `flash size ${this.#bytes.length} is not a whole number of ${this.#sector}-byte sectors`,
      );
    }
    this.#cfi = cfiTable(this.#bytes.length, this.#sector);
  }

  /** True while reads go to the contents. */
  get arrayMode(): boolean {
    return Atomics.load(this.#w, W_ARRAY) === 1;
  }

  /** Program and erase operations carried out so far. */
  get counters(): { programs: number; erases: number } {
    return { programs: Atomics.load(this.#w, W_PROGRAMS), erases: Atomics.load(this.#w, W_ERASES) };
  }

  /** Back to array mode with a clear status (machine reset). */
  reset(): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      this.#w[W_STATUS] = 0;
      this.#toArray();
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
  }

  /** A guest read at `offset` (only exits in command mode, or when the slot is not mapped). */
  read(offset: number, data: Uint8Array): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      const cmd = this.#w[W_COMMAND]!;
      if (cmd === 0) {
        for (let i = 0; i < data.length; i++) data[i] = this.#bytes[offset + i] ?? 0xff;
        return;
      }
      data.fill(0);
      if (cmd === CMD_READ_ID) {
        // Manufacturer at 0, device at 1 (x8 addressing); zero elsewhere.
        const at = offset & 0xff;
        data[0] = at === 0 ? FLASH_MANUFACTURER_ID : at === 1 ? FLASH_DEVICE_ID : 0;
      } else if (cmd === CMD_CFI_QUERY) {
        for (let i = 0; i < data.length; i++) data[i] = this.#cfi[(offset + i) & 0xff] ?? 0;
      } else {
        data[0] = this.#w[W_STATUS]!; // every other command mode reads the status register
      }
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
  }

  /** A guest write at `offset`: a command byte, or the data/confirm of a two-cycle command. */
  write(offset: number, data: Uint8Array): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      this.#write(offset, data);
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
  }

  #write(offset: number, data: Uint8Array): void {
    const w = this.#w;
    const value = data[0]!; // commands are the low byte, as on an x8 device
    if (w[W_CYCLE] === 0) {
      this.#leaveArray();
      switch (value) {
        case CMD_PROGRAM:
        case CMD_PROGRAM_ALT:
        case CMD_BLOCK_ERASE:
        case CMD_LOCK_SETUP:
        case CMD_CFI_QUERY:
          w[W_COMMAND] = value;
          w[W_CYCLE] = 1;
          return;
        case CMD_READ_STATUS:
        case CMD_READ_ID:
          w[W_COMMAND] = value;
          return;
        case CMD_CLEAR_STATUS:
          w[W_STATUS] = 0;
          this.#toArray();
          return;
        default: // read array (0xFF, 0xF0, 0x00) and unknown commands
          this.#toArray();
          return;
      }
    }
    switch (w[W_COMMAND]) {
      case CMD_PROGRAM:
      case CMD_PROGRAM_ALT:
        if (this.#readOnly) w[W_STATUS] = w[W_STATUS]! | STATUS_PROGRAM_ERROR;
        else {
          const n = Math.min(data.length, this.#bytes.length - offset);
          this.#bytes.set(data.subarray(0, n), offset);
          this.#store.changed(offset, n);
          Atomics.add(w, W_PROGRAMS, 1);
        }
        w[W_STATUS] = w[W_STATUS]! | STATUS_READY;
        w[W_CYCLE] = 0; // stays in program mode: reads give the status until 0xFF
        return;
      case CMD_BLOCK_ERASE:
        if (value === CMD_CONFIRM) {
          if (this.#readOnly) w[W_STATUS] = w[W_STATUS]! | STATUS_ERASE_ERROR;
          else {
            const start = offset - (offset % this.#sector);
            this.#bytes.fill(0xff, start, start + this.#sector);
            this.#store.changed(start, this.#sector);
            Atomics.add(w, W_ERASES, 1);
          }
          w[W_STATUS] = w[W_STATUS]! | STATUS_READY;
          w[W_CYCLE] = 0;
        } else this.#toArray(); // 0xFF aborts; anything else is an error, as in QEMU
        return;
      case CMD_LOCK_SETUP:
        if (value === CMD_CONFIRM || value === CMD_LOCK_SET) {
          w[W_STATUS] = w[W_STATUS]! | STATUS_READY;
          w[W_CYCLE] = 0;
        } else this.#toArray();
        return;
      case CMD_CFI_QUERY:
        if (value === CMD_READ_ARRAY) this.#toArray();
        return; // other writes keep the query mode
      default:
        this.#toArray();
    }
  }

  #leaveArray(): void {
    if (this.#w[W_ARRAY] === 1) {
      Atomics.store(this.#w, W_ARRAY, 0);
      this.#mapping?.setArrayMode(false);
    }
  }

  #toArray(): void {
    const w = this.#w;
    w[W_COMMAND] = 0;
    w[W_CYCLE] = 0;
    if (w[W_ARRAY] === 0) {
      this.#store.flush();
      Atomics.store(w, W_ARRAY, 1);
      this.#mapping?.setArrayMode(true);
    }
  }
}
