/**
 * One PCI function's type-0 configuration space over shared state (QEMU `hw/pci/pci.c` for the
 * register semantics): IDs and class read-only, a per-byte write mask and write-1-to-clear mask,
 * BAR sizing (write all-ones, read back the size mask) and relocation, command-register decode
 * enables, a capability list (MSI, MSI-X), INTx with the interrupt-status bit.
 *
 * Every thread builds its own `PciFunction` over the same state; config accesses take the
 * function's lock, so a read-modify-write from two vCPUs never interleaves. A BAR is mapped in
 * the {@linkcode DeviceRegistry} exactly while its decode bit is on and its address is usable;
 * an address the registry refuses (overlap, beyond the space) leaves it unmapped, as QEMU leaves
 * a BAR at an invalid address.
 * @module
 */
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";
import { getLogger, rateLimited } from "../../util/log.ts";
import type { IrqLine, MsiSink } from "../irq.ts";
import { type DeviceRegistry, RegistryConflictError } from "../registry.ts";
import { type MsixSpec, MsixTable } from "./msix.ts";

/** Config-space register offsets (type-0 header). */
export const PCI_REG = {
  VENDOR: 0x00,
  DEVICE: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS: 0x09,
  CACHE_LINE: 0x0c,
  LATENCY: 0x0d,
  HEADER_TYPE: 0x0e,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR: 0x2c,
  SUBSYSTEM: 0x2e,
  ROM: 0x30,
  CAP_PTR: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

/** Command register bits. */
export const PCI_COMMAND = { IO: 1, MEMORY: 2, MASTER: 4, INTX_DISABLE: 0x400 } as const;
/** Status register bits. */
export const PCI_STATUS = { INTERRUPT: 0x08, CAP_LIST: 0x10 } as const;
/** Capability ids. */
export const PCI_CAP = { MSI: 0x05, MSIX: 0x11 } as const;

/** Config space size of a conventional function. */
export const PCI_CONFIG_SIZE = 256;

/** A BAR: I/O, 32-bit or 64-bit memory (a 64-bit BAR takes two slots). */
export interface BarSpec {
  readonly kind: "io" | "mem32" | "mem64";
  /** Size in bytes; rounded up to a power of two (at least 4 for I/O, 16 for memory). */
  readonly size: number;
  readonly prefetchable?: boolean;
  /**
   * Registry range handle the BAR moves: its device answers the accesses, or, for a BAR backed
   * by a memory slot (a framebuffer), a `"kernel"` device that only claims the range while
   * `PciFunctionWiring.onBarMove` moves the slot.
   */
  readonly handle: number;
}

/** What a function is: IDs, class, BARs, interrupt pin and capabilities. */
export interface PciFunctionSpec {
  readonly vendor: number;
  readonly device: number;
  /** Class code, subclass and prog-if as one 24-bit value (0x030000 = VGA). */
  readonly classCode: number;
  readonly revision?: number;
  readonly subsystemVendor?: number;
  readonly subsystem?: number;
  /** Header type bit 7: more functions follow at this device number. */
  readonly multiFunction?: boolean;
  /** BAR slots 0-5 in order; a mem64 BAR also uses the next slot (leave it undefined). */
  readonly bars?: readonly (BarSpec | undefined)[];
  /** INTA#..INTD# as 1..4, 0 for none. */
  readonly interruptPin?: number;
  /** An MSI capability with this many vectors (1, 2, 4, ... 32). */
  readonly msiVectors?: number;
  /** An MSI-X capability whose table and PBA sit in one of the memory BARs. */
  readonly msix?: MsixSpec;
  /** Extra device-specific registers: byte offset → guest-writable bit mask. */
  readonly writable?: Readonly<Record<number, number>>;
  /** Reset values of device-specific registers (byte offset → value). */
  readonly initial?: Readonly<Record<number, number>>;
}

/** Per-thread wiring of a {@linkcode PciFunction}. */
export interface PciFunctionWiring {
  readonly registry: DeviceRegistry;
  /** The INTx line this function's pin reaches (after the board's PIRQ swizzle). */
  readonly intx?: IrqLine | undefined;
  /** Where MSI writes go (KVM_SIGNAL_MSI). */
  readonly msi?: MsiSink | undefined;
  /** Called after BAR `bar` was mapped at `base` or unmapped (undefined); lock held. */
  readonly onBarMove?: ((bar: number, base: number | undefined) => void) | undefined;
  /** Called after every config write (lock held), for device-specific registers. */
  readonly onConfigWrite?: ((fn: PciFunction, reg: number, length: number) => void) | undefined;
}

// Shared layout: [0, 256) config, [256, 512) write mask, [512, 768) W1C mask, then Int32 words.
const MASK = 256;
const W1C = 512;
const WORDS = 768;
const W_LOCK = 0;
const W_INTX = 1; // INTx level asserted by the device
const W_BAR_MAPPED = 2; // 6 words: mapped base lo, -1 when unmapped
const W_BAR_MAPPED_HI = 8; // 6 words: mapped base hi
const WORD_COUNT = 14;

const MSI_CAP = 0x50;
const MSIX_CAP = 0x60;
/** Where the MSI-X state starts in the function's shared state. */
const MSIX_STATE = WORDS + WORD_COUNT * 4;
const MSI_ADDR_WINDOW = 0xfee0_0000;

const log = getLogger("machine", "pci");

function barSize(b: BarSpec): number {
  const min = b.kind === "io" ? 4 : 16;
  let s = min;
  while (s < b.size) s *= 2;
  return s;
}

/** A function's configuration space and interrupt state, one object per thread. */
export class PciFunction {
  readonly spec: PciFunctionSpec;
  readonly #cfg: Uint8Array;
  readonly #view: DataView;
  readonly #mask: Uint8Array;
  readonly #w1c: Uint8Array;
  readonly #w: Int32Array;
  readonly #wiring: PciFunctionWiring;
  readonly #limit = rateLimited();

  /** Creates the shared state: the header at reset, masks from the spec. */
  static createState(spec: PciFunctionSpec): SharedArrayBuffer {
    const msixBytes = spec.msix ? MsixTable.stateBytes(spec.msix) : 0;
    const sab = new SharedArrayBuffer(MSIX_STATE + msixBytes);
    const cfg = new DataView(sab, 0, PCI_CONFIG_SIZE);
    const mask = new Uint8Array(sab, MASK, PCI_CONFIG_SIZE);
    const w1c = new Uint8Array(sab, W1C, PCI_CONFIG_SIZE);
    cfg.setUint16(PCI_REG.VENDOR, spec.vendor, true);
    cfg.setUint16(PCI_REG.DEVICE, spec.device, true);
    cfg.setUint8(PCI_REG.REVISION, spec.revision ?? 0);
    cfg.setUint8(PCI_REG.CLASS, spec.classCode & 0xff);
    cfg.setUint16(PCI_REG.CLASS + 1, (spec.classCode >>> 8) & 0xffff, true);
    cfg.setUint8(PCI_REG.HEADER_TYPE, spec.multiFunction ? 0x80 : 0);
    cfg.setUint16(PCI_REG.SUBSYSTEM_VENDOR, spec.subsystemVendor ?? 0, true);
    cfg.setUint16(PCI_REG.SUBSYSTEM, spec.subsystem ?? 0, true);
    cfg.setUint8(PCI_REG.INTERRUPT_PIN, spec.interruptPin ?? 0);
    // Command: I/O, memory, bus master, INTx disable. Status: interrupt status is read-only,
    // the error bits are W1C (nothing sets them here).
    mask[PCI_REG.COMMAND] = 0x07;
    mask[PCI_REG.COMMAND + 1] = 0x04;
    w1c[PCI_REG.STATUS + 1] = 0xf9;
    mask[PCI_REG.CACHE_LINE] = 0xff;
    mask[PCI_REG.LATENCY] = 0xff;
    mask[PCI_REG.INTERRUPT_LINE] = 0xff;
    const bars = spec.bars ?? [];
    for (let i = 0; i < 6; i++) {
      const b = bars[i];
      if (!b) continue;
      if (b.kind === "mem64" && i === 5) {
        throw new RangeError("A 64-bit BAR cannot start in slot 5; it needs two slots.");
      }
      const size = barSize(b);
      const reg = PCI_REG.BAR0 + i * 4;
      const type = b.kind === "io" ? 1 : (b.kind === "mem64" ? 4 : 0) | (b.prefetchable ? 8 : 0);
      cfg.setUint32(reg, type, true);
      const low = b.kind === "io"
        ? (~(size - 1) & 0xffff) >>> 0
        : size >= 0x1_0000_0000
        ? 0
        : (~(size - 1)) >>> 0;
      for (let k = 0; k < 4; k++) mask[reg + k] = (low >>> (8 * k)) & 0xff;
      mask[reg] = mask[reg]! & (b.kind === "io" ? 0xfc : 0xf0);
      if (b.kind === "mem64") {
        const high = size >= 0x1_0000_0000
          ? (~(Math.floor(size / 0x1_0000_0000) - 1)) >>> 0
          : 0xffff_ffff;
        for (let k = 0; k < 4; k++) mask[reg + 4 + k] = (high >>> (8 * k)) & 0xff;
        i++;
      }
    }
    if (spec.msiVectors) {
      const mmc = Math.max(0, Math.min(5, Math.ceil(Math.log2(spec.msiVectors))));
      cfg.setUint8(PCI_REG.CAP_PTR, MSI_CAP);
      cfg.setUint16(PCI_REG.STATUS, PCI_STATUS.CAP_LIST, true);
      cfg.setUint8(MSI_CAP, PCI_CAP.MSI);
      cfg.setUint8(MSI_CAP + 1, 0);
      cfg.setUint16(MSI_CAP + 2, (mmc << 1) | 0x80, true); // 64-bit capable
      mask[MSI_CAP + 2] = 0x71; // enable, multiple message enable
      for (let k = 0; k < 4; k++) mask[MSI_CAP + 4 + k] = k === 0 ? 0xfc : 0xff;
      for (let k = 0; k < 4; k++) mask[MSI_CAP + 8 + k] = 0xff;
      mask[MSI_CAP + 12] = 0xff;
      mask[MSI_CAP + 13] = 0xff;
    }
    if (spec.msix) {
      const m = spec.msix;
      const bar = bars[m.bar];
      if (!bar || bar.kind === "io" || m.tableOffset & 7 || m.pbaOffset & 7) {
        throw new RangeError("MSI-X table and PBA need a memory BAR and 8-aligned offsets.");
      }
      // Chain after MSI when there is one.
      if (spec.msiVectors) cfg.setUint8(MSI_CAP + 1, MSIX_CAP);
      else cfg.setUint8(PCI_REG.CAP_PTR, MSIX_CAP);
      cfg.setUint16(PCI_REG.STATUS, PCI_STATUS.CAP_LIST, true);
      cfg.setUint8(MSIX_CAP, PCI_CAP.MSIX);
      cfg.setUint16(MSIX_CAP + 2, m.vectors - 1, true);
      mask[MSIX_CAP + 3] = 0xc0; // enable, function mask
      cfg.setUint32(MSIX_CAP + 4, m.tableOffset | m.bar, true);
      cfg.setUint32(MSIX_CAP + 8, m.pbaOffset | m.bar, true);
      MsixTable.initState(sab, MSIX_STATE, m);
    }
    for (const [reg, bits] of Object.entries(spec.writable ?? {})) {
      const r = Number(reg);
      if (r >= 0x40 && r < PCI_CONFIG_SIZE) mask[r] = bits & 0xff;
    }
    for (const [reg, value] of Object.entries(spec.initial ?? {})) {
      const r = Number(reg);
      if (r >= 0x40 && r < PCI_CONFIG_SIZE) cfg.setUint8(r, value & 0xff);
    }
    const words = new Int32Array(sab, WORDS, WORD_COUNT);
    words.fill(-1, W_BAR_MAPPED, W_BAR_MAPPED + 6);
    return sab;
  }

  /** This thread's view of the function in `state`. */
  constructor(state: SharedArrayBuffer, spec: PciFunctionSpec, wiring: PciFunctionWiring) {
    this.spec = spec;
    this.#cfg = new Uint8Array(state, 0, PCI_CONFIG_SIZE);
    this.#view = new DataView(state, 0, PCI_CONFIG_SIZE);
    this.#mask = new Uint8Array(state, MASK, PCI_CONFIG_SIZE);
    this.#w1c = new Uint8Array(state, W1C, PCI_CONFIG_SIZE);
    this.#w = new Int32Array(state, WORDS, WORD_COUNT);
    this.#wiring = wiring;
    this.msix = spec.msix ? new MsixTable(state, spec.msix, wiring.msi, MSIX_STATE) : undefined;
  }

  /** The MSI-X table and PBA (the device's BAR handler routes their offsets here). */
  readonly msix: MsixTable | undefined;

  /** Guest read of `data.length` bytes at config offset `reg` (within one dword). */
  configRead(reg: number, data: Uint8Array): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        const r = reg + i;
        data[i] = r < PCI_CONFIG_SIZE ? this.#cfg[r]! : 0xff;
      }
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
  }

  /** Guest write of `data` at config offset `reg`: masked bytes, then side effects. */
  configWrite(reg: number, data: Uint8Array): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        const r = reg + i;
        if (r >= PCI_CONFIG_SIZE) break;
        const v = data[i]!;
        const m = this.#mask[r]!;
        this.#cfg[r] = ((this.#cfg[r]! & ~m) | (v & m)) & ~(v & this.#w1c[r]!);
      }
      const end = reg + data.length;
      if (reg < 0x28 && end > PCI_REG.COMMAND) this.#updateBars();
      if (reg <= PCI_REG.COMMAND + 1 && end > PCI_REG.COMMAND + 1) this.#updateIntx();
      if (this.msix && reg < MSIX_CAP + 4 && end > MSIX_CAP + 2) {
        this.msix.setControl(this.#view.getUint16(MSIX_CAP + 2, true));
      }
      this.#wiring.onConfigWrite?.(this, reg, data.length);
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
  }

  /** A config byte (for device-specific registers; lock not taken). */
  byte(reg: number): number {
    return this.#cfg[reg]!;
  }

  /** A config dword (lock not taken). */
  dword(reg: number): number {
    return this.#view.getUint32(reg, true);
  }

  /** The command register. */
  get command(): number {
    return this.#view.getUint16(PCI_REG.COMMAND, true);
  }

  /** Where BAR `i` is mapped now, or undefined. */
  barBase(i: number): number | undefined {
    const lo = Atomics.load(this.#w, W_BAR_MAPPED + i);
    if (lo === -1) return undefined;
    return (lo >>> 0) + (Atomics.load(this.#w, W_BAR_MAPPED_HI + i) >>> 0) * 0x1_0000_0000;
  }

  /** Size of BAR `i` after rounding, or 0 when there is none. */
  barSize(i: number): number {
    const b = this.spec.bars?.[i];
    return b ? barSize(b) : 0;
  }

  /** The device drives its INTx pin (level). Reaches the line unless INTx is disabled. */
  setIntx(level: boolean): void {
    lockAcquire(this.#w, W_LOCK);
    try {
      Atomics.store(this.#w, W_INTX, level ? 1 : 0);
      const st = this.#cfg[PCI_REG.STATUS]!;
      this.#cfg[PCI_REG.STATUS] = level ? st | PCI_STATUS.INTERRUPT : st & ~PCI_STATUS.INTERRUPT;
      this.#updateIntx();
    } finally {
      lockRelease(this.#w, W_LOCK);
    }
  }

  /** MSI enabled by the guest. */
  get msiEnabled(): boolean {
    return this.spec.msiVectors !== undefined && (this.#cfg[MSI_CAP + 2]! & 1) === 1;
  }

  /**
   * Signals message `vector` through MSI-X or MSI, whichever the guest enabled (bus mastering
   * on; a masked MSI-X vector stays pending); returns false when both are off (the caller falls
   * back to INTx). An address outside the APIC window is
   * a write to nowhere: dropped, logged.
   */
  signalMsi(vector = 0): boolean {
    if (this.msix?.enabled) {
      if (!(this.command & PCI_COMMAND.MASTER)) return true; // no bus master: message lost
      return this.msix.signal(vector);
    }
    if (!this.msiEnabled) return false;
    if (!(this.command & PCI_COMMAND.MASTER)) return true; // no bus master: message lost
    const ctl = this.#view.getUint16(MSI_CAP + 2, true);
    const mme = (ctl >> 4) & 7;
    const lo = this.#view.getUint32(MSI_CAP + 4, true);
    const hi = this.#view.getUint32(MSI_CAP + 8, true);
    const data = this.#view.getUint16(MSI_CAP + 12, true);
    const allowed = (1 << mme) - 1;
    const value = (data & ~allowed) | (vector & allowed);
    if (hi !== 0 || (lo & 0xfff0_0000) >>> 0 !== MSI_ADDR_WINDOW) {
      this.#limit((n) =>
        log.warning("MSI to {addr} outside the APIC window dropped ({n} suppressed)", {
          addr: `0x${hi.toString(16)}_${lo.toString(16)}`,
          n,
        })
      );
      return true;
    }
    this.#wiring.msi?.signalMsi(lo, value);
    return true;
  }

  #updateIntx(): void {
    const asserted = Atomics.load(this.#w, W_INTX) === 1 &&
      (this.command & PCI_COMMAND.INTX_DISABLE) === 0;
    this.#wiring.intx?.set(asserted);
  }

  /** Maps each BAR where its register and the decode bits say; lock held. */
  #updateBars(): void {
    const bars = this.spec.bars ?? [];
    const cmd = this.command;
    for (let i = 0; i < 6; i++) {
      const b = bars[i];
      if (!b) continue;
      const size = barSize(b);
      const reg = PCI_REG.BAR0 + i * 4;
      let base: number | undefined;
      if (b.kind === "io") {
        base = cmd & PCI_COMMAND.IO ? this.dword(reg) & 0xfffc : undefined;
        // As QEMU: the last block of a space is never decoded (a sized BAR reads all-ones).
        if (base !== undefined && (base === 0 || base + size >= 0x1_0000)) base = undefined;
      } else {
        base = cmd & PCI_COMMAND.MEMORY ? (this.dword(reg) & 0xffff_fff0) >>> 0 : undefined;
        if (base !== undefined && b.kind === "mem64") {
          base += this.dword(reg + 4) * 0x1_0000_0000;
        }
        // Sizing leaves all-ones masks in the BAR: not a usable address.
        const limit = b.kind === "mem64" ? 2 ** 52 : 0x1_0000_0000;
        if (base !== undefined && (base === 0 || base + size >= limit)) base = undefined;
      }
      this.#place(i, b, base);
      if (b.kind === "mem64") i++;
    }
  }

  #place(i: number, b: BarSpec, base: number | undefined): void {
    const was = this.barBase(i);
    if (was === base) return;
    let placed = base;
    try {
      this.#wiring.registry.move(b.handle, base);
    } catch (e) {
      if (!(e instanceof RegistryConflictError)) throw e;
      this.#limit((n) =>
        log.warning("BAR{i} of {id} left unmapped: {why} ({n} suppressed)", {
          i,
          id: `${this.spec.vendor.toString(16)}:${this.spec.device.toString(16)}`,
          why: e.message,
          n,
        })
      );
      this.#wiring.registry.move(b.handle, undefined);
      placed = undefined;
    }
    if (placed === undefined) {
      Atomics.store(this.#w, W_BAR_MAPPED + i, -1);
    } else {
      Atomics.store(this.#w, W_BAR_MAPPED_HI + i, Math.floor(placed / 0x1_0000_0000));
      Atomics.store(this.#w, W_BAR_MAPPED + i, placed % 0x1_0000_0000 | 0);
    }
    if (placed !== was) this.#wiring.onBarMove?.(i, placed);
  }
}
