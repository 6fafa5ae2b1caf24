/**
 * Interrupt delivery through KVM's in-kernel irqchip, driven by a real-mode guest that programs
 * the IOAPIC and enables its LAPIC (segment bases set to the APIC windows): KVM_SIGNAL_MSI, an
 * irqfd bound to an MSI route from `GsiRouting`, a PCI function's INTx through the board's PIRQ
 * swizzle to IOAPIC GSI 17, and a PCI function's MSI and MSI-X capabilities. Each interrupt runs a handler
 * that reports its vector on port 0xE0.
 */
import assert from "node:assert/strict";
import { eventfd, eventfdSignal } from "../../../ffi/libc.ts";
import { KVM } from "../../../ffi/kvm_abi.ts";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { Kvm } from "../../../src/kvm/kvm.ts";
import { Vcpu } from "../../../src/kvm/vcpu.ts";
import { runVcpu } from "../../../src/kvm/vcpu_loop.ts";
import { PciFunction } from "../../../src/machine/pci/function.ts";
import { PIIX4_PM_DEVFN } from "../../../src/machine/pci/piix.ts";
import { DeviceRegistry } from "../../../src/machine/registry.ts";
import { attachPcDevices, createPcDeviceState } from "../../../src/vmm/pc_devices.ts";
import { kvmUsable } from "./kvm_usable.ts";

const usable = kvmUsable("interrupt delivery tests");

const IOAPIC = 0xfec0_0000;
const LAPIC = 0xfee0_0000;
const VECTORS = { signalMsi: 0x40, irqfd: 0x50, intx: 0x60, pciMsi: 0x70, msix: 0x80 } as const;

/** mov dword seg:[disp16], imm32 (real mode, 32-bit operand). */
function movSeg(seg: number, disp: number, imm: number): number[] {
  return [
    0x66,
    seg,
    0xc7,
    0x06,
    disp & 0xff,
    disp >> 8,
    ...[0, 8, 16, 24].map((s) => (imm >>> s) & 0xff),
  ];
}
const ES = 0x26;
const FS = 0x64;

function guestCode(): { code: number[]; handlers: Map<number, number[]> } {
  const pin = 17; // PIIX4 PM (00:01.3) INTA -> PIRQB -> GSI 17
  const code = [
    ...movSeg(ES, 0x00, 0x10 + 2 * pin),
    ...movSeg(ES, 0x10, 0x8000 | VECTORS.intx), // level, active high, fixed, unmasked
    ...movSeg(ES, 0x00, 0x10 + 2 * pin + 1),
    ...movSeg(ES, 0x10, 0), // destination APIC 0
    ...movSeg(FS, 0xf0, 0x1ff), // SVR: APIC software-enabled
    0xe6,
    0xe1, // out 0xE1, al: ready
    0xfb, // sti
    0xe6,
    0xe2, // l: out 0xE2, al (a poll: bounded by the host)
    0xeb,
    0xfc, // jmp l
  ];
  const handlers = new Map<number, number[]>();
  for (const v of Object.values(VECTORS)) {
    handlers.set(v, [0xb0, v, 0xe6, 0xe0, ...movSeg(FS, 0xb0, 0), 0xcf]); // report, EOI, iret
  }
  return { code, handlers };
}

