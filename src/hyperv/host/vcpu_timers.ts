/**
 * Synthetic-timer scheduling on the vCPU threads themselves (issue #7: idle cost). Each VP has
 * one POSIX timer (`timer_create` with `SIGEV_THREAD_ID`) aimed at its own vCPU thread with the
 * kick signal, armed for the earliest deadline of the VP's four synthetic timers. The signal is
 * blocked on that thread except inside KVM_RUN, so an expiry either interrupts KVM_RUN (a halted
 * guest is woken) or makes the next KVM_RUN return at once; the run loop's kick exit then calls
 * `runDue`, which expires the due timers (an MSI, or a SynIC message, from the VP's own thread)
 * and re-arms. An idle guest's tick thus costs one WRMSR exit to program it and one signal exit
 * to deliver it, on the vCPU thread alone: the main thread, its event loop and its helper threads
 * stay asleep.
 *
 * Deadlines live in a SharedArrayBuffer: any thread may arm (the main thread retries a SynIC
 * message from there), and the POSIX timer id is process-wide. Cancelling is lazy: the thread
 * timer is left armed and its one spurious expiry finds nothing due, which costs less than a
 * `timer_settime` per cancel (Linux cancels and re-arms STIMER0 on every COUNT write).
 * @module
 */
import { C, check, libc } from "../../../ffi/libc.ts";
import type { TimerScheduler } from "../mod.ts";
import { lockAcquire, lockRelease } from "../../util/shared_lock.ts";

const TIMERS_PER_VP = 4;
const DISARMED = -1n;
// Per VP, 64 bytes: i64 deadline x4, i64 programmed deadline, i64 timer id + 1 (0: none),
// i32 lock at byte 48.
const STRIDE = 64;
const I64_PER_VP = STRIDE / 8;
const I32_PER_VP = STRIDE / 4;
const R_PROGRAMMED = 4;
const R_TIMER = 5;
const I_LOCK = 12;

/** Nanoseconds per reference-time unit (100 ns). */
const NS_PER_REF = 100n;
/** Shortest relative arm: a deadline already past fires 1 µs from now (0 would disarm). */
const MIN_NS = 1000n;

/** A one-shot CLOCK_MONOTONIC POSIX timer that signals one thread. */
export class ThreadTimer {
  /** The glibc `timer_t`, process-wide. */
  readonly id: bigint;
  #deleted = false;

  /** Creates a timer that sends `signal` to the calling thread. */
  static forThisThread(signal: number): ThreadTimer {
    const sev = new Uint8Array(64); // struct sigevent
    const dv = new DataView(sev.buffer);
    dv.setInt32(8, signal, true); // sigev_signo
    dv.setInt32(12, C.SIGEV_THREAD_ID, true); // sigev_notify
    dv.setInt32(16, libc.gettid(), true); // sigev_notify_thread_id
    const out = new BigUint64Array(1);
    check(
      "timer_create",
      libc.timer_create(C.CLOCK_MONOTONIC, sev, new Uint8Array(out.buffer)),
    );
    return new ThreadTimer(out[0]!);
  }

  constructor(id: bigint) {
    this.id = id;
  }

  /** Deletes the timer (safe to call twice). */
  close(): void {
    if (this.#deleted) return;
    this.#deleted = true;
    libc.timer_delete(this.id);
  }
}

/** Arms timer `id` to fire once after `ns` nanoseconds; `spec` is a reusable itimerspec. */
function setRelative(id: bigint, ns: bigint, spec: BigInt64Array): void {
  const v = ns < MIN_NS ? MIN_NS : ns;
  spec[0] = 0n; // it_interval
  spec[1] = 0n;
  spec[2] = v / 1_000_000_000n; // it_value
  spec[3] = v % 1_000_000_000n;
  libc.timer_settime(id, 0, new Uint8Array(spec.buffer), null);
}

/**
 * The `TimerScheduler` of the synthetic timers: deadlines per VP, one thread timer per VP.
 * Build one per thread over the same state; the vCPU thread of VP `vp` calls `attach` once,
 * `runDue` on every kick exit and `detach` before it ends.
 */
export class VcpuTimerScheduler implements TimerScheduler {
  readonly #i64: BigInt64Array;
  readonly #i32: Int32Array;
  readonly #now: () => bigint;
  readonly #spec = new BigInt64Array(4);
  #own: ThreadTimer | undefined;

  /** State for `vpCount` VPs: no deadline, no thread timer. */
  static createState(vpCount: number): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(vpCount * STRIDE);
    const i64 = new BigInt64Array(sab);
    for (let vp = 0; vp < vpCount; vp++) {
      i64.fill(DISARMED, vp * I64_PER_VP, vp * I64_PER_VP + R_PROGRAMMED + 1);
    }
    return sab;
  }

