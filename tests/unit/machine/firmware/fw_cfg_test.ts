import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { GuestMemory } from "../../../../src/kvm/guest_memory.ts";
import {
  buildAcpiImage,
  buildAcpiTables,
  relocateAcpiImage,
} from "../../../../src/machine/acpi/mod.ts";
import { ACPI_HEADER, FADT, RSDP, sum8 } from "../../../../src/machine/acpi/tables.ts";
import { ACPI_START, MIB } from "../../../../src/machine/layout.ts";
import { buildMemoryMap } from "../../../../src/machine/memory_map.ts";
import { buildFirmwareConfig, SYSTEM_STATES } from "../../../../src/machine/firmware/config.ts";
import { FwCfgBuilder, FwCfgDevice } from "../../../../src/machine/firmware/fw_cfg.ts";
import {
  FW_CFG_DMA_ACCESS,
  FW_CFG_DMA_CTL_ERROR,
  FW_CFG_DMA_CTL_READ,
  FW_CFG_DMA_CTL_SELECT,
  FW_CFG_DMA_CTL_SKIP,
  FW_CFG_DMA_CTL_WRITE,
  FW_CFG_E820_ENTRY,
  FW_CFG_FILE,
  FW_CFG_FILE_DIR,
  FW_CFG_ID,
  FW_CFG_NB_CPUS,
  FW_CFG_SIGNATURE,
  LOADER_ADD_CHECKSUM,
  LOADER_ADD_CHECKSUM_ENTRY,
  LOADER_ADD_POINTER,
  LOADER_ADD_POINTER_ENTRY,
  LOADER_ALLOCATE,
  LOADER_ALLOCATE_ENTRY,
  LOADER_ENTRY_SIZE,
} from "../../../../src/machine/firmware/fw_cfg_protocol.ts";
import { smbiosUuid } from "../../../../src/machine/firmware/smbios.ts";
import { prng } from "../../prng.ts";

const RAM_SIZE = 2 * MIB;
const DESC = 0x1000; // where the tests put DMA descriptors
const BUF = 0x2000; // and DMA buffers

function machine() {
  const ram = new Uint8Array(RAM_SIZE);
  const memory = new GuestMemory([{ gpa: 0, bytes: ram }]);
  const state = buildFirmwareConfig({
    cpus: 3,
    map: buildMemoryMap(64 * MIB),
    acpi: { cpus: 3, pmTimer: true },
    bootOrder: ["/pci@i0cf8/pci8086,2922@3/drive@1/disk@0"],
    uuid: smbiosUuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8")!,
  });
  return { ram, memory, state, dev: new FwCfgDevice(state, memory) };
}

const le16 = (v: number) => Uint8Array.of(v & 0xff, v >> 8);
const be32 = (v: number) => Uint8Array.of(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);

function select(dev: FwCfgDevice, key: number) {
  dev.write(0, le16(key));
}

function readPort(dev: FwCfgDevice, n: number): Uint8Array {
  const out = new Uint8Array(n);
  const b = new Uint8Array(1);
  for (let i = 0; i < n; i++) {
    dev.read(1, b);
    out[i] = b[0]!;
  }
  return out;
}

/** The DMA transfer as OVMF's QemuFwCfgLib issues it; returns the control word written back. */
function dma(
  m: ReturnType<typeof machine>,
  control: number,
  length: number,
  address: bigint,
  desc = DESC,
): number {
  FW_CFG_DMA_ACCESS.encode({ control, length, address }, m.ram, desc);
  const gpa = BigInt(desc);
  m.dev.write(4, be32(Number(gpa >> 32n)));
  m.dev.write(8, be32(Number(gpa & 0xffff_ffffn)));
  return FW_CFG_DMA_ACCESS.get(m.ram, desc, "control");
}

function findFile(m: ReturnType<typeof machine>, name: string) {
  select(m.dev, FW_CFG_FILE_DIR);
  const count = new DataView(readPort(m.dev, 4).buffer).getUint32(0, false);
  const dir = readPort(m.dev, count * FW_CFG_FILE.size);
  for (let i = 0; i < count; i++) {
    const e = FW_CFG_FILE.decode(dir, i * FW_CFG_FILE.size)!;
    const n = new TextDecoder().decode(e.name).replace(/\0.*$/s, "");
    if (n === name) return { key: e.select, size: e.size };
  }
  return undefined;
}

function readFileDma(m: ReturnType<typeof machine>, name: string): Uint8Array {
  const f = findFile(m, name);
  ok(f, `${name} is in the directory`);
  strictEqual(
    dma(m, FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ | (f.key << 16), f.size, BigInt(BUF)),
    0,
  );
  return m.ram.slice(BUF, BUF + f.size);
}

