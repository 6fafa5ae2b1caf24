import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  buildMemoryMap,
  E820_RAM,
  E820_RESERVED,
  type MemoryMap,
} from "../../../src/machine/memory_map.ts";
import {
  ACPI_START,
  BOOT_GDT_START,
  CMDLINE_MAX_SIZE,
  CMDLINE_START,
  EBDA_START,
  FOUR_GIB,
  GIB,
  HIMEM_START,
  IOAPIC_START,
  LAPIC_START,
  MIB,
  MMIO_HOLE_START,
  PAGE_TABLES_END,
  PML4_START,
  VMBUS_LOW_MMIO_SIZE,
  VMBUS_LOW_MMIO_START,
  ZERO_PAGE_START,
} from "../../../src/machine/layout.ts";
import { UsageError } from "../../../src/util/errors.ts";

function e820Of(m: MemoryMap): [number, number, number][] {
  return m.e820.map((e) => [e.addr, e.size, e.type]);
}

Deno.test("512 MiB: one RAM slot from 0, BIOS area reserved", () => {
  const m = buildMemoryMap(512 * MIB);
  deepStrictEqual(m.ram, [{ gpa: 0, size: 512 * MIB }]);
  strictEqual(m.lowRamEnd, 512 * MIB);
  strictEqual(m.ramEnd, 512 * MIB);
  deepStrictEqual(e820Of(m), [
    [0, 0x9fc00, E820_RAM],
    [0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED],
    [0x100000, 512 * MIB - 0x100000, E820_RAM],
  ]);
  deepStrictEqual(m.vmbusMmio, [
    { gpa: 0xf000_0000, size: 128 * MIB },
    { gpa: FOUR_GIB, size: GIB },
  ]);
});

Deno.test("4 GiB: 3 GiB low, 1 GiB above 4 GiB, hole left out of e820", () => {
  const m = buildMemoryMap(4 * GIB);
  deepStrictEqual(m.ram, [{ gpa: 0, size: 3 * GIB }, { gpa: FOUR_GIB, size: GIB }]);
  strictEqual(m.lowRamEnd, MMIO_HOLE_START);
  strictEqual(m.ramEnd, 5 * GIB);
  deepStrictEqual(e820Of(m), [
    [0, 0x9fc00, E820_RAM],
    [0x9fc00, 0x60400, E820_RESERVED],
    [0x100000, 3 * GIB - 0x100000, E820_RAM],
    [FOUR_GIB, GIB, E820_RAM],
  ]);
  deepStrictEqual(m.vmbusMmio[1], { gpa: 5 * GIB, size: GIB });
});

Deno.test("8 GiB: high RAM to 9 GiB, VMBus high window after it", () => {
  const m = buildMemoryMap(8 * GIB);
  deepStrictEqual(m.ram, [{ gpa: 0, size: 3 * GIB }, { gpa: FOUR_GIB, size: 5 * GIB }]);
  deepStrictEqual(e820Of(m).at(-1), [FOUR_GIB, 5 * GIB, E820_RAM]);
  deepStrictEqual(m.vmbusMmio[1], { gpa: 9 * GIB, size: GIB });
  const total = m.e820.filter((e) => e.type === E820_RAM).reduce((n, e) => n + e.size, 0);
  strictEqual(total, 8 * GIB - (HIMEM_START - EBDA_START));
});

Deno.test("exactly 3 GiB needs no high range; an odd size above it is not aligned to GiB", () => {
  deepStrictEqual(buildMemoryMap(3 * GIB).ram, [{ gpa: 0, size: 3 * GIB }]);
  const m = buildMemoryMap(3 * GIB + 2 * MIB);
  deepStrictEqual(m.ram[1], { gpa: FOUR_GIB, size: 2 * MIB });
  deepStrictEqual(m.vmbusMmio[1], { gpa: 5 * GIB, size: GIB });
});

Deno.test("bad RAM sizes are usage errors", () => {
  throws(() => buildMemoryMap(512 * MIB + 1), UsageError);
  throws(() => buildMemoryMap(8 * MIB), /out of range/);
  throws(() => buildMemoryMap(Number.NaN), UsageError);
});

Deno.test("fixed addresses do not overlap and sit where the map says", () => {
  const low: [string, number, number][] = [
    ["gdt", BOOT_GDT_START, 0x60],
    ["zero page", ZERO_PAGE_START, 0x1000],
    ["page tables", PML4_START, PAGE_TABLES_END - PML4_START],
    ["cmdline", CMDLINE_START, CMDLINE_MAX_SIZE],
  ];
  const sorted = [...low].sort((a, b) => a[1] - b[1]);
  for (let i = 1; i < sorted.length; i++) {
    const [pn, pa, ps] = sorted[i - 1]!;
    const [n, a] = sorted[i]!;
    if (pa + ps > a) throw new Error(`${pn} overlaps ${n}`);
  }
  for (const [, a, s] of low) {
    if (a + s > EBDA_START) throw new Error("boot structure outside usable low RAM");
  }
  strictEqual(ACPI_START >= EBDA_START && ACPI_START < HIMEM_START, true);
  const hole = [VMBUS_LOW_MMIO_START, VMBUS_LOW_MMIO_START + VMBUS_LOW_MMIO_SIZE];
  strictEqual(hole[0]! >= MMIO_HOLE_START && hole[1]! <= IOAPIC_START, true);
  strictEqual(LAPIC_START > IOAPIC_START, true);
});
