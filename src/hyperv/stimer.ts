/**
 * Synthetic timers: four per VP (STIMER0-3 CONFIG/COUNT), one-shot or periodic, delivering an
 * HVMSG_TIMER_EXPIRED message to a SINT or, in direct mode, an interrupt on `apic_vector`.
 *
 * Time is the partition reference time (100 ns). Scheduling is the caller's: `TimerScheduler`
 * is told the absolute reference-time deadline of each armed timer, and the caller calls
 * `expire(vp, timer, now)` when it passes (the lead drives it from a timerfd on the main
 * thread). The state lives in a SharedArrayBuffer, guarded per timer by a spin lock, because MSR
 * writes come from the VP's worker while expirations come from the main thread.
 *
 * Semantics follow TLFS "Synthetic Timers" (and KVM's reading of it):
 * - Writing CONFIG or COUNT stops the timer; it (re)starts if enabled and COUNT is non-zero.
 * - COUNT = 0 disables; with AutoEnable a non-zero COUNT enables.
 * - An enabled message-mode timer with SINTx = 0 is disabled at once.
 * - One-shot: COUNT is the absolute expiry; a past COUNT expires immediately; after expiring
 *   the timer is disabled. If the SINT's message slot is busy the expiry stays pending and is
 *   retried when the slot frees (EOM), so it is never lost.
 * - Periodic: COUNT is the period, the first period starting at enable. A tick whose slot is
 *   busy is dropped rather than queued (as KVM does, so ticks do not pile up). A lazy timer that
 *   fell behind skips the missed periods; a non-lazy one delivers them back to back unless it is
 *   more than `STIMER_MAX_CATCHUP` periods behind, then it skips too.
 * @module
 */
import type { MsiSink } from "../machine/irq.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { msiAddress, spinLock, spinUnlock } from "./shared.ts";
import type { SynIC } from "./synic.ts";
import * as T from "./tlfs.ts";

/**
 * Arms host timers for synthetic timers; implemented by the caller. Called from whichever thread
 * touched the timer (the VP's worker on a CONFIG/COUNT write or an EOM retry, the main thread on
 * `expire`), so an implementation must be thread-safe, e.g. record the deadline in shared memory
 * and wake the thread that owns the timerfd.
 */
export interface TimerScheduler {
  /**
   * Timer `timer` of VP `vp` must fire at reference time `deadline100ns` (absolute, 100 ns
   * since VM start; possibly already past). Replaces any earlier deadline of that timer.
   * Called with the timer's lock held: must not call back into `SyntheticTimers`.
   */
  arm(vp: number, timer: number, deadline100ns: bigint): void;
  /** Timer `timer` of VP `vp` no longer needs to fire. Same locking rule as `arm`. */
  cancel(vp: number, timer: number): void;
}

/** What the synthetic timers need. */
export interface SyntheticTimersDeps {
  synic: SynIC;
  msi: MsiSink;
  scheduler: TimerScheduler;
  /** Partition reference time now (100 ns). */
  now(): bigint;
  /** Direct mode is offered (`stimer-direct`); otherwise setting DirectMode raises #GP. */
  directMode: boolean;
}

/** A non-lazy periodic timer further behind than this many periods skips instead of catching up. */
export const STIMER_MAX_CATCHUP = 16n;

// Per-timer layout: u64 [config, count, expTime, deadline], i32 [lock, msgPending] at byte 32.
const TIMER_STRIDE = 64;
const U64_PER_TIMER = TIMER_STRIDE / 8;
const I32_PER_TIMER = TIMER_STRIDE / 4;
const R_CONFIG = 0;
const R_COUNT = 1;
const R_EXP = 2;
const R_DEADLINE = 3;
const I_LOCK = 8;
const I_PENDING = 9;

const log = getLogger("hyperv", "stimer");
const limit = rateLimited();

