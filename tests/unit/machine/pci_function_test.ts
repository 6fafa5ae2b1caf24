import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { PCI_HOST_PORT_COUNT, PciHost } from "../../../src/machine/devices/pci_host.ts";
import { Bus, type BusDevice } from "../../../src/machine/bus.ts";
import { PCI_CAP, PciFunction, type PciFunctionSpec } from "../../../src/machine/pci/function.ts";
import { DeviceRegistry, IoDispatch } from "../../../src/machine/registry.ts";
import { prng } from "../prng.ts";

class Probe implements BusDevice {
  seen: [string, number][] = [];
  read(offset: number, data: Uint8Array): void {
    this.seen.push(["r", offset]);
    data.fill(0x5a);
  }
  write(offset: number, _data: Uint8Array): void {
    this.seen.push(["w", offset]);
  }
}

/** A function at 00:03.0 with an I/O BAR, a 32-bit BAR, a 64-bit prefetchable BAR and MSI. */
function machine(extra: Partial<PciFunctionSpec> = {}) {
  const registry = DeviceRegistry.create();
  const probes = [new Probe(), new Probe(), new Probe(), new Probe()];
  const ids = ["io", "mmio", "mem64", "wall"].map((n) => registry.addDevice(n));
  const bars = [
    { kind: "io" as const, size: 0x20, handle: registry.add("pio", undefined, 0x20, ids[0]!) },
    // An odd size: rounded up to 0x2000.
    {
      kind: "mem32" as const,
      size: 0x1801,
      handle: registry.add("mmio", undefined, 0x2000, ids[1]!),
    },
    {
      kind: "mem64" as const,
      size: 0x4000_0000,
      prefetchable: true,
      handle: registry.add("mmio", undefined, 0x4000_0000, ids[2]!),
    },
    undefined,
  ];
  registry.add("mmio", 0xe000_0000, 0x1000, ids[3]!); // something already there
  const spec: PciFunctionSpec = {
    vendor: 0x1234,
    device: 0x1111,
    classCode: 0x038000,
    bars,
    interruptPin: 1,
    msiVectors: 4,
    ...extra,
  };
  const levels: boolean[] = [];
  const msis: [number, number][] = [];
  const state = PciFunction.createState(spec);
  const fn = new PciFunction(state, spec, {
    registry,
    intx: { set: (l) => levels.push(l) },
    msi: { signalMsi: (a, d) => msis.push([a, d]) },
  });
  const host = new PciHost(PciHost.createState(), { functions: new Map([[0x18, fn]]) });
  const bus = new Bus("pio");
  bus.insert(0xcf8, PCI_HOST_PORT_COUNT, host, "pci");
  const io = (port: number, size: number, value?: number): number => {
    const b = new Uint8Array(size);
    if (value !== undefined) {
      for (let i = 0; i < size; i++) b[i] = (value / 2 ** (8 * i)) & 0xff;
      bus.write(port, b);
      return 0;
    }
    bus.read(port, b);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  };
  const read = (reg: number, size = 4) => {
    io(0xcf8, 4, (0x8000_1800 | (reg & 0xfc)) >>> 0);
    return io(0xcfc + (reg & 3), size);
  };
  const write = (reg: number, size: number, value: number) => {
    io(0xcf8, 4, (0x8000_1800 | (reg & 0xfc)) >>> 0);
    io(0xcfc + (reg & 3), size, value);
  };
  const dispatch = new IoDispatch(new DeviceRegistry(registry.state), probes);
  return { registry, fn, read, write, levels, msis, probes, dispatch, state, spec };
}

Deno.test("pci: BAR sizing reads back the size mask and the type bits", () => {
  const m = machine();
  strictEqual(m.read(0x00), 0x1111_1234);
  strictEqual(m.read(0x08) >>> 8, 0x038000);
  for (let i = 0; i < 6; i++) m.write(0x10 + i * 4, 4, 0xffff_ffff);
  strictEqual(m.read(0x10), 0x0000_ffe1); // I/O, 32 ports, 64 KiB decode
  strictEqual(m.read(0x14), 0xffff_e000); // 0x1801 rounded to 8 KiB
  strictEqual(m.read(0x18), 0xc000_000c); // 1 GiB, 64-bit, prefetchable
  strictEqual(m.read(0x1c), 0xffff_ffff); // upper half of the 64-bit BAR
  strictEqual(m.read(0x20), 0);
  strictEqual(m.read(0x24), 0);
  // Sized BARs with decode on are not mapped at their all-ones masks.
  m.write(0x04, 2, 0x0003);
  ok(m.registry.ranges().every((r) => r.name === "wall" || r.base === undefined));
});

