/**
 * Exit dispatch without KVM: the production run loop (`runVcpu`) fed a fake `kvm_run` page, so
 * what is measured is the decoding of the exit and the call of the handler, the part of an exit
 * that is ours, beside the same switch in C over the same page (`floor_decode` in
 * `ref/floor_vmm.c`).
 *
 * The fake vCPU stands in for `Vcpu` in `runVcpu` (which only uses `run`, `runView`, `runOnce`
 * and `setImmediateExit`): its `runOnce` returns the exit reason already in the page instead of
 * calling KVM_RUN, `batch` exits in a row, then a shutdown exit that ends the loop.
 *
 * For each exit kind, two figures: the decode alone (a handler that does nothing, as the C
 * floor's), and decode plus the production dispatch behind it: PIO through the device registry's
 * `IoDispatch` (COM1's scratch register), MMIO to an unclaimed address (all-ones), RDMSR/WRMSR to `HyperV.rdmsr`/`wrmsr` (VP_INDEX, SCONTROL), and the hypercall port to
 * `HyperV.hypercall` through `VcpuHypercallRegs`, the branch the vCPU thread runs. The vCPU
 * thread's handler itself is a closure inside `runVcpuThread`, so the handlers here repeat its
 * few lines of routing.
 * @module
 */
import { KVM, KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import { GuestMemory } from "../../src/kvm/guest_memory.ts";
import { type Vcpu, VCPU_MODE } from "../../src/kvm/vcpu.ts";
import { type ExitHandler, runVcpu } from "../../src/kvm/vcpu_loop.ts";

import { COM1_PORT } from "../../src/machine/layout.ts";
import { HV_HYPERCALL_PORT, parseHvFeatures, tlfs } from "../../src/hyperv/mod.ts";
import { VcpuHypercallRegs } from "../../src/hyperv/host/hyperv_host.ts";
import { attachPcDevices, createPcDeviceState } from "../../src/vmm/pc_devices.ts";
import { rdtsc } from "../../src/kvm/tsc.ts";
import { GUEST_OS_ID, HYPERCALL_PAGE_GPA, RAM_SIZE, SIGNAL_CONNECTION_ID } from "./guest32.ts";
import { hyperVFixture } from "./hyperv_fixture.ts";
import type { Figure, Subject } from "./measure.ts";
import type { FloorLib } from "./vcpu_figures.ts";

const R = KVM_STRUCT.kvm_run;
const RUN_SIZE = 3 * 4096;
const IO_DATA_OFFSET = 4096;
const SYNC_REGS = R.sync_regs + KVM_STRUCT.kvm_sync_regs.regs;
const SYNC_SREGS = R.sync_regs + KVM_STRUCT.kvm_sync_regs.sregs;
const EXITS_PER_BATCH = 1000;

/**
 * A stand-in for `Vcpu` over a plain page: `runOnce` reports the exit already in the page,
 * `exits` times, then a shutdown. Registers live in the page's sync area, as with
 * KVM_CAP_SYNC_REGS; `loadRegs`/`storeRegs`/`modeRegs`/`exitMode` do what `Vcpu`'s do in that
 * case.
 */
class FakeVcpu {
  readonly run: Uint8Array<ArrayBuffer>;
  readonly runView: DataView;
  readonly regs: BigUint64Array;
  readonly regWords: Uint32Array;
  #left = 0;
  /** Called before each exit is reported (a guest re-loading its registers, say). */
  beforeExit: () => void = () => {};

  constructor(page = new Uint8Array(RUN_SIZE)) {
    this.run = page;
    this.runView = new DataView(page.buffer);
    this.regs = new BigUint64Array(page.buffer, SYNC_REGS, 18);
    this.regWords = new Uint32Array(page.buffer, SYNC_REGS, 36);
  }

  arm(exits: number): void {
    this.#left = exits;
  }

  runOnce(): number {
    if (this.#left-- <= 0) return KVM.KVM_EXIT_SHUTDOWN;
    this.beforeExit();
    return this.run[R.exit_reason]! | (this.run[R.exit_reason + 1]! << 8);
  }

  setImmediateExit(on: boolean): void {
    this.run[R.immediate_exit] = on ? 1 : 0;
  }

  loadRegs(): void {}

  storeRegs(): void {
    this.runView.setUint32(R.kvm_dirty_regs, KVM.KVM_SYNC_X86_REGS, true);
    this.runView.setUint32(R.kvm_dirty_regs + 4, 0, true);
  }

  exitMode(): number {
    const S = KVM_STRUCT.kvm_sregs;
    const G = KVM_STRUCT.kvm_segment;
    const run = this.run;
    return (run[SYNC_SREGS + S.cr0]! & 1 ? VCPU_MODE.PE : 0) |
      (run[SYNC_SREGS + S.efer + 1]! & 4 ? VCPU_MODE.LMA : 0) |
      (run[SYNC_SREGS + S.cs + G.l]! !== 0 ? VCPU_MODE.CS_L : 0) |
      ((run[SYNC_SREGS + S.ss + G.dpl]! & 3) << VCPU_MODE.CPL_SHIFT);
  }

  modeRegs(): { efer: bigint; cr0: bigint; csL: number; cpl: number } {
    const S = KVM_STRUCT.kvm_sregs;
    const G = KVM_STRUCT.kvm_segment;
    return {
      efer: this.runView.getBigUint64(SYNC_SREGS + S.efer, true),
      cr0: this.runView.getBigUint64(SYNC_SREGS + S.cr0, true),
      csL: this.run[SYNC_SREGS + S.cs + G.l]!,
      cpl: this.run[SYNC_SREGS + S.ss + G.dpl]!,
    };
  }

  readXmm(): void {
    throw new Error("not used");
  }

  setPio(port: number, write: boolean, size: number, count: number): void {
    const v = this.runView;
    v.setUint32(R.exit_reason, KVM.KVM_EXIT_IO, true);
    this.run[R.io_direction] = write ? KVM.KVM_EXIT_IO_OUT : KVM.KVM_EXIT_IO_IN;
    this.run[R.io_size] = size;
    v.setUint16(R.io_port, port, true);
    v.setUint32(R.io_count, count, true);
    v.setBigUint64(R.io_data_offset, BigInt(IO_DATA_OFFSET), true);
  }

  setMmio(address: number, write: boolean, len: number): void {
    const v = this.runView;
    v.setUint32(R.exit_reason, KVM.KVM_EXIT_MMIO, true);
    v.setBigUint64(R.mmio_phys_addr, BigInt(address), true);
    v.setUint32(R.mmio_len, len, true);
    this.run[R.mmio_is_write] = write ? 1 : 0;
  }

  setMsr(write: boolean, index: number, value: bigint): void {
    const v = this.runView;
    v.setUint32(R.exit_reason, write ? KVM.KVM_EXIT_X86_WRMSR : KVM.KVM_EXIT_X86_RDMSR, true);
    v.setUint32(R.msr_index, index, true);
    v.setBigUint64(R.msr_data, value, true);
  }
}

const NULL_HANDLER: ExitHandler = {
  pio() {},
  mmio() {},
  rdmsr: () => 0n,
  wrmsr: () => true,
  onKick: () => true,
};

function loop(vcpu: FakeVcpu, handler: ExitHandler): () => void {
  return () => {
    vcpu.arm(EXITS_PER_BATCH);
    runVcpu(vcpu as unknown as Vcpu, handler);
  };
}

function cDecode(lib: FloorLib, page: Uint8Array<ArrayBuffer>): Subject {
  if (lib.symbols.floor_decode(page, EXITS_PER_BATCH) !== EXITS_PER_BATCH) {
    throw new Error("floor_decode refused the exit page");
  }
  return {
    label: "C decode (floor_decode)",
    batch: () => void lib.symbols.floor_decode(page, EXITS_PER_BATCH),
  };
}

/** The production side the handlers dispatch to. */
function production() {
  const devices = attachPcDevices(createPcDeviceState({ ramBelow4G: RAM_SIZE, ramAbove4G: 0 }), {
    irq: () => ({ set() {} }),
    power: { powerOff() {}, reset() {} },
    serialOutput: () => {},
    nowNs: () => 0n,
  });
  const memory = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(RAM_SIZE) }]);
  const hyperv = hyperVFixture({
    memory,
    interrupts: { signalMsi() {} },
    features: parseHvFeatures("all"),
    tsc: { offset: 0n, hz: 1_000_000_000, vmStartTsc: rdtsc() },
  });
  const hv = hyperv.hv;
  if (
    !hv.wrmsr(0, tlfs.HV_X64_MSR_GUEST_OS_ID, GUEST_OS_ID) ||
    !hv.wrmsr(0, tlfs.HV_X64_MSR_HYPERCALL, BigInt(HYPERCALL_PAGE_GPA) | tlfs.HV_MSR_ENABLE)
  ) {
    throw new Error("HyperV refused to enable hypercalls");
  }
  return { dispatch: devices.dispatch, hv, events: hyperv.events };
}

