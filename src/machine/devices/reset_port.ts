/**
 * Reset control register (Intel RST_CNT, port 0xCF9 on a PC). Writing a value with RST_CPU
 * (bit 2) set resets the machine: Linux's `reboot=pci` writes 0x02 then 0x06, and the FADT's
 * RESET_REG usually names this port with RESET_VALUE 0x06. Every such write asks again (no edge
 * detection), so a reset still works after a reboot that left the bit set. Reads return the last
 * value written.
 *
 * On a PC 0xCF9 sits inside the PCI configuration window 0xCF8-0xCFF, which a non-overlapping bus
 * cannot split: {@linkcode PciHost} forwards byte accesses at its offset 1 to a `ResetPort`
 * passed as its `resetControl` option.
 * @module
 */
import type { BusDevice } from "../bus.ts";
import type { PowerControl } from "../power.ts";

/** SYS_RST: hard (1) or soft (0) reset. */
export const RESET_SYS_RST = 0x02;
/** RST_CPU: writing 1 starts the reset. */
export const RESET_RST_CPU = 0x04;
/** FULL_RST: power-cycle (treated like any reset). */
export const RESET_FULL_RST = 0x08;
/** The usual FADT RESET_VALUE for this register. */
export const RESET_VALUE = RESET_SYS_RST | RESET_RST_CPU;

/** Per-thread wiring of a {@linkcode ResetPort}. */
export interface ResetPortOptions {
  /** Receives the reset request (may be called repeatedly: guests retry). */
  power: PowerControl;
}

/** The one-byte reset control register over shared state. */
export class ResetPort implements BusDevice {
  readonly #s: Int32Array;
  readonly #power: PowerControl;

  /** Creates the shared state (register reads 0). */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  /** Builds this thread's view of the register in `state`. */
  constructor(state: SharedArrayBuffer, options: ResetPortOptions) {
    this.#s = new Int32Array(state, 0, 1);
    this.#power = options.power;
  }

  /** Guest read: the last value written at offset 0; other bytes float to 0xFF. */
  read(offset: number, data: Uint8Array): void {
    data.fill(0xff);
    if (offset === 0 && data.length > 0) data[0] = Atomics.load(this.#s, 0);
  }

  /** Guest write at offset 0: stored; RST_CPU set resets the machine. */
  write(offset: number, data: Uint8Array): void {
    const value = data[0];
    if (offset !== 0 || value === undefined) return;
    Atomics.store(this.#s, 0, value);
    if (value & RESET_RST_CPU) this.#power.reset();
  }
}
