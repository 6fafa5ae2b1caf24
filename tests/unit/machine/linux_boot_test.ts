import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { BOOT_PARAMS, readE820 } from "../../../src/machine/boot_params.ts";
import {
  CMDLINE_START,
  GIB,
  HIMEM_START,
  MIB,
  ZERO_PAGE_START,
} from "../../../src/machine/layout.ts";
import {
  loadLinux,
  parseBzImage,
  placeInitrd,
  placeKernel,
} from "../../../src/machine/linux_boot.ts";
import { buildMemoryMap, type MemoryMap } from "../../../src/machine/memory_map.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { fakeImage } from "./fake_bzimage.ts";

const REAL_KERNEL = "/boot/vmlinuz-6.1.0-56-amd64";

function memoryFor(map: MemoryMap): GuestMemory {
  return new GuestMemory(map.ram.map((r) => ({ gpa: r.gpa, bytes: new Uint8Array(r.size) })));
}

Deno.test("parseBzImage reads a synthetic header", () => {
  const h = parseBzImage(fakeImage({ setupSects: 0, payload: 0x3000 }));
  strictEqual(h.setupSects, 4, "setup_sects 0 means 4");
  strictEqual(h.kernelOffset, 5 * 512);
  strictEqual(h.kernelSize, 0x3000);
  strictEqual(h.protocol, 0x020f);
  strictEqual(h.prefAddress, 0x100_0000);
  strictEqual(h.version, "6.1.0-test (x@y) #1");
});

Deno.test("parseBzImage rejects what is not a usable bzImage, with clear messages", () => {
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(0), /not a Linux bzImage/],
    [new Uint8Array(0x2000), /not a Linux bzImage/],
    [Uint8Array.of(0x7f, 0x45, 0x4c, 0x46, 2, 1, 1), /ELF file/],
    [fakeImage().subarray(0, 0x240), /truncated.*setup header/],
    [fakeImage({ version: 0x020b }), /boot protocol 2\.11; .*2\.12 or later/],
    [fakeImage({ version: 0x0204 }), /boot protocol 2\.04/],
    [fakeImage({ loadflags: 0 }), /zImage/],
    [fakeImage({ xloadflags: 0x2 }), /not a 64-bit kernel/],
    [fakeImage({ payload: 0x100, syssize: 0x100 }), /truncated: the header announces 4096/],
    [fakeImage({ setupSects: 60 }).subarray(0, 0x1000), /truncated: its 60 setup sectors/],
    [fakeImage({ alignment: 0x30_0000 }), /kernel_alignment 0x300000/],
  ];
  for (const [img, re] of cases) {
    throws(() => parseBzImage(img, "bzImage"), (e: unknown) => {
      ok(e instanceof UsageError, `${re}: ${e}`);
      ok(re.test(e.message), `${re} !~ ${e.message}`);
      return true;
    });
  }
  const bad = new Uint8Array(0x2000);
  throws(() => parseBzImage(bad, "/tmp/x"), /^UsageError: \/tmp\/x is not a Linux bzImage/);
});

Deno.test("the real Debian kernel header parses", { ignore: !exists(REAL_KERNEL) }, () => {
  const h = parseBzImage(Deno.readFileSync(REAL_KERNEL), REAL_KERNEL);
  ok(h.protocol >= 0x020c);
  ok(h.relocatable);
  strictEqual(h.prefAddress, 0x100_0000);
  strictEqual(h.kernelAlignment, 0x20_0000);
  ok(h.initSize > h.kernelSize);
  ok(h.cmdlineSize >= 255);
  ok(h.version?.startsWith("6.1."), h.version);
});

Deno.test("placeKernel loads at pref_address and reserves init_size from the runtime start", () => {
  const h = parseBzImage(fakeImage({ initSize: 0x400_0000 }));
  deepStrictEqual(placeKernel(h, 256 * MIB), {
    loadAddress: 0x100_0000,
    entry: 0x100_0200,
    end: 0x500_0000,
  });
  throws(() => placeKernel(h, 64 * MIB), /needs guest RAM up to 0x5000000/);
  // No usable pref_address: load at 1 MiB; the 64-bit entry still runs from alignUp(load, align).
  const low = parseBzImage(fakeImage({ pref: 0n, initSize: 0x10_0000 }));
  deepStrictEqual(placeKernel(low, 256 * MIB), {
    loadAddress: HIMEM_START,
    entry: HIMEM_START + 0x200,
    end: 0x30_0000,
  });
});

Deno.test("placeInitrd: highest page below the limits, above the kernel", () => {
  const lim = { initrdAddrMax: 0x7fff_ffff, ramEnd: 256 * MIB, floor: 80 * MIB };
  strictEqual(placeInitrd(0x1000, lim), 256 * MIB - 0x1000);
  strictEqual(placeInitrd(0x1001, lim), 256 * MIB - 0x2000, "page aligned down");
  strictEqual(placeInitrd(176 * MIB, lim), 80 * MIB, "fits exactly");
  throws(() => placeInitrd(176 * MIB + 1, lim), /does not fit.*give the VM 1 MiB more/);
  // initrd_addr_max caps below RAM end (inclusive address of the last byte).
  const capped = { initrdAddrMax: 0x0fff_ffff, ramEnd: 3 * GIB, floor: 80 * MIB };
  strictEqual(placeInitrd(MIB, capped), 0x1000_0000 - MIB);
  throws(() => placeInitrd(200 * MIB, capped), /highest address the kernel accepts/);
  throws(() => placeInitrd(0, lim), RangeError);
});

