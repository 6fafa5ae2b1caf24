/**
 * Drives the real KVM layer with tiny real-mode guests, which every KVM runs (PVM included):
 * port I/O exits through the run loop, and kicks that get a spinning vCPU thread out of KVM_RUN.
 */
import assert from "node:assert/strict";
import { KVM } from "../../../ffi/kvm_abi.ts";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { VCPU_REQUEST, VcpuControl } from "../../../src/kvm/vcpu_control.ts";
import { runVcpu } from "../../../src/kvm/vcpu_loop.ts";
import { kvmUsable } from "./kvm_usable.ts";

const usable = kvmUsable("KVM layer tests");

function realModeVm(code: number[]) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const r = vm.addRam(0, 1 << 20);
  const mem = new GuestMemory([{
    gpa: 0,
    bytes: new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
    ),
  }]);
  mem.write(0x1000, new Uint8Array(code));
  const fd = vm.createVcpuFd(0);
  const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
  return { kvm, vm, fd, runSize: kvm.vcpuMmapSize(), syncRegs };
}

Deno.test({
  name: "a real-mode guest's OUT instructions reach the exit handler with port, size and data",
  ignore: !usable,
  fn() {
    // mov al,0x41; out 0xE9,al; mov ax,0x1234; out 0xEA,ax; mov cx,100; l: out 0xE8,al; dec cx;
    // jnz l; out 0xEB,al; hlt
    const { kvm, vm, fd, runSize, syncRegs } = realModeVm([
      0xb0,
      0x41,
      0xe6,
      0xe9,
      0xb8,
      0x34,
      0x12,
      0xe7,
      0xea,
      0xb9,
      0x64,
      0x00,
      0xe6,
      0xe8,
      0x49,
      0x75,
      0xfb,
      0xe6,
      0xeb,
      0xf4,
    ]);
    const vcpu = new Vcpu(fd, 0, runSize, syncRegs);
    const s = vcpu.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    vcpu.setSregs(s);
    vcpu.setAllRegs({ rip: 0x1000n, rflags: 2n });
    const seen: [number, number[]][] = [];
    const modes: { cr0: bigint; efer: bigint }[] = [];
    let loops = 0;
    let done = false;
    const stop = runVcpu(vcpu, {
      pio(port, write, data) {
        assert.ok(write);
        modes.push(vcpu.modeRegs());
        if (port === 0xe8) loops++;
        else if (port === 0xeb) {
          done = true;
          vcpu.setImmediateExit(true); // leave the loop at the next entry
        } else seen.push([port, [...data]]);
      },
      mmio() {},
      rdmsr: () => undefined,
      wrmsr: () => false,
      onKick: () => !done,
    });
    assert.equal(stop.kind, "stopped");
    assert.deepEqual(seen, [[0xe9, [0x41]], [0xea, [0x34, 0x12]]]);
    assert.equal(loops, 100);
    // The exit path reads CR0/EFER from kvm_run's sync area: real mode, reset CR0 (ET set).
    const cr0 = vcpu.getSregs().cr0;
    assert.ok(modes.every((m) => m.cr0 === cr0 && m.efer === 0n), "sync sregs match KVM_GET_SREGS");
    assert.equal(cr0 & 1n, 0n);
    vm.close();
    kvm.close();
  },
});

Deno.test({
  name: "a STOP request kicks a vCPU thread out of a guest spin loop",
  ignore: !usable,
  async fn() {
    const { kvm, vm, fd, runSize, syncRegs } = realModeVm([0xeb, 0xfe]); // jmp $
    const control = new VcpuControl(VcpuControl.createState());
    control.attachRun(fd, runSize);
    const worker = new Worker(new URL("./spin_worker.ts", import.meta.url).href, {
      type: "module",
    });
    const result = new Promise<{ stop: { kind: string }; kicks: number }>((resolve) => {
      worker.onmessage = (e) => resolve(e.data);
    });
    worker.postMessage({ fd, runSize, syncRegs, control: control.sab });
    await new Promise((r) => setTimeout(r, 300)); // let it spin inside KVM_RUN
    const t0 = performance.now();
    control.request(VCPU_REQUEST.STOP);
    const r = await result;
    const ms = performance.now() - t0;
    worker.terminate();
    assert.equal(r.stop.kind, "stopped");
    assert.ok(r.kicks >= 1);
    assert.ok(control.exited);
    // A spin loop never exits on its own: only the kick ends KVM_RUN. The bound only catches a
    // kick that got lost behind some other wake-up (seconds); it is no performance figure.
    assert.ok(ms < 15_000, `kick took ${ms} ms`);
    vm.close();
    kvm.close();
  },
});