Deno.test("fw_cfg wire structures have their sizes", () => {
  strictEqual(FW_CFG_DMA_ACCESS.size, 16);
  strictEqual(FW_CFG_FILE.size, 64);
  strictEqual(FW_CFG_E820_ENTRY.size, 20);
  strictEqual(LOADER_ALLOCATE_ENTRY.size, LOADER_ENTRY_SIZE);
  strictEqual(LOADER_ADD_POINTER_ENTRY.size, 128);
  strictEqual(LOADER_ADD_CHECKSUM_ENTRY.size, 128);
  strictEqual(LOADER_ADD_POINTER_ENTRY.fields.size.offset, 120);
});

Deno.test("fw_cfg port interface: signature, ID with DMA, CPU count, DMA register signature", () => {
  const m = machine();
  select(m.dev, FW_CFG_SIGNATURE);
  strictEqual(new TextDecoder().decode(readPort(m.dev, 4)), "QEMU");
  strictEqual(readPort(m.dev, 2).join(), "0,0", "past the end reads zero");
  select(m.dev, FW_CFG_ID);
  deepStrictEqual([...readPort(m.dev, 4)], [3, 0, 0, 0]);
  select(m.dev, FW_CFG_NB_CPUS);
  deepStrictEqual([...readPort(m.dev, 2)], [3, 0]);
  const sig = new Uint8Array(8);
  for (let i = 0; i < 8; i++) m.dev.read(4 + i, sig.subarray(i, i + 1));
  strictEqual(new TextDecoder().decode(sig), "QEMU CFG");
  select(m.dev, 0x1234); // no such item
  deepStrictEqual([...readPort(m.dev, 3)], [0, 0, 0]);
});

Deno.test("fw_cfg file directory is big-endian, sorted, and names every file", () => {
  const m = machine();
  select(m.dev, FW_CFG_FILE_DIR);
  const count = new DataView(readPort(m.dev, 4).buffer).getUint32(0, false);
  const dir = readPort(m.dev, count * 64);
  const names = [];
  for (let i = 0; i < count; i++) {
    names.push(
      new TextDecoder().decode(FW_CFG_FILE.decode(dir, i * 64)!.name).replace(/\0.*$/s, ""),
    );
  }
  deepStrictEqual(names, [...names].sort());
  for (
    const n of [
      "bootorder",
      "etc/acpi/rsdp",
      "etc/acpi/tables",
      "etc/boot-fail-wait",
      "etc/e820",
      "etc/system-states",
      "etc/table-loader",
      "etc/smbios/smbios-anchor",
      "etc/smbios/smbios-tables",
    ]
  ) ok(names.includes(n), n);
});

Deno.test("fw_cfg DMA: select+read, skip, read past the end, e820 and system states", () => {
  const m = machine();
  const e820 = readFileDma(m, "etc/e820");
  strictEqual(e820.length, 20);
  deepStrictEqual(FW_CFG_E820_ENTRY.decode(e820), {
    address: 0n,
    length: BigInt(64 * MIB),
    type: 1,
  });
  deepStrictEqual([...readFileDma(m, "etc/system-states")], [...SYSTEM_STATES]);
  strictEqual(
    new TextDecoder().decode(readFileDma(m, "bootorder")),
    "/pci@i0cf8/pci8086,2922@3/drive@1/disk@0\0",
  );
  const wait = readFileDma(m, "etc/boot-fail-wait");
  strictEqual(new DataView(wait.buffer).getInt32(0, true), -1);
  // Skip 2 bytes of the signature, then read 4: "MU" and two zeros past the end.
  strictEqual(dma(m, FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_SKIP, 2, 0n), 0);
  m.ram.fill(0xaa, BUF, BUF + 4);
  strictEqual(dma(m, FW_CFG_DMA_CTL_READ, 4, BigInt(BUF)), 0);
  deepStrictEqual([...m.ram.subarray(BUF, BUF + 4)], [0x4d, 0x55, 0, 0]);
});