Deno.test({
  name: "interrupts: SIGNAL_MSI, irqfd on an MSI route, INTx via PIRQ to the IOAPIC, MSI, MSI-X",
  ignore: !usable,
  fn() {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    vm.createIrqchip();
    const r = vm.addRam(0, 1 << 20);
    const mem = new GuestMemory([{
      gpa: 0,
      bytes: new Uint8Array(
        Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(r.hostAddress)!, r.size),
      ),
    }]);
    const { code, handlers } = guestCode();
    mem.write(0x1000, new Uint8Array(code));
    let at = 0x2000;
    for (const [v, h] of handlers) {
      mem.write(at, new Uint8Array(h));
      mem.write(v * 4, Uint8Array.of(at & 0xff, at >> 8, 0, 0)); // IVT: offset, segment 0
      at += 0x20;
    }
    const fd = vm.createVcpuFd(0);
    const syncRegs = (kvm.checkExtension(KVM.KVM_CAP_SYNC_REGS) & KVM.KVM_SYNC_X86_REGS) !== 0;
    const vcpu = new Vcpu(fd, 0, kvm.vcpuMmapSize(), syncRegs);
    const s = vcpu.getSregs();
    s.cs.base = 0n;
    s.cs.selector = 0;
    s.es.base = BigInt(IOAPIC);
    s.fs.base = BigInt(LAPIC);
    vcpu.setSregs(s);
    vcpu.setAllRegs({ rip: 0x1000n, rflags: 2n });
    vcpu.setupLint();

    // The board over this VM: its PIIX4 PM function's INTx reaches GSI 17 through PIRQB.
    const board = attachPcDevices(createPcDeviceState({ ramBelow4G: 1 << 20, ramAbove4G: 0 }), {
      irq: (gsi) => vm.interrupts.irqLine(gsi),
      power: { powerOff() {}, reset() {} },
      serialOutput: () => {},
      nowNs: () => 0n,
      msi: vm.interrupts,
    });
    const pm = board.pci.get(PIIX4_PM_DEVFN)!;
    // A function with MSI and MSI-X capabilities (the table in BAR0), its sink the VM.
    const spec = {
      vendor: 0x1234,
      device: 0x5678,
      classCode: 0xff0000,
      msiVectors: 1,
      bars: [{ kind: "mem32" as const, size: 0x1000, handle: -1 }],
      msix: { vectors: 2, bar: 0, tableOffset: 0, pbaOffset: 0x800 },
    };
    const registry = DeviceRegistry.create();
    spec.bars[0]!.handle = registry.add("mmio", undefined, 0x1000, registry.addDevice("bar0"));
    const msiFn = new PciFunction(PciFunction.createState(spec), spec, {
      registry,
      msi: vm.interrupts,
    });
    const cfg = (reg: number, value: number, size = 4) => {
      const b = new Uint8Array(size);
      for (let i = 0; i < size; i++) b[i] = (value >>> (8 * i)) & 0xff;
      msiFn.configWrite(reg, b);
    };
    cfg(0x54, LAPIC);
    cfg(0x58, 0);
    cfg(0x5c, VECTORS.pciMsi, 2);
    cfg(0x52, 1, 2); // MSI enable
    cfg(0x04, 4, 2); // bus master

    const seen: number[] = [];
    let polls = 0;
    let msiGsi = -1;
    let failure = "";
    const stop = runVcpu(vcpu, {
      pio(port, _write, data) {
        if (port === 0xe1) {
          vm.interrupts.signalMsi(LAPIC, VECTORS.signalMsi);
        } else if (port === 0xe0) {
          const v = data[0]!;
          seen.push(v);
          if (v === VECTORS.signalMsi) {
            msiGsi = vm.routing.allocate();
            vm.routing.setMsi(msiGsi, { address: LAPIC, data: VECTORS.irqfd });
            const efd = eventfd();
            vm.irqfd(efd, msiGsi);
            eventfdSignal(efd);
          } else if (v === VECTORS.irqfd) {
            pm.setIntx(true);
          } else if (v === VECTORS.intx) {
            pm.setIntx(false);
            if (!msiFn.signalMsi(0)) failure = "MSI not enabled on the test function";
          } else if (v === VECTORS.pciMsi) {
            // MSI-X vector 1: program and unmask the entry (BAR writes), enable MSI-X.
            const entry = new Uint8Array(16);
            const dv = new DataView(entry.buffer);
            dv.setUint32(0, LAPIC, true);
            dv.setUint32(8, VECTORS.msix, true);
            msiFn.msix!.write(16, entry.subarray(0, 8));
            msiFn.msix!.write(24, entry.subarray(8, 16));
            cfg(0x62, 0x8000, 2);
            if (!msiFn.signalMsi(1)) failure = "MSI-X not enabled on the test function";
          } else if (v === VECTORS.msix) {
            vcpu.setImmediateExit(true);
          }
        } else if (port === 0xe2 && ++polls > 2_000_000) {
          failure = `no interrupt after ${polls} polls; seen ${seen}`;
          vcpu.setImmediateExit(true);
        }
      },
      mmio(address) {
        failure ||= `unexpected MMIO exit at 0x${address.toString(16)}`;
      },
      rdmsr: () => undefined,
      wrmsr: () => false,
      onKick: () => false,
    });
    vcpu.close();
    vm.close();
    kvm.close();
    assert.equal(failure, "");
    assert.equal(stop.kind, "stopped");
    assert.deepEqual(seen, [
      VECTORS.signalMsi,
      VECTORS.irqfd,
      VECTORS.intx,
      VECTORS.pciMsi,
      VECTORS.msix,
    ]);
    assert.ok(msiGsi >= 24, `MSI GSI ${msiGsi}`);
    console.log(`delivered ${seen.map((v) => v.toString(16))} after ${polls} polls`);
  },
});

Deno.test({
  name: "gsi routing: KVM's default irqchip table kept, MSI GSIs allocated from 24 and reused",
  ignore: !usable,
  fn() {
    const kvm = Kvm.open();
    const vm = kvm.createVm();
    vm.createIrqchip();
    const routing = vm.routing;
    const a = routing.allocate();
    const b = routing.allocate();
    assert.deepEqual([a, b], [24, 25]);
    routing.setMsi(b, { address: LAPIC, data: 0x31 });
    const rows = routing.entries();
    // GSI 0-15: PIC + IOAPIC; 16-23: IOAPIC; then the one MSI route.
    assert.equal(rows.length, 16 * 2 + 8 + 1);
    assert.deepEqual(rows.filter((r) => r[0] === 9), [[9, "irqchip", 1, 1, 0], [
      9,
      "irqchip",
      2,
      9,
      0,
    ]]);
    assert.deepEqual(rows.at(-1), [25, "msi", LAPIC, 0, 0x31]);
    routing.release(b);
    assert.equal(routing.entries().length, 40);
    assert.equal(routing.allocate(), 25);
    assert.throws(() => routing.setMsi(300, { address: LAPIC, data: 1 }), RangeError);
    vm.close();
    kvm.close();
  },
});
