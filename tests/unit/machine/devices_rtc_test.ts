import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  REG_B_24H,
  REG_B_DM_BINARY,
  REG_B_SET,
  Rtc,
  RTC_CENTURY,
  RTC_DAY_OF_MONTH,
  RTC_DAY_OF_WEEK,
  RTC_HOURS,
  RTC_MINUTES,
  RTC_MONTH,
  RTC_REG_A,
  RTC_REG_B,
  RTC_REG_C,
  RTC_REG_D,
  RTC_SECONDS,
  RTC_YEAR,
} from "../../../src/machine/devices/rtc.ts";

const GiB = 1024 ** 3;
// Thursday 2024-02-29 13:45:30.500 UTC (leap day).
const T0 = Date.UTC(2024, 1, 29, 13, 45, 30, 500);

function makeRtc(opts: { offset?: number; below?: number; above?: number } = {}) {
  const clock = { now: T0 };
  const state = Rtc.createState({
    ramBelow4G: opts.below ?? 2 * GiB,
    ramAbove4G: opts.above ?? 0,
    ...(opts.offset !== undefined ? { timeOffsetMs: opts.offset } : {}),
  });
  const rtc = new Rtc(state, { now: () => clock.now });
  const buf = new Uint8Array(1);
  const cmos = (reg: number) => {
    buf[0] = reg;
    rtc.write(0, buf);
    rtc.read(1, buf);
    return buf[0]!;
  };
  const setCmos = (reg: number, value: number) => {
    buf[0] = reg;
    rtc.write(0, buf);
    buf[0] = value;
    rtc.write(1, buf);
  };
  const time = () =>
    [RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR]
      .map(cmos);
  return { rtc, state, clock, cmos, setCmos, time };
}

Deno.test("rtc: BCD 24-hour time by default, status registers", () => {
  const { cmos, time } = makeRtc();
  // sec, min, hour, weekday (Thursday = 5), day, month, year: all BCD.
  deepStrictEqual(time(), [0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24]);
  strictEqual(cmos(RTC_CENTURY), 0x20);
  strictEqual(cmos(RTC_REG_B), REG_B_24H);
  strictEqual(cmos(RTC_REG_A), 0x26); // UIP clear mid-second
  strictEqual(cmos(RTC_REG_C), 0);
  strictEqual(cmos(RTC_REG_D), 0x80);
});

Deno.test("rtc: binary and 12-hour modes per register B", () => {
  const { cmos, setCmos, time } = makeRtc();
  setCmos(RTC_REG_B, REG_B_24H | REG_B_DM_BINARY);
  deepStrictEqual(time(), [30, 45, 13, 5, 29, 2, 24]);
  strictEqual(cmos(RTC_CENTURY), 20);
  setCmos(RTC_REG_B, REG_B_DM_BINARY);
  strictEqual(cmos(RTC_HOURS), 0x80 | 1); // 1 PM
  setCmos(RTC_REG_B, 0);
  strictEqual(cmos(RTC_HOURS), 0x80 | 0x01);
});

Deno.test("rtc: 12-hour mode midnight and noon", () => {
  const { cmos, setCmos, clock } = makeRtc();
  setCmos(RTC_REG_B, 0);
  clock.now = Date.UTC(2024, 0, 1, 0, 5);
  strictEqual(cmos(RTC_HOURS), 0x12); // 12 AM
  clock.now = Date.UTC(2024, 0, 1, 12, 5);
  strictEqual(cmos(RTC_HOURS), 0x80 | 0x12); // 12 PM
});

Deno.test("rtc: the guest clock starts from the configured offset", () => {
  const { rtc, cmos, time } = makeRtc({ offset: -3 * 3600_000 });
  deepStrictEqual(time(), [0x30, 0x45, 0x10, 0x05, 0x29, 0x02, 0x24]);
  // Jump to 2100-01-01 00:00:01: the century register follows.
  rtc.setTimeOffset(Date.UTC(2100, 0, 1, 0, 0, 1) - T0);
  deepStrictEqual(time(), [0x01, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00]); // Friday
  strictEqual(cmos(RTC_CENTURY), 0x21);
  throws(() => rtc.setTimeOffset(NaN), RangeError);
});

