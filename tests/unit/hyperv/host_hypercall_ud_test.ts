/**
 * #UD for refused hypercalls, on the real KVM: a real-mode guest (which every KVM runs, PVM
 * included) with an IVT entry for vector 6 makes two hypercall-port OUTs, one of its own and one
 * through the hypercall page, and its #UD handler reports the faulting IP through another port.
 * Skipped when /dev/kvm cannot be used.
 */
import assert from "node:assert/strict";
import { KVM } from "../../../ffi/kvm_abi.ts";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { runVcpu } from "../../../src/kvm/vcpu_loop.ts";
import { HV_HYPERCALL_PORT } from "../../../src/hyperv/mod.ts";
import { raiseHypercallUd, VcpuHypercallRegs } from "../../../src/hyperv/host/hyperv_host.ts";
import { enableHypercalls, makeRig } from "./fakes.ts";
import { kvmUsable } from "../kvm/kvm_usable.ts";

const usable = kvmUsable("hypercall #UD test");

const CODE = 0x1000;
const UD_HANDLER = 0x2000;
const PAGE = 0x3000;
const REPORT_PORT = 0xe9;
const STRAY_PORT = 0xeb;

/**
 * Real mode, CS = DS = SS = 0:
 *
 *   0x1000: out 0xE3, al      ; a stray hypercall-port OUT of the guest's own
 *   0x1002: call 0x3000       ; the hypercall page: endbr64; out 0xE3, al; ret
 *   0x1005: out 0xEB, al      ; reached only if the page's call returned
 *   0x1007: hlt
 *
 *   0x2000: mov bp, sp        ; #UD handler: report the saved IP, then iret
 *           mov ax, [bp]
 *           out 0xE9, ax
 *           iret
 */
function guest(): { code: number[]; handler: number[] } {
  const callRel = PAGE - (CODE + 5);
  return {
    code: [
      0xe6,
      HV_HYPERCALL_PORT,
      0xe8,
      callRel & 0xff,
      (callRel >> 8) & 0xff,
      0xe6,
      STRAY_PORT,
      0xf4,
    ],
    handler: [0x89, 0xe5, 0x8b, 0x46, 0x00, 0xe7, REPORT_PORT, 0xcf],
  };
}

Deno.test({
  name: "a refused hypercall raises #UD: at the page's OUT, or past a stray OUT",
  ignore: !usable,
  fn() {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const r = vm.addRam(0, 1 << 20);
    const memory = new GuestMemory([{
      gpa: 0,
      bytes: new Uint8Array(
        Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
      ),
    }]);
    const { code, handler } = guest();
    memory.write(CODE, new Uint8Array(code));
    memory.write(UD_HANDLER, new Uint8Array(handler));
    memory.writeU16(6 * 4, UD_HANDLER); // IVT[6]: offset
    memory.writeU16(6 * 4 + 2, 0); // segment
    // The hypercall page as the guest's MSR writes would fill it (here from the host side).
    const rig = makeRig({ memory, vpCount: 1 });
    enableHypercalls(rig, PAGE);
    const hv = rig.hv;

    const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
    const vcpu = new Vcpu(vm.createVcpuFd(0), 0, kvm.vcpuMmapSize(), syncRegs);
    const s = vcpu.getSregs();
    for (const seg of [s.cs, s.ds, s.ss]) {
      seg.base = 0n;
      seg.selector = 0;
    }
    vcpu.setSregs(s);
    vcpu.setAllRegs({ rip: BigInt(CODE), rsp: 0x8000n, rflags: 2n });

    const regs = new VcpuHypercallRegs(vcpu);
    const refused: string[] = [];
    const reported: number[] = [];
    let stray = false;
    let done = false;
    const stop = runVcpu(vcpu, {
      pio(port, write, data) {
        if (port === HV_HYPERCALL_PORT && write) {
          regs.begin();
          const exit = hv.hypercall(0, regs);
          refused.push(exit);
          if (exit === "ud") refused.push(raiseHypercallUd(vcpu, hv.partition.hypercallMsr));
          return;
        }
        if (port === REPORT_PORT) reported.push(data[0]! | (data[1]! << 8));
        if (port === STRAY_PORT) stray = true;
        // Stop at the second report (the page's OUT, which would fault again after iret) or
        // if the guest went anywhere unexpected.
        if (reported.length >= 2 || port !== REPORT_PORT) {
          done = true;
          vcpu.setImmediateExit(true);
        }
      },
      mmio() {
        done = true;
        vcpu.setImmediateExit(true);
      },
      rdmsr: () => undefined,
      wrmsr: () => false,
      onKick: () => !done,
    });
    try {
      assert.equal(stop.kind, "stopped", JSON.stringify(stop));
      assert.deepEqual(refused, ["ud", "after-instruction", "ud", "at-instruction"]);
      // The stray OUT at 0x1000 (2 bytes) faults past itself; the page's `out` at PAGE + 4
      // (after endbr64) faults on itself, as VMCALL does on Hyper-V.
      assert.deepEqual(reported, [CODE + 2, PAGE + 4]);
      assert.equal(stray, false, "the refused hypercall must not return to the caller");
    } finally {
      vcpu.close();
      vm.close();
      kvm.close();
    }
  },
});
