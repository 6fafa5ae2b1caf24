import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import {
  BOOT_GDT_START,
  BOOT_IDT_START,
  PD_START,
  PDPT_START,
  PML4_START,
} from "../../../src/machine/layout.ts";
import {
  BOOT_CODE_SEGMENT,
  BOOT_DATA_SEGMENT,
  BOOT_TSS_SEGMENT,
  bootCpuState,
  buildBootGdt,
  buildIdentityPageTables,
  gdtEntry,
  writeBootTables,
} from "../../../src/machine/page_tables.ts";

Deno.test("GDT descriptors encode the classic flat values", () => {
  strictEqual(gdtEntry(BOOT_CODE_SEGMENT), 0x00af_9b00_0000_ffffn);
  strictEqual(gdtEntry(BOOT_DATA_SEGMENT), 0x00cf_9300_0000_ffffn);
  strictEqual(gdtEntry(BOOT_TSS_SEGMENT), 0x0000_8b00_0000_0067n);
  const gdt = buildBootGdt();
  const dv = new DataView(gdt.buffer);
  strictEqual(gdt.length, 48);
  strictEqual(dv.getBigUint64(0x00, true), 0n);
  strictEqual(dv.getBigUint64(0x10, true), 0x00af_9b00_0000_ffffn, "__BOOT_CS at 0x10");
  strictEqual(dv.getBigUint64(0x18, true), 0x00cf_9300_0000_ffffn, "__BOOT_DS at 0x18");
});

/** Walks the boot page tables like the MMU: returns the physical address or undefined. */
function translate(mem: GuestMemory, va: bigint): bigint | undefined {
  const cr3 = BigInt(PML4_START);
  const pml4e = mem.readU64(Number(cr3 + ((va >> 39n) & 0x1ffn) * 8n));
  if (!(pml4e & 1n)) return undefined;
  const pdpte = mem.readU64(Number((pml4e & ~0xfffn) + ((va >> 30n) & 0x1ffn) * 8n));
  if (!(pdpte & 1n) || pdpte & 0x80n) return undefined;
  const pde = mem.readU64(Number((pdpte & ~0xfffn) + ((va >> 21n) & 0x1ffn) * 8n));
  if (!(pde & 1n) || !(pde & 0x80n)) return undefined;
  return (pde & ~0x1f_ffffn & 0xf_ffff_ffff_f000n) | (va & 0x1f_ffffn);
}

Deno.test("page tables identity-map the first 4 GiB with 2 MiB pages, nothing above", () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(0x10_0000) }]);
  writeBootTables(mem);
  for (
    const va of [0n, 0x1234n, 0x100_0200n, 0x7fff_ffffn, 0xbfff_f000n, 0xfee0_0000n, 0xffff_ffffn]
  ) {
    strictEqual(translate(mem, va), va, `0x${va.toString(16)}`);
  }
  strictEqual(translate(mem, 0x1_0000_0000n), undefined);
  strictEqual(mem.readU64(PML4_START), BigInt(PDPT_START) | 3n);
  strictEqual(mem.readU64(PDPT_START + 8), BigInt(PD_START + 0x1000) | 3n);
  strictEqual(mem.readU64(PD_START), 0x83n);
  strictEqual(buildIdentityPageTables().length, 6 * 4096);
  deepStrictEqual(mem.slice(BOOT_GDT_START, 48), buildBootGdt());
  strictEqual(mem.readU64(BOOT_IDT_START), 0n);
});

Deno.test("bootCpuState is long mode at the entry with rsi = zero page", () => {
  const s = bootCpuState({ entry: 0x100_0200, zeroPage: 0x7000 });
  strictEqual(s.regs.rip, 0x100_0200n);
  strictEqual(s.regs.rsi, 0x7000n);
  strictEqual(s.regs.rflags, 2n);
  strictEqual(s.sregs.cr0 & 0x8000_0001n, 0x8000_0001n, "PE and PG");
  strictEqual(s.sregs.cr4 & 0x20n, 0x20n, "PAE");
  strictEqual(s.sregs.efer, 0x500n, "LME|LMA");
  strictEqual(s.sregs.cr3, BigInt(PML4_START));
  strictEqual(s.sregs.cs.selector, 0x10);
  strictEqual(s.sregs.cs.l, 1);
  strictEqual(s.sregs.cs.db, 0);
  strictEqual(s.sregs.cs.type, 0xb);
  strictEqual(s.sregs.cs.limit, 0xffff_ffff);
  for (const seg of [s.sregs.ds, s.sregs.es, s.sregs.ss, s.sregs.fs, s.sregs.gs]) {
    strictEqual(seg.selector, 0x18);
    strictEqual(seg.type, 0x3);
  }
  strictEqual(s.sregs.tr.s, 0);
  deepStrictEqual(s.sregs.gdt, { base: BigInt(BOOT_GDT_START), limit: 47 });
});
