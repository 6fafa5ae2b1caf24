/**
 * vCPU exit round trips on this host's KVM, hyperdeno beside a C floor VMM
 * (`bench/ref/floor_vmm.c`) running the same guest bytes in the same process:
 *
 * - **hypercall**: a 32-bit protected-mode guest enables hypercalls through the Hyper-V MSRs
 *   (MSR exits to the production `HyperV.wrmsr`, which fills the hypercall page) and then calls
 *   the page in a loop with a fast HvSignalEvent. hyperdeno handles each exit on the production
 *   path: `runVcpu` (KVM_RUN, exit decode), the hypercall-port branch of the vCPU thread's
 *   handler (`VcpuHypercallRegs.begin`, `HyperV.hypercall`, `Vcpu.storeRegs`), a `HyperV` built
 *   as on a vCPU thread (`lib/hyperv_fixture.ts`), with a bridge that accepts the event: the
 *   hand-off to the VMBus host on the main thread is not part of this figure. The floor resumes
 *   the guest without looking at it.
 * - **port I/O**: a guest loop of `out`; hyperdeno's handler does nothing, so this is the cost
 *   of the run loop and FFI alone.
 *
 * The vCPU runs on the main thread (production runs it in a Worker; the exit path is the same
 * synchronous code). One batch = one guest loop of `perBatch` round trips, ended by an OUT to
 * `DONE_PORT` after which the loop leaves through `immediate_exit`, as a kick would.
 * @module
 */
import assert from "node:assert/strict";
import { errno, errnoName } from "../../ffi/libc.ts";
import { runVcpu } from "../../src/kvm/vcpu_loop.ts";
import { rdtsc } from "../../src/kvm/tsc.ts";
import {
  HV_HYPERCALL_PORT,
  hvMsrFilterRanges,
  HYPERCALL_PAGE_CODE,
  parseHvFeatures,
  tlfs,
} from "../../src/hyperv/mod.ts";
import { measureGuestTsc, VcpuHypercallRegs } from "../../src/hyperv/host/hyperv_host.ts";
import { KVM_TSS_START } from "../../src/machine/layout.ts";
import { openRef } from "./cc.ts";
import { hyperVFixture } from "./hyperv_fixture.ts";
import {
  CODE_GPA,
  DONE_PORT,
  type GuestProgram,
  HYPERCALL_PAGE_GPA,
  hypercallGuest,
  pioGuest,
  RAM_SIZE,
  STACK_TOP,
} from "./guest32.ts";
import { type BenchVm, createBenchVm } from "./kvm_vm.ts";
import type { Figure, Subject } from "./measure.ts";

