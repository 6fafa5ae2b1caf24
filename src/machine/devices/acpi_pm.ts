/**
 * ACPI fixed-hardware PM1a registers, as one 6-byte block: PM1a_EVT_BLK (PM1_STS, PM1_EN: the
 * FADT's PM1_EVT_LEN = 4) at offset 0 and PM1a_CNT_BLK (PM1_CNT: PM1_CNT_LEN = 2) at offset 4.
 * The FADT points PM1a_EVT_BLK at the base and PM1a_CNT_BLK at base + 4.
 *
 * Writing PM1_CNT with SLP_EN and SLP_TYP = {@linkcode S5_SLP_TYP} powers the machine off; the
 * DSDT's `\_S5` package must carry that value. SLP_TYP {@linkcode PIIX4_S5_SLP_TYP} does too, as
 * on QEMU's PIIX4 (whose DSDT declares `\_S5` as 0): OVMF's shutdown on an i440FX board writes it
 * without reading the DSDT. Other sleep states are not supported (the DSDT declares none) and are
 * ignored. SCI_EN reads 1: there is no SMI_CMD port, the machine is always
 * in ACPI mode. With an `sci` line, {@linkcode AcpiPm.pressPowerButton} raises the fixed
 * power-button event.
 * @module
 */
import type { BusDevice } from "../bus.ts";
import type { IrqLine } from "../irq.ts";
import type { PowerControl } from "../power.ts";
import { getLogger, rateLimited } from "../../util/log.ts";
import { lockAcquire, lockRelease } from "./spin_lock.ts";

/** Offset of PM1_STS (the FADT's PM1a_EVT_BLK). */
export const PM1_STS_OFFSET = 0;
/** Offset of PM1_EN. */
export const PM1_EN_OFFSET = 2;
/** Offset of PM1_CNT (the FADT's PM1a_CNT_BLK). */
export const PM1_CNT_OFFSET = 4;
/** FADT PM1_EVT_LEN. */
export const PM1_EVT_LEN = 4;
/** FADT PM1_CNT_LEN. */
export const PM1_CNT_LEN = 2;
/** Length of the whole block. */
export const ACPI_PM_PORT_COUNT = 6;

/** SLP_TYP value for S5 (soft off): the DSDT's `\_S5` package carries it. */
export const S5_SLP_TYP = 5;
/** SLP_TYP that QEMU's PIIX4 treats as soft off, and OVMF writes to power an i440FX board off. */
export const PIIX4_S5_SLP_TYP = 0;

/** PM1_STS / PM1_EN bit: power button. */
export const PM1_PWRBTN = 1 << 8;
/** PM1_STS bit: wake status. */
export const PM1_WAK_STS = 1 << 15;
/** PM1_CNT bit: SCI enabled (ACPI mode). */
export const PM1_CNT_SCI_EN = 1 << 0;
/** PM1_CNT bit: enter the sleep state in SLP_TYP (write-only). */
export const PM1_CNT_SLP_EN = 1 << 13;
/** PM1_CNT SLP_TYP field shift (bits 12:10). */
export const PM1_CNT_SLP_TYP_SHIFT = 10;

// TMR, BM, GBL, PWRBTN, SLPBTN, RTC, PCIEXP_WAKE, WAK: write-1-to-clear.
const STS_MASK = 0xc731;
// TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN, PCIEXP_WAKE_DIS.
const EN_MASK = 0x4721;
// Status bits that raise the SCI when their enable bit is set.
const SCI_SOURCES = 0x0721;
// BM_RLD and SLP_TYP are kept; GBL_RLS and SLP_EN are write-only strobes.
const CNT_KEEP = 0x1c02;
const SLP_TYP_MASK = 0x7;

const S_LOCK = 0;
const S_STS = 1;
const S_EN = 2;
const S_CNT = 3;
const S_SCI_LEVEL = 4;
const SLOTS = 5;

const log = getLogger("machine", "acpi-pm");

/** Per-thread wiring of an {@linkcode AcpiPm}. */
export interface AcpiPmOptions {
  /** Receives the S5 power-off request. */
  power: PowerControl;
  /** The SCI (the FADT's SCI_INT); needed only for {@linkcode AcpiPm.pressPowerButton}. */
  sci?: IrqLine;
}