/** Every exit-dispatch figure (no KVM needed; the C floor is built with cc). */
export function dispatchFigures(lib: FloorLib): Figure[] {
  const prod = production();
  const figures: Figure[] = [];
  const add = (
    name: string,
    setup: (v: FakeVcpu) => void,
    handler: (v: FakeVcpu) => ExitHandler,
  ) => {
    const decodeOnly = new FakeVcpu();
    setup(decodeOnly);
    const dispatch = new FakeVcpu();
    setup(dispatch);
    const page = new Uint8Array(RUN_SIZE);
    setup(new FakeVcpu(page));
    const common = { kind: "latency", opsPerBatch: EXITS_PER_BATCH, op: "exit" } as const;
    figures.push({
      ...common,
      name: `${name}: decode`,
      subject: { label: "hyperdeno runVcpu", batch: loop(decodeOnly, NULL_HANDLER) },
      floors: [cDecode(lib, page)],
    });
    figures.push({
      ...common,
      name: `${name}: decode + dispatch`,
      subject: { label: "hyperdeno runVcpu + handler", batch: loop(dispatch, handler(dispatch)) },
      floors: [cDecode(lib, page)],
    });
  };
  const com1Scratch = COM1_PORT + 7;
  add("PIO out (COM1 scratch)", (v) => v.setPio(com1Scratch, true, 1, 1), () => ({
    ...NULL_HANDLER,
    pio(port, write, data) {
      if (!prod.dispatch.access("pio", port, write, data)) {
        throw new Error(`nothing at port ${port}`);
      }
    },
  }));
  add("MMIO read (unmapped)", (v) => v.setMmio(0xfed0_0000, false, 4), () => ({
    ...NULL_HANDLER,
    mmio(address, write, data) {
      prod.dispatch.access("mmio", address, write, data);
    },
  }));
  add("RDMSR (HV VP_INDEX)", (v) => v.setMsr(false, tlfs.HV_X64_MSR_VP_INDEX, 0n), () => ({
    ...NULL_HANDLER,
    rdmsr: (i) => prod.hv.rdmsr(0, i),
  }));
  add(
    "WRMSR (HV SCONTROL)",
    (v) => v.setMsr(true, tlfs.HV_X64_MSR_SCONTROL, 1n),
    () => ({ ...NULL_HANDLER, wrmsr: (i, value) => prod.hv.wrmsr(0, i, value) }),
  );
  // Hypercall port: the guest's registers (32-bit fast HvSignalEvent) in the sync area, re-set
  // before each exit as the guest loop does, CR0.PE set in the synced sregs.
  const control = BigInt(tlfs.HVCALL_SIGNAL_EVENT) | tlfs.HV_HYPERCALL_FAST_BIT;
  add("hypercall port (HvSignalEvent)", (v) => {
    v.setPio(HV_HYPERCALL_PORT, true, 1, 1);
    v.runView.setBigUint64(SYNC_SREGS + KVM_STRUCT.kvm_sregs.cr0, 0x11n, true);
    v.regs[2] = BigInt(SIGNAL_CONNECTION_ID); // rcx
    v.beforeExit = () => {
      v.regs[0] = control; // rax
      v.regs[3] = 0n; // rdx
    };
  }, (v) => {
    const regs = new VcpuHypercallRegs(v as unknown as Vcpu);
    return {
      ...NULL_HANDLER,
      pio(port, write) {
        if (port === HV_HYPERCALL_PORT && write) {
          regs.begin();
          if (prod.hv.hypercall(0, regs) === "done") v.storeRegs();
          else throw new Error("hypercall refused");
        }
      },
    };
  });
  // Check every figure's handler once (the hypercall one must reach the bridge).
  const before = prod.events();
  for (const f of figures) f.subject.batch();
  if (prod.events() - before !== EXITS_PER_BATCH) {
    throw new Error("the hypercall dispatch did not reach HvSignalEvent");
  }
  return figures;
}
