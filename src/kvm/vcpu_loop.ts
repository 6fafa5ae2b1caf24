/**
 * The vCPU run loop, run synchronously on the vCPU's own Worker thread: KVM_RUN, exit decoding,
 * dispatch to an `ExitHandler`, and kicks from other threads.
 *
 * Kicks: the kick signal is blocked on the vCPU thread at all times except inside KVM_RUN
 * (KVM_SET_SIGNAL_MASK), so a `pthread_kill` either interrupts KVM_RUN (EINTR) or stays pending
 * until the next KVM_RUN, which then returns at once; no kick is lost and no handler runs. The
 * loop consumes it with `sigtimedwait` and asks the handler what the kick was for.
 * `immediate_exit` is set too, so a kick that lands between two KVM_RUNs is seen without a
 * signal round trip.
 * @module
 */
import { C, libc, sigset } from "../../ffi/libc.ts";
import { KVM, KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import { EXIT } from "./exit_counters.ts";
import type { Vcpu } from "./vcpu.ts";

/** The real-time signal used to kick vCPU threads (SIGRTMIN+6; glibc reserves 32 and 33). */
export const KICK_SIGNAL = 40;

/** What the VMM does with each exit that reaches user space. Must not throw. */
export interface ExitHandler {
  /** Port I/O: `data` (a view into kvm_run, valid only during the call) holds or receives the bytes. */
  pio(port: number, write: boolean, data: Uint8Array): void;
  /** MMIO: like `pio`, for a guest physical address outside RAM. */
  mmio(address: number, write: boolean, data: Uint8Array): void;
  /** RDMSR of a filtered MSR: its value, or undefined to inject #GP. */
  rdmsr(index: number): bigint | undefined;
  /** WRMSR of a filtered MSR: false injects #GP. */
  wrmsr(index: number, value: bigint): boolean;
  /** A kick arrived (or immediate_exit fired): true keeps running, false leaves the loop. */
  onKick(): boolean;
}

/** Why a vCPU loop ended. */
export type VcpuStop =
  | { kind: "stopped" }
  | { kind: "shutdown" }
  | { kind: "system-event"; type: number }
  | { kind: "internal-error"; suberror: number }
  | { kind: "fail-entry"; reason: bigint }
  | { kind: "unexpected-exit"; reason: number }
  | { kind: "error"; message: string };

/** Exit reason names for messages. */
export const EXIT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(KVM).filter(([k]) => k.startsWith("KVM_EXIT_") && !k.startsWith("KVM_EXIT_IO_"))
    .map(([k, v]) => [v, k]),
);

/** Blocks the kick signal on this thread and makes KVM_RUN the only place it can land. */
export function armKicks(vcpu: Vcpu): bigint {
  const kick = sigset(KICK_SIGNAL);
  libc.pthread_sigmask(C.SIG_BLOCK, kick, null);
  const current = new Uint8Array(128);
  libc.pthread_sigmask(C.SIG_BLOCK, new Uint8Array(128), Deno.UnsafePointer.of(current));
  const inside = current.slice();
  inside[(KICK_SIGNAL - 1) >> 3]! &= ~(1 << ((KICK_SIGNAL - 1) & 7));
  vcpu.setSignalMask(inside);
  return libc.pthread_self();
}

const kickSet = sigset(KICK_SIGNAL);
const siginfo = new Uint8Array(128);
const zeroTimeout = new Uint8Array(16);

/** Consumes a pending kick signal, if any. */
function consumeKick(): void {
  while (libc.sigtimedwait(kickSet, Deno.UnsafePointer.of(siginfo), zeroTimeout) === KICK_SIGNAL) {
    // drained one; loop in case several were queued (real-time signals queue)
  }
}

/**
 * Runs `vcpu` until the handler stops it or the guest does something the VMM cannot continue.
 * `counts` (`ExitCounters.counts`) counts the exits by kind.
 */
export function runVcpu(
  vcpu: Vcpu,
  handler: ExitHandler,
  counts: Float64Array = new Float64Array(16),
): VcpuStop {
  const R = KVM_STRUCT.kvm_run;
  const run = vcpu.run;
  const dv = vcpu.runView;
  // The data views handed to handlers: fixed places in kvm_run, built once (no allocation per
  // exit). PIO data sits at io.data_offset (constant for a vCPU in practice), MMIO data inline.
  const mmioViews = Array.from({ length: 9 }, (_, n) => run.subarray(R.mmio_data, R.mmio_data + n));
  let pioOff = -1;
  const pioViews: Uint8Array[] = [];
  for (;;) {
    const reason = vcpu.runOnce();
    switch (reason) {
      case KVM.KVM_EXIT_IO: {
        counts[EXIT.io]!++;
        const write = run[R.io_direction] === KVM.KVM_EXIT_IO_OUT;
        const size = run[R.io_size]!;
        const port = dv.getUint16(R.io_port, true);
        const count = dv.getUint32(R.io_count, true);
        const off = dv.getUint32(R.io_data_offset, true);
        if (count === 1 && size <= 8) {
          if (off !== pioOff) {
            pioOff = off;
            for (let n = 0; n <= 8; n++) pioViews[n] = run.subarray(off, off + n);
          }
          handler.pio(port, write, pioViews[size]!);
          break;
        }
        for (let i = 0; i < count; i++) {
          const at = off + i * size;
          handler.pio(port, write, run.subarray(at, at + size));
        }
        break;
      }
      case KVM.KVM_EXIT_MMIO: {
        counts[EXIT.mmio]!++;
        const len = dv.getUint32(R.mmio_len, true);
        const addr = Number(dv.getBigUint64(R.mmio_phys_addr, true));
        handler.mmio(
          addr,
          run[R.mmio_is_write] !== 0,
          len <= 8 ? mmioViews[len]! : run.subarray(R.mmio_data, R.mmio_data + len),
        );
        break;
      }
      case KVM.KVM_EXIT_X86_RDMSR: {
        counts[EXIT.rdmsr]!++;
        const v = handler.rdmsr(dv.getUint32(R.msr_index, true));
        if (v === undefined) run[R.msr_error] = 1;
        else {
          run[R.msr_error] = 0;
          dv.setBigUint64(R.msr_data, v, true);
        }
        break;
      }
      case KVM.KVM_EXIT_X86_WRMSR: {
        counts[EXIT.wrmsr]!++;
        const ok = handler.wrmsr(
          dv.getUint32(R.msr_index, true),
          dv.getBigUint64(R.msr_data, true),
        );
        run[R.msr_error] = ok ? 0 : 1;
        break;
      }
      case KVM.KVM_EXIT_INTR:
        counts[EXIT.intr]!++;
        vcpu.setImmediateExit(false);
        consumeKick();
        if (!handler.onKick()) return { kind: "stopped" };
        break;
      case KVM.KVM_EXIT_HLT:
        counts[EXIT.hlt]!++;
        // Only without an in-kernel LAPIC; treat as a no-op so the guest re-executes.
        break;
      case KVM.KVM_EXIT_SHUTDOWN:
        return { kind: "shutdown" };
      case KVM.KVM_EXIT_SYSTEM_EVENT:
        return { kind: "system-event", type: dv.getUint32(R.system_event_type, true) };
      case KVM.KVM_EXIT_INTERNAL_ERROR:
        return { kind: "internal-error", suberror: dv.getUint32(R.internal_suberror, true) };
      case KVM.KVM_EXIT_FAIL_ENTRY:
        return { kind: "fail-entry", reason: dv.getBigUint64(R.fail_entry_reason, true) };
      default:
        counts[EXIT.other]!++;
        return { kind: "unexpected-exit", reason };
    }
  }
}