Deno.test("pci: BARs map with decode on, move for every thread, unmap with decode off", () => {
  const m = machine();
  m.write(0x10, 4, 0xc041);
  m.write(0x14, 4, 0xc000_0000);
  m.write(0x18, 4, 0x0000_000c);
  m.write(0x1c, 4, 0x8); // 32 GiB
  strictEqual(m.fn.barBase(0), undefined);
  m.write(0x04, 2, 0x0003); // I/O + memory decode
  strictEqual(m.fn.barBase(0), 0xc040);
  strictEqual(m.fn.barBase(1), 0xc000_0000);
  strictEqual(m.fn.barBase(2), 0x8_0000_0000);
  const b = new Uint8Array(4);
  ok(m.dispatch.access("pio", 0xc05f, false, b.subarray(0, 1)));
  ok(m.dispatch.access("mmio", 0xc000_1ffc, true, b));
  ok(m.dispatch.access("mmio", 0x8_3fff_fff8, false, b));
  deepStrictEqual(m.probes[0]!.seen, [["r", 0x1f]]);
  deepStrictEqual(m.probes[1]!.seen, [["w", 0x1ffc]]);
  deepStrictEqual(m.probes[2]!.seen, [["r", 0x3fff_fff8]]);
  // The guest moves BAR1: the old place is empty, the new one answers.
  m.write(0x14, 4, 0xd000_0000);
  ok(!m.dispatch.access("mmio", 0xc000_0000, false, b));
  ok(m.dispatch.access("mmio", 0xd000_0000, false, b));
  // A BAR moved onto another device's range stays unmapped (and nothing throws).
  m.write(0x14, 4, 0xe000_0000);
  strictEqual(m.fn.barBase(1), undefined);
  ok(!m.dispatch.access("mmio", 0xe000_1000, false, b));
  m.write(0x14, 4, 0xd000_0000);
  strictEqual(m.fn.barBase(1), 0xd000_0000);
  // Memory decode off: memory BARs go, the I/O BAR stays.
  m.write(0x04, 2, 0x0001);
  strictEqual(m.fn.barBase(1), undefined);
  strictEqual(m.fn.barBase(2), undefined);
  strictEqual(m.fn.barBase(0), 0xc040);
});

Deno.test("pci: capability list with MSI; MSI delivered only when enabled, inside the APIC window", () => {
  const m = machine();
  ok(m.read(0x04) & (0x10 << 16), "status: capability list");
  const cap = m.read(0x34) & 0xff;
  strictEqual(m.read(cap) & 0xff, PCI_CAP.MSI);
  strictEqual((m.read(cap) >>> 8) & 0xff, 0); // last capability
  strictEqual((m.read(cap) >>> 16) & 0x8e, 0x84); // 64-bit, 4 vectors capable
  ok(!m.fn.signalMsi(0), "MSI off: caller falls back to INTx");
  m.write(cap + 4, 4, 0xfee0_1000);
  m.write(cap + 8, 4, 0);
  m.write(cap + 12, 2, 0x4041);
  m.write(cap + 2, 2, 0x0011); // enable, 2 messages (MME = 1)
  m.write(0x04, 2, 0x0004); // bus master
  ok(m.fn.signalMsi(1));
  ok(m.fn.signalMsi(3)); // only one vector bit allowed: 3 -> 1
  deepStrictEqual(m.msis, [[0xfee0_1000, 0x4041], [0xfee0_1000, 0x4041]]);
  m.write(cap + 12, 2, 0x4040);
  m.fn.signalMsi(1);
  deepStrictEqual(m.msis.at(-1), [0xfee0_1000, 0x4041]);
  m.write(cap + 4, 4, 0xfed0_0000); // not the APIC window: a write to nowhere
  m.fn.signalMsi(0);
  strictEqual(m.msis.length, 3);
  m.write(cap + 4, 4, 0xfee0_0000);
  m.write(cap + 8, 4, 1); // above 4 GiB
  m.fn.signalMsi(0);
  strictEqual(m.msis.length, 3);
});

Deno.test("pci: INTx follows the device's level, the INTx-disable bit and sets interrupt status", () => {
  const m = machine();
  strictEqual(m.read(0x3c) >>> 8 & 0xff, 1); // INTA
  m.fn.setIntx(true);
  ok(m.read(0x04) & (0x08 << 16));
  m.write(0x04, 2, 0x0400);
  m.fn.setIntx(false);
  ok(!(m.read(0x04) & (0x08 << 16)));
  deepStrictEqual(m.levels, [true, false, false]);
  m.fn.setIntx(true);
  m.write(0x04, 2, 0x0000);
  deepStrictEqual(m.levels.slice(3), [false, true]);
});

