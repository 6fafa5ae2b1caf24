/**
 * `hyperdeno doctor`: what this host's /dev/kvm supports, and whether it can run a stock 64-bit
 * guest (PVM-based KVM cannot; the tests then use the nested test machine).
 * @module
 */
import { KVM } from "../../ffi/kvm_abi.ts";
import { Kvm } from "../kvm/kvm.ts";
import { judgeKvmHost, readKvmHostFacts } from "../kvm/host_support.ts";

/** Capabilities the VMM uses, with what each is for. */
const CAPS: [string, number, string][] = [
  ["KVM_CAP_IRQCHIP", KVM.KVM_CAP_IRQCHIP, "in-kernel PIC/IOAPIC/LAPIC (required)"],
  ["KVM_CAP_PIT2", KVM.KVM_CAP_PIT2, "in-kernel PIT (required)"],
  ["KVM_CAP_USER_MEMORY", KVM.KVM_CAP_USER_MEMORY, "guest RAM from user memory (required)"],
  ["KVM_CAP_IMMEDIATE_EXIT", KVM.KVM_CAP_IMMEDIATE_EXIT, "race-free vCPU kicks"],
  ["KVM_CAP_SYNC_REGS", KVM.KVM_CAP_SYNC_REGS, "registers without ioctls on the exit path"],
  ["KVM_CAP_X86_USER_SPACE_MSR", KVM.KVM_CAP_X86_USER_SPACE_MSR, "Hyper-V MSRs in user space"],
  ["KVM_CAP_X86_MSR_FILTER", KVM.KVM_CAP_X86_MSR_FILTER, "Hyper-V MSRs in user space"],
  ["KVM_CAP_SIGNAL_MSI", KVM.KVM_CAP_SIGNAL_MSI, "SynIC interrupts"],
  ["KVM_CAP_IRQFD", KVM.KVM_CAP_IRQFD, "interrupts without a vCPU exit"],
  ["KVM_CAP_IOEVENTFD", KVM.KVM_CAP_IOEVENTFD, "doorbells without a vCPU exit"],
  ["KVM_CAP_GET_TSC_KHZ", KVM.KVM_CAP_GET_TSC_KHZ, "Hyper-V TSC/reference time"],
  ["KVM_CAP_NR_VCPUS", KVM.KVM_CAP_NR_VCPUS, "recommended vCPUs"],
  ["KVM_CAP_MAX_VCPUS", KVM.KVM_CAP_MAX_VCPUS, "maximum vCPUs"],
  ["KVM_CAP_HYPERV", KVM.KVM_CAP_HYPERV, "in-kernel Hyper-V (not needed: we do it in TS)"],
];

/** Prints the report; returns 0 when stock 64-bit guests can run here, 1 otherwise. The verdict
 * is the one `boot` acts on (`judgeKvmHost`). */
export function doctor(): number {
  const facts = readKvmHostFacts();
  const verdict = judgeKvmHost(facts);
  console.log(`/dev/kvm: ${facts.kvmPresent ? "present" : "absent"}`);
  if (facts.kvmAccessible) {
    using kvm = Kvm.open();
    console.log(`API version: ${kvm.apiVersion()}`);
    console.log(
      `implementation: ${
        facts.kvmPvm
          ? "PVM (kvm_pvm module)"
          : facts.hardwareVirtualization
          ? "hardware virtualization"
          : "unknown (no vmx/svm, no kvm_intel/kvm_amd)"
      }`,
    );
    for (const [name, cap, why] of CAPS) {
      console.log(`  ${name.padEnd(28)} ${String(kvm.checkExtension(cap)).padStart(5)}  ${why}`);
    }
  }
  if (!verdict.ok) {
    console.log(`verdict: ${verdict.why}. To run guests: ${verdict.advice}.`);
    return 1;
  }
  console.log("verdict: this host can run stock 64-bit guests directly.");
  return 0;
}
