/**
 * The i440FX/PIIX board's own PCI functions (QEMU `hw/pci-host/i440fx.c`, `hw/isa/piix.c`,
 * `hw/acpi/piix4.c`; the ids OVMF keys its platform code on):
 *
 * - 00:00.0 i440FX host bridge 8086:1237, subsystem 1af4:1100; PAM/SMRAM bytes are plain
 *   scratch (no SMM, no shadowing: RAM below 1 MiB is always RAM).
 * - 00:01.0 PIIX3 PCI-to-ISA bridge 8086:7000, multi-function; PIRQA-D route registers
 *   0x60-0x63 (bit 7 = disabled, bits 3:0 = ISA IRQ), reset 0x80 as on real hardware.
 * - 00:01.3 PIIX4 power management 8086:7113: PMBA (0x40, bits 15:6) and PMREGMISC (0x80,
 *   bit 0) decide where the 64-byte PM I/O block sits: PM1 event/control at +0/+4 and the
 *   ACPI PM timer at +8.
 *
 * INTx: device D's pin P reaches PIRQ (D + P - 1) mod 4 (the PIIX swizzle, QEMU's
 * `pci_slot_get_pirq`), and PIRQ n is wired to IOAPIC GSI `PIRQ_GSI_BASE + n`, which the DSDT's
 * `_PRT` tells the OS. Several functions on one PIRQ share the line: it is high while any of them
 * asserts ({@linkcode PirqLines}).
 * @module
 */
import type { BusDevice } from "../bus.ts";
import type { IrqLine } from "../irq.ts";
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";
import type { PciFunction, PciFunctionSpec } from "./function.ts";

/** Host bridge at 00:00.0. */
export const I440FX_DEVFN = 0x00;
/** PIIX3 ISA bridge at 00:01.0. */
export const PIIX3_DEVFN = 0x08;
/** PIIX4 power management at 00:01.3. */
export const PIIX4_PM_DEVFN = 0x0b;

/** i440FX PMC vendor/device. */
export const I440FX_ID = { vendor: 0x8086, device: 0x1237 } as const;
/** PIIX3 ISA bridge vendor/device. */
export const PIIX3_ID = { vendor: 0x8086, device: 0x7000 } as const;
/** PIIX4 ACPI/PM vendor/device. */
export const PIIX4_PM_ID = { vendor: 0x8086, device: 0x7113 } as const;

/** PIIX3 PIRQA..D route control registers. */
export const PIIX3_PIRQ_ROUTE = 0x60;
/** PIRQ route bit: routing to the ISA IRQ disabled. */
export const PIRQ_DISABLED = 0x80;
/** IOAPIC GSI of PIRQA (PIRQB..D follow). */
export const PIRQ_GSI_BASE = 16;

/** PIIX4 PM: PM I/O base address register (dword, bits 15:6, bit 0 reads 1). */
export const PIIX4_PMBA = 0x40;
/** PIIX4 PM: misc register; bit 0 enables the PM I/O block. */
export const PIIX4_PMREGMISC = 0x80;
/** Size of the PM I/O block. */
export const PM_IO_SIZE = 64;
/** PM timer offset inside the PM I/O block. */
export const PM_TMR_OFFSET = 8;
/** ACPI PM timer frequency (Hz). */
export const PM_TIMER_HZ = 3_579_545;

/** The host bridge: class 0600, revision 2, Red Hat/QEMU subsystem as SeaBIOS expects. */
export const I440FX_SPEC: PciFunctionSpec = {
  ...I440FX_ID,
  classCode: 0x060000,
  revision: 0x02,
  subsystemVendor: 0x1af4,
  subsystem: 0x1100,
  // PMCCFG, PAM0-6 and SMRAM: accepted and read back, no effect.
  writable: Object.fromEntries(
    [0x50, 0x51, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f, 0x72].map((r) => [r, 0xff]),
  ),
  initial: { 0x72: 0x02 },
};

/** The ISA bridge, with the PIRQ route registers at their reset value (disabled). */
export const PIIX3_SPEC: PciFunctionSpec = {
  ...PIIX3_ID,
  classCode: 0x060100,
  multiFunction: true,
  writable: { 0x60: 0x8f, 0x61: 0x8f, 0x62: 0x8f, 0x63: 0x8f },
  initial: { 0x60: PIRQ_DISABLED, 0x61: PIRQ_DISABLED, 0x62: PIRQ_DISABLED, 0x63: PIRQ_DISABLED },
};

