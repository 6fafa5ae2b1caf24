/**
 * The benchmark guests: tiny flat 32-bit protected-mode programs assembled here as bytes (no
 * assembler needed), and the register state that starts them. PVM-based KVM runs them under its
 * instruction emulator, hardware KVM natively; the same bytes go to the hyperdeno run loop and to
 * the C floor VMM (`ref/floor_vmm.c`).
 *
 * Memory map (one 1 MiB RAM slot at GPA 0): code at `CODE_GPA`, the Hyper-V hypercall page at
 * `HYPERCALL_PAGE_GPA` (filled by the production `HvPartition` when the guest enables it), stack
 * below `STACK_TOP`.
 * @module
 */
import { tlfs } from "../../src/hyperv/mod.ts";

/** Guest RAM size of the benchmark VMs. */
export const RAM_SIZE = 1 << 20;
/** Where the program is loaded and starts. */
export const CODE_GPA = 0x1000;
/** Hypercall page the guest asks for in HV_X64_MSR_HYPERCALL. */
export const HYPERCALL_PAGE_GPA = 0x3000;
/** Initial ESP. */
export const STACK_TOP = 0x8000;
/** The guest writes this port once per batch: the VMM leaves its run loop there. */
export const DONE_PORT = 0xeb;
/** The port of the plain port-I/O loop (unused on a PC). */
export const PIO_PORT = 0xe8;
/** Connection id of the HvSignalEvent calls (any id the bridge accepts). */
export const SIGNAL_CONNECTION_ID = 0x10;

/** A little-endian byte emitter with backward labels (all the jumps here go backward). */
class Asm {
  readonly bytes: number[] = [];
  get here(): number {
    return this.bytes.length;
  }
  emit(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }
  imm32(v: number): this {
    return this.emit(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  /** mov r32, imm32 (B8+r). */
  movImm(reg: number, v: number): this {
    return this.emit(0xb8 + reg).imm32(v);
  }
  /** xor r32, r32. */
  zero(reg: number): this {
    return this.emit(0x31, 0xc0 | (reg << 3) | reg);
  }
  /** wrmsr. */
  wrmsr(): this {
    return this.emit(0x0f, 0x30);
  }
  /** out imm8, al. */
  out(port: number): this {
    return this.emit(0xe6, port);
  }
  /** dec r32 (48+r, 32-bit encoding). */
  dec(reg: number): this {
    return this.emit(0x48 + reg);
  }
  /** jnz to a label before here (rel8 or rel32). */
  jnz(label: number): this {
    const rel8 = label - (this.here + 2);
    if (rel8 >= -128) return this.emit(0x75, rel8 & 0xff);
    const rel32 = label - (this.here + 6);
    return this.emit(0x0f, 0x85).imm32(rel32);
  }
  /** jmp to a label before here. */
  jmp(label: number): this {
    const rel8 = label - (this.here + 2);
    if (rel8 >= -128) return this.emit(0xeb, rel8 & 0xff);
    const rel32 = label - (this.here + 5);
    return this.emit(0xe9).imm32(rel32);
  }
  /** call an absolute guest address, from code loaded at `base`. */
  call(target: number, base: number): this {
    const rel32 = target - (base + this.here + 5);
    return this.emit(0xe8).imm32(rel32);
  }
}

const EAX = 0, ECX = 1, EDX = 2, EBX = 3, EBP = 5, ESI = 6, EDI = 7;

/**
 * Guest OS id the hypercall guest writes (TLFS open-source encoding, Linux, version 0): any
 * non-zero value enables hypercalls.
 */
export const GUEST_OS_ID = 0x8100_0000_0000_0000n;

/** A guest program and what it does per batch. */
export interface GuestProgram {
  readonly code: Uint8Array<ArrayBuffer>;
  /** Round trips per batch (the guest writes `DONE_PORT` after each batch). */
  readonly perBatch: number;
}

/**
 * Plain port I/O: `mov ebp, n; l: out PIO_PORT, al; dec ebp; jnz l; out DONE_PORT, al; jmp`.
 */
export function pioGuest(perBatch: number): GuestProgram {
  const a = new Asm();
  const outer = a.here;
  a.movImm(EBP, perBatch);
  const loop = a.here;
  a.out(PIO_PORT).dec(EBP).jnz(loop);
  a.out(DONE_PORT).jmp(outer);
  return { code: new Uint8Array(a.bytes), perBatch };
}

/**
 * Hyper-V hypercalls, the 32-bit convention: writes HV_X64_MSR_GUEST_OS_ID and
 * HV_X64_MSR_HYPERCALL (page at `HYPERCALL_PAGE_GPA`, enabled), then per batch calls the
 * hypercall page `perBatch` times with a fast HvSignalEvent (control EDX:EAX = 0x5d | fast bit,
 * input EBX:ECX = connection id / flag 0, output EDI:ESI unused) and writes `DONE_PORT`.
 */
export function hypercallGuest(perBatch: number): GuestProgram {
  const a = new Asm();
  a.movImm(ECX, tlfs.HV_X64_MSR_GUEST_OS_ID)
    .movImm(EAX, Number(GUEST_OS_ID & 0xffff_ffffn))
    .movImm(EDX, Number(GUEST_OS_ID >> 32n))
    .wrmsr();
  a.movImm(ECX, tlfs.HV_X64_MSR_HYPERCALL)
    .movImm(EAX, HYPERCALL_PAGE_GPA | Number(tlfs.HV_MSR_ENABLE))
    .zero(EDX)
    .wrmsr();
  const outer = a.here;
  a.movImm(EBP, perBatch);
  const loop = a.here;
  const control = tlfs.HVCALL_SIGNAL_EVENT | Number(tlfs.HV_HYPERCALL_FAST_BIT);
  a.movImm(EAX, control).zero(EDX) // control
    .movImm(ECX, SIGNAL_CONNECTION_ID).zero(EBX) // input qword: connection id, flag 0
    .zero(ESI).zero(EDI) // output (second fast qword)
    .call(HYPERCALL_PAGE_GPA, CODE_GPA)
    .dec(EBP)
    .jnz(loop);
  a.out(DONE_PORT).jmp(outer);
  return { code: new Uint8Array(a.bytes), perBatch };
}

/** A flat 4 GiB segment as KVM_SET_SREGS takes it (`type` 0xB code, 0x3 data). */
export function flatSegment(type: number, selector: number) {
  return {
    base: 0n,
    limit: 0xffff_ffff,
    selector,
    type,
    present: 1,
    dpl: 0,
    db: 1,
    s: 1,
    l: 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}
