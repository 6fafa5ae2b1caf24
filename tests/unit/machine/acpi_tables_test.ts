import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { vmbusAcpiNode } from "../../../src/vmbus/acpi.ts";
import { buildAcpiTables } from "../../../src/machine/acpi/mod.ts";
import {
  ACPI_HEADER,
  FACS,
  FADT,
  GAS,
  MADT,
  MADT_INTERRUPT_OVERRIDE,
  MADT_IO_APIC,
  MADT_LOCAL_APIC,
  MADT_LOCAL_APIC_NMI,
  RSDP,
  sum8,
} from "../../../src/machine/acpi/tables.ts";
import { ACPI_START, GIB, MIB, RSDP_ADDR } from "../../../src/machine/layout.ts";
import { buildMemoryMap } from "../../../src/machine/memory_map.ts";

const VMBUS = buildMemoryMap(8 * GIB).vmbusMmio;

function tableAt(blob: Uint8Array, gpa: number): Uint8Array {
  const off = gpa - ACPI_START;
  const len = ACPI_HEADER.get(blob, off, "length");
  return blob.subarray(off, off + len);
}

function sig(t: Uint8Array): string {
  return new TextDecoder().decode(t.subarray(0, 4));
}

Deno.test("ACPI structure sizes are pinned", () => {
  strictEqual(ACPI_HEADER.size, 36);
  strictEqual(RSDP.size, 36);
  strictEqual(GAS.size, 12);
  strictEqual(FADT.size, 276);
  strictEqual(FACS.size, 64);
  strictEqual(MADT.size, 44);
  strictEqual(MADT_LOCAL_APIC.size, 8);
  strictEqual(MADT_IO_APIC.size, 12);
  strictEqual(MADT_INTERRUPT_OVERRIDE.size, 10);
  strictEqual(MADT_LOCAL_APIC_NMI.size, 6);
});

Deno.test("RSDP, XSDT, RSDT point at the tables and every checksum is right", () => {
  const acpi = buildAcpiTables({ cpus: 4, devices: [vmbusAcpiNode(VMBUS)] });
  strictEqual(acpi.gpa, ACPI_START);
  strictEqual(acpi.rsdpAddress, RSDP_ADDR);
  const b = acpi.bytes;
  const rsdp = b.subarray(0, 36);
  strictEqual(new TextDecoder().decode(rsdp.subarray(0, 8)), "RSD PTR ");
  strictEqual(sum8(rsdp.subarray(0, 20)), 0, "RSDP v1 checksum");
  strictEqual(sum8(rsdp), 0, "RSDP extended checksum");
  strictEqual(RSDP.get(rsdp, 0, "revision"), 2);
  const xsdt = tableAt(b, Number(RSDP.get(rsdp, 0, "xsdt_address")));
  const rsdt = tableAt(b, RSDP.get(rsdp, 0, "rsdt_address"));
  strictEqual(sig(xsdt), "XSDT");
  strictEqual(sig(rsdt), "RSDT");
  const dv = new DataView(xsdt.buffer, xsdt.byteOffset);
  const pointed = [0, 1].map((i) => Number(dv.getBigUint64(36 + 8 * i, true)));
  deepStrictEqual(pointed.map((a) => sig(tableAt(b, a))), ["FACP", "APIC"]);
  const rv = new DataView(rsdt.buffer, rsdt.byteOffset);
  deepStrictEqual([rv.getUint32(36, true), rv.getUint32(40, true)], pointed);

  const fadt = tableAt(b, pointed[0]!);
  strictEqual(fadt.length, 276);
  const dsdtAddr = FADT.get(fadt, 0, "dsdt");
  strictEqual(FADT.get(fadt, 0, "x_dsdt"), BigInt(dsdtAddr));
  const dsdt = tableAt(b, dsdtAddr);
  strictEqual(sig(dsdt), "DSDT");
  const facsAddr = FADT.get(fadt, 0, "firmware_ctrl");
  strictEqual(facsAddr % 64, 0, "FACS 64-byte aligned");
  strictEqual(
    new TextDecoder().decode(b.subarray(facsAddr - ACPI_START, facsAddr - ACPI_START + 4)),
    "FACS",
  );

  for (const t of acpi.tables) {
    if (t.signature === "RSD PTR " || t.signature === "FACS") continue;
    const bytes = tableAt(b, t.gpa);
    strictEqual(bytes.length, t.length);
    strictEqual(sum8(bytes), 0, `${t.signature} checksum`);
  }
  deepStrictEqual(acpi.tables.map((t) => t.signature), [
    "RSD PTR ",
    "FACS",
    "DSDT",
    "FACP",
    "APIC",
    "XSDT",
    "RSDT",
  ]);
  ok(b.length < 0x2000);
});