Deno.test("fw_cfg DMA refuses hostile addresses and writes with the error bit", () => {
  const m = machine();
  const before = m.ram.slice();
  const sel = FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ;
  strictEqual(dma(m, sel, 4, BigInt(RAM_SIZE - 2)), FW_CFG_DMA_CTL_ERROR, "straddles RAM's end");
  strictEqual(dma(m, sel, 4, 0xfee0_0000n), FW_CFG_DMA_CTL_ERROR, "LAPIC page");
  strictEqual(dma(m, sel, 4, 0xffff_ffff_ffff_fff0n), FW_CFG_DMA_CTL_ERROR, "beyond 2^53");
  strictEqual(dma(m, sel, 0xffff_ffff, 0n), FW_CFG_DMA_CTL_ERROR, "4 GiB into 2 MiB of RAM");
  strictEqual(
    dma(m, FW_CFG_DMA_CTL_WRITE, 4, BigInt(BUF)),
    FW_CFG_DMA_CTL_ERROR,
    "no writable items",
  );
  // Descriptor outside RAM: nothing to report to, nothing written, no exception.
  m.dev.write(4, be32(0x1));
  m.dev.write(8, be32(0));
  strictEqual(m.dev.dmaErrors, 6);
  before.set(m.ram.subarray(DESC, DESC + 16), DESC); // only the descriptors changed
  deepStrictEqual(m.ram, before);
  // The device still works afterwards.
  strictEqual(dma(m, sel, 4, BigInt(BUF)), 0);
  strictEqual(new TextDecoder().decode(m.ram.subarray(BUF, BUF + 4)), "QEMU");
});

/** What OVMF's AcpiPlatformDxe does with the loader script, into `mem` at `base`. */
function runLoader(files: Map<string, Uint8Array>, mem: Uint8Array, base: number) {
  const script = files.get("etc/table-loader")!;
  const placed = new Map<string, number>();
  let next = base;
  const nameOf = (b: Uint8Array) => new TextDecoder().decode(b).replace(/\0.*$/s, "");
  for (let at = 0; at < script.length; at += 128) {
    const cmd = new DataView(script.buffer, script.byteOffset + at).getUint32(0, true);
    if (cmd === LOADER_ALLOCATE) {
      const e = LOADER_ALLOCATE_ENTRY.decode(script, at)!;
      const data = files.get(nameOf(e.file))!;
      next = Math.ceil(next / e.align) * e.align;
      placed.set(nameOf(e.file), next);
      mem.set(data, next);
      next += data.length;
    } else if (cmd === LOADER_ADD_POINTER) {
      const e = LOADER_ADD_POINTER_ENTRY.decode(script, at)!;
      const dst = placed.get(nameOf(e.pointer_file))! + e.offset;
      const target = placed.get(nameOf(e.pointee_file))!;
      const dv = new DataView(mem.buffer);
      const old = e.size === 8 ? Number(dv.getBigUint64(dst, true)) : dv.getUint32(dst, true);
      ok(old < files.get(nameOf(e.pointee_file))!.length, "pointer value inside its pointee");
      if (e.size === 8) dv.setBigUint64(dst, BigInt(old + target), true);
      else dv.setUint32(dst, old + target, true);
    } else if (cmd === LOADER_ADD_CHECKSUM) {
      const e = LOADER_ADD_CHECKSUM_ENTRY.decode(script, at)!;
      const b = placed.get(nameOf(e.file))!;
      // As OVMF does it: over the whole range, the checksum byte's current value included.
      mem[b + e.offset] = (0x100 - sum8(mem.subarray(b + e.start, b + e.start + e.length))) & 0xff;
    } else throw new Error(`unexpected loader command ${cmd}`);
  }
  return placed;
}

Deno.test("table-loader ACPI, linked as OVMF links it, is the direct-boot ACPI byte for byte", () => {
  const m = machine();
  const files = new Map<string, Uint8Array>();
  for (const n of ["etc/table-loader", "etc/acpi/rsdp", "etc/acpi/tables"]) {
    files.set(n, readFileDma(m, n));
  }
  strictEqual(files.get("etc/table-loader")!.length % 128, 0);
  // Link with the RSDP at ACPI_START and the tables right after, where direct boot puts them.
  const mem = new Uint8Array(RAM_SIZE);
  const placed = runLoader(files, mem, ACPI_START);
  strictEqual(placed.get("etc/acpi/rsdp"), ACPI_START);
  strictEqual(placed.get("etc/acpi/tables"), ACPI_START + 0x40);
  const direct = buildAcpiTables({ cpus: 3, pmTimer: true });
  deepStrictEqual(mem.subarray(ACPI_START, ACPI_START + direct.bytes.length), direct.bytes);
  // Anywhere else: every checksum holds and the pointers chain RSDP -> XSDT -> FADT -> DSDT.
  const mem2 = new Uint8Array(RAM_SIZE);
  const p2 = runLoader(files, mem2, 0x12_3450);
  const rsdp = p2.get("etc/acpi/rsdp")!;
  strictEqual(sum8(mem2.subarray(rsdp, rsdp + 20)), 0);
  strictEqual(sum8(mem2.subarray(rsdp, rsdp + 36)), 0);
  const xsdt = Number(RSDP.get(mem2, rsdp, "xsdt_address"));
  const len = (a: number) => ACPI_HEADER.get(mem2, a, "length");
  const sig = (a: number) => new TextDecoder().decode(mem2.subarray(a, a + 4));
  strictEqual(sig(xsdt), "XSDT");
  strictEqual(sum8(mem2.subarray(xsdt, xsdt + len(xsdt))), 0);
  const fadt = Number(new DataView(mem2.buffer).getBigUint64(xsdt + 36, true));
  strictEqual(sig(fadt), "FACP");
  strictEqual(sum8(mem2.subarray(fadt, fadt + len(fadt))), 0);
  const dsdt = FADT.get(mem2, fadt, "dsdt");
  strictEqual(sig(dsdt), "DSDT");
  strictEqual(sum8(mem2.subarray(dsdt, dsdt + len(dsdt))), 0);
  strictEqual(sig(FADT.get(mem2, fadt, "firmware_ctrl")), "FACS");
  const image = buildAcpiImage({ cpus: 3, pmTimer: true });
  const reloc = relocateAcpiImage(image, p2.get("etc/acpi/tables")!);
  deepStrictEqual(
    mem2.subarray(p2.get("etc/acpi/tables")!, p2.get("etc/acpi/tables")! + reloc.tables.length),
    reloc.tables,
  );
});

