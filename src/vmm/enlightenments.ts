/**
 * Puts the Hyper-V enlightenments (`src/hyperv`) into a VM: CPUID, the MSR filter that sends the
 * Hyper-V MSRs to user space, shared state for every thread, and on the main thread the drivers
 * of synthetic timers (timerfd) and SynIC slot-free notifications (eventfd).
 * @module
 */
import { close, eventfd, eventfdDrain, eventfdSignal } from "../../ffi/libc.ts";
import type { GuestMemory } from "../kvm/guest_memory.ts";
import type { CpuidEntry } from "../kvm/kvm.ts";
import { rdtsc } from "../kvm/tsc.ts";
import type { Vcpu } from "../kvm/vcpu.ts";
import type { VmInterrupts } from "../kvm/vm.ts";
import type { Vm } from "../kvm/vm.ts";
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
} from "../hyperv/mod.ts";
import type { PowerControl } from "../machine/power.ts";
import type { EventLoop } from "./event_loop.ts";
import { vmbusOwnsConnection } from "../vmbus/mod.ts";
import {
  createHostBridgeState,
  HostBridgeReceiver,
  type HostBridgeState,
  VcpuHostBridge,
} from "./host_bridge.ts";
import {
  guestClock,
  measureGuestTsc,
  RelativeTimerFd,
  SharedTimerScheduler,
  threadRuntime100ns,
} from "./hyperv_host.ts";

/** What every thread needs to build its view of the enlightenments (structured-cloneable). */
export interface HvThreadInit {
  state: HyperVState;
  tsc: { offset: bigint; hz: number; vmStartTsc: bigint };
  timers: SharedArrayBuffer;
  timerWakeFd: number;
  notifyFd: number;
  /** HvPostMessage/HvSignalEvent rings to the VMBus host (when it exists). */
  bridge: HostBridgeState | undefined;
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
  const timerWakeFd = eventfd();
  const notifyFd = eventfd();
  const bridgeFd = eventfd();
  const init: HvThreadInit = {
    state: HyperV.createState({
      vpCount: cpus,
      features,
      invariantTsc: invariantTsc || cpuidHasInvariantTsc(cpuid),
    }),
    tsc,
    timers: SharedTimerScheduler.createState(cpus),
    timerWakeFd,
    notifyFd,
    bridge: hasFeature(features, "synic") ? createHostBridgeState(cpus, bridgeFd) : undefined,
  };
  const scheduler = new SharedTimerScheduler(init.timers, timerWakeFd);
  const hv = new HyperV(init.state, {
    memory: options.memory,
    clock: guestClock(tsc),
    msi: vm.interrupts,
    scheduler,
    flusher: { flush() {} }, // hypercalls run on vCPU threads only
    power: options.power,
    vpRuntime100ns: () => 0n,
    notifier: { notify: () => eventfdSignal(notifyFd) },
  });

  // Synthetic timers: one timerfd armed for the earliest deadline of all VPs.
  const timerFd = new RelativeTimerFd();
  const drive = () => {
    for (;;) {
      const now = hv.partition.referenceTime();
      const { due, next } = scheduler.takeDue(now);
      for (const [vp, t] of due) hv.stimers.expire(vp, t, now);
      if (due.length === 0) {
        timerFd.set(next === undefined ? undefined : (next - now) * 100n);
        return;
      }
    }
  };
  options.loop.add(timerWakeFd, () => {
    eventfdDrain(timerWakeFd);
    drive();
  });
  options.loop.add(timerFd.fd, () => {
    timerFd.drain();
    drive();
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
  return {
    cpuid,
    init,
    hv,
    close() {
      for (const fd of [timerWakeFd, notifyFd, timerFd.fd, bridgeFd]) {
        options.loop.remove(fd);
        close(fd);
      }
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
}): HyperV {
  const hv = new HyperV(init.state, {
    memory: deps.memory,
    clock: guestClock(init.tsc),
    msi: deps.interrupts,
    scheduler: new SharedTimerScheduler(init.timers, init.timerWakeFd),
    flusher: deps.flusher,
    power: deps.power,
    vpRuntime100ns: threadRuntime100ns,
    notifier: { notify: () => eventfdSignal(init.notifyFd) },
    crashSink: deps.onCrash,
    ...(init.bridge
      ? { bridge: new VcpuHostBridge(init.bridge, deps.vp, vmbusOwnsConnection) }
      : {}),
  });
  return hv;
}
