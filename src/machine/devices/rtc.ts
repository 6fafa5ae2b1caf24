/**
 * MC146818 CMOS RTC and NVRAM (the PC's ports 0x70/0x71): offset 0 selects a CMOS register
 * (bit 7 is the NMI-disable latch), offset 1 reads or writes it.
 *
 * The clock is the host's UTC time plus an offset kept in shared memory, so a test can start the
 * guest clock wrong and a guest `hwclock --systohc` moves only the guest's clock. Time registers
 * are encoded on every read in the format register B asks for (BCD or binary, 12 or 24 hour).
 * While register B's SET bit is held, the clock reads back the latched bytes the guest is
 * writing; clearing SET commits them as the new offset.
 *
 * No interrupts: periodic, alarm and update-ended interrupts (IRQ 8) are not generated and
 * register C always reads 0. Linux keeps time with its own clocksources and reads the RTC only
 * at boot and for `hwclock`; its rtc-cmos driver emulates update interrupts in software.
 * @module
 */
import type { BusDevice } from "../bus.ts";

/** CMOS register indices (time registers hold BCD or binary per register B). */
export const RTC_SECONDS = 0x00;
/** Minutes. */
export const RTC_MINUTES = 0x02;
/** Hours (bit 7 = PM in 12-hour mode). */
export const RTC_HOURS = 0x04;
/** Day of week, 1 = Sunday. */
export const RTC_DAY_OF_WEEK = 0x06;
/** Day of month, 1-31. */
export const RTC_DAY_OF_MONTH = 0x07;
/** Month, 1-12. */
export const RTC_MONTH = 0x08;
/** Year within the century, 0-99. */
export const RTC_YEAR = 0x09;
/** Register A: UIP (bit 7), divider and rate select. */
export const RTC_REG_A = 0x0a;
/** Register B: SET, interrupt enables, DM (binary), 24/12, DSE. */
export const RTC_REG_B = 0x0b;
/** Register C: interrupt flags (always 0 here). */
export const RTC_REG_C = 0x0c;
/** Register D: VRT (bit 7, battery good). */
export const RTC_REG_D = 0x0d;
/** Century (the FADT CENTURY field points here). */
export const RTC_CENTURY = 0x32;

/** Register A bit 7: update in progress. */
export const REG_A_UIP = 0x80;
/** Register B bit 7: halt updates while the guest sets the time. */
export const REG_B_SET = 0x80;
/** Register B bit 2: binary (1) or BCD (0) time registers. */
export const REG_B_DM_BINARY = 0x04;
/** Register B bit 1: 24-hour (1) or 12-hour (0) mode. */
export const REG_B_24H = 0x02;
/** Register D bit 7: valid RAM and time. */
export const REG_D_VRT = 0x80;

const CMOS_SIZE = 128;
const INDEX_MASK = 0x7f;
const NMI_DISABLE = 0x80;
/** UIP is high for the last 2 ms of each second (244 µs lead plus the update cycle). */
const UIP_WINDOW_MS = 2;

// Layout: CMOS bytes, then Int32 slots, then the BigInt64 clock offset (8-aligned).
const I_INDEX = 0;
const I_NMI = 1;
const SLOTS_OFFSET = CMOS_SIZE;
const SLOTS = 2;
const OFFSET_OFFSET = SLOTS_OFFSET + SLOTS * 4;
const STATE_SIZE = OFFSET_OFFSET + 8;

const TIME_REGS = [
  RTC_SECONDS,
  RTC_MINUTES,
  RTC_HOURS,
  RTC_DAY_OF_WEEK,
  RTC_DAY_OF_MONTH,
  RTC_MONTH,
  RTC_YEAR,
  RTC_CENTURY,
] as const;

/** Memory sizes written to the CMOS bytes firmware and old loaders read. */
export interface RtcStateOptions {
  /** Bytes of guest RAM below 4 GiB. */
  ramBelow4G: number;
  /** Bytes of guest RAM above 4 GiB. */
  ramAbove4G: number;
  /** Initial guest clock offset from host UTC, in milliseconds (default 0). */
  timeOffsetMs?: number;
}

/** Per-thread options of an {@linkcode Rtc}. */
export interface RtcOptions {
  /** Host clock in epoch milliseconds (default `Date.now`); tests pass a fixed clock. */
  now?: () => number;
}

/** CMOS RTC/NVRAM over shared state; implements {@linkcode BusDevice} for its 2 ports. */
export class Rtc implements BusDevice {
  readonly #cmos: Uint8Array;
  readonly #slots: Int32Array;
  readonly #offset: BigInt64Array;
  readonly #now: () => number;
  readonly #date = new Int32Array(3); // scratch: year, month, day

