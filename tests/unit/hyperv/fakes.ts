/**
 * Fakes for the Hyper-V unit tests: guest memory over a plain ArrayBuffer, a settable guest
 * clock, recording MSI/scheduler/flusher/bridge/power sinks, and a register file implementing
 * `HypercallRegs`.
 * @module
 */
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import type { MsiSink } from "../../../src/machine/irq.ts";
import type { PowerControl } from "../../../src/machine/power.ts";
import type { GuestCrashReport } from "../../../src/hyperv/crash.ts";
import { HV_FEATURES_ALL, type HvFeatures } from "../../../src/hyperv/features.ts";
import type {
  HvHostBridge,
  HypercallGpr,
  HypercallRegs,
  TlbFlusher,
} from "../../../src/hyperv/hypercall.ts";
import { HyperV, type HyperVDeps } from "../../../src/hyperv/hyperv.ts";
import type { TimerScheduler } from "../../../src/hyperv/stimer.ts";
import type { DebugTransport } from "../../../src/hyperv/syndbg.ts";
import type { GuestClock } from "../../../src/hyperv/time.ts";
import * as T from "../../../src/hyperv/tlfs.ts";

/** 4 MiB of guest RAM at GPA 0 (plus an optional second region), over plain ArrayBuffers. */
export function makeMemory(size = 4 << 20, extra?: { gpa: number; size: number }): GuestMemory {
  const regions = [{ gpa: 0, bytes: new Uint8Array(size) }];
  if (extra) regions.push({ gpa: extra.gpa, bytes: new Uint8Array(extra.size) });
  return new GuestMemory(regions);
}

/**
 * A guest clock whose TSC the test sets. The default 2.56 GHz makes the reference TSC scale
 * exactly 2^56 (256 TSC ticks per 100 ns), so reference times in tests are exact.
 */
export class FakeClock implements GuestClock {
  tsc: bigint;
  readonly tscHz: number;
  readonly vmStartTsc: bigint;
  constructor(tscHz = 2_560_000_000, vmStartTsc = 256_000_000n) {
    this.tscHz = tscHz;
    this.vmStartTsc = vmStartTsc;
    this.tsc = vmStartTsc;
  }
  guestTsc(): bigint {
    return this.tsc;
  }
  /** Advances the TSC by `ticks100ns` reference ticks. */
  advance100ns(ticks100ns: bigint): void {
    this.tsc += (ticks100ns * BigInt(this.tscHz)) / 10_000_000n;
  }
  /** Sets the TSC so that the reference time is `t100ns`. */
  set100ns(t100ns: bigint): void {
    this.tsc = this.vmStartTsc + (t100ns * BigInt(this.tscHz)) / 10_000_000n;
  }
}

/** Records MSIs. */
export class FakeMsi implements MsiSink {
  readonly sent: { address: number; data: number }[] = [];
  signalMsi(address: number, data: number): void {
    this.sent.push({ address, data });
  }
  /** (APIC id, vector) pairs sent so far. */
  targets(): [number, number][] {
    return this.sent.map((m) => [(m.address >>> 12) & 0xff, m.data]);
  }
  clear(): void {
    this.sent.length = 0;
  }
}

/** Records armed deadlines per (vp, timer). */
export class FakeScheduler implements TimerScheduler {
  readonly armed = new Map<string, bigint>();
  readonly log: string[] = [];
  arm(vp: number, timer: number, deadline100ns: bigint): void {
    this.armed.set(`${vp}/${timer}`, deadline100ns);
    this.log.push(`arm ${vp}/${timer} ${deadline100ns}`);
  }
  cancel(vp: number, timer: number): void {
    this.armed.delete(`${vp}/${timer}`);
    this.log.push(`cancel ${vp}/${timer}`);
  }
  deadline(vp: number, timer: number): bigint | undefined {
    return this.armed.get(`${vp}/${timer}`);
  }
}

/** Records TLB flush requests. */
export class FakeFlusher implements TlbFlusher {
  readonly flushes: number[][] = [];
  flush(vps: number[]): void {
    this.flushes.push([...vps]);
  }
}

