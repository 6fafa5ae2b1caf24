/**
 * The Hyper-V enlightenments of one vCPU thread, built as the VMM builds them
 * (`HyperV.createState` on the main thread, `new HyperV` over it on the vCPU thread with the
 * VMM's clock, timer scheduler and runtime source from `src/hyperv/host/hyperv_host.ts`), with a VMBus
 * bridge that accepts the benchmark's HvSignalEvent and counts it: the VMBus host and the
 * vCPU-to-main-thread bridge are not part of these figures.
 * @module
 */
import { close, eventfd, eventfdSignal } from "../../ffi/libc.ts";
import type { GuestMemory } from "../../src/kvm/guest_memory.ts";
import type { MsiSink } from "../../src/machine/irq.ts";
import { type HvFeatures, HyperV, tlfs } from "../../src/hyperv/mod.ts";
import { guestClock, threadRuntime100ns } from "../../src/hyperv/host/hyperv_host.ts";
import { VcpuTimerScheduler } from "../../src/hyperv/host/vcpu_timers.ts";
import { SIGNAL_CONNECTION_ID } from "./guest32.ts";

/** A vCPU thread's `HyperV` and the count of events its bridge accepted. */
export interface HyperVFixture {
  readonly hv: HyperV;
  events(): number;
  close(): void;
}

/** Builds VP 0's enlightenments over `memory`. */
export function hyperVFixture(options: {
  memory: GuestMemory;
  interrupts: MsiSink;
  features: HvFeatures;
  tsc: { offset: bigint; hz: number; vmStartTsc: bigint };
}): HyperVFixture {
  const state = HyperV.createState({ vpCount: 1, features: options.features, invariantTsc: true });
  const notifyFd = eventfd();
  let events = 0;
  const hv: HyperV = new HyperV(state, {
    memory: options.memory,
    clock: guestClock(options.tsc),
    msi: options.interrupts,
    scheduler: new VcpuTimerScheduler(
      VcpuTimerScheduler.createState(1),
      (): bigint => hv.partition.referenceTime(),
    ),
    flusher: { flush() {} },
    power: { powerOff() {}, reset() {} },
    vpRuntime100ns: threadRuntime100ns,
    notifier: { notify: () => eventfdSignal(notifyFd) },
    crashSink: () => {},
    bridge: {
      postMessage: () => tlfs.HV_STATUS_INVALID_CONNECTION_ID,
      signalEvent(connectionId) {
        if (connectionId === SIGNAL_CONNECTION_ID) events++;
        return tlfs.HV_STATUS_SUCCESS;
      },
    },
  });
  return {
    hv,
    events: () => events,
    close() {
      close(notifyFd);
    },
  };
}
