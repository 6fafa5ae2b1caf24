/**
 * Exit counters of one vCPU, in a SharedArrayBuffer: the vCPU thread counts (a plain increment
 * of a Float64Array slot, no allocation, exact to 2^53), any thread reads a snapshot (the
 * control socket's `status`). They say what an idle or busy guest costs in user-space exits.
 * @module
 */

/** The counted kinds: exits that reached user space by reason, and what the VMM did with them. */
export const EXIT_KINDS = [
  "io",
  "mmio",
  "rdmsr",
  "wrmsr",
  /** Kicks: KVM_RUN interrupted by a signal (thread timers, TLB flush or stop requests). */
  "intr",
  "hlt",
  "other",
  /** PIO exits that were hypercalls. */
  "hypercall",
  /** Synthetic timers expired on this vCPU's thread. */
  "stimer",
  /** Channel doorbells that exited to this thread (no eventfd bound to their port). */
  "doorbell",
] as const;

/** One counted kind. */
export type ExitKind = typeof EXIT_KINDS[number];

/** Slot of each kind in `ExitCounters.counts`. */
export const EXIT: Readonly<Record<ExitKind, number>> = Object.freeze(
  Object.fromEntries(EXIT_KINDS.map((k, i) => [k, i])) as Record<ExitKind, number>,
);

const KIND_SLOTS = 16;
/** Hyper-V MSR window whose writes are counted by index (0x40000000-0x400001FF). */
const MSR_BASE = 0x40000000;
const MSR_SLOTS = 0x200;

/** What `ExitCounters.snapshot` returns. */
export type ExitSnapshot = Record<ExitKind, number> & {
  /** Writes per Hyper-V MSR ("0x40000095": n), only those written. */
  msrWrites: Record<string, number>;
};

/** The exit counters of one vCPU. */
export class ExitCounters {
  /** Fresh, zeroed counters. */
  static createState(): SharedArrayBuffer {
    return new SharedArrayBuffer((KIND_SLOTS + MSR_SLOTS) * 8);
  }

  /** One slot per `EXIT` kind; the vCPU thread increments them. */
  readonly counts: Float64Array;
  readonly #msr: Float64Array;

  constructor(state: SharedArrayBuffer) {
    this.counts = new Float64Array(state, 0, KIND_SLOTS);
    this.#msr = new Float64Array(state, KIND_SLOTS * 8, MSR_SLOTS);
  }

  /** Counts a write of MSR `index` (ignored outside the Hyper-V window). */
  msrWrite(index: number): void {
    const i = index - MSR_BASE;
    if (i >= 0 && i < MSR_SLOTS) this.#msr[i]!++;
  }

  /** The counters now (another thread's increments may be a moment behind). */
  snapshot(): ExitSnapshot {
    const msrWrites: Record<string, number> = {};
    for (let i = 0; i < MSR_SLOTS; i++) {
      const n = this.#msr[i]!;
      if (n > 0) msrWrites[`0x${(MSR_BASE + i).toString(16)}`] = n;
    }
    const kinds = Object.fromEntries(EXIT_KINDS.map((k, i) => [k, this.counts[i]!]));
    return { ...kinds as Record<ExitKind, number>, msrWrites };
  }
}