/** Records bridge calls and answers with `status`. */
export class FakeBridge implements HvHostBridge {
  status = T.HV_STATUS_SUCCESS;
  readonly messages: { connectionId: number; messageType: number; payload: Uint8Array }[] = [];
  readonly events: { connectionId: number; flag: number }[] = [];
  postMessage(connectionId: number, messageType: number, payload: Uint8Array): number {
    this.messages.push({ connectionId, messageType, payload: payload.slice() });
    return this.status;
  }
  signalEvent(connectionId: number, flagNumber: number): number {
    this.events.push({ connectionId, flag: flagNumber });
    return this.status;
  }
}

/** Counts power requests. */
export class FakePower implements PowerControl {
  resets = 0;
  powerOffs = 0;
  reset(): void {
    this.resets++;
  }
  powerOff(): void {
    this.powerOffs++;
  }
}

function isU32(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;
}

/** A register file for hypercalls; checks that the handler writes 32-bit halves. */
export class FakeRegs implements HypercallRegs {
  readonly gpr = new Map<HypercallGpr, bigint>();
  readonly xmm: Uint8Array[] = Array.from({ length: 6 }, () => new Uint8Array(16));
  x64 = true;
  prot = true;
  privilege = 0;
  xmmReads = 0;
  is64Bit(): boolean {
    return this.x64;
  }
  protectedMode(): boolean {
    return this.prot;
  }
  cpl(): number {
    return this.privilege;
  }
  lo(reg: HypercallGpr): number {
    return Number(this.getGpr(reg) & 0xffff_ffffn);
  }
  hi(reg: HypercallGpr): number {
    return Number(this.getGpr(reg) >> 32n);
  }
  set(reg: HypercallGpr, lo: number, hi: number): void {
    if (!isU32(lo) || !isU32(hi)) throw new RangeError(`set(${reg}): ${lo}, ${hi} not u32`);
    this.setGpr(reg, (BigInt(hi) << 32n) | BigInt(lo));
  }
  /** Full 64-bit value of a GPR (test side). */
  getGpr(reg: HypercallGpr): bigint {
    return this.gpr.get(reg) ?? 0n;
  }
  /** Sets a full 64-bit GPR (test side). */
  setGpr(reg: HypercallGpr, value: bigint): void {
    this.gpr.set(reg, BigInt.asUintN(64, value));
  }
  readXmm(index: number, into: Uint8Array): void {
    this.xmmReads++;
    into.set(this.xmm[index]!);
  }
  /** Sets XMM`index` from two qwords (low, high). */
  setXmm(index: number, lo: bigint, hi = 0n): void {
    const dv = new DataView(this.xmm[index]!.buffer);
    dv.setBigUint64(0, lo, true);
    dv.setBigUint64(8, hi, true);
  }
  /** 64-bit convention: control in RCX, input in RDX, output in R8. */
  call64(control: bigint, input = 0n, output = 0n): this {
    this.x64 = true;
    this.setGpr("rcx", control);
    this.setGpr("rdx", input);
    this.setGpr("r8", output);
    return this;
  }
  /** 32-bit convention: EDX:EAX control, EBX:ECX input, EDI:ESI output. */
  call32(control: bigint, input = 0n, output = 0n): this {
    this.x64 = false;
    this.setGpr("rdx", control >> 32n);
    this.setGpr("rax", control & 0xffff_ffffn);
    this.setGpr("rbx", input >> 32n);
    this.setGpr("rcx", input & 0xffff_ffffn);
    this.setGpr("rdi", output >> 32n);
    this.setGpr("rsi", output & 0xffff_ffffn);
    return this;
  }
  /** Result value of the last call. */
  result(): bigint {
    return this.x64
      ? this.getGpr("rax")
      : (this.getGpr("rdx") << 32n) | (this.getGpr("rax") & 0xffff_ffffn);
  }
  status(): number {
    return Number(this.result() & 0xffffn);
  }
  repsCompleted(): number {
    return Number((this.result() >> 32n) & 0xfffn);
  }
}

/** A HyperV over fakes, with the fakes exposed. */
export interface Rig {
  hv: HyperV;
  memory: GuestMemory;
  clock: FakeClock;
  msi: FakeMsi;
  scheduler: FakeScheduler;
  flusher: FakeFlusher;
  bridge: FakeBridge;
  power: FakePower;
  crashes: GuestCrashReport[];
  notified: number;
  runtime: Map<number, bigint>;
  yields: number[];
}

