/**
 * The VMM's side of the Hyper-V contracts (`src/hyperv`): the guest clock (synthetic timers are
 * scheduled on the vCPU threads, `vcpu_timers.ts`), remote TLB flushes through vCPU kicks,
 * hypercall registers over the vCPU's sync regs, #UD for refused hypercalls, and the crash sink.
 * @module
 */
import { C, clockNs } from "../../../ffi/libc.ts";
import { GuestTsc } from "../../kvm/tsc.ts";
import { REG, type Vcpu, VCPU_MODE } from "../../kvm/vcpu.ts";
import { VCPU_REQUEST, type VcpuControl } from "../../kvm/vcpu_control.ts";
import type { DeviceRegistry } from "../../machine/registry.ts";
import {
  type GuestClock,
  HV_DOORBELL_FIRST,
  HV_DOORBELL_LAST,
  HV_HYPERCALL_PORT,
  HYPERCALL_OUT_OFFSET,
  HYPERCALL_OUT_OFFSET_LONG_MODE,
  type HypercallGpr,
  type HypercallRegs,
  type TlbFlusher,
} from "../mod.ts";
import { getLogger, rateLimited } from "../../util/log.ts";

const log = getLogger("hyperv");

/** Registry name of the hypercall page's port. */
export const HV_HYPERCALL_DEVICE = "hv-hypercall";
/** Registry name of the VMBus doorbell ports (connection ids `HV_DOORBELL_FIRST..LAST`). */
export const HV_DOORBELL_DEVICE = "hv-doorbells";

/**
 * Claims the Hyper-V ports in the device registry (build time): the hypercall port and the
 * doorbell range, answered on the exit's vCPU thread (whose handlers need its registers).
 */
export function registerHyperVPorts(registry: DeviceRegistry): void {
  registry.add("pio", HV_HYPERCALL_PORT, 1, registry.addDevice(HV_HYPERCALL_DEVICE));
  registry.add(
    "pio",
    HV_DOORBELL_FIRST,
    HV_DOORBELL_LAST - HV_DOORBELL_FIRST + 1,
    registry.addDevice(HV_DOORBELL_DEVICE),
  );
}

/** A `GuestClock` over the shared guest-TSC parameters; usable on every thread. */
export function guestClock(tsc: { offset: bigint; hz: number; vmStartTsc: bigint }): GuestClock {
  const g = new GuestTsc(tsc.offset, tsc.hz, tsc.vmStartTsc);
  return { guestTsc: () => g.now(), tscHz: g.hz, vmStartTsc: g.vmStartTsc };
}

/**
 * Remote TLB flushes from a vCPU thread: each target is kicked with FLUSH_TLB and flushes itself
 * (see `Vcpu.flushTlb`) before re-entering the guest; the caller returns only once every target
 * counted the flush. While waiting it serves flush requests aimed at itself, so two vCPUs
 * flushing each other cannot deadlock.
 */
export class VcpuTlbFlusher implements TlbFlusher {
  readonly #self: number;
  readonly #controls: readonly VcpuControl[];
  readonly #flushSelf: () => void;
  readonly #slow = rateLimited();

  constructor(self: number, controls: readonly VcpuControl[], flushSelf: () => void) {
    this.#self = self;
    this.#controls = controls;
    this.#flushSelf = flushSelf;
  }