Deno.test("FADT describes the PM1a blocks, reset register and SCI", () => {
  const acpi = buildAcpiTables({ cpus: 1 });
  const fadt = tableAt(acpi.bytes, acpi.tables.find((t) => t.signature === "FACP")!.gpa);
  strictEqual(ACPI_HEADER.get(fadt, 0, "revision"), 6);
  strictEqual(FADT.get(fadt, 0, "sci_int"), 9);
  strictEqual(FADT.get(fadt, 0, "smi_cmd"), 0);
  strictEqual(FADT.get(fadt, 0, "pm1a_evt_blk"), 0x600);
  strictEqual(FADT.get(fadt, 0, "pm1a_cnt_blk"), 0x604);
  strictEqual(FADT.get(fadt, 0, "pm1_evt_len"), 4);
  strictEqual(FADT.get(fadt, 0, "pm1_cnt_len"), 2);
  strictEqual(FADT.get(fadt, 0, "pm_tmr_blk"), 0);
  const flags = FADT.get(fadt, 0, "flags");
  ok(flags & (1 << 10), "RESET_REG_SUP");
  strictEqual(flags & (1 << 20), 0, "not HW-reduced");
  strictEqual(flags & (1 << 4), 0, "fixed-feature power button");
  strictEqual(FADT.get(fadt, 0, "iapc_boot_arch"), 0b111, "legacy devices, 8042, no VGA");
  strictEqual(FADT.get(fadt, 0, "century"), 0x32);
  const reset = GAS.decode(FADT.get(fadt, 0, "reset_reg"))!;
  deepStrictEqual(reset, {
    space_id: 1,
    bit_width: 8,
    bit_offset: 0,
    access_size: 1,
    address: 0xcf9n,
  });
  strictEqual(FADT.get(fadt, 0, "reset_value"), 6);
  const cnt = GAS.decode(FADT.get(fadt, 0, "x_pm1a_cnt_blk"))!;
  strictEqual(cnt.address, 0x604n);
  strictEqual(cnt.bit_width, 16);

  const other = buildAcpiTables({ cpus: 1, i8042: false, rtc: false, pmTimer: true });
  const f2 = tableAt(other.bytes, other.tables.find((t) => t.signature === "FACP")!.gpa);
  strictEqual(FADT.get(f2, 0, "iapc_boot_arch"), 0b100101);
  strictEqual(FADT.get(f2, 0, "pm_tmr_blk"), 0x608);
  strictEqual(FADT.get(f2, 0, "pm_tmr_len"), 4);
  // The PIIX4 PM timer is 24 bits wide: TMR_VAL_EXT stays clear.
  strictEqual(FADT.get(f2, 0, "flags") & (1 << 8), 0, "TMR_VAL_EXT");
});

function madtEntries(madt: Uint8Array): [number, Uint8Array][] {
  const out: [number, Uint8Array][] = [];
  for (let at = MADT.size; at < madt.length;) {
    const type = madt[at]!;
    const len = madt[at + 1]!;
    ok(len >= 2);
    out.push([type, madt.subarray(at, at + len)]);
    at += len;
  }
  return out;
}

Deno.test("MADT: one enabled local APIC per vCPU, IOAPIC, SCI override, NMI", () => {
  for (const cpus of [1, 2, 8, 255]) {
    const acpi = buildAcpiTables({ cpus });
    const madt = tableAt(acpi.bytes, acpi.tables.find((t) => t.signature === "APIC")!.gpa);
    strictEqual(sum8(madt), 0);
    strictEqual(MADT.get(madt, 0, "local_apic_address"), 0xfee0_0000);
    strictEqual(MADT.get(madt, 0, "flags"), 1);
    const entries = madtEntries(madt);
    const lapics = entries.filter(([t]) => t === 0).map(([, e]) => MADT_LOCAL_APIC.decode(e)!);
    strictEqual(lapics.length, cpus);
    lapics.forEach((l, i) => {
      strictEqual(l.apic_id, i);
      strictEqual(l.processor_uid, i);
      strictEqual(l.flags, 1);
    });
    const ioapics = entries.filter(([t]) => t === 1).map(([, e]) => MADT_IO_APIC.decode(e)!);
    strictEqual(ioapics.length, 1);
    strictEqual(ioapics[0]!.address, 0xfec0_0000);
    strictEqual(ioapics[0]!.gsi_base, 0);
    const isos = entries.filter(([t]) => t === 2).map(([, e]) =>
      MADT_INTERRUPT_OVERRIDE.decode(e)!
    );
    deepStrictEqual(isos.map((o) => [o.source, o.gsi, o.flags]), [[9, 9, 0xd]]);
    strictEqual(entries.filter(([t]) => t === 4).length, 1);
  }
  const q = buildAcpiTables({ cpus: 1, irq0ToGsi2: true });
  const madt = tableAt(q.bytes, q.tables.find((t) => t.signature === "APIC")!.gpa);
  const isos = madtEntries(madt).filter(([t]) => t === 2).map(([, e]) =>
    MADT_INTERRUPT_OVERRIDE.decode(e)!
  );
  deepStrictEqual(isos.map((o) => [o.source, o.gsi, o.flags]), [[0, 2, 0], [9, 9, 0xd]]);
  throws(() => buildAcpiTables({ cpus: 0 }), RangeError);
  throws(() => buildAcpiTables({ cpus: 256 }), RangeError);
});

