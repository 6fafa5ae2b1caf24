/**
 * PCI configuration mechanism #1 (ports 0xCF8-0xCFF): offset 0 is CONFIG_ADDRESS (dword accesses
 * only), offsets 4-7 are CONFIG_DATA (byte, word or dword, at any byte lane). A config cycle goes
 * to the {@linkcode PciFunction} at that bus 0 device/function; every other bus/device/function
 * reads all-ones, the PCI "nothing here" answer, and drops writes. An access at CONFIG_DATA that
 * runs past 0xCFF is cut at the dword end (the rest floats).
 *
 * Non-dword accesses at offsets 0-3 are not CONFIG_ADDRESS: a byte at offset 1 (port 0xCF9) goes
 * to the `resetControl` device when one is given, the rest float to 0xFF and drop (this is also
 * what keeps Linux's mechanism #2 probe, byte writes to 0xCF8/0xCFA, from matching).
 * @module
 */
import type { BusDevice } from "../bus.ts";
import type { PciFunction } from "../pci/function.ts";

/** Offset of CONFIG_ADDRESS (port 0xCF8). */
export const PCI_CONFIG_ADDRESS = 0;
/** Offset of CONFIG_DATA (port 0xCFC). */
export const PCI_CONFIG_DATA = 4;
/** Length of the decoded window (0xCF8-0xCFF). */
export const PCI_HOST_PORT_COUNT = 8;

/** CONFIG_ADDRESS enable bit. */
export const CONFIG_ENABLE = 0x8000_0000;
const CONFIG_RESERVED = 0x7f00_0000; // must be 0 (AMD's extended-register bits included)

const S_ADDRESS = 0;

/** Per-thread wiring of a {@linkcode PciHost}. */
export interface PciHostOptions {
  /** Receives byte accesses to port 0xCF9 (offset 1), at its offset 0: the reset register. */
  resetControl?: BusDevice;
  /** This thread's functions on bus 0, by devfn (device << 3 | function). */
  functions?: ReadonlyMap<number, PciFunction>;
}

/** The PCI configuration window over shared state; a {@linkcode BusDevice} of 8 ports. */
export class PciHost implements BusDevice {
  readonly #s: Int32Array;
  readonly #resetControl: BusDevice | undefined;
  readonly #functions: ReadonlyMap<number, PciFunction>;

  /** Creates the shared state: the address latch. */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(4);
  }

  /** Builds this thread's view of the window in `state`. */
  constructor(state: SharedArrayBuffer, options: PciHostOptions = {}) {
    this.#s = new Int32Array(state, 0, 1);
    this.#resetControl = options.resetControl;
    this.#functions = options.functions ?? new Map();
  }

  /** Guest read of CONFIG_ADDRESS (dword) or CONFIG_DATA (any lane). */
  read(offset: number, data: Uint8Array): void {
    if (offset < PCI_CONFIG_DATA) {
      if (offset === PCI_CONFIG_ADDRESS && data.length === 4) {
        const a = Atomics.load(this.#s, S_ADDRESS);
        data[0] = a;
        data[1] = a >>> 8;
        data[2] = a >>> 16;
        data[3] = a >>> 24;
      } else if (offset === 1 && data.length === 1 && this.#resetControl) {
        this.#resetControl.read(0, data);
      } else {
        data.fill(0xff);
      }
      return;
    }
    data.fill(0xff);
    const lane = offset - PCI_CONFIG_DATA;
    const fn = this.#target();
    if (!fn || lane >= 4) return;
    const n = Math.min(data.length, 4 - lane);
    const reg = (Atomics.load(this.#s, S_ADDRESS) & 0xfc) + lane;
    fn.configRead(reg, data.subarray(0, n));
  }

  /** Guest write of CONFIG_ADDRESS (dword) or CONFIG_DATA (any lane). */
  write(offset: number, data: Uint8Array): void {
    if (offset < PCI_CONFIG_DATA) {
      if (offset === PCI_CONFIG_ADDRESS && data.length === 4) {
        // Bits 1:0 are reserved and read back 0.
        Atomics.store(
          this.#s,
          S_ADDRESS,
          (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) & ~0x3,
        );
      } else if (offset === 1 && data.length === 1 && this.#resetControl) {
        this.#resetControl.write(0, data);
      }
      return;
    }
    const lane = offset - PCI_CONFIG_DATA;
    const fn = this.#target();
    if (!fn || lane >= 4) return;
    const n = Math.min(data.length, 4 - lane);
    const reg = (Atomics.load(this.#s, S_ADDRESS) & 0xfc) + lane;
    fn.configWrite(reg, data.subarray(0, n));
  }

  /** The function CONFIG_ADDRESS selects, or undefined. */
  #target(): PciFunction | undefined {
    const address = Atomics.load(this.#s, S_ADDRESS) >>> 0;
    if (!(address & CONFIG_ENABLE) || address & CONFIG_RESERVED) return undefined;
    if ((address >>> 16) & 0xff) return undefined; // bus 0 only
    return this.#functions.get((address >>> 8) & 0xff);
  }
}
