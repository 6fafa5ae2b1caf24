/**
 * Puts the Hyper-V enlightenments (`src/hyperv`) into a VM: CPUID, the MSR filter that sends the
 * Hyper-V MSRs to user space, shared state for every thread, the synthetic timers of each vCPU
 * thread (`vcpu_timers.ts`), and on the main thread the drivers of SynIC slot-free
 * notifications (eventfd) and the synthetic
 * debugger's pending flag (its UDP socket, edge-triggered).
 * @module
 */
import { C, close, eventfd, eventfdDrain, eventfdSignal } from "../../../ffi/libc.ts";
import type { GuestMemory } from "../../kvm/guest_memory.ts";
import type { CpuidEntry } from "../../kvm/kvm.ts";
import { rdtsc } from "../../kvm/tsc.ts";
import type { Vcpu } from "../../kvm/vcpu.ts";
import type { VmInterrupts } from "../../kvm/vm.ts";
import type { Vm } from "../../kvm/vm.ts";
import {
  cpuidHasInvariantTsc,
  type GuestCrashReport,
  hasFeature,
  hvEnabled,
  type HvFeatures,
  hvMsrFilterRanges,
  HyperV,
  type HyperVState,
  patchCpuid,
  type TlbFlusher,
} from "../mod.ts";
import type { PowerControl } from "../../machine/power.ts";
import type { EventLoop } from "../../util/event_loop.ts";
import {
  createHostBridgeState,
  HostBridgeReceiver,
  type HostBridgeState,
  VcpuHostBridge,
} from "./host_bridge.ts";
import { guestClock, measureGuestTsc, threadRuntime100ns } from "./hyperv_host.ts";
import { VcpuTimerScheduler } from "./vcpu_timers.ts";
import { UdpDebugTransport, type UdpEndpoint } from "./syndbg_udp.ts";

/** The synthetic debugger's socket (opened by the caller, which closes it) and its peer. */
export interface SyndbgLink {
  fd: number;
  peer: UdpEndpoint;
}

/** What every thread needs to build its view of the enlightenments (structured-cloneable). */
export interface HvThreadInit {
  state: HyperVState;
  tsc: { offset: bigint; hz: number; vmStartTsc: bigint };
  timers: SharedArrayBuffer;
  notifyFd: number;
  /** HvPostMessage/HvSignalEvent rings to the VMBus host (when it exists). */
  bridge: HostBridgeState | undefined;
  /** The synthetic debugger's UDP socket (with `syndbg`): fd numbers are process-wide. */
  syndbg: SyndbgLink | undefined;
}

/** The main thread's part. */
export interface MainEnlightenments {
  /** CPUID for every vCPU (before per-vCPU APIC ids). */
  cpuid: CpuidEntry[];
  /** Undefined with `--hv none`. */
  init: HvThreadInit | undefined;
  hv: HyperV | undefined;
  close(): void;
}

