/**
 * A benchmark VM built with the production KVM layer (`Kvm`, `Vm`, `Vcpu`): one 1 MiB RAM slot,
 * one vCPU in flat 32-bit protected mode at `CODE_GPA`, the program loaded. The Hyper-V MSR
 * range goes to user space exactly as the VMM routes it (`hvMsrFilterRanges`).
 * @module
 */
import { KVM } from "../../ffi/kvm_abi.ts";
import { GuestMemory } from "../../src/kvm/guest_memory.ts";
import { Kvm, kvmFlavour } from "../../src/kvm/kvm.ts";
import { Vcpu } from "../../src/kvm/vcpu.ts";
import type { Vm } from "../../src/kvm/vm.ts";
import { KVM_TSS_START } from "../../src/machine/layout.ts";
import type { MsrRange } from "../../src/hyperv/mod.ts";
import { CODE_GPA, flatSegment, type GuestProgram, RAM_SIZE, STACK_TOP } from "./guest32.ts";

/** Why the KVM benchmarks cannot run here, or undefined when they can. */
export function kvmSkipReason(): string | undefined {
  const flavour = kvmFlavour();
  if (flavour === "absent") return "/dev/kvm is absent";
  try {
    Kvm.open().close();
  } catch (e) {
    return `/dev/kvm cannot be opened (${(e as Error).message})`;
  }
  return undefined;
}

/** What `kvmFlavour` says, for report headers. */
export function kvmDescription(): string {
  const f = kvmFlavour();
  return f === "pvm" ? "PVM (guest code emulated)" : f === "hardware" ? "hardware KVM" : f;
}

/** One VM + vCPU running a benchmark program. */
export interface BenchVm {
  readonly kvm: Kvm;
  readonly vm: Vm;
  readonly vcpu: Vcpu;
  readonly memory: GuestMemory;
  close(): void;
}

/** Builds the VM, loads `program` and points the vCPU at it. */
export function createBenchVm(program: GuestProgram, msrRanges: readonly MsrRange[]): BenchVm {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  vm.setTssAddress(KVM_TSS_START);
  if (msrRanges.length > 0) vm.routeMsrsToUserSpace(msrRanges);
  const region = vm.addRam(0, RAM_SIZE);
  const memory = new GuestMemory([{
    gpa: 0,
    bytes: new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(
        Deno.UnsafePointer.create(region.hostAddress)!,
        region.size,
      ),
    ),
  }]);
  memory.write(CODE_GPA, program.code);
  const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
  const vcpu = new Vcpu(vm.createVcpuFd(0), 0, kvm.vcpuMmapSize(), syncRegs);
  const s = vcpu.getSregs();
  const code = flatSegment(0xb, 0x8);
  const data = flatSegment(0x3, 0x10);
  vcpu.setSregs({
    ...s,
    cs: code,
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    cr0: (s.cr0 | 1n) & ~(1n << 31n), // PE, no paging
  });
  vcpu.setAllRegs({ rip: BigInt(CODE_GPA), rsp: BigInt(STACK_TOP), rflags: 2n });
  return {
    kvm,
    vm,
    vcpu,
    memory,
    close() {
      vm.close();
      kvm.close();
    },
  };
}
