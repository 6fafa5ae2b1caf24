/**
 * The CPU state for Linux's 64-bit entry (Documentation/x86/boot.rst, "64-bit Boot Protocol"):
 * long mode with paging on an identity map, a GDT with flat __BOOT_CS (0x10) and __BOOT_DS
 * (0x18), interrupts off, %rsi pointing at boot_params.
 *
 * The boot page tables identity-map the first `BOOT_IDENTITY_MAP_GIB` GiB with 2 MiB pages
 * (PML4 -> one PDPT -> one PD per GiB); the kernel replaces them at once. Segment descriptors
 * are declared once as `Segment` values: the GDT bytes are encoded from them and the same
 * values go into kvm_sregs, so the two cannot disagree. Nothing here touches KVM: `src/kvm`
 * turns `BootCpuState` into kvm_regs/kvm_sregs.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import {
  BOOT_GDT_MAX_SIZE,
  BOOT_GDT_START,
  BOOT_IDENTITY_MAP_GIB,
  BOOT_IDT_START,
  BOOT_STACK_POINTER,
  PAGE_TABLES_END,
  PD_START,
  PDPT_START,
  PML4_START,
} from "./layout.ts";

/** Page-table entry bits. */
const PTE_PRESENT = 1n;
const PTE_WRITE = 2n;
const PTE_PAGE_SIZE = 0x80n;

/** CR0.PE: protected mode. */
export const CR0_PE = 1n << 0n;
/** CR0.ET: extension type (hard-wired to 1 on modern CPUs). */
export const CR0_ET = 1n << 4n;
/** CR0.NE: native x87 error reporting. */
export const CR0_NE = 1n << 5n;
/** CR0.PG: paging. */
export const CR0_PG = 1n << 31n;
/** CR4.PAE: physical address extension (required for long mode). */
export const CR4_PAE = 1n << 5n;
/** EFER.LME: long mode enable. */
export const EFER_LME = 1n << 8n;
/** EFER.LMA: long mode active. */
export const EFER_LMA = 1n << 10n;
/** RFLAGS bit 1 is always set; IF stays clear. */
export const RFLAGS_RESERVED = 2n;

/** Selector of the boot code segment (__BOOT_CS). */
export const BOOT_CS = 0x10;
/** Selector of the boot data segment (__BOOT_DS). */
export const BOOT_DS = 0x18;
/** Selector of the boot TSS (a 16-byte system descriptor in long mode). */
export const BOOT_TSS = 0x20;

/** A segment register as KVM describes it (`struct kvm_segment`); `limit` is in bytes. */
export interface Segment {
  /** Linear base address. */
  readonly base: bigint;
  /** Limit in bytes (granularity already applied). */
  readonly limit: number;
  /** Selector loaded in the register. */
  readonly selector: number;
  /** Descriptor type field (4 bits). */
  readonly type: number;
  /** Present bit. */
  readonly present: number;
  /** Descriptor privilege level. */
  readonly dpl: number;
  /** Default operand size (D/B). */
  readonly db: number;
  /** Code/data (1) or system (0) descriptor. */
  readonly s: number;
  /** 64-bit code segment (L). */
  readonly l: number;
  /** Granularity: limit in 4 KiB units in the descriptor. */
  readonly g: number;
  /** Available-for-software bit. */
  readonly avl: number;
  /** Unusable (null) segment. */
  readonly unusable: number;
}

/** A descriptor table register (`struct kvm_dtable`). */
export interface DescriptorTable {
  /** Linear base address of the table. */
  readonly base: bigint;
  /** Size in bytes minus one. */
  readonly limit: number;
}

/** 64-bit code, execute/read, accessed: base 0, 4 GiB, L=1. */
export const BOOT_CODE_SEGMENT: Segment = {
  base: 0n,
  limit: 0xffff_ffff,
  selector: BOOT_CS,
  type: 0xb,
  present: 1,
  dpl: 0,
  db: 0,
  s: 1,
  l: 1,
  g: 1,
  avl: 0,
  unusable: 0,
};

/** Flat data, read/write, accessed: base 0, 4 GiB. */
export const BOOT_DATA_SEGMENT: Segment = {
  base: 0n,
  limit: 0xffff_ffff,
  selector: BOOT_DS,
  type: 0x3,
  present: 1,
  dpl: 0,
  db: 1,
  s: 1,
  l: 0,
  g: 1,
  avl: 0,
  unusable: 0,
};

/** Busy 64-bit TSS (VMX requires a usable TR); the kernel loads its own. */
export const BOOT_TSS_SEGMENT: Segment = {
  base: 0n,
  limit: 0x67,
  selector: BOOT_TSS,
  type: 0xb,
  present: 1,
  dpl: 0,
  db: 0,
  s: 0,
  l: 0,
  g: 0,
  avl: 0,
  unusable: 0,
};

/** Encodes the 8-byte GDT descriptor for `seg` (the low half, for a system descriptor). */
export function gdtEntry(seg: Segment): bigint {
  const limit = BigInt(seg.g ? seg.limit >>> 12 : seg.limit) & 0xfffffn;
  const base = seg.base & 0xffff_ffffn;
  const access = BigInt(seg.type | (seg.s << 4) | (seg.dpl << 5) | (seg.present << 7));
  const flags = BigInt(seg.avl | (seg.l << 1) | (seg.db << 2) | (seg.g << 3));
  return (limit & 0xffffn) |
    ((base & 0xff_ffffn) << 16n) |
    (access << 40n) |
    ((limit >> 16n) << 48n) |
    (flags << 52n) |
    ((base >> 24n) << 56n);
}

/**
 * The boot GDT: null, null, code (0x10), data (0x18), TSS (0x20, two slots). Returns the bytes
 * to write at `BOOT_GDT_START`.
 */
