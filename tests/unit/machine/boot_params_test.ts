import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  BOOT_PARAMS,
  BOOT_PARAMS_SIZE,
  buildBootParams,
  CAN_USE_HEAP,
  E820_ENTRY,
  LOADED_HIGH,
  readE820,
} from "../../../src/machine/boot_params.ts";
import { buildMemoryMap, E820_RAM } from "../../../src/machine/memory_map.ts";
import { GIB } from "../../../src/machine/layout.ts";

Deno.test("boot_params and boot_e820_entry sizes are pinned", () => {
  strictEqual(BOOT_PARAMS.size, 4096);
  strictEqual(BOOT_PARAMS_SIZE, 0x1000);
  strictEqual(E820_ENTRY.size, 20);
});

Deno.test("boot_params field offsets match arch/x86/include/uapi/asm/bootparam.h", () => {
  const f = BOOT_PARAMS.fields;
  const expect: Record<string, number> = {
    acpi_rsdp_addr: 0x070,
    ext_ramdisk_image: 0x0c0,
    ext_ramdisk_size: 0x0c4,
    ext_cmd_line_ptr: 0x0c8,
    e820_entries: 0x1e8,
    sentinel: 0x1ef,
    setup_sects: 0x1f1,
    syssize: 0x1f4,
    boot_flag: 0x1fe,
    header: 0x202,
    version: 0x206,
    type_of_loader: 0x210,
    loadflags: 0x211,
    code32_start: 0x214,
    ramdisk_image: 0x218,
    ramdisk_size: 0x21c,
    heap_end_ptr: 0x224,
    cmd_line_ptr: 0x228,
    initrd_addr_max: 0x22c,
    kernel_alignment: 0x230,
    relocatable_kernel: 0x234,
    xloadflags: 0x236,
    cmdline_size: 0x238,
    pref_address: 0x258,
    init_size: 0x260,
    kernel_info_offset: 0x268,
    e820_table: 0x2d0,
  };
  for (const [k, off] of Object.entries(expect)) {
    strictEqual(f[k as keyof typeof f].offset, off, k);
  }
  // e820_table is 128 entries of 20 bytes and ends where _pad8 begins (0xcd0).
  const t = f.e820_table.type as { bytes: number };
  strictEqual(f.e820_table.offset + t.bytes, 0xcd0);
});

function fakeKernel(): Uint8Array {
  const k = new Uint8Array(0x1000);
  k[0x1ef] = 0xff; // sentinel lives before the header and must not be copied
  k[0x201] = 0x6a; // header ends at 0x26c
  BOOT_PARAMS.set(k, 0, "header", 0x53726448);
  BOOT_PARAMS.set(k, 0, "version", 0x020f);
  BOOT_PARAMS.set(k, 0, "loadflags", LOADED_HIGH);
  BOOT_PARAMS.set(k, 0, "kernel_info_offset", 0x1234);
  k[0x270] = 0xee; // past the header: not copied
  return k;
}

Deno.test("buildBootParams copies the setup header and fills the loader fields", () => {
  const k = fakeKernel();
  const m = buildMemoryMap(8 * GIB);
  const zp = buildBootParams(k, {
    loadAddress: 0x100_0000,
    cmdlineAddress: 0x2_0000,
    initrd: { gpa: 0x7f00_0000, size: 0x12_3456 },
    e820: m.e820,
    acpiRsdpAddress: 0xe_0000,
  });
  const P = BOOT_PARAMS;
  strictEqual(zp.length, 4096);
  strictEqual(zp[0x1ef], 0, "sentinel stays clear");
  strictEqual(zp[0x270], 0, "nothing past the header is copied");
  strictEqual(P.get(zp, 0, "header"), 0x53726448);
  strictEqual(P.get(zp, 0, "kernel_info_offset"), 0x1234);
  strictEqual(P.get(zp, 0, "type_of_loader"), 0xff);
  strictEqual(P.get(zp, 0, "loadflags"), LOADED_HIGH | CAN_USE_HEAP);
  strictEqual(P.get(zp, 0, "heap_end_ptr"), 0xfe00);
  strictEqual(P.get(zp, 0, "code32_start"), 0x100_0000);
  strictEqual(P.get(zp, 0, "cmd_line_ptr"), 0x2_0000);
  strictEqual(P.get(zp, 0, "ext_cmd_line_ptr"), 0);
  strictEqual(P.get(zp, 0, "ramdisk_image"), 0x7f00_0000);
  strictEqual(P.get(zp, 0, "ramdisk_size"), 0x12_3456);
  strictEqual(P.get(zp, 0, "ext_ramdisk_image"), 0);
  strictEqual(P.get(zp, 0, "acpi_rsdp_addr"), 0xe_0000n);
  strictEqual(zp[0x1e8], 4);
  deepStrictEqual(readE820(zp), m.e820);
  // Raw bytes of the last entry (high RAM at 4 GiB).
  const dv = new DataView(zp.buffer);
  strictEqual(dv.getBigUint64(0x2d0 + 3 * 20, true), 0x1_0000_0000n);
  strictEqual(dv.getBigUint64(0x2d0 + 3 * 20 + 8, true), 5n * 0x4000_0000n);
  strictEqual(dv.getUint32(0x2d0 + 3 * 20 + 16, true), E820_RAM);
});

Deno.test("addresses above 4 GiB split into the ext_ fields", () => {
  const zp = buildBootParams(fakeKernel(), {
    loadAddress: 0x100_0000,
    cmdlineAddress: 0x1_2345_6000,
    initrd: { gpa: 0x2_0000_1000, size: 0x1000 },
    e820: [],
  });
  strictEqual(BOOT_PARAMS.get(zp, 0, "cmd_line_ptr"), 0x2345_6000);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ext_cmd_line_ptr"), 1);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ramdisk_image"), 0x1000);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ext_ramdisk_image"), 2);
  strictEqual(BOOT_PARAMS.get(zp, 0, "acpi_rsdp_addr"), 0n);
});

Deno.test("more than 128 e820 entries is refused", () => {
  const e820 = Array.from({ length: 129 }, (_, i) => ({ addr: i * 0x1000, size: 0x1000, type: 1 }));
  throws(
    () => buildBootParams(fakeKernel(), { loadAddress: 0, cmdlineAddress: 0, e820 }),
    RangeError,
  );
});