/**
 * The PM function with its PM block at `pmBase` (enabled at reset when `enabled`: with direct
 * kernel boot the VMM is the firmware that would have programmed it).
 */
export function piix4PmSpec(pmBase: number, enabled: boolean): PciFunctionSpec {
  return {
    ...PIIX4_PM_ID,
    classCode: 0x068000,
    revision: 0x03,
    interruptPin: 1,
    writable: { [PIIX4_PMBA]: 0xc0, [PIIX4_PMBA + 1]: 0xff, [PIIX4_PMREGMISC]: 0x01 },
    initial: {
      [PIIX4_PMBA]: (pmBase & 0xc0) | 1,
      [PIIX4_PMBA + 1]: (pmBase >> 8) & 0xff,
      [PIIX4_PMREGMISC]: enabled ? 1 : 0,
    },
  };
}

/** Where the PM block of `fn` (a PIIX4 PM function) should be mapped now, or undefined. */
export function pmBlockBase(fn: PciFunction): number | undefined {
  if (!(fn.byte(PIIX4_PMREGMISC) & 1)) return undefined;
  const base = fn.dword(PIIX4_PMBA) & 0xffc0;
  return base === 0 ? undefined : base;
}

/** PIRQ a function's interrupt pin reaches (pin 1..4 = INTA..INTD), or -1 for none. */
export function pirqOf(devfn: number, pin: number): number {
  if (pin < 1 || pin > 4) return -1;
  return ((devfn >> 3) + pin - 1) & 3;
}

/**
 * The four PIRQ lines, shared by every function on them: a line is high while any source
 * asserts it. State: a lock word and one bitmask of asserting sources per PIRQ.
 */
export class PirqLines {
  readonly #w: Int32Array;
  readonly #lines: readonly IrqLine[];

  /** Shared state: lock + 4 masks. */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(5 * 4);
  }

  /** `lines[n]` drives PIRQ n's GSI. */
  constructor(state: SharedArrayBuffer, lines: readonly IrqLine[]) {
    this.#w = new Int32Array(state);
    this.#lines = lines;
  }

  /** The line source `source` (0..31, unique per function) drives on PIRQ `pirq`. */
  line(pirq: number, source: number): IrqLine {
    return { set: (level) => this.#set(pirq, source, level) };
  }

  #set(pirq: number, source: number, level: boolean): void {
    const w = this.#w;
    lockAcquire(w, 0);
    try {
      const before = w[1 + pirq]!;
      const after = level ? before | (1 << source) : before & ~(1 << source);
      w[1 + pirq] = after;
      if ((before === 0) !== (after === 0)) this.#lines[pirq]?.set(after !== 0);
    } finally {
      lockRelease(w, 0);
    }
  }
}

/**
 * The ACPI PM timer: a 24-bit counter at 3.579545 MHz (the FADT leaves TMR_VAL_EXT clear), read
 * from a monotonic clock so every vCPU sees the same, never-decreasing count.
 */
export class PmTimer implements BusDevice {
  readonly #nowNs: () => bigint;

  /** `nowNs`: a monotonic clock in ns (CLOCK_MONOTONIC), the same on every thread. */
  constructor(nowNs: () => bigint) {
    this.#nowNs = nowNs;
  }

  /** The counter now. */
  value(): number {
    return Number((this.#nowNs() * BigInt(PM_TIMER_HZ) / 1_000_000_000n) & 0xff_ffffn);
  }

  read(offset: number, data: Uint8Array): void {
    const v = this.value();
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      data[i] = at < 4 ? (v >>> (8 * at)) & 0xff : 0;
    }
  }

  write(): void {
    // Read-only.
  }
}

/** The PIIX4 PM I/O block: PM1 registers at +0..5, the PM timer at +8..11, the rest reads 0. */
export class PmIoBlock implements BusDevice {
  readonly #pm1: BusDevice;
  readonly #timer: BusDevice;

  constructor(pm1: BusDevice, timer: BusDevice) {
    this.#pm1 = pm1;
    this.#timer = timer;
  }

  read(offset: number, data: Uint8Array): void {
    if (offset + data.length <= 6) this.#pm1.read(offset, data);
    else if (offset >= PM_TMR_OFFSET && offset + data.length <= PM_TMR_OFFSET + 4) {
      this.#timer.read(offset - PM_TMR_OFFSET, data);
    } else data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset + data.length <= 6) this.#pm1.write(offset, data);
  }
}