/** PM1a event and control registers over shared state; a {@linkcode BusDevice} of 6 ports. */
export class AcpiPm implements BusDevice {
  readonly #s: Int32Array;
  readonly #power: PowerControl;
  readonly #sci: IrqLine | undefined;
  readonly #limit = rateLimited();

  /** Creates the shared state: nothing pending, nothing enabled, ACPI mode. */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer(SLOTS * 4);
  }

  /** Builds this thread's view of the PM1a block in `state`. */
  constructor(state: SharedArrayBuffer, options: AcpiPmOptions) {
    this.#s = new Int32Array(state, 0, SLOTS);
    this.#power = options.power;
    this.#sci = options.sci;
  }

  /** Main thread: the host pressed the power button (fixed event; the guest's OSPM acts). */
  pressPowerButton(): void {
    lockAcquire(this.#s, S_LOCK);
    try {
      this.#s[S_STS] = this.#s[S_STS]! | PM1_PWRBTN;
      this.#updateSci();
    } finally {
      lockRelease(this.#s, S_LOCK);
    }
  }

  /** Guest read of any bytes of the block (16-bit registers, little-endian). */
  read(offset: number, data: Uint8Array): void {
    const s = this.#s;
    lockAcquire(s, S_LOCK);
    try {
      for (let i = 0; i < data.length; i++) {
        const at = offset + i;
        data[i] = at < ACPI_PM_PORT_COUNT
          ? (this.#readReg(at >> 1) >> ((at & 1) * 8)) & 0xff
          : 0xff;
      }
    } finally {
      lockRelease(s, S_LOCK);
    }
  }

  /** Guest write; each 16-bit register covered by the access is updated at once. */
  write(offset: number, data: Uint8Array): void {
    const s = this.#s;
    let sleep = -1;
    lockAcquire(s, S_LOCK);
    try {
      for (let reg = 0; reg < ACPI_PM_PORT_COUNT >> 1; reg++) {
        let value = 0;
        let mask = 0;
        for (let i = 0; i < data.length; i++) {
          const at = offset + i;
          if (at >> 1 !== reg) continue;
          const shift = (at & 1) * 8;
          value |= data[i]! << shift;
          mask |= 0xff << shift;
        }
        if (mask === 0) continue;
        if (reg === 0) {
          s[S_STS] = s[S_STS]! & ~(value & mask & STS_MASK);
        } else if (reg === 1) {
          s[S_EN] = (s[S_EN]! & ~mask) | (value & mask & EN_MASK);
        } else {
          const cnt = (s[S_CNT]! & ~mask) | (value & mask);
          s[S_CNT] = cnt & CNT_KEEP;
          if (cnt & PM1_CNT_SLP_EN) sleep = (cnt >> PM1_CNT_SLP_TYP_SHIFT) & SLP_TYP_MASK;
        }
      }
      this.#updateSci();
    } finally {
      lockRelease(s, S_LOCK);
    }
    if (sleep === S5_SLP_TYP || sleep === PIIX4_S5_SLP_TYP) this.#power.powerOff();
    else if (sleep >= 0) {
      this.#limit((dropped) =>
        log.info("Guest asked for sleep type {type}; only S5 ({s5}) is supported, ignoring", {
          type: sleep,
          s5: S5_SLP_TYP,
          dropped,
        })
      );
    }
  }

  #readReg(reg: number): number {
    const s = this.#s;
    if (reg === 0) return s[S_STS]!;
    if (reg === 1) return s[S_EN]!;
    return s[S_CNT]! | PM1_CNT_SCI_EN;
  }

  /** SCI level: an enabled fixed event is pending. Called with the lock held, in order. */
  #updateSci(): void {
    const s = this.#s;
    const level = s[S_STS]! & s[S_EN]! & SCI_SOURCES ? 1 : 0;
    if (s[S_SCI_LEVEL] === level) return;
    s[S_SCI_LEVEL] = level;
    this.#sci?.set(level === 1);
  }
}
