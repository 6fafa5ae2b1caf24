/**
 * One partition's Hyper-V enlightenments, assembled: partition MSRs, per-VP registers, SynIC,
 * synthetic timers, the MSR dispatcher and the hypercall handler over one bundle of shared
 * state. The main thread calls `HyperV.createState` once and sends the bundle to every vCPU
 * worker; each thread then builds its own `new HyperV(state, deps)` over the same memory.
 *
 * Worker side: `rdmsr`/`wrmsr` on MSR exits, `hypercall` on the hypercall port exit.
 * Main side: `synic.postMessage`/`synic.signalEvent` (VMBus host), `stimers.expire` (timerfd),
 * `synic.dispatchSlotFree()` when the `Notifier` eventfd fires, `syndbg.onReceivable()` when
 * the debugger transport has a datagram.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import type { MsiSink } from "../machine/irq.ts";
import type { PowerControl } from "../machine/power.ts";
import type { CrashSink } from "./crash.ts";
import { hasFeature, type HvFeatures } from "./features.ts";
import {
  type HvHostBridge,
  type HypercallExit,
  HypercallHandler,
  type HypercallRegs,
  type TlbFlusher,
} from "./hypercall.ts";
import { HypercallCounters } from "./hypercall_counters.ts";
import { HvMsrs } from "./msrs.ts";
import { HvPartition } from "./partition.ts";
import { SyntheticTimers, type TimerScheduler } from "./stimer.ts";
import { type DebugTransport, SyntheticDebugger } from "./syndbg.ts";
import { type Notifier, SynIC } from "./synic.ts";
import type { GuestClock } from "./time.ts";
import { HvVpRegisters, type VpRuntimeSource } from "./vp.ts";

/** Shared state of a partition: structured-clonable (SharedArrayBuffers and plain values). */
export interface HyperVState {
  readonly vpCount: number;
  readonly features: HvFeatures;
  /** The guest's CPUID reports an invariant TSC (see `cpuidHasInvariantTsc`). */
  readonly invariantTsc: boolean;
  readonly partition: SharedArrayBuffer;
  readonly vps: SharedArrayBuffer;
  readonly synic: SharedArrayBuffer;
  readonly stimers: SharedArrayBuffer;
  /** Synthetic debugger registers (used only with `syndbg`). */
  readonly syndbg: SharedArrayBuffer;
  /** Hypercall counters of every VP (`HypercallCounters`). */
  readonly hypercallCounters: SharedArrayBuffer;
}

/** Everything the enlightenments need from the VMM; one set per thread. */
export interface HyperVDeps {
  memory: GuestMemory;
  clock: GuestClock;
  /** SINT interrupts, direct-mode timers and synthetic IPIs. */
  msi: MsiSink;
  /** Host timers for the synthetic timers. */
  scheduler: TimerScheduler;
  /** Remote TLB flushes. */
  flusher: TlbFlusher;
  /** HV_X64_MSR_RESET. */
  power: PowerControl;
  /** VP_RUNTIME source. */
  vpRuntime100ns: VpRuntimeSource;
  /** Guest-to-host messages and events (VMBus); absent = no connections. */
  bridge?: HvHostBridge;
  /** Wakes the main thread after EOM on a worker. */
  notifier?: Notifier;
  /** Guest crash reports. */
  crashSink?: CrashSink;
  /** HvNotifyLongSpinWait. */
  yieldCpu?: (vp: number) => void;
  /** LAPIC timer frequency for HV_X64_MSR_APIC_FREQUENCY (default 1 GHz, KVM's). */
  apicHz?: number;
  /** The synthetic debugger's link to the host debugger (`syndbg`); absent = none. */
  debugTransport?: DebugTransport;
  /** Whether this thread's vCPU runs in 64-bit mode at its current MSR exit (vCPU threads). */
  callerLongMode?: () => boolean;
}

/** The Hyper-V enlightenments of one partition, as seen from one thread. */
export class HyperV {
  /** Allocates the shared state of a partition with `vpCount` VPs. */
  static createState(
    options: {
      vpCount: number;
      features: HvFeatures;
      invariantTsc?: boolean;
      /** With `syndbg`: the guest debugs through hypercalls (SYNDBG_OPTIONS.USE_HCALLS). */
      syndbgHypercalls?: boolean;
    },
  ): HyperVState {
    const { vpCount, features } = options;
    return {
      vpCount,
      features,
      invariantTsc: options.invariantTsc ?? false,
      partition: HvPartition.createState(),
      vps: HvVpRegisters.createState(vpCount),
      synic: SynIC.createState(vpCount),
      stimers: SyntheticTimers.createState(vpCount),
      syndbg: SyntheticDebugger.createState({ useHypercalls: options.syndbgHypercalls ?? false }),
      hypercallCounters: HypercallCounters.createState(vpCount),
    };
  }

