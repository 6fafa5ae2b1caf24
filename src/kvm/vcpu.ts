/**
 * One KVM vCPU, used from the thread that runs it: its `kvm_run` mapping, KVM_RUN, registers
 * (through the sync-regs area of `kvm_run` when KVM offers it, so the exit path needs no extra
 * ioctl), special registers, CPUID, MSRs, FPU, LAPIC and the signal mask used for kicks.
 * @module
 */
import { C, check, errno, libc, mmap, SIGSET_BYTES } from "../../ffi/libc.ts";
import { KVM, KVM_IOCTL, KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import { type CpuidEntry, encodeCpuid2 } from "./kvm.ts";

/** Index of each general register in `kvm_regs` (and in `Vcpu.regs`). */
export const REG = {
  rax: 0,
  rbx: 1,
  rcx: 2,
  rdx: 3,
  rsi: 4,
  rdi: 5,
  rsp: 6,
  rbp: 7,
  r8: 8,
  r9: 9,
  r10: 10,
  r11: 11,
  r12: 12,
  r13: 13,
  r14: 14,
  r15: 15,
  rip: 16,
  rflags: 17,
} as const;

/**
 * Bits of `Vcpu.exitMode()`: the calling-convention state of the last exit, as one number.
 */
export const VCPU_MODE = {
  /** CR0.PE: protected mode. */
  PE: 1,
  /** EFER.LMA: long mode active. */
  LMA: 2,
  /** CS.L: 64-bit code segment. */
  CS_L: 4,
  /** The CPL (SS.DPL) sits in bits 5:4. */
  CPL_SHIFT: 4,
} as const;

/** A segment register as in `kvm_segment`. */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** A descriptor-table register as in `kvm_dtable`. */
export interface DescriptorTable {
  base: bigint;
  limit: number;
}

/** Special registers as in `kvm_sregs` (interrupt bitmap left to KVM). */
export interface SpecialRegisters {
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr: Segment;
  ldt: Segment;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  cr8: bigint;
  efer: bigint;
  apicBase: bigint;
}

const EFER_LMA = 1n << 10n;
const SEGMENTS = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const;
const KVM_REGS_COUNT = 18;

function decodeSegment(dv: DataView, b: number): Segment {
  const S = KVM_STRUCT.kvm_segment;
  return {
    base: dv.getBigUint64(b + S.base, true),
    limit: dv.getUint32(b + S.limit, true),
    selector: dv.getUint16(b + S.selector, true),
    type: dv.getUint8(b + S.type),
    present: dv.getUint8(b + S.present),
    dpl: dv.getUint8(b + S.dpl),
    db: dv.getUint8(b + S.db),
    s: dv.getUint8(b + S.s),
    l: dv.getUint8(b + S.l),
    g: dv.getUint8(b + S.g),
    avl: dv.getUint8(b + S.avl),
    unusable: dv.getUint8(b + S.unusable),
  };
}

function encodeSegment(dv: DataView, b: number, s: Segment): void {
  const S = KVM_STRUCT.kvm_segment;
  dv.setBigUint64(b + S.base, s.base, true);
  dv.setUint32(b + S.limit, s.limit >>> 0, true);
  dv.setUint16(b + S.selector, s.selector, true);
  dv.setUint8(b + S.type, s.type);
  dv.setUint8(b + S.present, s.present);
  dv.setUint8(b + S.dpl, s.dpl);
  dv.setUint8(b + S.db, s.db);
  dv.setUint8(b + S.s, s.s);
  dv.setUint8(b + S.l, s.l);
  dv.setUint8(b + S.g, s.g);
  dv.setUint8(b + S.avl, s.avl);
  dv.setUint8(b + S.unusable, s.unusable);
}

/** Decodes a `kvm_sregs` buffer. */
export function decodeSregs(buf: Uint8Array): SpecialRegisters {
  const S = KVM_STRUCT.kvm_sregs;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const seg = Object.fromEntries(SEGMENTS.map((n) => [n, decodeSegment(dv, S[n])])) as Record<
    (typeof SEGMENTS)[number],
    Segment
  >;
  const dt = (b: number): DescriptorTable => ({
    base: dv.getBigUint64(b + KVM_STRUCT.kvm_dtable.base, true),
    limit: dv.getUint16(b + KVM_STRUCT.kvm_dtable.limit, true),
  });
  return {
    ...seg,
    gdt: dt(S.gdt),
    idt: dt(S.idt),
    cr0: dv.getBigUint64(S.cr0, true),
    cr2: dv.getBigUint64(S.cr2, true),
    cr3: dv.getBigUint64(S.cr3, true),
    cr4: dv.getBigUint64(S.cr4, true),
    cr8: dv.getBigUint64(S.cr8, true),
    efer: dv.getBigUint64(S.efer, true),
    apicBase: dv.getBigUint64(S.apic_base, true),
  };
}

/** Encodes special registers into a `kvm_sregs` buffer (keeps its interrupt bitmap). */
export function encodeSregs(buf: Uint8Array, s: SpecialRegisters): void {
  const S = KVM_STRUCT.kvm_sregs;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (const n of SEGMENTS) encodeSegment(dv, S[n], s[n]);
  const dt = (b: number, t: DescriptorTable) => {
    dv.setBigUint64(b + KVM_STRUCT.kvm_dtable.base, t.base, true);
    dv.setUint16(b + KVM_STRUCT.kvm_dtable.limit, t.limit, true);
  };
  dt(S.gdt, s.gdt);
  dt(S.idt, s.idt);
  dv.setBigUint64(S.cr0, s.cr0, true);
  dv.setBigUint64(S.cr2, s.cr2, true);
  dv.setBigUint64(S.cr3, s.cr3, true);
  dv.setBigUint64(S.cr4, s.cr4, true);
  dv.setBigUint64(S.cr8, s.cr8, true);
  dv.setBigUint64(S.efer, s.efer, true);
  dv.setBigUint64(S.apic_base, s.apicBase, true);
}

/** A vCPU as seen from the thread that runs it. */
export class Vcpu {
  readonly fd: number;
  readonly index: number;
  /** The `kvm_run` page(s), shared with the kernel. */
  readonly run: Uint8Array;
  /** DataView over `run`. */
  readonly runView: DataView;
  /**
   * General registers in `kvm_regs` order (index with `REG`). Valid after `loadRegs()`; call
   * `storeRegs()` after changing them. Backed by kvm_run's sync-regs area when available.
   */
  readonly regs: BigUint64Array;
  /**
   * `regs` as 32-bit words (register `r` is words `2 * REG[r]`, low half, and `2 * REG[r] + 1`),
   * over the same memory: exit paths read and write registers without BigInt.
   */
  readonly regWords: Uint32Array;
  readonly #syncRegs: boolean;
  readonly #fpuBuf = new Uint8Array(KVM_STRUCT.kvm_fpu.size);
  readonly #eventsBuf = new Uint8Array(KVM_STRUCT.kvm_vcpu_events.size);
  readonly #translationBuf = new Uint8Array(KVM_STRUCT.kvm_translation.size);
  readonly #regsBuf: Uint8Array<ArrayBuffer> | undefined;
  readonly #sregsBuf = new Uint8Array(KVM_STRUCT.kvm_sregs.size);
  readonly #kvmRunRequest = BigInt(KVM_IOCTL.KVM_RUN);
  #runPtr: Deno.PointerValue;
  readonly #runSize: number;

  /**
   * Maps `kvm_run` for vCPU `fd`. With `syncRegs`, KVM copies the general registers into
   * `kvm_run` on every exit and takes them back when marked dirty.
   */
  constructor(fd: number, index: number, runSize: number, syncRegs: boolean) {
    this.fd = fd;
    this.index = index;
    const ptr = mmap(runSize, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0);
    this.#runPtr = ptr;
    this.#runSize = runSize;
    this.run = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, runSize));
    this.runView = new DataView(this.run.buffer);
    this.#syncRegs = syncRegs;
    if (syncRegs) {
      const off = KVM_STRUCT.kvm_run.sync_regs + KVM_STRUCT.kvm_sync_regs.regs;
      this.regs = new BigUint64Array(this.run.buffer, off, KVM_REGS_COUNT);
      this.regWords = new Uint32Array(this.run.buffer, off, KVM_REGS_COUNT * 2);
      // KVM copies REGS and SREGS into kvm_run on every exit: the hypercall path reads the
      // calling convention (EFER.LMA, CS.L, CPL) from there without an ioctl.
      this.runView.setBigUint64(
        KVM_STRUCT.kvm_run.kvm_valid_regs,
        BigInt(KVM.KVM_SYNC_X86_REGS | KVM.KVM_SYNC_X86_SREGS),
        true,
      );
      this.#regsBuf = undefined;
    } else {
      this.#regsBuf = new Uint8Array(KVM_STRUCT.kvm_regs.size);
      this.regs = new BigUint64Array(this.#regsBuf.buffer, 0, KVM_REGS_COUNT);
      this.regWords = new Uint32Array(this.#regsBuf.buffer, 0, KVM_REGS_COUNT * 2);
    }
  }

  #ioctl(name: string, request: number, buf: Uint8Array<ArrayBuffer>): number {
    return check(`ioctl(${name})`, libc.ioctl_buf(this.fd, BigInt(request), buf));
  }

  /**
   * Unmaps `kvm_run` (the fd stays open: its owner closes it). Every view of `run` and `regs`
   * is dead afterwards, so call this only when the vCPU is done on this thread; each boot of a
   * rebooting VM maps its vCPUs anew, and without this the mappings would pile up.
   */
  close(): void {
    if (this.#runPtr === null) return;
    libc.munmap(this.#runPtr, BigInt(this.#runSize));
    this.#runPtr = null;
  }

  /**
   * KVM_RUN. Returns the exit reason, or `KVM_EXIT_INTR` when interrupted by a kick (EINTR) or
   * refused because `immediate_exit` was set.
   */
  runOnce(): number {
    const r = libc.ioctl_int(this.fd, this.#kvmRunRequest, 0n);
    if (r < 0) {
      const e = errno();
      if (e === 4 /* EINTR */ || e === 11 /* EAGAIN */) return KVM.KVM_EXIT_INTR;
      check("ioctl(KVM_RUN)", r);
    }
    return this.run[KVM_STRUCT.kvm_run.exit_reason]! |
      (this.run[KVM_STRUCT.kvm_run.exit_reason + 1]! << 8);
  }

  /**
   * The few special registers the exit path needs (EFER, CR0, CS.L, CPL), from kvm_run's sync
   * area when available (valid after any exit), else by KVM_GET_SREGS.
   */
  modeRegs(): { efer: bigint; cr0: bigint; csL: number; cpl: number } {
    if (this.#syncRegs) {
      const base = KVM_STRUCT.kvm_run.sync_regs + KVM_STRUCT.kvm_sync_regs.sregs;
      const S = KVM_STRUCT.kvm_sregs;
      const G = KVM_STRUCT.kvm_segment;
      return {
        efer: this.runView.getBigUint64(base + S.efer, true),
        cr0: this.runView.getBigUint64(base + S.cr0, true),
        csL: this.run[base + S.cs + G.l]!,
        cpl: this.run[base + S.ss + G.dpl]!,
      };
    }
    const s = this.getSregs();
    return { efer: s.efer, cr0: s.cr0, csL: s.cs.l, cpl: s.ss.dpl };
  }

  /**
   * `modeRegs()` packed into one number (`VCPU_MODE` bits), for exit paths that must not
   * allocate: from kvm_run's sync area when available, else by KVM_GET_SREGS.
   */
  exitMode(): number {
    if (!this.#syncRegs) {
      const m = this.modeRegs();
      return ((m.cr0 & 1n) !== 0n ? VCPU_MODE.PE : 0) |
        ((m.efer & EFER_LMA) !== 0n ? VCPU_MODE.LMA : 0) |
        (m.csL !== 0 ? VCPU_MODE.CS_L : 0) | ((m.cpl & 3) << VCPU_MODE.CPL_SHIFT);
    }
    const run = this.run;
    const base = KVM_STRUCT.kvm_run.sync_regs + KVM_STRUCT.kvm_sync_regs.sregs;
    const S = KVM_STRUCT.kvm_sregs;
    const G = KVM_STRUCT.kvm_segment;
    // CR0.PE is bit 0 of CR0's first byte, EFER.LMA bit 10 (bit 2 of EFER's second byte).
    return (run[base + S.cr0]! & 1 ? VCPU_MODE.PE : 0) |
      (run[base + S.efer + 1]! & 4 ? VCPU_MODE.LMA : 0) |
      (run[base + S.cs + G.l]! !== 0 ? VCPU_MODE.CS_L : 0) |
      ((run[base + S.ss + G.dpl]! & 3) << VCPU_MODE.CPL_SHIFT);
  }

  /** Copies XMM register `index` (16 bytes) into `into`, via KVM_GET_FPU. */
  readXmm(index: number, into: Uint8Array): void {
    const F = KVM_STRUCT.kvm_fpu;
    const buf = this.#fpuBuf;
    this.#ioctl("KVM_GET_FPU", KVM_IOCTL.KVM_GET_FPU, buf);
    into.set(buf.subarray(F.xmm + index * 16, F.xmm + index * 16 + 16));
  }

  /**
   * Makes exception `vector` (with `errorCode` when the vector has one) the event KVM delivers
   * at the next KVM_RUN, at the RIP the guest has then: read-modify-write of the vCPU events
   * (KVM_GET/SET_VCPU_EVENTS), marked injected, which KVM accepts without
   * KVM_CAP_EXCEPTION_PAYLOAD. The NMI, SIPI and SMM state is left out of the write (their
   * VALID flags cleared, as the KVM API asks for state other threads may change); the
   * interrupt shadow goes back as read.
   */
  injectException(vector: number, errorCode?: number): void {
    const E = KVM_STRUCT.kvm_vcpu_events;
    const buf = this.#eventsBuf;
    const dv = new DataView(buf.buffer);
    this.#ioctl("KVM_GET_VCPU_EVENTS", KVM_IOCTL.KVM_GET_VCPU_EVENTS, buf);
    buf[E.exception_injected] = 1;
    buf[E.exception_nr] = vector;
    buf[E.exception_has_error_code] = errorCode === undefined ? 0 : 1;
    buf[E.exception_pending] = 0;
    dv.setUint32(E.exception_error_code, errorCode ?? 0, true);
    dv.setUint32(E.flags, dv.getUint32(E.flags, true) & KVM.KVM_VCPUEVENT_VALID_SHADOW, true);
    this.#ioctl("KVM_SET_VCPU_EVENTS", KVM_IOCTL.KVM_SET_VCPU_EVENTS, buf);
  }

  /**
   * Finishes the I/O or MMIO access of the last exit without running guest code: KVM_RUN with
   * `immediate_exit` set, which the KVM API documents for exactly this ("to complete pending
   * operations without allowing any further instructions to be executed"). Afterwards the
   * registers are architectural: for an OUT, RIP is past the instruction on every KVM (with
   * hardware fast PIO KVM only skips it on the next entry). `loadRegs()` to read them.
   */
  completeIo(): void {
    this.setImmediateExit(true);
    try {
      const r = libc.ioctl_int(this.fd, this.#kvmRunRequest, 0n);
      if (r < 0) {
        const e = errno();
        if (e !== 4 /* EINTR */ && e !== 11 /* EAGAIN */) check("ioctl(KVM_RUN)", r);
      }
    } finally {
      this.setImmediateExit(false);
    }
  }

  /**
   * KVM_TRANSLATE: the guest physical address of `linear` under the vCPU's current paging
   * mode, or undefined when it is not mapped.
   */
  translate(linear: bigint): bigint | undefined {
    const T = KVM_STRUCT.kvm_translation;
    const buf = this.#translationBuf;
    const dv = new DataView(buf.buffer);
    buf.fill(0);
    dv.setBigUint64(T.linear_address, BigInt.asUintN(64, linear), true);
    this.#ioctl("KVM_TRANSLATE", KVM_IOCTL.KVM_TRANSLATE, buf);
    return buf[T.valid] ? dv.getBigUint64(T.physical_address, true) : undefined;
  }

  /** Guest TSC frequency in kHz (KVM_GET_TSC_KHZ). */
  tscKhz(): number {
    return check(
      "ioctl(KVM_GET_TSC_KHZ)",
      libc.ioctl_int(this.fd, BigInt(KVM_IOCTL.KVM_GET_TSC_KHZ), 0n),
    );
  }

  /**
   * Flushes this vCPU's whole TLB, global entries included, while it is outside KVM_RUN: the
   * architectural way (toggling CR4.PGE) through KVM_SET_SREGS. A CR4 change makes KVM reset the
   * MMU context, and loading the new root flushes the vCPU's ASID/VPID on the next entry.
   */
  flushTlb(): void {
    const s = this.getSregs();
    const CR4_PGE = 1n << 7n;
    this.setSregs({ ...s, cr4: s.cr4 ^ CR4_PGE });
    this.setSregs(s);
  }

  /** Makes `regs` current (an ioctl only when sync regs are unavailable). */
  loadRegs(): void {
    if (!this.#syncRegs) this.#ioctl("KVM_GET_REGS", KVM_IOCTL.KVM_GET_REGS, this.#regsBuf!);
  }

  /** Hands `regs` back to KVM (marks sync regs dirty, or KVM_SET_REGS). */
  storeRegs(): void {
    if (this.#syncRegs) {
      // Two 32-bit stores: this runs on every hypercall exit, and a BigInt would allocate.
      const dirty = KVM_STRUCT.kvm_run.kvm_dirty_regs;
      this.runView.setUint32(dirty, KVM.KVM_SYNC_X86_REGS, true);
      this.runView.setUint32(dirty + 4, 0, true);
    } else {
      this.#ioctl("KVM_SET_REGS", KVM_IOCTL.KVM_SET_REGS, this.#regsBuf!);
    }
  }

  /** Sets every general register with KVM_SET_REGS (used at boot, outside the exit path). */
  setAllRegs(values: Partial<Record<keyof typeof REG, bigint>>): void {
    const buf = new Uint8Array(KVM_STRUCT.kvm_regs.size);
    const r = new BigUint64Array(buf.buffer, 0, KVM_REGS_COUNT);
    for (const [k, v] of Object.entries(values)) r[REG[k as keyof typeof REG]] = v!;
    this.#ioctl("KVM_SET_REGS", KVM_IOCTL.KVM_SET_REGS, buf);
    if (this.#syncRegs) this.regs.set(r);
  }

  /** KVM_GET_SREGS. */
  getSregs(): SpecialRegisters {
    this.#ioctl("KVM_GET_SREGS", KVM_IOCTL.KVM_GET_SREGS, this.#sregsBuf);
    return decodeSregs(this.#sregsBuf);
  }

  /** KVM_SET_SREGS (read-modify-write keeps KVM's pending interrupt bitmap). */
  setSregs(s: SpecialRegisters): void {
    this.#ioctl("KVM_GET_SREGS", KVM_IOCTL.KVM_GET_SREGS, this.#sregsBuf);
    encodeSregs(this.#sregsBuf, s);
    this.#ioctl("KVM_SET_SREGS", KVM_IOCTL.KVM_SET_SREGS, this.#sregsBuf);
  }

  /** KVM_SET_CPUID2. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    this.#ioctl("KVM_SET_CPUID2", KVM_IOCTL.KVM_SET_CPUID2, encodeCpuid2(entries));
  }

  /** KVM_SET_MSRS; throws when KVM refuses any of them. */
  setMsrs(msrs: readonly { index: number; value: bigint }[]): void {
    const H = KVM_STRUCT.kvm_msrs;
    const E = KVM_STRUCT.kvm_msr_entry;
    const buf = new Uint8Array(H.size + msrs.length * E.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(H.nmsrs, msrs.length, true);
    msrs.forEach((m, i) => {
      dv.setUint32(H.entries + i * E.size + E.index, m.index, true);
      dv.setBigUint64(H.entries + i * E.size + E.data, m.value, true);
    });
    const n = this.#ioctl("KVM_SET_MSRS", KVM_IOCTL.KVM_SET_MSRS, buf);
    if (n !== msrs.length) {
      throw new Error(`KVM_SET_MSRS refused MSR 0x${msrs[n]!.index.toString(16)}`);
    }
  }

  /** KVM_GET_MSRS for one MSR; undefined when KVM does not know it. */
  getMsr(index: number): bigint | undefined {
    const H = KVM_STRUCT.kvm_msrs;
    const E = KVM_STRUCT.kvm_msr_entry;
    const buf = new Uint8Array(H.size + E.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(H.nmsrs, 1, true);
    dv.setUint32(H.entries + E.index, index, true);
    const n = this.#ioctl("KVM_GET_MSRS", KVM_IOCTL.KVM_GET_MSRS, buf);
    return n === 1 ? dv.getBigUint64(H.entries + E.data, true) : undefined;
  }

  /** Initial x87/SSE state: FCW 0x37F, MXCSR 0x1F80 (as after a reset with FNINIT). */
  initFpu(): void {
    const F = KVM_STRUCT.kvm_fpu;
    const buf = new Uint8Array(F.size);
    const dv = new DataView(buf.buffer);
    dv.setUint16(F.fcw, 0x37f, true);
    dv.setUint32(F.mxcsr, 0x1f80, true);
    this.#ioctl("KVM_SET_FPU", KVM_IOCTL.KVM_SET_FPU, buf);
  }

  /**
   * Programs LAPIC LINT0 as ExtINT and LINT1 as NMI, as firmware leaves them, so the PIC's
   * interrupts reach the BSP before the guest sets up its IOAPIC.
   */
  setupLint(): void {
    const buf = new Uint8Array(KVM_STRUCT.kvm_lapic_state.size);
    this.#ioctl("KVM_GET_LAPIC", KVM_IOCTL.KVM_GET_LAPIC, buf);
    const dv = new DataView(buf.buffer);
    const LVT_LINT0 = 0x350, LVT_LINT1 = 0x360;
    const mode = (v: number, m: number) => (v & ~0x700) | (m << 8);
    dv.setUint32(LVT_LINT0, mode(dv.getUint32(LVT_LINT0, true), 7 /* ExtINT */), true);
    dv.setUint32(LVT_LINT1, mode(dv.getUint32(LVT_LINT1, true), 4 /* NMI */), true);
    this.#ioctl("KVM_SET_LAPIC", KVM_IOCTL.KVM_SET_LAPIC, buf);
  }

  /**
   * KVM_SET_SIGNAL_MASK: the signal mask in force *inside* KVM_RUN. Pass the thread's mask
   * without the kick signal so a kick interrupts KVM_RUN while staying blocked elsewhere.
   */
  setSignalMask(set: Uint8Array): void {
    const S = KVM_STRUCT.kvm_signal_mask;
    const KERNEL_SIGSET = 8;
    const buf = new Uint8Array(S.size + KERNEL_SIGSET);
    new DataView(buf.buffer).setUint32(S.len, KERNEL_SIGSET, true);
    buf.set(set.subarray(0, Math.min(KERNEL_SIGSET, SIGSET_BYTES)), S.sigset);
    this.#ioctl("KVM_SET_SIGNAL_MASK", KVM_IOCTL.KVM_SET_SIGNAL_MASK, buf);
  }

  /** Sets or clears `kvm_run.immediate_exit`. */
  setImmediateExit(on: boolean): void {
    this.run[KVM_STRUCT.kvm_run.immediate_exit] = on ? 1 : 0;
  }
}