/** The synthetic timers of every VP. */
export class SyntheticTimers {
  /** Allocates the shared state for `vpCount` VPs (all timers disabled). */
  static createState(vpCount: number): SharedArrayBuffer {
    if (!Number.isSafeInteger(vpCount) || vpCount < 1) {
      throw new RangeError(`SyntheticTimers: bad VP count ${vpCount}`);
    }
    return new SharedArrayBuffer(vpCount * T.HV_SYNIC_STIMER_COUNT * TIMER_STRIDE);
  }

  readonly #u64: BigUint64Array;
  readonly #i32: Int32Array;
  readonly #deps: SyntheticTimersDeps;
  /** Number of VPs. */
  readonly vpCount: number;

  constructor(state: SharedArrayBuffer, deps: SyntheticTimersDeps) {
    this.#u64 = new BigUint64Array(state);
    this.#i32 = new Int32Array(state);
    this.#deps = deps;
    this.vpCount = state.byteLength / (T.HV_SYNIC_STIMER_COUNT * TIMER_STRIDE);
    deps.synic.onSlotFree((vp) => this.retryPending(vp));
  }

  /** Back to the reset state: every timer stopped, cancelled and zeroed. Call with vCPUs stopped. */
  reset(): void {
    for (let vp = 0; vp < this.vpCount; vp++) {
      for (let t = 0; t < T.HV_SYNIC_STIMER_COUNT; t++) {
        this.#locked(vp, t, () => {
          this.#stop(vp, t);
          this.#set(vp, t, R_CONFIG, 0n);
          this.#set(vp, t, R_COUNT, 0n);
        });
      }
    }
  }

  #slot(vp: number, t: number): number {
    return vp * T.HV_SYNIC_STIMER_COUNT + t;
  }

  #get(vp: number, t: number, r: number): bigint {
    return Atomics.load(this.#u64, this.#slot(vp, t) * U64_PER_TIMER + r);
  }

  #set(vp: number, t: number, r: number, v: bigint): void {
    Atomics.store(this.#u64, this.#slot(vp, t) * U64_PER_TIMER + r, BigInt.asUintN(64, v));
  }

  #pending(vp: number, t: number): boolean {
    return Atomics.load(this.#i32, this.#slot(vp, t) * I32_PER_TIMER + I_PENDING) !== 0;
  }

  #setPending(vp: number, t: number, on: boolean): void {
    Atomics.store(this.#i32, this.#slot(vp, t) * I32_PER_TIMER + I_PENDING, on ? 1 : 0);
  }

  #locked<R>(vp: number, t: number, fn: () => R): R {
    const i = this.#slot(vp, t) * I32_PER_TIMER + I_LOCK;
    spinLock(this.#i32, i);
    try {
      return fn();
    } finally {
      spinUnlock(this.#i32, i);
    }
  }

  /** CONFIG register of timer `t` of `vp`. */
  config(vp: number, t: number): bigint {
    return this.#get(vp, t, R_CONFIG);
  }

  /** Deadline the scheduler was last given for this timer, or `undefined` when not armed. */
  deadline(vp: number, t: number): bigint | undefined {
    const d = this.#get(vp, t, R_DEADLINE);
    return d === 0n ? undefined : d;
  }

  /** True when an expiry of this one-shot timer is waiting for a free message slot. */
  messagePending(vp: number, t: number): boolean {
    return this.#pending(vp, t);
  }

  // --- MSRs -------------------------------------------------------------------------------

  /** Reads STIMERx_CONFIG / STIMERx_COUNT of `vp`; `undefined` means #GP. */
  readMsr(vp: number, index: number): bigint | undefined {
    const off = index - T.HV_X64_MSR_STIMER0_CONFIG;
    if (off < 0 || off >= 2 * T.HV_SYNIC_STIMER_COUNT) return undefined;
    return this.#get(vp, off >> 1, off & 1 ? R_COUNT : R_CONFIG);
  }

  /** Writes STIMERx_CONFIG / STIMERx_COUNT of `vp`; `false` means #GP. */
  writeMsr(vp: number, index: number, value: bigint): boolean {
    const off = index - T.HV_X64_MSR_STIMER0_CONFIG;
    if (off < 0 || off >= 2 * T.HV_SYNIC_STIMER_COUNT) return false;
    value = BigInt.asUintN(64, value);
    const t = off >> 1;
    return off & 1 ? this.#writeCount(vp, t, value) : this.#writeConfig(vp, t, value);
  }

  #writeConfig(vp: number, t: number, value: bigint): boolean {
    if (value & T.HV_STIMER_CONFIG_RSVDZ) return false;
    const direct = (value & T.HV_STIMER_DIRECT_MODE) !== 0n;
    if (direct && !this.#deps.directMode) return false;
    if (
      direct && (value & T.HV_STIMER_ENABLE) && apicVector(value) < T.HV_SYNIC_FIRST_VALID_VECTOR
    ) {
      return false;
    }
    this.#locked(vp, t, () => {
      this.#stop(vp, t);
      if ((value & T.HV_STIMER_ENABLE) && !direct && sintx(value) === 0) {
        value &= ~T.HV_STIMER_ENABLE; // TLFS: SINTx 0 is not permitted for an enabled timer
      }
      this.#set(vp, t, R_CONFIG, value);
      this.#startIfReady(vp, t);
    });
    return true;
  }

  #writeCount(vp: number, t: number, value: bigint): boolean {
    this.#locked(vp, t, () => {
      this.#stop(vp, t);
      this.#set(vp, t, R_COUNT, value);
      let config = this.#get(vp, t, R_CONFIG);
      if (value === 0n) {
        config &= ~T.HV_STIMER_ENABLE;
      } else if (config & T.HV_STIMER_AUTO_ENABLE) {
        config |= T.HV_STIMER_ENABLE;
        if (!(config & T.HV_STIMER_DIRECT_MODE) && sintx(config) === 0) {
          config &= ~T.HV_STIMER_ENABLE;
        }
      }
      this.#set(vp, t, R_CONFIG, config);
      this.#startIfReady(vp, t);
    });
    return true;
  }

  // --- Timer engine (all called with the timer's lock held) ---------------------------------

  #stop(vp: number, t: number): void {
    this.#deps.scheduler.cancel(vp, t);
    this.#set(vp, t, R_EXP, 0n);
    this.#set(vp, t, R_DEADLINE, 0n);
    this.#setPending(vp, t, false);
  }

  #arm(vp: number, t: number, deadline: bigint): void {
    this.#set(vp, t, R_DEADLINE, deadline);
    this.#deps.scheduler.arm(vp, t, deadline);
  }

  #startIfReady(vp: number, t: number): void {
    const config = this.#get(vp, t, R_CONFIG);
    const count = this.#get(vp, t, R_COUNT);
    if (!(config & T.HV_STIMER_ENABLE) || count === 0n) return;
    const now = this.#deps.now();
    if (config & T.HV_STIMER_PERIODIC) {
      const exp = now + count;
      this.#set(vp, t, R_EXP, exp);
      this.#arm(vp, t, exp);
      return;
    }
    this.#set(vp, t, R_EXP, count);
    if (now >= count) {
      this.#fire(vp, t, now); // TLFS: a one-shot whose count is in the past expires at once
    } else {
      this.#arm(vp, t, count);
    }
  }

  /** Delivers the expiry of an enabled timer whose time has come, and rearms or disables it. */
  #fire(vp: number, t: number, now: bigint): void {
    const config = this.#get(vp, t, R_CONFIG);
    const exp = this.#get(vp, t, R_EXP);
    const periodic = (config & T.HV_STIMER_PERIODIC) !== 0n;
    const delivered = this.#deliver(vp, t, config, exp, now);
    if (!periodic) {
      if (!delivered) {
        this.#setPending(vp, t, true); // retried from retryPending when the slot frees
        this.#set(vp, t, R_DEADLINE, 0n);
        return;
      }
      this.#setPending(vp, t, false);
      this.#set(vp, t, R_CONFIG, config & ~T.HV_STIMER_ENABLE);
      this.#set(vp, t, R_EXP, 0n);
      this.#set(vp, t, R_DEADLINE, 0n);
      this.#deps.scheduler.cancel(vp, t);
      return;
    }
    if (!delivered) {
      limit((n) =>
        log.debug("VP {vp} STIMER{t} tick dropped: message slot busy{dropped}", {
          vp,
          t,
          dropped: n ? ` (${n} similar suppressed)` : "",
        })
      );
    }
    const next = nextPeriodicExpiry(
      exp,
      this.#get(vp, t, R_COUNT),
      now,
      (config & T.HV_STIMER_LAZY) !== 0n,
    );
    this.#set(vp, t, R_EXP, next);
    this.#arm(vp, t, next);
  }

  #deliver(vp: number, t: number, config: bigint, exp: bigint, now: bigint): boolean {
    if (config & T.HV_STIMER_DIRECT_MODE) {
      this.#deps.msi.signalMsi(msiAddress(vp), apicVector(config));
      return true;
    }
    const payload = T.HV_TIMER_MESSAGE_PAYLOAD.encode({
      timerIndex: t,
      expirationTime: exp,
      deliveryTime: now,
    });
    return this.#deps.synic.postMessage(vp, sintx(config), T.HVMSG_TIMER_EXPIRED, payload);
  }

  // --- Entry points -------------------------------------------------------------------------

  /**
   * The scheduler's deadline for timer `timer` of VP `vp` passed; `now100ns` is the reference
   * time now. Stale calls (timer reprogrammed or disabled since it was armed) are ignored; an
   * early call re-arms for the real expiry.
   */
  expire(vp: number, timer: number, now100ns: bigint): void {
    if (!this.#valid(vp, timer)) return;
    this.#locked(vp, timer, () => {
      const config = this.#get(vp, timer, R_CONFIG);
      const exp = this.#get(vp, timer, R_EXP);
      if (!(config & T.HV_STIMER_ENABLE) || exp === 0n || this.#pending(vp, timer)) return;
      if (now100ns < exp) {
        this.#arm(vp, timer, exp);
        return;
      }
      this.#fire(vp, timer, now100ns);
    });
  }

  /** Retries one-shot expiries of `vp` that found their message slot busy. */
  retryPending(vp: number): void {
    if (!this.#valid(vp, 0)) return;
    for (let t = 0; t < T.HV_SYNIC_STIMER_COUNT; t++) {
      if (!this.#pending(vp, t)) continue;
      this.#locked(vp, t, () => {
        const config = this.#get(vp, t, R_CONFIG);
        if (!this.#pending(vp, t) || !(config & T.HV_STIMER_ENABLE)) return;
        this.#fire(vp, t, this.#deps.now());
      });
    }
  }

  #valid(vp: number, t: number): boolean {
    return Number.isInteger(vp) && vp >= 0 && vp < this.vpCount && Number.isInteger(t) && t >= 0 &&
      t < T.HV_SYNIC_STIMER_COUNT;
  }
}

function sintx(config: bigint): number {
  return Number((config >> T.HV_STIMER_SINTX_SHIFT) & 0xfn);
}

function apicVector(config: bigint): number {
  return Number((config >> T.HV_STIMER_APIC_VECTOR_SHIFT) & 0xffn);
}

/**
 * Next expiry of a periodic timer that expired at `exp` with period `period`, now `now`.
 * On time: `exp + period`. Behind: a lazy timer (or one more than `STIMER_MAX_CATCHUP` periods
 * behind) skips to the first period boundary after `now`; otherwise the missed periods follow.
 */
export function nextPeriodicExpiry(
  exp: bigint,
  period: bigint,
  now: bigint,
  lazy: boolean,
): bigint {
  if (period <= 0n) return now + 1n;
  const next = exp + period;
  if (next > now) return next;
  const behind = (now - exp) / period;
  if (!lazy && behind <= STIMER_MAX_CATCHUP) return next;
  return now + (period - ((now - exp) % period));
}
