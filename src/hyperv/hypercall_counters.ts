/**
 * Hypercall counters of a partition, in one SharedArrayBuffer: each VP's thread counts its own
 * calls by call code and result status, and the targets its TLB flush and IPI calls named; any
 * thread reads a snapshot (the control socket's `status`). Linux falls back to native flushes
 * and IPIs, silently, when a hypercall fails: these counters are what shows the enlightenments
 * were used and worked. Counting is a plain increment of a Float64Array slot in the VP's own
 * region (one writer per region, exact to 2^53): nothing on the exit path allocates.
 * @module
 */
import * as T from "./tlfs.ts";

/** Call codes below this get their own row; the rest share the last one. */
const CODE_SLOTS = 128;
/** Statuses below `STATUS_OTHER` get their own column. */
const STATUS_SLOTS = 64;
/** Column of statuses at or above it. */
const STATUS_OTHER = STATUS_SLOTS - 1;
/** Column of calls answered with #UD instead of a status. */
const STATUS_UD = STATUS_SLOTS - 2;
const CALL_SLOTS = CODE_SLOTS * STATUS_SLOTS;

/** The result `record` takes for a call refused with #UD. */
export const HYPERCALL_UD = -1;
/** The code `record` takes for a call refused before its control value was read. */
export const HYPERCALL_UNDECODED = -1;

/** One VP's counters: calls by name and result, and the VPs its calls targeted. */
export interface HypercallSnapshot {
  /** `{ "HvFlushVirtualAddressSpace": { "HV_STATUS_SUCCESS": 12 } }`, only what was counted. */
  calls: Record<string, Record<string, number>>;
  /** Per target VP: how many of this VP's TLB flush calls named it (itself included). */
  flushTargets: number[];
  /** Per target VP: how many synthetic IPIs this VP's IPI calls sent it. */
  ipiTargets: number[];
}

const STATUS_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(T)
    .filter(([k, v]) => k.startsWith("HV_STATUS_") && typeof v === "number")
    .map(([k, v]) => [v as number, k]),
);

const CALL_NAMES: ReadonlyMap<number, string> = new Map([
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, "HvFlushVirtualAddressSpace"],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST, "HvFlushVirtualAddressList"],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX, "HvFlushVirtualAddressSpaceEx"],
  [T.HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX, "HvFlushVirtualAddressListEx"],
  [T.HVCALL_NOTIFY_LONG_SPIN_WAIT, "HvNotifyLongSpinWait"],
  [T.HVCALL_SEND_IPI, "HvSendSyntheticClusterIpi"],
  [T.HVCALL_SEND_IPI_EX, "HvSendSyntheticClusterIpiEx"],
  [T.HVCALL_POST_MESSAGE, "HvPostMessage"],
  [T.HVCALL_SIGNAL_EVENT, "HvSignalEvent"],
  [T.HVCALL_POST_DEBUG_DATA, "HvPostDebugData"],
  [T.HVCALL_RETRIEVE_DEBUG_DATA, "HvRetrieveDebugData"],
  [T.HVCALL_RESET_DEBUG_SESSION, "HvResetDebugSession"],
]);

function codeName(slot: number): string {
  if (slot === CODE_SLOTS - 1) return "other";
  return CALL_NAMES.get(slot) ?? `0x${slot.toString(16).padStart(4, "0")}`;
}

function statusName(slot: number): string {
  if (slot === STATUS_UD) return "#UD";
  if (slot === STATUS_OTHER) return "other";
  return STATUS_NAMES.get(slot) ?? `0x${slot.toString(16)}`;
}

/** The hypercall counters of every VP of a partition. */
export class HypercallCounters {
  /** Fresh, zeroed counters for `vpCount` VPs. */
  static createState(vpCount: number): SharedArrayBuffer {
    return new SharedArrayBuffer(vpCount * (CALL_SLOTS + 2 * vpCount) * 8);
  }

  readonly #slots: Float64Array;
  readonly #vpCount: number;
  readonly #stride: number;

  constructor(state: SharedArrayBuffer, vpCount: number) {
    this.#vpCount = vpCount;
    this.#stride = CALL_SLOTS + 2 * vpCount;
    this.#slots = new Float64Array(state, 0, vpCount * this.#stride);
  }

  /**
   * Counts one call of VP `vp` (on its own thread): `code` as decoded (`HYPERCALL_UNDECODED`
   * when refused before), `status` the HV_STATUS returned, or `HYPERCALL_UD`.
   */
  record(vp: number, code: number, status: number): void {
    if (!(vp >= 0 && vp < this.#vpCount)) return;
    const row = code >= 0 && code < CODE_SLOTS - 1 ? code : CODE_SLOTS - 1;
    const col = status === HYPERCALL_UD
      ? STATUS_UD
      : status >= 0 && status < STATUS_UD
      ? status
      : STATUS_OTHER;
    this.#slots[vp * this.#stride + row * STATUS_SLOTS + col]!++;
  }

  /** VP `vp`'s flush call named `target`. */
  flushTarget(vp: number, target: number): void {
    if (vp >= 0 && vp < this.#vpCount && target >= 0 && target < this.#vpCount) {
      this.#slots[vp * this.#stride + CALL_SLOTS + target]!++;
    }
  }

  /** VP `vp`'s IPI call sent an interrupt to `target`. */
  ipiTarget(vp: number, target: number): void {
    if (vp >= 0 && vp < this.#vpCount && target >= 0 && target < this.#vpCount) {
      this.#slots[vp * this.#stride + CALL_SLOTS + this.#vpCount + target]!++;
    }
  }

  /** Every VP's counters now (another thread's increments may be a moment behind). */
  snapshot(): HypercallSnapshot[] {
    const out: HypercallSnapshot[] = [];
    for (let vp = 0; vp < this.#vpCount; vp++) {
      const base = vp * this.#stride;
      const calls: Record<string, Record<string, number>> = {};
      for (let row = 0; row < CODE_SLOTS; row++) {
        for (let col = 0; col < STATUS_SLOTS; col++) {
          const n = this.#slots[base + row * STATUS_SLOTS + col]!;
          if (n > 0) (calls[codeName(row)] ??= {})[statusName(col)] = n;
        }
      }
      const targets = (at: number) =>
        Array.from(this.#slots.subarray(base + at, base + at + this.#vpCount));
      out.push({
        calls,
        flushTargets: targets(CALL_SLOTS),
        ipiTargets: targets(CALL_SLOTS + this.#vpCount),
      });
    }
    return out;
  }
}
