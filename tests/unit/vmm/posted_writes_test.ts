/**
 * Posted writes through this host's KVM: a real-mode guest's OUT of the matching value is
 * completed by KVM (the eventfd fires, no exit), a different value exits to the handler, and a
 * moved binding takes effect at the new port only.
 */
import assert from "node:assert/strict";
import { KVM } from "../../../ffi/kvm_abi.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { runVcpu } from "../../../src/kvm/vcpu_loop.ts";
import { EventLoop } from "../../../src/util/event_loop.ts";
import { PostedWrite } from "../../../src/vmm/posted_writes.ts";
import { kvmUsable } from "../kvm/kvm_usable.ts";

const usable = kvmUsable("posted write tests");

Deno.test({
  name: "posted writes: a matching OUT completes in KVM, others exit, the binding moves",
  ignore: !usable,
  async fn() {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    const r = vm.addRam(0, 1 << 20);
    const ram = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
    );
    // mov al,0x42; out 0xE5,al; out 0xE5,al; mov al,0x43; out 0xE5,al; out 0xE0,al (host moves
    // the binding to 0xE6); mov al,0x42; out 0xE5,al; out 0xE6,al; out 0xEF,al
    ram.set([
      0xb0,
      0x42,
      0xe6,
      0xe5,
      0xe6,
      0xe5,
      0xb0,
      0x43,
      0xe6,
      0xe5,
      0xe6,
      0xe0,
      0xb0,
      0x42,
      0xe6,
      0xe5,
      0xe6,
      0xe6,
      0xe6,
      0xef,
    ], 0x1000);
    const loop = new EventLoop();
    let posted = 0n;
    const pw = new PostedWrite(vm, loop, {
      space: "pio",
      length: 1,
      datamatch: 0x42n,
      onWrite: (n) => {
        posted += n;
        loop.stop();
      },
    });
    pw.place(0xe5);
    const fd = vm.createVcpuFd(0);
    const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
    const vcpu = new Vcpu(fd, 0, kvm.vcpuMmapSize(), syncRegs);
    const s = vcpu.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    vcpu.setSregs(s);
    vcpu.setAllRegs({ rip: 0x1000n, rflags: 2n });
    const exits: [number, number][] = [];
    runVcpu(vcpu, {
      pio(port, _w, data) {
        exits.push([port, data[0]!]);
        if (port === 0xe0) pw.place(0xe6);
        if (port === 0xef) vcpu.setImmediateExit(true);
      },
      mmio() {},
      rdmsr: () => undefined,
      wrmsr: () => false,
      onKick: () => false,
    });
    await loop.run(); // the eventfd is readable by now: the loop sees it at once
    pw.close();
    pw.close();
    loop.close();
    vcpu.close();
    vm.close();
    kvm.close();
    // Two matching OUTs at 0xE5 and one at 0xE6 after the move never exited.
    assert.deepEqual(exits, [[0xe5, 0x43], [0xe0, 0x43], [0xe5, 0x42], [0xef, 0x42]]);
    assert.equal(posted, 3n);
  },
});
