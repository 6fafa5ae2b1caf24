import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { Bus, BusConflictError, type BusDevice } from "../../../src/machine/bus.ts";

/** Records the accesses it sees; reads answer the offset in every byte. */
class Probe implements BusDevice {
  reads: [number, number][] = [];
  writes: [number, number[]][] = [];
  read(offset: number, data: Uint8Array): void {
    this.reads.push([offset, data.length]);
    data.fill(offset & 0xff);
  }
  write(offset: number, data: Uint8Array): void {
    this.writes.push([offset, [...data]]);
  }
}

Deno.test("Bus dispatches to the containing range with an offset", () => {
  const bus = new Bus("pio");
  const serial = new Probe();
  const rtc = new Probe();
  bus.insert(0x3f8, 8, serial, "serial0");
  bus.insert(0x70, 2, rtc, "rtc");
  const data = new Uint8Array(1);
  ok(bus.read(0x3fd, data));
  strictEqual(data[0], 5);
  ok(bus.write(0x71, Uint8Array.of(0x42)));
  deepStrictEqual(serial.reads, [[5, 1]]);
  deepStrictEqual(rtc.writes, [[1, [0x42]]]);
  strictEqual(bus.find(0x3f8)?.name, "serial0");
  strictEqual(bus.find(0x3f7), undefined);
  deepStrictEqual(bus.entries().map((e) => e.name), ["rtc", "serial0"]);
  strictEqual(bus.size, 2);
});

Deno.test("Bus reports unmapped and straddling accesses as misses", () => {
  const bus = new Bus("pio");
  const dev = new Probe();
  bus.insert(0xcf8, 8, dev, "pci");
  const data = Uint8Array.of(1, 2, 3, 4);
  strictEqual(bus.read(0x80, data), false);
  deepStrictEqual([...data], [0xff, 0xff, 0xff, 0xff]);
  strictEqual(bus.write(0x80, data), false);
  // A dword at 0xCFE would run past 0xCFF: not dispatched.
  strictEqual(bus.read(0xcfe, data), false);
  ok(bus.read(0xcfc, data));
  ok(bus.read(0xcff, data.subarray(0, 1)));
  deepStrictEqual(dev.reads, [[4, 4], [7, 1]]);
  strictEqual(bus.read(0xd00, data.subarray(0, 1)), false);
});

Deno.test("Bus.insert refuses overlapping ranges with BusConflictError", () => {
  const bus = new Bus("mmio");
  bus.insert(0x1000, 0x100, new Probe(), "a");
  bus.insert(0x2000, 0x100, new Probe(), "b");
  const overlapping: [number, number][] = [
    [0x1000, 0x100], // identical
    [0xf00, 0x101], // ends inside
    [0x10ff, 1], // last byte
    [0x800, 0x2000], // contains both
    [0x1010, 0x10], // contained
    [0x1f00, 0x200], // straddles the start of b
  ];
  for (const [base, length] of overlapping) {
    throws(() => bus.insert(base, length, new Probe(), "x"), BusConflictError);
  }
  try {
    bus.insert(0x10f0, 0x20, new Probe(), "late");
    ok(false, "overlap accepted");
  } catch (e) {
    ok(e instanceof BusConflictError);
    strictEqual(e.existing?.name, "a");
    strictEqual(e.base, 0x10f0);
    ok(e.message.includes("overlaps 'a'"), e.message);
  }
  // Adjacent ranges on either side are fine.
  bus.insert(0xf00, 0x100, new Probe(), "below");
  bus.insert(0x1100, 0xf00, new Probe(), "between");
  bus.insert(0x2100, 1, new Probe(), "above");
  deepStrictEqual(bus.entries().map((e) => e.name), ["below", "a", "between", "b", "above"]);
});

Deno.test("Bus.insert refuses empty and malformed ranges", () => {
  const bus = new Bus("pio");
  try {
    bus.insert(0x60, 0, new Probe(), "empty");
    ok(false, "empty range accepted");
  } catch (e) {
    ok(e instanceof BusConflictError);
    strictEqual(e.existing, undefined);
    ok(e.message.includes("empty"), e.message);
  }
  throws(() => bus.insert(-1, 4, new Probe(), "neg"), RangeError);
  throws(() => bus.insert(0.5, 4, new Probe(), "frac"), RangeError);
  throws(() => bus.insert(0, NaN, new Probe(), "nan"), RangeError);
  throws(() => bus.insert(Number.MAX_SAFE_INTEGER, 2, new Probe(), "overflow"), RangeError);
  strictEqual(bus.size, 0);
});

Deno.test("Bus lookups agree with a linear scan over many ranges", () => {
  const bus = new Bus("mmio");
  const ranges: { base: number; end: number; dev: Probe }[] = [];
  let base = 0x1000;
  // Deterministic pseudo-random layout with gaps, inserted in shuffled order.
  let seed = 12345;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let i = 0; i < 200; i++) {
    const length = 1 + rand(64);
    ranges.push({ base, end: base + length, dev: new Probe() });
    base += length + rand(3) * 16;
  }
  const order = ranges.map((_, i) => i).sort(() => rand(3) - 1);
  for (const i of order) {
    const r = ranges[i]!;
    bus.insert(r.base, r.end - r.base, r.dev, `r${i}`);
  }
  const data = new Uint8Array(1);
  for (let addr = 0xff0; addr < base + 16; addr++) {
    const hit = ranges.find((r) => addr >= r.base && addr < r.end);
    strictEqual(bus.read(addr, data), hit !== undefined, `addr 0x${addr.toString(16)}`);
    if (hit) strictEqual(hit.dev.reads.at(-1)?.[0], addr - hit.base);
  }
});

Deno.test("Bus dispatch throughput sanity: 1e6 lookups", () => {
  const bus = new Bus("pio");
  const sink: BusDevice = { read: (_o, d) => void (d[0] = 0), write: () => {} };
  const ports = [0x20, 0x40, 0x60, 0x70, 0x80, 0xa0, 0x2f8, 0x3f8, 0x3e8, 0x2e8, 0x600, 0xcf8];
  for (const p of ports) bus.insert(p, 8, sink, `p${p}`);
  const data = new Uint8Array(1);
  const n = 1_000_000;
  let hits = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    if (bus.read(ports[i % ports.length]! + (i & 7), data)) hits++;
  }
  const ms = performance.now() - t0;
  strictEqual(hits, n);
  // Generous bound (typically ~20 ms): catches an accidental linear or allocating path only.
  ok(ms < 2000, `1e6 lookups took ${ms.toFixed(1)} ms`);
  console.log(`bus: ${(ms * 1e6 / n).toFixed(1)} ns per dispatch`);
});