/** Sets up the enlightenments of a new VM (before its vCPUs run). */
export function setupEnlightenments(options: {
  vm: Vm;
  memory: GuestMemory;
  baseCpuid: CpuidEntry[];
  /** vCPU 0, not yet running: the guest TSC offset is measured on it. */
  vcpu0: Vcpu;
  cpus: number;
  features: HvFeatures;
  kvmLeaves: boolean;
  power: PowerControl;
  loop: EventLoop;
  /** Guest HvPostMessage and HvSignalEvent, delivered on the main thread (the VMBus host). */
  onGuestMessage: (connectionId: number, messageType: number, payload: Uint8Array) => void;
  onGuestSignal: (connectionId: number) => void;
  /** With `syndbg`: the debugger's socket, and whether the guest uses hypercalls for it. */
  syndbg?: SyndbgLink & { hypercalls: boolean };
}): MainEnlightenments {
  const { vm, features, cpus } = options;
  if (!hvEnabled(features)) {
    return { cpuid: options.baseCpuid, init: undefined, hv: undefined, close() {} };
  }
  // KVM keeps the guest TSC at a constant rate (host invariant TSC or TSC scaling), so the guest
  // is told its TSC is invariant, which also lets Linux trust it across vCPUs.
  const invariantTsc = true;
  const cpuid = patchCpuid(options.baseCpuid, features, {
    vpCount: cpus,
    kvmLeaves: options.kvmLeaves,
    invariantTsc,
  });
  const ranges = hvMsrFilterRanges(features);
  if (ranges.length > 0) vm.routeMsrsToUserSpace(ranges);
  const measured = measureGuestTsc(options.vcpu0, rdtsc);
  const tsc = { ...measured, vmStartTsc: BigInt.asUintN(64, rdtsc() + measured.offset) };
  const notifyFd = eventfd();
  const bridgeFd = eventfd();
  const init: HvThreadInit = {
    state: HyperV.createState({
      vpCount: cpus,
      features,
      invariantTsc: invariantTsc || cpuidHasInvariantTsc(cpuid),
      syndbgHypercalls: options.syndbg?.hypercalls ?? false,
    }),
    tsc,
    timers: VcpuTimerScheduler.createState(cpus),
    notifyFd,
    bridge: hasFeature(features, "synic") ? createHostBridgeState(cpus, bridgeFd) : undefined,
    syndbg: hasFeature(features, "syndbg") && options.syndbg
      ? { fd: options.syndbg.fd, peer: options.syndbg.peer }
      : undefined,
  };
  // The main thread arms timers only when it retries a SynIC message; expiries run on the VP's
  // own thread (`attachVcpuTimers`).
  const scheduler = new VcpuTimerScheduler(init.timers, (): bigint => hv.partition.referenceTime());
  const hv: HyperV = new HyperV(init.state, {
    memory: options.memory,
    clock: guestClock(tsc),
    msi: vm.interrupts,
    scheduler,
    flusher: { flush() {} }, // hypercalls run on vCPU threads only
    power: options.power,
    vpRuntime100ns: () => 0n,
    notifier: { notify: () => eventfdSignal(notifyFd) },
    ...(init.syndbg ? { debugTransport: debugTransport(init.syndbg) } : {}),
  });
  options.loop.add(notifyFd, () => {
    eventfdDrain(notifyFd);
    hv.synic.dispatchSlotFree();
  });
  if (init.bridge) {
    const receiver = new HostBridgeReceiver(init.bridge);
    const onMessage = options.onGuestMessage;
    const onSignal = options.onGuestSignal;
    options.loop.add(bridgeFd, () => {
      eventfdDrain(bridgeFd);
      receiver.drain(onMessage, onSignal);
    });
  }
  // Synthetic debugger: a datagram from the debugger raises the guest's pending flag. Edge-
  // triggered, because the datagram stays queued until the guest asks for it.
  const syndbgFd = init.syndbg?.fd;
  if (syndbgFd !== undefined) {
    options.loop.add(syndbgFd, () => hv.syndbg?.onReceivable(), C.EPOLLIN | C.EPOLLET);
  }
  return {
    cpuid,
    init,
    hv,
    close() {
      for (const fd of [notifyFd, bridgeFd]) {
        options.loop.remove(fd);
        close(fd);
      }
      if (syndbgFd !== undefined) options.loop.remove(syndbgFd); // the caller owns the socket
    },
  };
}

/** A vCPU thread's view of the enlightenments. */
export function attachEnlightenments(init: HvThreadInit, deps: {
  memory: GuestMemory;
  interrupts: VmInterrupts;
  power: PowerControl;
  flusher: TlbFlusher;
  vp: number;
  onCrash: (report: GuestCrashReport) => void;
  /** Whether the vCPU is in 64-bit mode at its current exit (picks the hypercall page). */
  callerLongMode: () => boolean;
  /** Connection ids the VMBus host serves (posted to the main thread, not answered here). */
  ownsConnection: (connectionId: number, kind: "message" | "event") => boolean;
}): HyperV {
  const hv: HyperV = new HyperV(init.state, {
    memory: deps.memory,
    clock: guestClock(init.tsc),
    msi: deps.interrupts,
    scheduler: new VcpuTimerScheduler(init.timers, (): bigint => hv.partition.referenceTime()),
    flusher: deps.flusher,
    power: deps.power,
    vpRuntime100ns: threadRuntime100ns,
    notifier: { notify: () => eventfdSignal(init.notifyFd) },
    crashSink: deps.onCrash,
    callerLongMode: deps.callerLongMode,
    ...(init.bridge
      ? { bridge: new VcpuHostBridge(init.bridge, deps.vp, deps.ownsConnection) }
      : {}),
    ...(init.syndbg ? { debugTransport: debugTransport(init.syndbg) } : {}),
  });
  return hv;
}

/** A vCPU thread's synthetic timers (see `vcpu_timers.ts`). */
export interface VcpuTimers {
  /** After a kick exit: expires the VP's due timers and re-arms its thread timer; how many. */
  runDue(): number;
  /** Before the thread ends: deletes its thread timer. */
  close(): void;
}

/**
 * Gives VP `vp`'s thread (the caller) the thread timer of its synthetic timers, signalling it
 * with `signal` (blocked here outside KVM_RUN).
 */
export function attachVcpuTimers(
  init: HvThreadInit,
  hv: HyperV,
  options: { vp: number; signal: number },
): VcpuTimers {
  const { vp, signal } = options;
  const scheduler = new VcpuTimerScheduler(init.timers, (): bigint => hv.partition.referenceTime());
  scheduler.attach(vp, signal);
  const expire = (t: number, now: bigint) => hv.stimers.expire(vp, t, now);
  return {
    runDue: () => scheduler.runDue(vp, expire),
    close: () => scheduler.detach(vp),
  };
}

/** This thread's transport over the shared debugger socket. */
function debugTransport(link: SyndbgLink): UdpDebugTransport {
  return new UdpDebugTransport(link.fd, link.peer);
}
