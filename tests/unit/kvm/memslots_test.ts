/**
 * Memory slots over caller memory: a read-only slot (a ROM or flash) is read from memory while
 * guest writes exit as MMIO and leave it unchanged; a slot moved to another address is seen
 * there. Real-mode guests, which every KVM here runs.
 */
import assert from "node:assert/strict";
import { C, mmap } from "../../../ffi/libc.ts";
import { KVM } from "../../../ffi/kvm_abi.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { KVM_CAP_READONLY_MEM } from "../../../src/kvm/vm.ts";
import { runVcpu } from "../../../src/kvm/vcpu_loop.ts";
import {
  FIRMWARE_AREA_START,
  KVM_IDENTITY_MAP_START,
  KVM_TSS_START,
} from "../../../src/machine/layout.ts";
import { kvmUsable } from "./kvm_usable.ts";

const usable = kvmUsable("memory slot tests");

Deno.test("layout: KVM's TSS and identity-map pages sit below the firmware area, as QEMU's", () => {
  assert.equal(KVM_IDENTITY_MAP_START, 0xfeff_c000);
  assert.ok(KVM_TSS_START + 3 * 0x1000 <= FIRMWARE_AREA_START);
  assert.ok(KVM_IDENTITY_MAP_START + 0x1000 <= KVM_TSS_START);
});

Deno.test({
  name: "memslots: a read-only slot reads from memory, writes exit as MMIO and change nothing",
  ignore: !usable,
  fn() {
    const kvm = Kvm.open();
    if (!kvm.checkExtension(KVM_CAP_READONLY_MEM)) {
      console.warn("skipped: this KVM has no KVM_CAP_READONLY_MEM");
      kvm.close();
      return;
    }
    const vm = kvm.createVm();
    vm.setTssAddress(KVM_TSS_START);
    vm.setIdentityMapAddress(KVM_IDENTITY_MAP_START);
    const ram = vm.addRam(0, 0x8_0000);
    const ramBytes = new Uint8Array(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(ram.hostAddress)!, ram.size),
    );
    const romPtr = mmap(0x1000, C.PROT_READ | C.PROT_WRITE, C.MAP_PRIVATE | C.MAP_ANONYMOUS);
    const rom = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(romPtr, 0x1000));
    for (let i = 0; i < rom.length; i++) rom[i] = (i * 7 + 3) & 0xff;
    const romAddr = BigInt(Deno.UnsafePointer.value(romPtr));
    const slot = vm.addSlot(0xe_0000, 0x1000, romAddr, { readOnly: true });
    // mov ax,0xE000; mov ds,ax; mov al,[0x10]; out 0xE0,al; mov byte [0x20],0x55;
    // mov al,[0x20]; out 0xE1,al; out 0xE2,al (then the slot moves to 0xD0000 and:)
    // mov ax,0xD000; mov ds,ax; mov al,[0x30]; out 0xE3,al; out 0xEF,al
    ramBytes.set([
      0xb8,
      0x00,
      0xe0,
      0x8e,
      0xd8,
      0xa0,
      0x10,
      0x00,
      0xe6,
      0xe0,
      0xc6,
      0x06,
      0x20,
      0x00,
      0x55,
      0xa0,
      0x20,
      0x00,
      0xe6,
      0xe1,
      0xe6,
      0xe2,
      0xb8,
      0x00,
      0xd0,
      0x8e,
      0xd8,
      0xa0,
      0x30,
      0x00,
      0xe6,
      0xe3,
      0xe6,
      0xef,
    ], 0x1000);
    const fd = vm.createVcpuFd(0);
    const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
    const vcpu = new Vcpu(fd, 0, kvm.vcpuMmapSize(), syncRegs);
    const s = vcpu.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    vcpu.setSregs(s);
    vcpu.setAllRegs({ rip: 0x1000n, rflags: 2n });
    const ports: [number, number][] = [];
    const mmio: [number, boolean, number[]][] = [];
    const stop = runVcpu(vcpu, {
      pio(port, _w, data) {
        ports.push([port, data[0]!]);
        if (port === 0xe2) vm.moveSlot(slot, 0xd_0000);
        if (port === 0xef) vcpu.setImmediateExit(true);
      },
      mmio(address, write, data) {
        mmio.push([address, write, [...data]]);
        if (!write) data.fill(0xff);
      },
      rdmsr: () => undefined,
      wrmsr: () => false,
      onKick: () => false,
    });
    vcpu.close();
    vm.close();
    kvm.close();
    assert.equal(stop.kind, "stopped");
    assert.deepEqual(mmio, [[0xe_0020, true, [0x55]]]);
    assert.deepEqual(ports, [
      [0xe0, rom[0x10]!],
      [0xe1, rom[0x20]!], // unchanged by the write
      [0xe2, rom[0x20]!],
      [0xe3, rom[0x30]!], // the moved slot answers at its new address
      [0xef, rom[0x30]!],
    ]);
    assert.equal(rom[0x20], (0x20 * 7 + 3) & 0xff);
  },
});