  readonly state: HyperVState;
  readonly partition: HvPartition;
  readonly vps: HvVpRegisters;
  readonly synic: SynIC;
  readonly stimers: SyntheticTimers;
  /** The synthetic debugger; undefined without `syndbg`. */
  readonly syndbg: SyntheticDebugger | undefined;
  readonly msrs: HvMsrs;
  readonly hypercalls: HypercallHandler;

  constructor(state: HyperVState, deps: HyperVDeps) {
    this.state = state;
    const { vpCount, features } = state;
    this.partition = new HvPartition(state.partition, {
      memory: deps.memory,
      clock: deps.clock,
      vpCount,
      ...(deps.crashSink ? { crashSink: deps.crashSink } : {}),
      ...(deps.apicHz !== undefined ? { apicHz: deps.apicHz } : {}),
      doorbells: hasFeature(features, "synic"),
      ...(deps.callerLongMode ? { callerLongMode: deps.callerLongMode } : {}),
    });
    this.vps = new HvVpRegisters(state.vps, {
      memory: deps.memory,
      vpRuntime100ns: deps.vpRuntime100ns,
    });
    this.synic = new SynIC(state.synic, {
      memory: deps.memory,
      msi: deps.msi,
      ...(deps.notifier ? { notifier: deps.notifier } : {}),
    });
    this.stimers = new SyntheticTimers(state.stimers, {
      synic: this.synic,
      msi: deps.msi,
      scheduler: deps.scheduler,
      now: () => this.partition.referenceTime(),
      directMode: hasFeature(features, "stimer-direct"),
    });
    this.syndbg = hasFeature(features, "syndbg")
      ? new SyntheticDebugger(state.syndbg, {
        memory: deps.memory,
        ...(deps.debugTransport ? { transport: deps.debugTransport } : {}),
      })
      : undefined;
    this.msrs = new HvMsrs({
      features,
      invariantTsc: state.invariantTsc,
      partition: this.partition,
      vps: this.vps,
      synic: this.synic,
      stimers: this.stimers,
      ...(this.syndbg ? { syndbg: this.syndbg } : {}),
      power: deps.power,
    });
    this.hypercalls = new HypercallHandler({
      features,
      partition: this.partition,
      memory: deps.memory,
      msi: deps.msi,
      flusher: deps.flusher,
      vpCount,
      ...(deps.bridge ? { bridge: deps.bridge } : {}),
      ...(deps.yieldCpu ? { yieldCpu: deps.yieldCpu } : {}),
      ...(this.syndbg ? { syndbg: this.syndbg } : {}),
      counters: new HypercallCounters(state.hypercallCounters, vpCount),
    });
  }

  /**
   * System reset: every synthetic register back to its power-on value and every synthetic
   * timer cancelled (guest pages in RAM are left alone). Call with every vCPU stopped, from one
   * thread; the other threads' objects see the reset through the shared state.
   */
  reset(): void {
    this.stimers.reset();
    this.syndbg?.reset();
    this.synic.reset();
    this.vps.reset();
    this.partition.reset();
  }

  /** RDMSR exit: the value, or `undefined` to inject #GP. */
  rdmsr(vp: number, index: number): bigint | undefined {
    return this.msrs.rdmsr(vp, index);
  }

  /** WRMSR exit: `false` to inject #GP. */
  wrmsr(vp: number, index: number, value: bigint): boolean {
    return this.msrs.wrmsr(vp, index, value);
  }

  /**
   * A doorbell of the long-mode hypercall page that reached user space (no eventfd bound to
   * `connectionId`'s port): the fast HvSignalEvent it stands for; returns the status for RAX.
   */
  doorbell(connectionId: number): number {
    return this.hypercalls.signalDoorbell(connectionId);
  }

  /** Hypercall port exit of VP `vp`. */
  hypercall(vp: number, regs: HypercallRegs): HypercallExit {
    return this.hypercalls.handle(vp, regs);
  }
}