  /** `now`: the partition reference time (100 ns), the clock deadlines are in. */
  constructor(state: SharedArrayBuffer, now: () => bigint) {
    this.#i64 = new BigInt64Array(state);
    this.#i32 = new Int32Array(state);
    this.#now = now;
  }

  arm(vp: number, timer: number, deadline100ns: bigint): void {
    Atomics.store(this.#i64, vp * I64_PER_VP + timer, BigInt.asIntN(64, deadline100ns));
    this.#program(vp);
  }

  cancel(vp: number, timer: number): void {
    Atomics.store(this.#i64, vp * I64_PER_VP + timer, DISARMED);
  }

  /** Deadline stored for a timer, or undefined (for tests and diagnostics). */
  deadline(vp: number, timer: number): bigint | undefined {
    const d = Atomics.load(this.#i64, vp * I64_PER_VP + timer);
    return d === DISARMED ? undefined : d;
  }

  /** Deadline the VP's thread timer is armed for, or undefined. */
  programmed(vp: number): bigint | undefined {
    const d = Atomics.load(this.#i64, vp * I64_PER_VP + R_PROGRAMMED);
    return d === DISARMED ? undefined : d;
  }

  /**
   * VP `vp`'s thread: creates its thread timer (signalling this thread with `signal`, which must
   * be blocked here and unblocked only inside KVM_RUN) and arms it for any pending deadline.
   */
  attach(vp: number, signal: number, timer: ThreadTimer = ThreadTimer.forThisThread(signal)) {
    this.#own = timer;
    const lock = vp * I32_PER_VP + I_LOCK;
    lockAcquire(this.#i32, lock);
    Atomics.store(this.#i64, vp * I64_PER_VP + R_TIMER, timer.id + 1n);
    Atomics.store(this.#i64, vp * I64_PER_VP + R_PROGRAMMED, DISARMED);
    lockRelease(this.#i32, lock);
    this.#program(vp);
  }

  /** VP `vp`'s thread, before it ends: no thread uses the timer any more, then it is deleted. */
  detach(vp: number): void {
    const lock = vp * I32_PER_VP + I_LOCK;
    lockAcquire(this.#i32, lock);
    Atomics.store(this.#i64, vp * I64_PER_VP + R_TIMER, 0n);
    Atomics.store(this.#i64, vp * I64_PER_VP + R_PROGRAMMED, DISARMED);
    lockRelease(this.#i32, lock);
    this.#own?.close();
    this.#own = undefined;
  }

  /**
   * VP `vp`'s thread, after a kick exit (its thread timer fired, or another kick): calls
   * `expire(timer, now)` for each timer of the VP whose deadline passed, then re-arms the thread
   * timer for the earliest deadline left. Returns how many timers expired.
   */
  runDue(vp: number, expire: (timer: number, now100ns: bigint) => void): number {
    const base = vp * I64_PER_VP;
    const lock = vp * I32_PER_VP + I_LOCK;
    lockAcquire(this.#i32, lock);
    Atomics.store(this.#i64, base + R_PROGRAMMED, DISARMED); // it fired, or will be re-armed
    lockRelease(this.#i32, lock);
    let expired = 0;
    for (;;) {
      const now = this.#now();
      let any = false;
      for (let t = 0; t < TIMERS_PER_VP; t++) {
        const d = Atomics.load(this.#i64, base + t);
        // Only take it if nobody re-armed it meanwhile.
        if (
          d !== DISARMED && d <= now &&
          Atomics.compareExchange(this.#i64, base + t, d, DISARMED) === d
        ) {
          expire(t, now);
          expired++;
          any = true;
        }
      }
      if (!any) break; // a periodic timer may have re-armed for a time already past: look again
    }
    this.#program(vp);
    return expired;
  }

  /** Keeps the VP's thread timer at its earliest deadline; a syscall only when that changes. */
  #program(vp: number): void {
    const base = vp * I64_PER_VP;
    const lock = vp * I32_PER_VP + I_LOCK;
    lockAcquire(this.#i32, lock);
    try {
      let next = DISARMED;
      for (let t = 0; t < TIMERS_PER_VP; t++) {
        const d = Atomics.load(this.#i64, base + t);
        if (d !== DISARMED && (next === DISARMED || d < next)) next = d;
      }
      if (next === Atomics.load(this.#i64, base + R_PROGRAMMED)) return;
      const id = Atomics.load(this.#i64, base + R_TIMER);
      if (id === 0n) return; // the thread is not attached yet: `attach` arms it
      // Nothing left: leave the thread timer alone (it fired, or fires once for nothing).
      if (next !== DISARMED) setRelative(id - 1n, (next - this.#now()) * NS_PER_REF, this.#spec);
      Atomics.store(this.#i64, base + R_PROGRAMMED, next);
    } finally {
      lockRelease(this.#i32, lock);
    }
  }
}