Deno.test("pci fuzz: config accesses of every width and offset never throw; BARs stay sane", () => {
  const rng = prng(0xbadc0de);
  const m = machine({ msix: { vectors: 8, bar: 1, tableOffset: 0, pbaOffset: 0x800 } });
  const before = m.read(0x00);
  const widths = [1, 2, 4];
  for (let step = 0; step < 20000; step++) {
    const reg = rng.int(256);
    const size = widths[rng.int(3)]!;
    if (rng.chance(0.6)) {
      const v = rng.chance(0.3)
        ? 0xffff_ffff
        : rng.chance(0.5)
        ? rng.int(2 ** 32)
        : rng.int(0x10000) << 16;
      m.write(reg, size, v);
    } else m.read(reg, size);
    if (rng.chance(0.01)) m.fn.signalMsi(rng.int(32));
    if (rng.chance(0.05)) {
      const b = new Uint8Array([1, 2, 4, 8][rng.int(4)]!).map(() => rng.int(256));
      const off = rng.int(0x900);
      if (rng.chance(0.5)) m.fn.msix!.write(off, b);
      else m.fn.msix!.read(off, b);
    }
    if (rng.chance(0.01)) m.fn.setIntx(rng.chance(0.5));
  }
  strictEqual(m.read(0x00), before, "IDs are read-only");
  const mapped = m.registry.ranges().filter((r) => r.base !== undefined);
  for (const sp of ["pio", "mmio"] as const) {
    const rs = mapped.filter((r) => r.space === sp).sort((a, b) => a.base! - b.base!);
    for (let i = 1; i < rs.length; i++) ok(rs[i - 1]!.base! + rs[i - 1]!.length <= rs[i]!.base!);
  }
  for (const r of mapped) if (r.name !== "wall") strictEqual(r.base! % r.length, 0, r.name);
  // Every MSI that got through was in the APIC window.
  ok(m.msis.every(([a]) => (a & 0xfff0_0000) >>> 0 === 0xfee0_0000));
});

Deno.test("pci-host: word at 0xCFF and dword at 0xCFE are cut at the dword end", () => {
  const m = machine();
  const b = new Uint8Array(8);
  const host = new PciHost(PciHost.createState(), { functions: new Map([[0x18, m.fn]]) });
  host.write(0, Uint8Array.of(0x00, 0x18, 0x00, 0x80));
  host.read(7, b.subarray(0, 2)); // lane 3 + 2 bytes
  deepStrictEqual([...b.subarray(0, 2)], [0x11, 0xff]);
  host.read(6, b.subarray(0, 4));
  deepStrictEqual([...b.subarray(0, 4)], [0x11, 0x11, 0xff, 0xff]);
});

Deno.test("pci: MSI-X capability after MSI; masked vectors pend in the PBA and fire on unmask", () => {
  const m = machine({ msix: { vectors: 4, bar: 1, tableOffset: 0, pbaOffset: 0x800 } });
  const t = m.fn.msix!;
  strictEqual(m.read(0x50) >>> 8 & 0xff, 0x60, "MSI's next is MSI-X");
  strictEqual(m.read(0x60) & 0xff, PCI_CAP.MSIX);
  strictEqual(m.read(0x60) >>> 16, 3, "table size - 1");
  strictEqual(m.read(0x64), 0x0000_0001, "table at BAR1 + 0");
  strictEqual(m.read(0x68), 0x0000_0801, "PBA at BAR1 + 0x800");
  const dword = (off: number, v?: number) => {
    const b = new Uint8Array(4);
    if (v === undefined) {
      t.read(off, b);
      return new DataView(b.buffer).getUint32(0, true);
    }
    new DataView(b.buffer).setUint32(0, v, true);
    t.write(off, b);
    return 0;
  };
  strictEqual(dword(16 + 12), 1, "entries masked at reset");
  dword(16, 0xfee0_0000);
  dword(16 + 4, 0);
  dword(16 + 8, 0x4031);
  ok(!m.fn.signalMsi(1), "MSI-X off: INTx");
  m.write(0x04, 2, 0x0004); // bus master
  m.write(0x62, 2, 0x8000); // enable
  ok(t.enabled);
  ok(m.fn.signalMsi(1));
  deepStrictEqual(m.msis, [], "masked: nothing sent");
  strictEqual(dword(0x800), 0b10, "pending bit 1");
  dword(16 + 12, 0); // unmask entry 1
  deepStrictEqual(m.msis, [[0xfee0_0000, 0x4031]]);
  strictEqual(dword(0x800), 0);
  m.write(0x62, 2, 0xc000); // function mask
  m.fn.signalMsi(1);
  strictEqual(m.msis.length, 1);
  m.write(0x62, 2, 0x8000);
  strictEqual(m.msis.length, 2, "function unmask fires the pending vector");
  // Byte accesses are not allowed on the table: dropped, read 0.
  t.write(16 + 8, Uint8Array.of(0x99));
  strictEqual(dword(16 + 8), 0x4031);
  const b = new Uint8Array(1);
  t.read(16, b);
  strictEqual(b[0], 0);
  // An entry outside the APIC window goes nowhere.
  dword(32, 0xfed0_0000);
  dword(32 + 12, 0);
  m.fn.signalMsi(2);
  strictEqual(m.msis.length, 2);
  ok(t.claims(0x10) && t.claims(0x800) && !t.claims(0x400));
});