  /** Creates the shared state: register defaults and the memory-size bytes. */
  static createState(options: RtcStateOptions): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(STATE_SIZE);
    const cmos = new Uint8Array(sab, 0, CMOS_SIZE);
    cmos[RTC_REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz rate
    cmos[RTC_REG_B] = REG_B_24H; // BCD, 24-hour: what PC firmware leaves
    cmos[RTC_REG_D] = REG_D_VRT;
    const below = Math.max(0, options.ramBelow4G);
    const KiB = 1024;
    const MiB = 1024 * KiB;
    const setWord = (reg: number, value: number) => {
      cmos[reg] = value & 0xff;
      cmos[reg + 1] = (value >>> 8) & 0xff;
    };
    setWord(0x15, Math.min(640, Math.floor(below / KiB))); // base memory, KiB
    const ext = below > MiB ? Math.min(0xffff, Math.floor((below - MiB) / KiB)) : 0;
    setWord(0x17, ext); // extended memory above 1 MiB, KiB (capped at 64 MiB)
    setWord(0x30, ext); // the same, as the POST reports it
    const hi = below > 16 * MiB ? Math.min(0xffff, Math.floor((below - 16 * MiB) / (64 * KiB))) : 0;
    setWord(0x34, hi); // memory between 16 MiB and 4 GiB, 64 KiB units
    const above = Math.min(0xffffff, Math.floor(Math.max(0, options.ramAbove4G) / (64 * KiB)));
    cmos[0x5b] = above & 0xff; // memory above 4 GiB, 64 KiB units, 3 bytes
    cmos[0x5c] = (above >>> 8) & 0xff;
    cmos[0x5d] = (above >>> 16) & 0xff;
    new Rtc(sab).setTimeOffset(options.timeOffsetMs ?? 0);
    return sab;
  }

  /** Builds this thread's view of the RTC in `state` (from {@linkcode Rtc.createState}). */
  constructor(state: SharedArrayBuffer, options: RtcOptions = {}) {
    this.#cmos = new Uint8Array(state, 0, CMOS_SIZE);
    this.#slots = new Int32Array(state, SLOTS_OFFSET, SLOTS);
    this.#offset = new BigInt64Array(state, OFFSET_OFFSET, 1);
    this.#now = options.now ?? Date.now;
  }

  /** Guest clock offset from host UTC, in milliseconds. */
  timeOffset(): number {
    return Number(Atomics.load(this.#offset, 0));
  }

  /** Sets the guest clock offset from host UTC, in milliseconds (any thread). */
  setTimeOffset(ms: number): void {
    if (!Number.isFinite(ms)) throw new RangeError(`RTC time offset ${ms} is not a finite number.`);
    Atomics.store(this.#offset, 0, BigInt(Math.trunc(ms)));
  }

  /** The guest's current RTC time in epoch milliseconds. */
  guestTime(): number {
    return this.#now() + this.timeOffset();
  }

  /** Whether the guest last set the NMI-disable bit with the index write. */
  get nmiDisabled(): boolean {
    return this.#slots[I_NMI] !== 0;
  }

  /** Guest read: offset 0 (index, write-only) reads 0xFF; offset 1 reads the selected register. */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      data[i] = offset + i === 1 ? this.#readReg(this.#slots[I_INDEX]!) : 0xff;
    }
  }

  /** Guest write: offset 0 selects a register and the NMI mask; offset 1 writes the register. */
  write(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const value = data[i]!;
      if (offset + i === 0) {
        this.#slots[I_INDEX] = value & INDEX_MASK;
        this.#slots[I_NMI] = value & NMI_DISABLE ? 1 : 0;
      } else if (offset + i === 1) {
        this.#writeReg(this.#slots[I_INDEX]!, value);
      }
    }
  }

