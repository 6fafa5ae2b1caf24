/**
 * PCI configuration mechanism #1 (ports 0xCF8-0xCFF) with a lone host bridge at 00:00.0, so a
 * guest that scans PCI finds a sane, empty bus: offset 0 is CONFIG_ADDRESS (dword accesses only),
 * offsets 4-7 are CONFIG_DATA (byte, word or dword, at any byte lane). Every other
 * bus/device/function reads all-ones, the PCI "nothing here" answer.
 *
 * The host bridge is an Intel 82G33 MCH (0x8086:0x29C0, what QEMU's q35 shows): header type 0,
 * class 0x060000, no BARs, no capabilities. Its config space lives in shared memory; writes
 * reach only the registers a driver may legitimately program (command, cache line size,
 * latency timer, interrupt line) and are dropped elsewhere.
 *
 * Non-dword accesses at offsets 0-3 are not CONFIG_ADDRESS: a byte at offset 1 (port 0xCF9) goes
 * to the `resetControl` device when one is given, the rest float to 0xFF and drop (this is also
 * what keeps Linux's mechanism #2 probe, byte writes to 0xCF8/0xCFA, from matching).
 * @module
 */
import type { BusDevice } from "../bus.ts";

/** Offset of CONFIG_ADDRESS (port 0xCF8). */
export const PCI_CONFIG_ADDRESS = 0;
/** Offset of CONFIG_DATA (port 0xCFC). */
export const PCI_CONFIG_DATA = 4;
/** Length of the decoded window (0xCF8-0xCFF). */
export const PCI_HOST_PORT_COUNT = 8;
/** Host bridge vendor ID (Intel). */
export const HOST_BRIDGE_VENDOR_ID = 0x8086;
/** Host bridge device ID (82G33/P35 MCH). */
export const HOST_BRIDGE_DEVICE_ID = 0x29c0;
/** Host bridge class code: bridge / host bridge / prog-if 0. */
export const HOST_BRIDGE_CLASS = 0x060000;

/** CONFIG_ADDRESS enable bit. */
export const CONFIG_ENABLE = 0x8000_0000;
const CONFIG_RESERVED = 0x7f00_0000; // must be 0 (AMD's extended-register bits included)
const CONFIG_SIZE = 256;

const S_ADDRESS = 0;
const CONFIG_OFFSET = 4;

/** Bits the guest may change in the host bridge's config space, per byte. */
const WRITE_MASK = new Uint8Array(CONFIG_SIZE);
WRITE_MASK[0x04] = 0x07; // command: I/O, memory, bus master enable
WRITE_MASK[0x05] = 0x04; // command: INTx disable
WRITE_MASK[0x0c] = 0xff; // cache line size
WRITE_MASK[0x0d] = 0xff; // latency timer
WRITE_MASK[0x3c] = 0xff; // interrupt line (scratch for software)

/** Per-thread wiring of a {@linkcode PciHost}. */
export interface PciHostOptions {
  /** Receives byte accesses to port 0xCF9 (offset 1), at its offset 0: the reset register. */
  resetControl?: BusDevice;
}

/** The PCI configuration window over shared state; a {@linkcode BusDevice} of 8 ports. */
export class PciHost implements BusDevice {
  readonly #s: Int32Array;
  readonly #config: Uint8Array;
  readonly #resetControl: BusDevice | undefined;

  /** Creates the shared state: address latch 0 and the host bridge's config space. */
  static createState(): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(CONFIG_OFFSET + CONFIG_SIZE);
    const cfg = new DataView(sab, CONFIG_OFFSET, CONFIG_SIZE);
    cfg.setUint16(0x00, HOST_BRIDGE_VENDOR_ID, true);
    cfg.setUint16(0x02, HOST_BRIDGE_DEVICE_ID, true);
    cfg.setUint16(0x04, 0x0006, true); // memory decode + bus master, as firmware leaves it
    cfg.setUint32(0x08, HOST_BRIDGE_CLASS << 8, true); // revision 0
    cfg.setUint8(0x0e, 0x00); // header type 0, single function
    return sab;
  }

  /** Builds this thread's view of the window in `state`. */
  constructor(state: SharedArrayBuffer, options: PciHostOptions = {}) {
    this.#s = new Int32Array(state, 0, 1);
    this.#config = new Uint8Array(state, CONFIG_OFFSET, CONFIG_SIZE);
    this.#resetControl = options.resetControl;
  }

  /** Guest read of CONFIG_ADDRESS (dword) or CONFIG_DATA (any lane). */
  read(offset: number, data: Uint8Array): void {
    if (offset < PCI_CONFIG_DATA) {
      if (offset === PCI_CONFIG_ADDRESS && data.length === 4) {
        const a = this.#s[S_ADDRESS]!;
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
    const address = this.#s[S_ADDRESS]! >>> 0;
    for (let i = 0; i < data.length; i++) {
      const lane = offset - PCI_CONFIG_DATA + i;
      const reg = this.#hostBridgeReg(address, lane);
      data[i] = reg < 0 ? 0xff : this.#config[reg]!;
    }
  }

  /** Guest write of CONFIG_ADDRESS (dword) or CONFIG_DATA (any lane). */
  write(offset: number, data: Uint8Array): void {
    if (offset < PCI_CONFIG_DATA) {
      if (offset === PCI_CONFIG_ADDRESS && data.length === 4) {
        // Bits 1:0 are reserved and read back 0.
        this.#s[S_ADDRESS] = (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) &
          ~0x3;
      } else if (offset === 1 && data.length === 1 && this.#resetControl) {
        this.#resetControl.write(0, data);
      }
      return;
    }
    const address = this.#s[S_ADDRESS]! >>> 0;
    for (let i = 0; i < data.length; i++) {
      const lane = offset - PCI_CONFIG_DATA + i;
      const reg = this.#hostBridgeReg(address, lane);
      if (reg < 0) continue; // absent function: writes vanish
      const mask = WRITE_MASK[reg]!;
      this.#config[reg] = (this.#config[reg]! & ~mask) | (data[i]! & mask);
    }
  }

  /** Config-space byte addressed by `address` + data lane, or -1 when not the host bridge. */
  #hostBridgeReg(address: number, lane: number): number {
    if (lane >= 4 || !(address & CONFIG_ENABLE) || address & CONFIG_RESERVED) return -1;
    if ((address >>> 8) & 0xffff) return -1; // bus 0, device 0, function 0 only
    return (address & 0xfc) + lane;
  }
}