Deno.test("rtc: UIP rises only in the last 2 ms of each second", () => {
  const { cmos, clock, setCmos } = makeRtc();
  clock.now = Date.UTC(2024, 0, 1, 0, 0, 0, 997);
  strictEqual(cmos(RTC_REG_A) & 0x80, 0);
  clock.now += 1;
  strictEqual(cmos(RTC_REG_A) & 0x80, 0x80);
  clock.now += 1;
  strictEqual(cmos(RTC_REG_A) & 0x80, 0x80);
  clock.now += 1;
  strictEqual(cmos(RTC_REG_A) & 0x80, 0);
  clock.now -= 1;
  setCmos(RTC_REG_B, REG_B_24H | REG_B_SET); // SET halts updates: no UIP
  strictEqual(cmos(RTC_REG_A) & 0x80, 0);
});

Deno.test("rtc: guest sets the time with SET held, hwclock style", () => {
  const { rtc, cmos, setCmos, clock, time } = makeRtc();
  setCmos(RTC_REG_B, REG_B_24H | REG_B_SET);
  // Written in an order that passes through an invalid date (Feb 31) on the way.
  setCmos(RTC_DAY_OF_MONTH, 0x31);
  setCmos(RTC_MONTH, 0x12);
  setCmos(RTC_YEAR, 0x99);
  setCmos(RTC_CENTURY, 0x19);
  setCmos(RTC_HOURS, 0x23);
  setCmos(RTC_MINUTES, 0x59);
  setCmos(RTC_SECONDS, 0x58);
  // While SET is held the clock reads back what was written, whatever the host time does.
  clock.now += 5000;
  strictEqual(cmos(RTC_SECONDS), 0x58);
  setCmos(RTC_REG_B, REG_B_24H);
  strictEqual(rtc.guestTime(), Date.UTC(1999, 11, 31, 23, 59, 58));
  clock.now += 2000;
  deepStrictEqual(time(), [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00]); // Saturday 2000-01-01
  strictEqual(cmos(RTC_CENTURY), 0x20);
});

Deno.test("rtc: a lone field write outside SET moves only that field", () => {
  const { rtc, setCmos, time } = makeRtc();
  setCmos(RTC_REG_B, REG_B_24H | REG_B_DM_BINARY);
  setCmos(RTC_HOURS, 7);
  deepStrictEqual(time(), [30, 45, 7, 5, 29, 2, 24]);
  strictEqual(rtc.timeOffset(), -6 * 3600_000 - 500);
  // Garbage (BCD digits out of range) is ignored instead of corrupting the clock.
  setCmos(RTC_REG_B, REG_B_24H);
  setCmos(RTC_MONTH, 0x13);
  strictEqual(rtc.timeOffset(), -6 * 3600_000 - 500);
});

Deno.test("rtc: CMOS memory size bytes", () => {
  const { cmos } = makeRtc({ below: 3 * GiB, above: GiB + 65536 });
  strictEqual(cmos(0x15) | (cmos(0x16) << 8), 640);
  strictEqual(cmos(0x17) | (cmos(0x18) << 8), 0xffff);
  strictEqual(cmos(0x30) | (cmos(0x31) << 8), 0xffff);
  strictEqual(cmos(0x34) | (cmos(0x35) << 8), (3 * GiB - 16 * 1024 * 1024) / 65536);
  strictEqual(cmos(0x5b) | (cmos(0x5c) << 8) | (cmos(0x5d) << 16), GiB / 65536 + 1);
  const small = makeRtc({ below: 8 * 1024 * 1024 });
  strictEqual(small.cmos(0x17) | (small.cmos(0x18) << 8), 7 * 1024);
  strictEqual(small.cmos(0x34) | (small.cmos(0x35) << 8), 0);
});

Deno.test("rtc: index port keeps the NMI bit, reads float, NVRAM persists", () => {
  const { rtc, cmos, setCmos } = makeRtc();
  const buf = Uint8Array.of(0x80 | RTC_REG_D);
  rtc.write(0, buf);
  strictEqual(rtc.nmiDisabled, true);
  rtc.read(1, buf);
  strictEqual(buf[0], 0x80);
  rtc.read(0, buf);
  strictEqual(buf[0], 0xff);
  setCmos(0x40, 0xab);
  strictEqual(cmos(0x40), 0xab);
  strictEqual(rtc.nmiDisabled, false);
  setCmos(RTC_REG_D, 0);
  strictEqual(cmos(RTC_REG_D), 0x80); // read-only
});

Deno.test("rtc: two instances over one SAB share index, NVRAM and clock offset", () => {
  const a = makeRtc();
  const b = new Rtc(a.state, { now: () => a.clock.now });
  a.setCmos(0x41, 0x5a);
  const buf = new Uint8Array(1);
  b.read(1, buf); // index 0x41 selected through `a`
  strictEqual(buf[0], 0x5a);
  b.setTimeOffset(60_000);
  strictEqual(a.cmos(RTC_MINUTES), 0x46);
});