  flush(vps: number[]): void {
    const waits: [VcpuControl, number][] = [];
    for (const vp of vps) {
      const c = this.#controls[vp];
      if (!c || vp === this.#self) continue;
      waits.push([c, c.flushes]);
      c.request(VCPU_REQUEST.FLUSH_TLB);
    }
    if (vps.includes(this.#self)) this.#flushSelf();
    const self = this.#controls[this.#self];
    const start = performance.now();
    for (const [c, seen] of waits) {
      while (!c.exited && !c.waitFlush(seen, 1)) {
        // A peer may be waiting for us: serve our own pending flush meanwhile.
        if (self && (self.takeRequests() & VCPU_REQUEST.FLUSH_TLB)) {
          this.#flushSelf();
          self.ackFlush();
        }
        if (performance.now() - start > 1000) {
          this.#slow(() => log.warning("remote TLB flush waited over 1 s for a vCPU"));
        }
      }
    }
  }
}

/** Whether a `Vcpu.exitMode()` value is 64-bit mode (EFER.LMA and CS.L). */
function is64BitMode(mode: number): boolean {
  const both = VCPU_MODE.LMA | VCPU_MODE.CS_L;
  return (mode & both) === both;
}

/** Whether `vcpu` was in 64-bit mode at its current exit. */
export function exitIn64BitMode(vcpu: Vcpu): boolean {
  return is64BitMode(vcpu.exitMode());
}

/** Word index of each hypercall GPR's low half in `Vcpu.regWords`. */
const GPR_WORD: Readonly<Record<HypercallGpr, number>> = {
  rax: REG.rax * 2,
  rbx: REG.rbx * 2,
  rcx: REG.rcx * 2,
  rdx: REG.rdx * 2,
  rsi: REG.rsi * 2,
  rdi: REG.rdi * 2,
  r8: REG.r8 * 2,
};

/**
 * `HypercallRegs` over a vCPU's registers (sync regs when KVM offers them), as 32-bit words of
 * `Vcpu.regWords` and the packed `Vcpu.exitMode()`: nothing on this path allocates.
 */
export class VcpuHypercallRegs implements HypercallRegs {
  readonly #vcpu: Vcpu;
  readonly #words: Uint32Array;
  #mode = 0;

  constructor(vcpu: Vcpu) {
    this.#vcpu = vcpu;
    this.#words = vcpu.regWords;
  }

  /** Call at the start of each hypercall exit. */
  begin(): void {
    this.#vcpu.loadRegs();
    this.#mode = this.#vcpu.exitMode();
  }

  is64Bit(): boolean {
    return is64BitMode(this.#mode);
  }

  protectedMode(): boolean {
    return (this.#mode & VCPU_MODE.PE) !== 0;
  }

  cpl(): number {
    return (this.#mode >>> VCPU_MODE.CPL_SHIFT) & 3;
  }

  lo(reg: HypercallGpr): number {
    return this.#words[GPR_WORD[reg]]!;
  }

  hi(reg: HypercallGpr): number {
    return this.#words[GPR_WORD[reg] + 1]!;
  }

  set(reg: HypercallGpr, lo: number, hi: number): void {
    const w = GPR_WORD[reg];
    this.#words[w] = lo;
    this.#words[w + 1] = hi;
  }

  readXmm(index: number, into: Uint8Array): void {
    this.#vcpu.readXmm(index, into);
  }
}

/** Where the hypercall `out 0xE3, al` sits in either page, and its length (E6 ib). */
const PAGE_OUT_OFFSETS = [BigInt(HYPERCALL_OUT_OFFSET), BigInt(HYPERCALL_OUT_OFFSET_LONG_MODE)];
const PAGE_OUT_LENGTH = 2n;
const UD_VECTOR = 6;
const EFER_LMA = 1n << 10n;
const PAGE_MASK = 0xfffn;

/**
 * Raises #UD in the guest for a hypercall exit the handler refused ("ud": CPL > 0, real mode,
 * XMM input not offered). Returns where the exception leaves RIP.
 *
 * Hyper-V raises that #UD as a fault on the VMCALL, so the guest's handler sees RIP at the
 * hypercall instruction; here that instruction is the hypercall page's `out`. KVM reports an
 * OUT exit with RIP at the instruction (hardware fast PIO: skipped on the next entry unless RIP
 * changed) or past it (instruction emulator, as on PVM), so the I/O is first completed without
 * running the guest (`Vcpu.completeIo`), after which RIP is past the OUT on every KVM. When the
 * OUT just executed is the page's (CS.base + RIP - 2 translates to its GPA), RIP is moved back
 * onto it: "at-instruction", as with VMCALL, and a guest that returns from its handler without
 * fixing anything faults again, as on Hyper-V. An OUT to the port from anywhere else is not a
 * hypercall instruction whose length we know, so its #UD is raised past it: "after-instruction".
 */
export function raiseHypercallUd(
  vcpu: Vcpu,
  hypercallMsr: bigint,
): "at-instruction" | "after-instruction" {
  vcpu.completeIo();
  vcpu.loadRegs();
  const s = vcpu.getSregs();
  const rip = vcpu.regs[REG.rip]!;
  const long = (s.efer & EFER_LMA) !== 0n && s.cs.l === 1;
  // Linear address of the candidate OUT: no segment base in 64-bit mode, 32-bit wrap otherwise.
  const outRip = BigInt.asUintN(long ? 64 : 32, rip - PAGE_OUT_LENGTH);
  const linear = long ? outRip : BigInt.asUintN(32, s.cs.base + outRip);
  const page = hypercallMsr & ~PAGE_MASK;
  let atPage = false;
  try {
    const gpa = rip >= PAGE_OUT_LENGTH ? vcpu.translate(linear) : undefined;
    atPage = gpa !== undefined && PAGE_OUT_OFFSETS.some((o) => gpa === page + o);
  } catch {
    // A KVM that cannot translate still gets its #UD, past the instruction.
  }
  if (atPage) {
    vcpu.regs[REG.rip] = outRip;
    vcpu.storeRegs();
  }
  vcpu.injectException(UD_VECTOR);
  return atPage ? "at-instruction" : "after-instruction";
}

/**
 * Whether the current I/O exit comes from the guest's hypercall page: RIP (at the OUT or just
 * past it, depending on the KVM) lies on the page the hypercall MSR enabled. Used for the
 * doorbell ports, which an OUT from anywhere else must not turn into a hypercall (it would
 * get RAX overwritten). The page is only ever used from long mode, where CS has no base. One
 * KVM_TRANSLATE: this runs only for doorbells no eventfd completed in the kernel.
 */
export function isHypercallPageExit(vcpu: Vcpu, hypercallMsr: bigint): boolean {
  if ((hypercallMsr & 1n) === 0n || !exitIn64BitMode(vcpu)) return false;
  vcpu.loadRegs();
  const rip = vcpu.regs[REG.rip]!;
  try {
    return vcpu.translate(rip & ~PAGE_MASK) === (hypercallMsr & ~PAGE_MASK);
  } catch {
    return false;
  }
}

/** VP_RUNTIME for the calling thread's vCPU: its thread CPU time, in 100 ns units. */
export function threadRuntime100ns(): bigint {
  return clockNs(C.CLOCK_THREAD_CPUTIME_ID) / 100n;
}

/** Measures the guest TSC offset from a vCPU that is not running yet. */
export function measureGuestTsc(vcpu: Vcpu, hostTsc: () => bigint): { offset: bigint; hz: number } {
  const IA32_TSC = 0x10;
  const before = hostTsc();
  const guest = vcpu.getMsr(IA32_TSC) ?? 0n;
  const after = hostTsc();
  return { offset: guest - (before + (after - before) / 2n), hz: vcpu.tscKhz() * 1000 };
}