const FLOOR_SYMBOLS = {
  floor_open: {
    // code, code_len, code_gpa, stack_top, mem_size, msr_base, msr_count, page, page_len,
    // page_gpa, tss_addr
    parameters: [
      "buffer",
      "u32",
      "u32",
      "u32",
      "u32",
      "u32",
      "u32",
      "buffer",
      "u32",
      "u32",
      "u32",
    ],
    result: "pointer",
  },
  floor_run: { parameters: ["pointer", "u32"], result: "i64" },
  floor_close: { parameters: ["pointer"], result: "void" },
  floor_decode: { parameters: ["buffer", "u32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The C floor VMM library. */
export type FloorLib = Deno.DynamicLibrary<typeof FLOOR_SYMBOLS>;

/** Builds and opens `ref/floor_vmm.c`. */
export function openFloor(): Promise<FloorLib> {
  return openRef("floor_vmm", FLOOR_SYMBOLS);
}

/** The Hyper-V MSR window the floor sends to user space (the production ranges' hull). */
const HV_MSR_BASE = 0x40000000;
const HV_MSR_COUNT = 0x200;

/** A C floor VM running `program`; `batch()` runs one guest batch. */
function floorSubject(lib: FloorLib, program: GuestProgram, msrs: boolean): Subject & {
  close(): void;
} {
  const page = new Uint8Array(HYPERCALL_PAGE_CODE);
  const h = lib.symbols.floor_open(
    program.code,
    program.code.length,
    CODE_GPA,
    STACK_TOP,
    RAM_SIZE,
    HV_MSR_BASE,
    msrs ? HV_MSR_COUNT : 0,
    page,
    page.length,
    HYPERCALL_PAGE_GPA,
    KVM_TSS_START,
  );
  if (h === null) {
    const e = errno();
    throw new Error(`the C floor VMM could not build its VM: ${errnoName(e)} (errno ${e})`);
  }
  const run = () => {
    const n = lib.symbols.floor_run(h, DONE_PORT);
    if (n < 0n) throw new Error(`floor_run failed: ${n}`);
    return Number(n);
  };
  // First batch includes the setup exits (MSR writes); check a steady batch.
  run();
  assert.equal(run(), program.perBatch);
  return {
    label: "C floor VMM (ref/floor_vmm.c)",
    batch: () => void run(),
    close: () => lib.symbols.floor_close(h),
  };
}

/** Runs `vm`'s vCPU through `runVcpu` until the guest writes DONE_PORT. */
function loopOnce(
  vm: BenchVm,
  pio: (port: number, write: boolean, data: Uint8Array) => void,
  msr?: { rd(i: number): bigint | undefined; wr(i: number, v: bigint): boolean },
): () => number {
  let done = false;
  let exits = 0;
  const vcpu = vm.vcpu;
  const handler = {
    pio(port: number, write: boolean, data: Uint8Array) {
      if (port === DONE_PORT) {
        done = true;
        vcpu.setImmediateExit(true); // leave at the next entry, as a kick does
        return;
      }
      exits++;
      pio(port, write, data);
    },
    mmio() {},
    rdmsr: (i: number) => msr?.rd(i),
    wrmsr: (i: number, v: bigint) => msr?.wr(i, v) ?? false,
    onKick() {
      const stop = done;
      done = false;
      return !stop;
    },
  };
  return () => {
    exits = 0;
    const stop = runVcpu(vcpu, handler);
    if (stop.kind !== "stopped") throw new Error(`guest stopped: ${JSON.stringify(stop)}`);
    return exits;
  };
}

/** Round trips per batch: a few ms of guest time even on PVM's emulator. */
const PER_BATCH = Number(Deno.env.get("BENCH_EXITS") ?? 500);

function hypercallFigure(lib: FloorLib): Figure {
  const program = hypercallGuest(PER_BATCH);
  const features = parseHvFeatures("all");
  const vm = createBenchVm(program, hvMsrFilterRanges(features));
  const tsc = measureGuestTsc(vm.vcpu, rdtsc);
  const { hv, events } = hyperVFixture({
    memory: vm.memory,
    interrupts: vm.vm.interrupts,
    features,
    tsc: { ...tsc, vmStartTsc: BigInt.asUintN(64, rdtsc() + tsc.offset) },
  });
  const vcpu = vm.vcpu;
  const regs = new VcpuHypercallRegs(vcpu);
  let refused = 0;
  // The hypercall-port branch of the vCPU thread's exit handler (src/vmm/vcpu_thread.ts).
  const batch = loopOnce(vm, (port, write) => {
    if (port === HV_HYPERCALL_PORT && write) {
      regs.begin();
      const r = hv.hypercall(0, regs);
      if (r === "done") {
        vcpu.storeRegs();
        return;
      }
      refused++;
    }
  }, { rd: (i) => hv.rdmsr(0, i), wr: (i, v) => hv.wrmsr(0, i, v) });
  // Setup batch (MSR exits), then a checked steady batch.
  batch();
  const before = events();
  assert.equal(batch(), PER_BATCH);
  assert.equal(
    refused,
    0,
    "HyperV.hypercall refused the guest's hypercalls ('ud' or 'ignored'): does the Vcpu have " +
      "KVM sync the sregs (kvm_valid_regs), which Vcpu.modeRegs() reads?",
  );
  assert.equal(events() - before, PER_BATCH, "the bridge did not see every HvSignalEvent");
  vcpu.loadRegs();
  assert.equal(vcpu.regs[0]! & 0xffffn, BigInt(tlfs.HV_STATUS_SUCCESS));
  return {
    name: "hypercall round trip (HvSignalEvent, fast)",
    kind: "latency",
    opsPerBatch: PER_BATCH,
    op: "round trip",
    subject: { label: "hyperdeno (runVcpu + HyperV)", batch: () => void batch() },
    floors: [floorSubject(lib, program, true)],
    target: { floor: "C floor VMM (ref/floor_vmm.c)", ratio: 1.2 },
  };
}

function pioFigure(lib: FloorLib): Figure {
  const program = pioGuest(PER_BATCH);
  const vm = createBenchVm(program, []);
  const batch = loopOnce(vm, () => {});
  batch();
  assert.equal(batch(), PER_BATCH);
  return {
    name: "port I/O exit round trip",
    kind: "latency",
    opsPerBatch: PER_BATCH,
    op: "exit",
    subject: { label: "hyperdeno (runVcpu)", batch: () => void batch() },
    floors: [floorSubject(lib, program, false)],
  };
}

/** Builds the floor VMM and both figures (each checked before it is returned). */
export async function vcpuFigures(): Promise<Figure[]> {
  const lib = await openFloor();
  return [hypercallFigure(lib), pioFigure(lib)];
}