  #readReg(reg: number): number {
    const cmos = this.#cmos;
    const b = cmos[RTC_REG_B]!;
    switch (reg) {
      case RTC_REG_A: {
        if (b & REG_B_SET) return cmos[RTC_REG_A]! & ~REG_A_UIP;
        const ms = ((this.guestTime() % 1000) + 1000) % 1000;
        return (cmos[RTC_REG_A]! & ~REG_A_UIP) | (ms >= 1000 - UIP_WINDOW_MS ? REG_A_UIP : 0);
      }
      case RTC_REG_C:
        return 0; // no interrupt sources, nothing latched
      case RTC_REG_D:
        return REG_D_VRT;
    }
    if (isTimeReg(reg) && !(b & REG_B_SET)) {
      this.#latchTime();
    }
    return cmos[reg]!;
  }

  #writeReg(reg: number, value: number): void {
    const cmos = this.#cmos;
    switch (reg) {
      case RTC_REG_A:
        cmos[RTC_REG_A] = value & ~REG_A_UIP; // UIP is read-only
        return;
      case RTC_REG_B: {
        const old = cmos[RTC_REG_B]!;
        // Entering SET freezes the current time into the registers the guest is about to edit;
        // leaving it starts the clock from what the guest wrote.
        if (value & REG_B_SET && !(old & REG_B_SET)) this.#latchTime();
        cmos[RTC_REG_B] = value;
        if (old & REG_B_SET && !(value & REG_B_SET)) this.#commitTime();
        return;
      }
      case RTC_REG_C:
      case RTC_REG_D:
        return; // read-only
    }
    if (isTimeReg(reg)) {
      const setting = (cmos[RTC_REG_B]! & REG_B_SET) !== 0;
      if (!setting) this.#latchTime(); // a lone field write keeps the other fields current
      cmos[reg] = value;
      if (!setting) this.#commitTime();
      return;
    }
    cmos[reg] = value; // alarm registers and NVRAM
  }

  /** Encodes the guest's current time into the CMOS time registers. */
  #latchTime(): void {
    const cmos = this.#cmos;
    const b = cmos[RTC_REG_B]!;
    const f = this.#date;
    const t = Math.floor(this.guestTime() / 1000);
    const days = Math.floor(t / 86_400);
    const secs = t - days * 86_400;
    civilFromDays(days, f);
    const hour = Math.floor(secs / 3600);
    cmos[RTC_SECONDS] = encode(secs % 60, b);
    cmos[RTC_MINUTES] = encode(Math.floor(secs / 60) % 60, b);
    cmos[RTC_HOURS] = b & REG_B_24H
      ? encode(hour, b)
      : encode(hour % 12 || 12, b) | (hour >= 12 ? 0x80 : 0);
    cmos[RTC_DAY_OF_WEEK] = encode((((days + 4) % 7) + 7) % 7 + 1, b); // 1970-01-01: Thursday
    cmos[RTC_DAY_OF_MONTH] = encode(f[2]!, b);
    cmos[RTC_MONTH] = encode(f[1]!, b);
    cmos[RTC_YEAR] = encode(((f[0]! % 100) + 100) % 100, b);
    cmos[RTC_CENTURY] = encode(Math.floor(f[0]! / 100), b);
  }

  /** Turns the CMOS time registers into the clock offset; out-of-range values are ignored. */
  #commitTime(): void {
    const cmos = this.#cmos;
    const b = cmos[RTC_REG_B]!;
    const sec = decode(cmos[RTC_SECONDS]!, b);
    const min = decode(cmos[RTC_MINUTES]!, b);
    const rawHour = cmos[RTC_HOURS]!;
    const hour = b & REG_B_24H
      ? decode(rawHour, b)
      : (decode(rawHour & 0x7f, b) % 12) + (rawHour & 0x80 ? 12 : 0);
    const day = decode(cmos[RTC_DAY_OF_MONTH]!, b);
    const month = decode(cmos[RTC_MONTH]!, b);
    const year = decode(cmos[RTC_CENTURY]!, b) * 100 + decode(cmos[RTC_YEAR]!, b);
    if (sec > 59 || min > 59 || hour > 23 || day < 1 || day > 31 || month < 1 || month > 12) {
      return;
    }
    const seconds = daysFromCivil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    // The guest's second starts now: drop the host's sub-second part.
    this.setTimeOffset(seconds * 1000 - this.#now());
  }
}

function isTimeReg(reg: number): boolean {
  return (TIME_REGS as readonly number[]).includes(reg);
}

function encode(value: number, regB: number): number {
  return regB & REG_B_DM_BINARY ? value : (Math.floor(value / 10) << 4) | (value % 10);
}

function decode(value: number, regB: number): number {
  return regB & REG_B_DM_BINARY ? value : (value >> 4) * 10 + (value & 0x0f);
}

/** Days since 1970-01-01 → proleptic Gregorian y/m/d in `out[0..2]` (H. Hinnant's algorithm). */
function civilFromDays(days: number, out: Int32Array): void {
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor(
    (doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365,
  );
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const month = mp < 10 ? mp + 3 : mp - 9;
  out[0] = yoe + era * 400 + (month <= 2 ? 1 : 0);
  out[1] = month;
  out[2] = doy - Math.floor((153 * mp + 2) / 5) + 1;
}

/** Proleptic Gregorian y/m/d → days since 1970-01-01. */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146_097 + doe - 719_468;
}