export function buildBootGdt(): Uint8Array {
  const entries = [0n, 0n, gdtEntry(BOOT_CODE_SEGMENT), gdtEntry(BOOT_DATA_SEGMENT)];
  entries.push(gdtEntry(BOOT_TSS_SEGMENT), BOOT_TSS_SEGMENT.base >> 32n);
  const out = new Uint8Array(entries.length * 8);
  const dv = new DataView(out.buffer);
  entries.forEach((e, i) => dv.setBigUint64(i * 8, e, true));
  if (out.length > BOOT_GDT_MAX_SIZE) throw new Error("boot GDT outgrew its slot in layout.ts");
  return out;
}

/**
 * Identity-map page tables for the first `BOOT_IDENTITY_MAP_GIB` GiB with 2 MiB pages: the
 * bytes of `[PML4_START, PAGE_TABLES_END)` (PML4, PDPT, then one PD per GiB).
 */
export function buildIdentityPageTables(): Uint8Array {
  const out = new Uint8Array(PAGE_TABLES_END - PML4_START);
  const dv = new DataView(out.buffer);
  const at = (gpa: number) => gpa - PML4_START;
  dv.setBigUint64(at(PML4_START), BigInt(PDPT_START) | PTE_PRESENT | PTE_WRITE, true);
  for (let gib = 0; gib < BOOT_IDENTITY_MAP_GIB; gib++) {
    const pd = PD_START + gib * 0x1000;
    dv.setBigUint64(at(PDPT_START) + gib * 8, BigInt(pd) | PTE_PRESENT | PTE_WRITE, true);
    for (let i = 0; i < 512; i++) {
      const addr = BigInt(gib) * 0x4000_0000n + BigInt(i) * 0x20_0000n;
      dv.setBigUint64(at(pd) + i * 8, addr | PTE_PRESENT | PTE_WRITE | PTE_PAGE_SIZE, true);
    }
  }
  return out;
}

/** Writes the boot GDT, an empty IDT and the identity-map page tables into guest RAM. */
export function writeBootTables(memory: GuestMemory): void {
  memory.write(BOOT_GDT_START, buildBootGdt());
  memory.write(BOOT_IDT_START, new Uint8Array(8));
  memory.write(PML4_START, buildIdentityPageTables());
}

/** General-purpose registers at entry (`struct kvm_regs` fields that are not zero). */
export interface BootRegs {
  /** Instruction pointer: the 64-bit entry point. */
  readonly rip: bigint;
  /** Stack pointer (a scratch stack; the kernel sets its own). */
  readonly rsp: bigint;
  /** Frame pointer, same as rsp. */
  readonly rbp: bigint;
  /** Guest address of boot_params. */
  readonly rsi: bigint;
  /** Flags: only the reserved bit 1, interrupts off. */
  readonly rflags: bigint;
}

/** Special registers at entry (`struct kvm_sregs` fields to set; the rest keep KVM's reset). */
export interface BootSregs {
  /** Code segment (__BOOT_CS). */
  readonly cs: Segment;
  /** Data segment (__BOOT_DS). */
  readonly ds: Segment;
  /** Extra segment (__BOOT_DS). */
  readonly es: Segment;
  /** FS (__BOOT_DS). */
  readonly fs: Segment;
  /** GS (__BOOT_DS). */
  readonly gs: Segment;
  /** Stack segment (__BOOT_DS). */
  readonly ss: Segment;
  /** Task register (busy 64-bit TSS). */
  readonly tr: Segment;
  /** GDTR. */
  readonly gdt: DescriptorTable;
  /** IDTR. */
  readonly idt: DescriptorTable;
  /** CR0: PE, ET, NE, PG. */
  readonly cr0: bigint;
  /** CR3: the boot PML4. */
  readonly cr3: bigint;
  /** CR4: PAE. */
  readonly cr4: bigint;
  /** EFER: LME, LMA. */
  readonly efer: bigint;
}

/** The boot vCPU's state for the 64-bit entry. */
export interface BootCpuState {
  /** For KVM_SET_REGS (other registers zero). */
  readonly regs: BootRegs;
  /** For KVM_SET_SREGS (read-modify-write; fields not listed keep their reset values). */
  readonly sregs: BootSregs;
}

/**
 * CPU state for jumping to `entry` with boot_params at `zeroPage`: long mode (CR0.PE|PG, CR4.PAE,
 * EFER.LME|LMA), CR3 = `PML4_START`, CS = 0x10, DS/ES/FS/GS/SS = 0x18, RFLAGS = 2 (interrupts
 * off). Pure: `writeBootTables` must have put the tables it points at into guest RAM.
 */
export function bootCpuState(boot: { entry: number; zeroPage: number }): BootCpuState {
  const gdtSize = buildBootGdt().length;
  return {
    regs: {
      rip: BigInt(boot.entry),
      rsp: BigInt(BOOT_STACK_POINTER),
      rbp: BigInt(BOOT_STACK_POINTER),
      rsi: BigInt(boot.zeroPage),
      rflags: RFLAGS_RESERVED,
    },
    sregs: {
      cs: BOOT_CODE_SEGMENT,
      ds: BOOT_DATA_SEGMENT,
      es: BOOT_DATA_SEGMENT,
      fs: BOOT_DATA_SEGMENT,
      gs: BOOT_DATA_SEGMENT,
      ss: BOOT_DATA_SEGMENT,
      tr: BOOT_TSS_SEGMENT,
      gdt: { base: BigInt(BOOT_GDT_START), limit: gdtSize - 1 },
      idt: { base: BigInt(BOOT_IDT_START), limit: 7 },
      cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
      cr3: BigInt(PML4_START),
      cr4: CR4_PAE,
      efer: EFER_LME | EFER_LMA,
    },
  };
}