Deno.test("loadLinux writes kernel, cmdline, initrd and zero page", () => {
  const map = buildMemoryMap(256 * MIB);
  const mem = memoryFor(map);
  const kernel = fakeImage({ payload: 0x5000, initSize: 0x100_0000 });
  const initrd = new Uint8Array(0x1800).fill(0x5a);
  const boot = loadLinux(mem, {
    kernel,
    initrd,
    cmdline: "console=ttyS0 panic=-1",
    memoryMap: map,
    acpiRsdpAddress: 0xe_0000,
  });
  strictEqual(boot.entry, 0x100_0200);
  strictEqual(boot.zeroPage, ZERO_PAGE_START);
  strictEqual(boot.loadAddress, 0x100_0000);
  deepStrictEqual(boot.initrd, { gpa: 256 * MIB - 0x2000, size: 0x1800 });
  strictEqual(mem.readU8(0x100_0000), 0xab);
  strictEqual(mem.readU8(0x100_0000 + 0x4fff), 0xab);
  strictEqual(mem.readU8(boot.initrd!.gpa + 0x17ff), 0x5a);
  const cmd = mem.slice(CMDLINE_START, boot.cmdline.size);
  strictEqual(new TextDecoder().decode(cmd), "console=ttyS0 panic=-1\0");
  const zp = mem.slice(ZERO_PAGE_START, 4096);
  strictEqual(BOOT_PARAMS.get(zp, 0, "cmd_line_ptr"), CMDLINE_START);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ramdisk_image"), boot.initrd!.gpa);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ramdisk_size"), 0x1800);
  strictEqual(BOOT_PARAMS.get(zp, 0, "acpi_rsdp_addr"), 0xe_0000n);
  strictEqual(BOOT_PARAMS.get(zp, 0, "type_of_loader"), 0xff);
  deepStrictEqual(readE820(zp), map.e820);
});

Deno.test("loadLinux without initrd leaves the ramdisk fields zero", () => {
  const map = buildMemoryMap(64 * MIB);
  const mem = memoryFor(map);
  const boot = loadLinux(mem, { kernel: fakeImage(), memoryMap: map, initrd: new Uint8Array() });
  strictEqual(boot.initrd, undefined);
  const zp = mem.slice(ZERO_PAGE_START, 4096);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ramdisk_image"), 0);
  strictEqual(BOOT_PARAMS.get(zp, 0, "ramdisk_size"), 0);
  strictEqual(mem.readU8(CMDLINE_START), 0, "empty command line is just the NUL");
});

Deno.test("loadLinux refuses an over-long command line and an initrd that does not fit", () => {
  const map = buildMemoryMap(64 * MIB);
  const mem = memoryFor(map);
  const kernel = fakeImage({ cmdlineSize: 16 });
  loadLinux(mem, { kernel, memoryMap: map, cmdline: "x".repeat(16) });
  throws(
    () => loadLinux(mem, { kernel, memoryMap: map, cmdline: "x".repeat(17) }),
    /command line is 17 bytes; kernel image accepts at most 16/,
  );
  throws(() => loadLinux(mem, { kernel, memoryMap: map, cmdline: "a\0b" }), /NUL/);
  throws(
    () => loadLinux(mem, { kernel, memoryMap: map, initrd: new Uint8Array(60 * MIB) }),
    (e: unknown) => e instanceof UsageError && /initrd/.test(e.message),
  );
});

Deno.test("loadLinux boots the real Debian kernel layout", { ignore: !exists(REAL_KERNEL) }, () => {
  const map = buildMemoryMap(512 * MIB);
  const mem = memoryFor(map);
  const kernel = Deno.readFileSync(REAL_KERNEL);
  const boot = loadLinux(mem, {
    kernel,
    kernelName: REAL_KERNEL,
    initrd: new Uint8Array(30 * MIB).fill(7),
    cmdline: "console=ttyS0 earlyprintk=ttyS0 rdinit=/init",
    memoryMap: map,
    acpiRsdpAddress: 0xe_0000,
  });
  strictEqual(boot.entry, 0x100_0200);
  ok(boot.kernelEnd > 0x100_0000 + boot.image.initSize - 1);
  strictEqual(boot.initrd!.gpa + boot.initrd!.size, 512 * MIB);
  ok(boot.initrd!.gpa >= boot.kernelEnd);
  const pm = kernel.subarray(boot.image.kernelOffset);
  deepStrictEqual(mem.slice(boot.loadAddress, 64), pm.subarray(0, 64));
  const zp = mem.slice(ZERO_PAGE_START, 4096);
  deepStrictEqual(zp.subarray(0x202, 0x206), kernel.subarray(0x202, 0x206));
  // 96 MiB is too small for this kernel (it unpacks up to ~80 MiB) plus a 30 MiB initrd.
  const small = buildMemoryMap(96 * MIB);
  throws(
    () =>
      loadLinux(memoryFor(small), {
        kernel,
        initrd: new Uint8Array(30 * MIB),
        memoryMap: small,
      }),
    UsageError,
  );
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