Deno.test("fw_cfg builder refuses duplicate, long and reserved names and keys", () => {
  const b = new FwCfgBuilder();
  b.addFile("a", new Uint8Array(1));
  let threw = 0;
  for (
    const f of [
      () => b.addFile("a", new Uint8Array(1)),
      () => b.addFile("x".repeat(56), new Uint8Array(1)),
      () => b.addItem(0x20, new Uint8Array(1)),
      () => b.addItem(0x19, new Uint8Array(1)),
    ]
  ) {
    try {
      f();
    } catch {
      threw++;
    }
  }
  strictEqual(threw, 4);
});

Deno.test("fw_cfg fuzz: random port and DMA traffic never throws and writes only where asked", () => {
  const rng = prng(0xf0c);
  const low = new Uint8Array(8 * 1024);
  const high = new Uint8Array(8 * 1024);
  const HIGH = 0x1_0000_0000;
  const memory = new GuestMemory([{ gpa: 0, bytes: low }, { gpa: HIGH, bytes: high }]);
  const state = buildFirmwareConfig({ cpus: 1, map: buildMemoryMap(16 * MIB), acpi: { cpus: 1 } });
  const dev = new FwCfgDevice(state, memory);
  const keys = [...state.items.map((i) => i.key), 0x4020, 0xffff, 0x8000];
  const randAddr = () =>
    rng.pick([
      () => rng.int(low.length + 64),
      () => HIGH - 8 + rng.int(16),
      () => HIGH + rng.int(high.length + 64),
      () => rng.int(0x1_0000_0000),
    ])();
  for (let iter = 0; iter < 3000; iter++) {
    const snapLow = low.slice();
    const snapHigh = high.slice();
    const allowed: [number, number][] = [];
    const kind = rng.int(5);
    const data = new Uint8Array(rng.pick([1, 2, 4]));
    for (let i = 0; i < data.length; i++) data[i] = rng.int(256);
    if (kind === 0) dev.read(rng.int(14), data);
    else if (kind === 1) dev.write(rng.int(14), data);
    else {
      const desc = randAddr();
      const address = rng.chance(0.1) ? BigInt(rng.int(2 ** 31)) << 32n : BigInt(randAddr());
      const length = rng.chance(0.1) ? rng.int(2 ** 32) : rng.int(300);
      const control = (rng.pick(keys) << 16) | rng.int(32);
      const d = memory.trySlice(desc, 16);
      if (d) FW_CFG_DMA_ACCESS.encode({ control, length, address }, d);
      snapLow.set(low);
      snapHigh.set(high);
      allowed.push([desc, desc + 16], [Number(address), Number(address) + length]);
      dev.write(4, be32(Math.floor(desc / HIGH)));
      dev.write(8, be32(desc % HIGH));
    }
    for (const [bytes, base] of [[low, 0], [high, HIGH]] as const) {
      const snap = base === 0 ? snapLow : snapHigh;
      for (let i = 0; i < bytes.length; i++) {
        if (bytes[i] !== snap[i]) {
          const gpa = base + i;
          ok(
            allowed.some(([a, b]) => gpa >= a && gpa < b),
            `iteration ${iter}: byte 0x${gpa.toString(16)} changed`,
          );
        }
      }
    }
  }
});
