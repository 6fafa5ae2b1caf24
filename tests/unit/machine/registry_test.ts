import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  DeviceRegistry,
  IoDispatch,
  MAX_RANGES,
  RegistryConflictError,
} from "../../../src/machine/registry.ts";
import type { BusDevice } from "../../../src/machine/bus.ts";
import { prng } from "../prng.ts";

/** A device that records offsets and answers reads with its tag byte. */
class Probe implements BusDevice {
  seen: [string, number, number][] = [];
  constructor(readonly tag: number) {}
  read(offset: number, data: Uint8Array): void {
    this.seen.push(["r", offset, data.length]);
    data.fill(this.tag);
  }
  write(offset: number, data: Uint8Array): void {
    this.seen.push(["w", offset, data.length]);
  }
}

Deno.test("registry: devices see offsets, same signature for PIO and MMIO", () => {
  const reg = DeviceRegistry.create();
  const a = new Probe(0xaa);
  const b = new Probe(0xbb);
  reg.add("pio", 0x3f8, 8, reg.addDevice("uart"));
  reg.add("mmio", 0xfe00_0000, 0x1000, reg.addDevice("regs"));
  const d = new IoDispatch(reg, [a, b]);
  const buf = new Uint8Array(2);
  ok(d.access("pio", 0x3fa, false, buf));
  deepStrictEqual([...buf], [0xaa, 0xaa]);
  ok(d.access("mmio", 0xfe00_0010, true, new Uint8Array(4)));
  deepStrictEqual(a.seen, [["r", 2, 2]]);
  deepStrictEqual(b.seen, [["w", 0x10, 4]]);
  // The same port number in the other space is not the same range.
  ok(!d.access("mmio", 0x3f8, false, buf));
});

Deno.test("registry: unclaimed reads are all-ones, writes dropped; straddling accesses unclaimed", () => {
  const reg = DeviceRegistry.create();
  const p = new Probe(1);
  reg.add("pio", 0x100, 4, reg.addDevice("p"));
  const d = new IoDispatch(reg, [p]);
  const buf = new Uint8Array(4);
  ok(!d.access("pio", 0xaf00, false, buf));
  deepStrictEqual([...buf], [0xff, 0xff, 0xff, 0xff]);
  ok(!d.access("pio", 0x102, false, buf)); // 0x102..0x105 leaves the range
  ok(!d.access("mmio", 0xfed0_0000, true, buf));
  deepStrictEqual(p.seen, []);
});

Deno.test("registry: overlaps, empty ranges and ranges beyond the space are refused, typed", () => {
  const reg = DeviceRegistry.create();
  const id = reg.addDevice("a");
  const other = reg.addDevice("b");
  reg.add("pio", 0x60, 5, id);
  throws(() => reg.add("pio", 0x64, 2, other), RegistryConflictError);
  throws(
    () => reg.add("pio", 0x5f, 2, other),
    (err: unknown) =>
      err instanceof RegistryConflictError && err.existing?.name === "a" &&
      /overlaps 'a'/.test(err.message),
  );
  throws(() => reg.add("pio", 0x70, 0, other), RegistryConflictError);
  throws(() => reg.add("pio", 0xfffe, 4, other), RegistryConflictError);
  throws(() => reg.add("mmio", -1, 4, other), RegistryConflictError);
  // Adjacent ranges are fine; the same addresses in the other space too.
  reg.add("pio", 0x65, 1, other);
  reg.add("mmio", 0x60, 5, other);
  throws(() => reg.addDevice("a"), /already registered/);
});

Deno.test("registry: move and unmap are seen by every thread's dispatcher at once", () => {
  const reg = DeviceRegistry.create();
  const p = new Probe(7);
  const h = reg.add("mmio", undefined, 0x1000, reg.addDevice("bar"));
  reg.add("mmio", 0xc000_0000, 0x1000, reg.addDevice("fixed"));
  // Two "threads": two dispatchers over two registry objects on the same state.
  const d1 = new IoDispatch(reg, [p, new Probe(9)]);
  const d2 = new IoDispatch(new DeviceRegistry(reg.state), [p, new Probe(9)]);
  const buf = new Uint8Array(1);
  ok(!d1.access("mmio", 0xd000_0000, false, buf));
  new DeviceRegistry(reg.state).move(h, 0xd000_0000); // moved "from another vCPU"
  ok(d1.access("mmio", 0xd000_0004, false, buf));
  ok(d2.access("mmio", 0xd000_0fff, false, buf));
  strictEqual(buf[0], 7);
  // A move onto another range is refused and changes nothing.
  throws(() => reg.move(h, 0xc000_0800), RegistryConflictError);
  ok(d2.access("mmio", 0xd000_0000, false, buf));
  reg.move(h, undefined);
  ok(!d1.access("mmio", 0xd000_0000, false, buf));
  strictEqual(reg.ranges().find((r) => r.handle === h)?.base, undefined);
  reg.remove(h);
  throws(() => reg.move(h, 0xd000_0000), /removed/);
  throws(() => reg.move(999, 0), /never added/);
});

Deno.test("registry: at most MAX_RANGES ranges", () => {
  const reg = DeviceRegistry.create();
  const id = reg.addDevice("many");
  for (let i = 0; i < MAX_RANGES; i++) reg.add("mmio", undefined, 16, id);
  throws(() => reg.add("mmio", undefined, 16, id), RegistryConflictError);
});

Deno.test("registry fuzz: random add/move/remove keeps ranges disjoint and dispatch consistent", () => {
  const rng = prng(0x12c0ffee);
  const reg = DeviceRegistry.create();
  const probes: Probe[] = [];
  for (let i = 0; i < 8; i++) {
    reg.addDevice(`dev${i}`);
    probes.push(new Probe(i));
  }
  const d = new IoDispatch(new DeviceRegistry(reg.state), probes);
  const handles: number[] = [];
  for (let step = 0; step < 3000; step++) {
    const op = rng.int(4);
    const space = rng.int(2) ? "pio" : "mmio";
    const base = rng.int(0x1_0000);
    const len = rng.int(3) === 0 ? rng.int(0x2000) : 1 + rng.int(64);
    try {
      if (op === 0 || handles.length === 0) {
        handles.push(reg.add(space, rng.int(2) ? base : undefined, len, rng.int(8)));
      } else if (op === 1) {
        reg.move(handles[rng.int(handles.length)]!, rng.int(4) ? base : undefined);
      } else if (op === 2 && rng.int(8) === 0) {
        const i = rng.int(handles.length);
        reg.remove(handles[i]!);
        handles.splice(i, 1);
      } else {
        // Every width at every offset, against the reference (the ranges list).
        const size = [1, 2, 4, 8][rng.int(4)]!;
        const buf = new Uint8Array(size);
        const hit = d.access(space, base, rng.int(2) === 1, buf);
        const owner = reg.ranges().find((r) =>
          r.space === space && r.base !== undefined && base >= r.base &&
          base + size <= r.base + r.length
        );
        strictEqual(hit, owner !== undefined, `access ${space} ${base}+${size}`);
      }
    } catch (e) {
      if (!(e instanceof RegistryConflictError)) throw e;
    }
    // Invariant: mapped ranges in a space never overlap.
    if (step % 50 === 0) {
      for (const sp of ["pio", "mmio"] as const) {
        const m = reg.ranges().filter((r) => r.space === sp && r.base !== undefined)
          .sort((a, b) => a.base! - b.base!);
        for (let i = 1; i < m.length; i++) {
          ok(m[i - 1]!.base! + m[i - 1]!.length <= m[i]!.base!, "overlap after fuzz step");
        }
      }
    }
  }
});
