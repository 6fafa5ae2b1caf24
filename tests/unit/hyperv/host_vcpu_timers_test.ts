import assert from "node:assert/strict";
import { C, clockNs, libc, sigset } from "../../../ffi/libc.ts";
import { VcpuTimerScheduler } from "../../../src/hyperv/host/vcpu_timers.ts";

// A real-time signal of its own, blocked on the test thread for good (a pending one left
// unblocked would kill the process), so the thread timer's expiries can be waited for.
const SIGNAL = 42;
const set = sigset(SIGNAL);
libc.pthread_sigmask(C.SIG_BLOCK, set, null);
const siginfo = new Uint8Array(128);

/** Waits up to `ms` for the thread timer's signal; true when it came. */
function waitSignal(ms: number): boolean {
  const ts = new BigInt64Array([BigInt(Math.floor(ms / 1000)), BigInt((ms % 1000) * 1e6)]);
  return libc.sigtimedwait(set, Deno.UnsafePointer.of(siginfo), new Uint8Array(ts.buffer)) ===
    SIGNAL;
}

/** Reference time (100 ns) on the host's monotonic clock. */
const now = () => clockNs(C.CLOCK_MONOTONIC) / 100n;

function rig(vpCount = 2) {
  const state = VcpuTimerScheduler.createState(vpCount);
  const expired: [number, number][] = [];
  const s = new VcpuTimerScheduler(state, now);
  return { state, s, expired, expire: (vp: number) => (t: number) => expired.push([vp, t]) };
}

Deno.test("vCPU timers: deadlines are recorded before the thread attaches, armed when it does", () => {
  const { state, s, expired, expire } = rig();
  s.arm(1, 2, now() + 20_000n); // 2 ms
  assert.equal(s.programmed(1), undefined, "no thread timer yet");
  const other = new VcpuTimerScheduler(state, now); // another thread's view
  assert.equal(other.deadline(1, 2), s.deadline(1, 2));
  s.attach(1, SIGNAL);
  try {
    assert.equal(s.programmed(1), s.deadline(1, 2));
    assert.ok(waitSignal(1000), "the thread timer signals this thread");
    assert.equal(s.runDue(1, expire(1)), 1);
    assert.deepEqual(expired, [[1, 2]]);
    assert.equal(s.deadline(1, 2), undefined, "taken");
    assert.equal(s.programmed(1), undefined, "nothing left to arm");
  } finally {
    s.detach(1);
  }
});

Deno.test("vCPU timers: the thread timer follows the earliest deadline of the VP", () => {
  const { s, expired, expire } = rig();
  s.attach(0, SIGNAL);
  try {
    const t0 = now();
    s.arm(0, 0, t0 + 50_000_000n); // 5 s
    assert.equal(s.programmed(0), t0 + 50_000_000n);
    s.arm(0, 1, t0 + 10_000n); // 1 ms: earlier, re-armed
    assert.equal(s.programmed(0), t0 + 10_000n);
    s.arm(1, 0, t0 + 1n); // another VP: not this thread timer
    assert.equal(s.programmed(0), t0 + 10_000n);
    s.cancel(0, 1); // lazy: the thread timer stays armed and fires once for nothing
    assert.equal(s.programmed(0), t0 + 10_000n);
    assert.ok(waitSignal(1000));
    assert.equal(s.runDue(0, expire(0)), 0, "nothing due: a spurious expiry");
    assert.equal(s.programmed(0), t0 + 50_000_000n, "re-armed for what is left");
    assert.deepEqual(expired, []);
    s.arm(0, 0, t0 + 1n); // reprogrammed into the past: fires at once
    assert.ok(waitSignal(1000));
    assert.equal(s.runDue(0, expire(0)), 1);
    assert.deepEqual(expired, [[0, 0]]);
  } finally {
    s.detach(0);
  }
  assert.ok(!waitSignal(0), "no signal left behind");
});

Deno.test("vCPU timers: a timer re-armed in the past by expire runs again in the same pass", () => {
  const { s } = rig(1);
  s.attach(0, SIGNAL);
  try {
    let runs = 0;
    s.arm(0, 3, now() - 10n);
    const n = s.runDue(0, (t) => {
      runs++;
      if (runs < 3) s.arm(0, t, now() - 1n); // a periodic timer catching up
    });
    assert.equal(n, 3);
    assert.equal(s.programmed(0), undefined);
  } finally {
    s.detach(0);
  }
  waitSignal(0); // a possible 1 µs expiry from the catch-up arms
});
