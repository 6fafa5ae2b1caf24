/**
 * Synthetic video's VRAM slot on this host's KVM: a real-mode guest stores into the VRAM where
 * the "driver" placed it, the stores land in the host's VRAM memory without an MMIO exit, and a
 * place outside the VMBus windows is refused.
 */
import assert from "node:assert/strict";
import { KVM } from "../../../ffi/kvm_abi.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { runVcpu } from "../../../src/kvm/vcpu_loop.ts";
import { allocateVram, vramForVm } from "../../../src/vmm/vram.ts";
import { kvmUsable } from "../kvm/kvm_usable.ts";

const usable = kvmUsable("VRAM slot test");

Deno.test({
  name: "VRAM slot: guest stores at the mapped GPA reach host memory without MMIO exits",
  ignore: !usable,
  fn() {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const ram = vm.addRam(0, 0x80000);
    const ramBytes = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(ram.hostAddress)!, ram.size),
    );
    // mov ax,0x8000; mov es,ax; mov byte [es:0],0x5a; mov byte [es:0x1234],0xa5; out 0xeb,al; hlt
    ramBytes.set(
      [
        0xb8,
        0x00,
        0x80,
        0x8e,
        0xc0,
        0x26,
        0xc6,
        0x06,
        0x00,
        0x00,
        0x5a,
        0x26,
        0xc6,
        0x06,
        0x34,
        0x12,
        0xa5,
        0xe6,
        0xeb,
        0xf4,
      ],
      0x1000,
    );
    const memory = allocateVram(8 << 20);
    const vram = vramForVm(vm.fd, memory, [{ gpa: 0x80000, size: 16 << 20 }]);
    assert.equal(vram.map(0x20000000), false, "outside the windows");
    assert.equal(vram.map(0x80000), true);
    const fd = vm.createVcpuFd(0);
    const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
    const vcpu = new Vcpu(fd, 0, kvm.vcpuMmapSize(), syncRegs);
    const s = vcpu.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    vcpu.setSregs(s);
    vcpu.setAllRegs({ rip: 0x1000n, rflags: 2n });
    const mmio: string[] = [];
    let done = false;
    runVcpu(vcpu, {
      pio(port) {
        if (port === 0xeb) {
          done = true;
          vcpu.setImmediateExit(true);
        }
      },
      mmio(gpa) {
        mmio.push(gpa.toString(16));
      },
      rdmsr: () => undefined,
      wrmsr: () => false,
      onKick: () => !done,
    });
    assert.deepEqual(mmio, []);
    assert.equal(memory.bytes[0], 0x5a);
    assert.equal(memory.bytes[0x1234], 0xa5);
    vcpu.close();
    vm.close();
    kvm.close();
  },
});
