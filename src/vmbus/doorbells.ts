/**
 * VMBus channel doorbells completed inside KVM. The long-mode hypercall page turns a fast
 * HvSignalEvent to connection id N (N in the doorbell range) into `out dx, eax` to port N
 * (`HYPERCALL_PAGE_CODE_LONG_MODE`). Binding port N to an eventfd with KVM_IOEVENTFD makes KVM
 * complete that OUT itself, so the vCPU goes straight back to the guest and the main thread's
 * event loop sees the eventfd: no exit to the vCPU thread, no JS on it, no hand-off through the
 * host bridge. This is what QEMU does for virtio notifications.
 *
 * VMBus numbers channel connection ids 0x2000 + relid with relids from 1, so the first
 * `DOORBELL_EVENTFDS` ids cover every channel a guest is offered today. A doorbell beyond them,
 * or on a KVM without ioeventfds, exits to the vCPU thread, which answers it like the hypercall
 * (`HyperV.doorbell`). Unlike that path, a bound id signals SUCCESS whether or not a channel
 * holds it: the VMBus host ignores a signal for no channel, and the guest has no use for the
 * error Hyper-V would return.
 * @module
 */
import { close, eventfd, eventfdDrain } from "../../ffi/libc.ts";
import { HV_DOORBELL_FIRST, HV_DOORBELL_LAST } from "../hyperv/mod.ts";
import type { Vm } from "../kvm/vm.ts";
import { UsageError } from "../util/errors.ts";
import { getLogger } from "../util/log.ts";
import type { EventLoop } from "../util/event_loop.ts";

const log = getLogger("vmbus", "doorbells");

/** Connection ids (from `HV_DOORBELL_FIRST`) bound to eventfds. */
export const DOORBELL_EVENTFDS = 64;

/**
 * How many doorbell ids to bind: `HYPERDENO_DOORBELL_EVENTFDS` (0 to 2047) when set, for A/B
 * measurements and to test the path that exits to the vCPU; else `DOORBELL_EVENTFDS`.
 * Throws `UsageError` for any other value.
 */
export function doorbellEventfdsFromEnv(value: string | undefined): number {
  if (value === undefined) return DOORBELL_EVENTFDS;
  const max = HV_DOORBELL_LAST - HV_DOORBELL_FIRST + 1;
  if (!/^\d+$/.test(value) || Number(value) > max) {
    throw new UsageError(`HYPERDENO_DOORBELL_EVENTFDS='${value}': expected 0 to ${max}`);
  }
  return Number(value);
}

/** The bound doorbells of one VM. */
export interface Doorbells {
  /** Connection ids bound to an eventfd (0 when KVM refused). */
  readonly bound: number;
  /** Doorbells the event loop took from the eventfds (several rings of one fd count once). */
  readonly count: number;
  /** Unwatches and closes the eventfds (the VM's ioeventfds go with the VM fd). */
  close(): void;
}

/**
 * Binds the doorbell ports of the first `count` connection ids to eventfds on `loop`, calling
 * `onSignal(connectionId)` on the main thread for each doorbell. Never throws: if KVM refuses an
 * ioeventfd, the ids from there on keep the user-space path.
 */
export function bindDoorbells(
  vm: Vm,
  loop: EventLoop,
  onSignal: (connectionId: number) => void,
  count = DOORBELL_EVENTFDS,
): Doorbells {
  const fds: number[] = [];
  let taken = 0;
  const last = Math.min(HV_DOORBELL_FIRST + count - 1, HV_DOORBELL_LAST);
  for (let id = HV_DOORBELL_FIRST; id <= last; id++) {
    const fd = eventfd();
    try {
      vm.ioeventfd(fd, id, 4, true);
    } catch (e) {
      close(fd);
      log.info("doorbells: KVM_IOEVENTFD refused ({error}); doorbells from {id} exit to the vCPU", {
        error: String(e),
        id: "0x" + id.toString(16),
      });
      break;
    }
    fds.push(fd);
    loop.add(fd, () => {
      eventfdDrain(fd);
      taken++;
      onSignal(id);
    });
  }
  return {
    bound: fds.length,
    get count() {
      return taken;
    },
    close() {
      for (const fd of fds) {
        loop.remove(fd);
        close(fd);
      }
      fds.length = 0;
    },
  };
}
