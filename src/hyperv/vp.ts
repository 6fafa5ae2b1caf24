/**
 * Per-VP synthetic MSRs that are neither SynIC nor synthetic-timer registers: VP_INDEX,
 * VP_RUNTIME and VP_ASSIST_PAGE. VP_ASSIST_PAGE is kept in a SharedArrayBuffer (one slot per VP)
 * like the rest of the per-VP state; VP_INDEX is the vCPU index and VP_RUNTIME comes from the
 * caller.
 *
 * The VP assist page is accepted and recorded; hyperdeno never sets its `apic_assist` bit (no
 * lazy EOI), so a guest that checks it always performs the real EOI. Its EOI/ICR/TPR MSRs
 * (0x40000070-0x40000072) are not handled here: see `hvMsrFilterRanges` in `msrs.ts`.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { pageGpa } from "./shared.ts";
import * as T from "./tlfs.ts";

/** Per-VP time the VP has run, in 100 ns units; supplied by the caller. */
export type VpRuntimeSource = (vp: number) => bigint;

/** Per-VP registers other than SynIC and synthetic timers. */
export class HvVpRegisters {
  /** Allocates the shared state for `vpCount` VPs (registers zero, as at VP creation). */
  static createState(vpCount: number): SharedArrayBuffer {
    if (!Number.isSafeInteger(vpCount) || vpCount < 1) {
      throw new RangeError(`HvVpRegisters: bad VP count ${vpCount}`);
    }
    return new SharedArrayBuffer(vpCount * 8);
  }

  readonly #assist: BigUint64Array;
  readonly #memory: GuestMemory;
  readonly #runtime: VpRuntimeSource;
  /** Number of VPs. */
  readonly vpCount: number;

  constructor(
    state: SharedArrayBuffer,
    deps: { memory: GuestMemory; vpRuntime100ns: VpRuntimeSource },
  ) {
    this.#assist = new BigUint64Array(state);
    this.vpCount = this.#assist.length;
    this.#memory = deps.memory;
    this.#runtime = deps.vpRuntime100ns;
  }

  /** Back to the reset state (VP assist pages disabled). Call with every vCPU stopped. */
  reset(): void {
    for (let vp = 0; vp < this.vpCount; vp++) Atomics.store(this.#assist, vp, 0n);
  }

  /** Reads a per-VP MSR of this group; `undefined` means #GP. */
  readMsr(vp: number, index: number): bigint | undefined {
    switch (index) {
      case T.HV_X64_MSR_VP_INDEX:
        return BigInt(vp);
      case T.HV_X64_MSR_VP_RUNTIME:
        return BigInt.asUintN(64, this.#runtime(vp));
      case T.HV_X64_MSR_VP_ASSIST_PAGE:
        return Atomics.load(this.#assist, vp);
    }
    return undefined;
  }

  /** Writes a per-VP MSR of this group; `false` means #GP. */
  writeMsr(vp: number, index: number, value: bigint): boolean {
    value = BigInt.asUintN(64, value);
    switch (index) {
      case T.HV_X64_MSR_VP_INDEX: // read-only: the VP index is the vCPU index
      case T.HV_X64_MSR_VP_RUNTIME: // read-only
        return false;
      case T.HV_X64_MSR_VP_ASSIST_PAGE: {
        if (value & T.HV_MSR_ENABLE) {
          // Clear apic_assist (first dword) only; the rest may hold guest data. A page outside
          // RAM is refused with #GP, as KVM does.
          const head = this.#memory.trySlice(pageGpa(value), 4);
          if (!head) return false;
          head.fill(0);
        }
        Atomics.store(this.#assist, vp, value);
        return true;
      }
    }
    return false;
  }
}