Deno.test("DSDT declares VMBus only when asked", () => {
  const has = (acpi: ReturnType<typeof buildAcpiTables>, s: string) => {
    const d = tableAt(acpi.bytes, acpi.tables.find((t) => t.signature === "DSDT")!.gpa);
    return new TextDecoder("latin1").decode(d).includes(s);
  };
  const plain = buildAcpiTables({ cpus: 1 });
  const vmbus = buildAcpiTables({ cpus: 1, devices: [vmbusAcpiNode(VMBUS)] });
  ok(!has(plain, "VMBus"));
  ok(has(vmbus, "VMBus"));
  ok(has(vmbus, "ACPI0004"));
  ok(has(plain, "_S5_"));
});

// --- Cross-check with the ACPICA disassembler/compiler when it is installed ---

function hasIasl(): boolean {
  try {
    return new Deno.Command("iasl", { args: ["-v"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

function iasl(dir: string, ...args: string[]): string {
  const r = new Deno.Command("iasl", { args, cwd: dir }).outputSync();
  const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  if (!r.success) throw new Error(`iasl ${args.join(" ")} failed:\n${out}`);
  return out;
}

Deno.test("iasl disassembles every table and recompiles the DSDT to the same AML", {
  ignore: !hasIasl(),
}, () => {
  const dir = Deno.makeTempDirSync({ prefix: "hyperdeno-acpi-" });
  try {
    const acpi = buildAcpiTables({
      cpus: 2,
      devices: [vmbusAcpiNode(buildMemoryMap(512 * MIB).vmbusMmio)],
    });
    for (const t of acpi.tables) {
      const off = t.gpa - ACPI_START;
      const name = t.signature === "RSD PTR " ? "rsdp" : t.signature.toLowerCase();
      Deno.writeFileSync(`${dir}/${name}.dat`, acpi.bytes.subarray(off, off + t.length));
    }
    // (iasl cannot disassemble a lone RSDP file; its checksums are checked above.)
    for (const name of ["facs", "facp", "apic", "xsdt", "rsdt", "dsdt"]) {
      const out = iasl(dir, "-d", `${name}.dat`);
      ok(!/error|warning/i.test(out.replace(/0 Errors?|0 Warnings?/gi, "")), out);
    }
    const dsl = Deno.readTextFileSync(`${dir}/dsdt.dsl`);
    for (
      const want of [
        "Scope (\\_SB)",
        "Device (COM1)",
        'EisaId ("PNP0501")',
        "0x03F8,",
        "IRQNoFlags ()\n                    {4}",
        'EisaId ("PNP0C0C")',
        'Name (_HID, "ACPI0004" /* Module Device */)',
        'Name (_HID, "VMBus")',
        "0xF0000000,",
        "QWordMemory",
        "Name (\\_S5, Package (0x04)",
      ]
    ) {
      ok(dsl.includes(want), `DSDT disassembly lacks ${JSON.stringify(want)}:\n${dsl}`);
    }
    const apic = Deno.readTextFileSync(`${dir}/apic.dsl`);
    strictEqual(apic.match(/Subtable Type : 00 \[Processor Local APIC\]/g)?.length, 2);
    const facp = Deno.readTextFileSync(`${dir}/facp.dsl`);
    ok(/Reset Register Supported .*: 1/.test(facp), facp);
    ok(/Hardware Reduced \(V5\) : 0/.test(facp), facp);

    // Recompile the disassembled DSDT without optimizations: the AML after the header must be
    // byte-identical. -f: iasl rejects the _HID "VMBus" (not 7-8 characters), which is what
    // Hyper-V declares and what Linux's vmbus driver matches.
    const out = iasl(dir, "-f", "-oa", "-p", "recompiled", "dsdt.dsl");
    strictEqual(out.match(/^Error\s+\d+/gm)?.length ?? 0, 1, out);
    ok(out.includes("_HID string must be exactly 7 or 8 characters (VMBus)"), out);
    const ours = Deno.readFileSync(`${dir}/dsdt.dat`).subarray(36);
    const theirs = Deno.readFileSync(`${dir}/recompiled.aml`).subarray(36);
    deepStrictEqual([...ours], [...theirs]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