/** Builds a partition over fakes. */
export function makeRig(
  options: {
    features?: HvFeatures;
    vpCount?: number;
    invariantTsc?: boolean;
    memory?: GuestMemory;
    noBridge?: boolean;
    vpRuntime?: (vp: number) => bigint;
    crashSink?: (r: GuestCrashReport) => void;
    /** With `syndbg`: the debugger link, and whether SYNDBG_OPTIONS starts with USE_HCALLS. */
    debugTransport?: DebugTransport;
    syndbgHypercalls?: boolean;
    /** The MSR-writing vCPU's mode (default: not in long mode, the plain hypercall page). */
    callerLongMode?: () => boolean;
  } = {},
): Rig {
  const features = options.features ?? HV_FEATURES_ALL;
  const state = HyperV.createState({
    vpCount: options.vpCount ?? 4,
    features,
    invariantTsc: options.invariantTsc ?? true,
    syndbgHypercalls: options.syndbgHypercalls ?? false,
  });
  const rig = {
    memory: options.memory ?? makeMemory(),
    clock: new FakeClock(),
    msi: new FakeMsi(),
    scheduler: new FakeScheduler(),
    flusher: new FakeFlusher(),
    bridge: new FakeBridge(),
    power: new FakePower(),
    crashes: [] as GuestCrashReport[],
    notified: 0,
    runtime: new Map<number, bigint>(),
    yields: [] as number[],
  } as Omit<Rig, "hv"> & { hv?: HyperV };
  const deps: HyperVDeps = {
    memory: rig.memory,
    clock: rig.clock,
    msi: rig.msi,
    scheduler: rig.scheduler,
    flusher: rig.flusher,
    power: rig.power,
    vpRuntime100ns: options.vpRuntime ?? ((vp) => rig.runtime.get(vp) ?? 0n),
    notifier: { notify: () => rig.notified++ },
    crashSink: options.crashSink ?? ((r) => rig.crashes.push(r)),
    yieldCpu: (vp) => rig.yields.push(vp),
    ...(options.noBridge ? {} : { bridge: rig.bridge }),
    ...(options.debugTransport ? { debugTransport: options.debugTransport } : {}),
    ...(options.callerLongMode ? { callerLongMode: options.callerLongMode } : {}),
  };
  rig.hv = new HyperV(state, deps);
  return rig as Rig;
}

/** Writes the guest OS id and enables the hypercall page at `gpa`. */
export function enableHypercalls(rig: Rig, gpa = 0x1000, guestOsId = 0x8100_0006_0100_0000n): void {
  if (!rig.hv.wrmsr(0, T.HV_X64_MSR_GUEST_OS_ID, guestOsId)) throw new Error("GUEST_OS_ID");
  if (!rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, BigInt(gpa) | 1n)) throw new Error("HYPERCALL");
}

/** Enables the SynIC of `vp` with SIMP at `simp`, SIEFP at `siefp`, SINT`sint` on `vector`. */
export function enableSynic(
  rig: Rig,
  vp: number,
  opts: { simp?: number; siefp?: number; sint?: number; vector?: number; sintFlags?: bigint } = {},
): { simp: number; siefp: number } {
  const simp = opts.simp ?? 0x10_0000 + vp * 0x2000;
  const siefp = opts.siefp ?? simp + 0x1000;
  const ok = rig.hv.wrmsr(vp, T.HV_X64_MSR_SIMP, BigInt(simp) | 1n) &&
    rig.hv.wrmsr(vp, T.HV_X64_MSR_SIEFP, BigInt(siefp) | 1n) &&
    rig.hv.wrmsr(
      vp,
      T.HV_X64_MSR_SINT0 + (opts.sint ?? 2),
      BigInt(opts.vector ?? 0x40) | (opts.sintFlags ?? 0n),
    ) &&
    rig.hv.wrmsr(vp, T.HV_X64_MSR_SCONTROL, 1n);
  if (!ok) throw new Error("enableSynic");
  return { simp, siefp };
}
