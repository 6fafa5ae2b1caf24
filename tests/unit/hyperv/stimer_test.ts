import { assert, assertEquals, assertFalse } from "./assert.ts";
import { parseHvFeatures } from "../../../src/hyperv/features.ts";
import { nextPeriodicExpiry, STIMER_MAX_CATCHUP } from "../../../src/hyperv/stimer.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableSynic, makeRig, type Rig } from "./fakes.ts";

const CONFIG = (t: number) => T.HV_X64_MSR_STIMER0_CONFIG + 2 * t;
const COUNT = (t: number) => T.HV_X64_MSR_STIMER0_CONFIG + 2 * t + 1;
const SINT = (n: number) => BigInt(n) << 16n;
const VECTOR = (v: number) => BigInt(v) << 4n;

function timerMessage(rig: Rig, simp: number, sint: number) {
  const bytes = rig.memory.slice(simp + sint * 256, 256);
  const header = T.HV_MESSAGE.decode(bytes)!;
  const payload = T.HV_TIMER_MESSAGE_PAYLOAD.decode(bytes, 16)!;
  return { bytes, header, payload };
}

function setup(features = "all") {
  const rig = makeRig({ features: parseHvFeatures(features) });
  const { simp } = enableSynic(rig, 0, { sint: 2, vector: 0x40 });
  rig.clock.set100ns(1000n);
  rig.msi.clear();
  return { rig, simp };
}

Deno.test("one-shot, the Linux way: CONFIG auto-enable then COUNT = now + delta", () => {
  const { rig, simp } = setup();
  const cfg = T.HV_STIMER_ENABLE | T.HV_STIMER_AUTO_ENABLE | SINT(2);
  assert(rig.hv.wrmsr(0, CONFIG(0), cfg));
  assertEquals(rig.scheduler.deadline(0, 0), undefined, "count 0: not started");
  assert(rig.hv.wrmsr(0, COUNT(0), 6000n));
  assertEquals(rig.scheduler.deadline(0, 0), 6000n);
  assertEquals(rig.hv.stimers.deadline(0, 0), 6000n);
  assertEquals(rig.hv.rdmsr(0, COUNT(0)), 6000n);

  rig.hv.stimers.expire(0, 0, 5999n); // early wake-up: re-armed, nothing delivered
  assertEquals(timerMessage(rig, simp, 2).header.messageType, 0);
  assertEquals(rig.scheduler.deadline(0, 0), 6000n);

  rig.clock.set100ns(6005n);
  rig.hv.stimers.expire(0, 0, 6005n);
  const m = timerMessage(rig, simp, 2);
  assertEquals(m.header.messageType, T.HVMSG_TIMER_EXPIRED);
  assertEquals(m.header.payloadSize, 24);
  assertEquals(m.payload.timerIndex, 0);
  assertEquals(m.payload.expirationTime, 6000n);
  assertEquals(m.payload.deliveryTime, 6005n);
  assertEquals(rig.msi.targets(), [[0, 0x40]]);
  assertEquals(rig.hv.rdmsr(0, CONFIG(0))! & T.HV_STIMER_ENABLE, 0n, "one-shot disables itself");
  assertEquals(rig.scheduler.deadline(0, 0), undefined);

  rig.hv.stimers.expire(0, 0, 7000n); // stale
  assertEquals(rig.msi.sent.length, 1);
});

Deno.test("one-shot with a count in the past expires at once", () => {
  const { rig, simp } = setup();
  assert(rig.hv.wrmsr(0, COUNT(1), 500n));
  assert(rig.hv.wrmsr(0, CONFIG(1), T.HV_STIMER_ENABLE | SINT(2)));
  const m = timerMessage(rig, simp, 2);
  assertEquals(m.header.messageType, T.HVMSG_TIMER_EXPIRED);
  assertEquals(m.payload.timerIndex, 1);
  assertEquals(m.payload.expirationTime, 500n);
  assertEquals(m.payload.deliveryTime, 1000n);
});

Deno.test("one-shot whose slot is busy stays pending and is delivered after EOM", () => {
  const { rig, simp } = setup();
  assert(rig.hv.synic.postMessage(0, 2, 0x77, new Uint8Array(4))); // occupies the slot
  rig.msi.clear();
  assert(rig.hv.wrmsr(0, CONFIG(0), T.HV_STIMER_ENABLE | T.HV_STIMER_AUTO_ENABLE | SINT(2)));
  assert(rig.hv.wrmsr(0, COUNT(0), 2000n));
  rig.clock.set100ns(2000n);
  rig.hv.stimers.expire(0, 0, 2000n);
  assert(rig.hv.stimers.messagePending(0, 0));
  const busy = timerMessage(rig, simp, 2);
  assertEquals(busy.header.messageType, 0x77);
  assertEquals(busy.header.messageFlags, T.HV_MESSAGE_FLAG_PENDING);
  assert(rig.hv.rdmsr(0, CONFIG(0))! & T.HV_STIMER_ENABLE, "still enabled while pending");
  rig.hv.stimers.expire(0, 0, 2500n); // a stray timer fire does not deliver twice
  assertEquals(rig.msi.sent.length, 0);

  T.HV_MESSAGE.set(busy.bytes, 0, "messageType", 0); // guest frees the slot...
  rig.clock.set100ns(2600n);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_EOM, 0n)); // ...and writes EOM
  const m = timerMessage(rig, simp, 2);
  assertEquals(m.header.messageType, T.HVMSG_TIMER_EXPIRED);
  assertEquals(m.payload.expirationTime, 2000n);
  assertEquals(m.payload.deliveryTime, 2600n);
  assertFalse(rig.hv.stimers.messagePending(0, 0));
  assertEquals(rig.hv.rdmsr(0, CONFIG(0))! & T.HV_STIMER_ENABLE, 0n);
  assertEquals(rig.msi.sent.length, 1);
});

Deno.test("periodic: first period from enable, re-armed each tick, busy ticks dropped", () => {
  const { rig, simp } = setup();
  assert(rig.hv.wrmsr(0, COUNT(2), 100n));
  assert(rig.hv.wrmsr(0, CONFIG(2), T.HV_STIMER_ENABLE | T.HV_STIMER_PERIODIC | SINT(2)));
  assertEquals(rig.scheduler.deadline(0, 2), 1100n);
  rig.hv.stimers.expire(0, 2, 1100n);
  assertEquals(timerMessage(rig, simp, 2).payload.expirationTime, 1100n);
  assertEquals(rig.scheduler.deadline(0, 2), 1200n);
  assert(rig.hv.rdmsr(0, CONFIG(2))! & T.HV_STIMER_ENABLE, "periodic stays enabled");
  // Slot still holds the first tick: the second one is dropped, the timer keeps going.
  rig.hv.stimers.expire(0, 2, 1200n);
  assertEquals(timerMessage(rig, simp, 2).payload.expirationTime, 1100n);
  assertFalse(rig.hv.stimers.messagePending(0, 2));
  assertEquals(rig.scheduler.deadline(0, 2), 1300n);
  assertEquals(rig.msi.sent.length, 1);
  // Disable: COUNT = 0.
  assert(rig.hv.wrmsr(0, COUNT(2), 0n));
  assertEquals(rig.hv.rdmsr(0, CONFIG(2))! & T.HV_STIMER_ENABLE, 0n);
  assertEquals(rig.scheduler.deadline(0, 2), undefined);
});

Deno.test("periodic catch-up: non-lazy delivers missed periods, lazy skips them", () => {
  assertEquals(nextPeriodicExpiry(1000n, 100n, 1010n, false), 1100n, "on time");
  assertEquals(nextPeriodicExpiry(1000n, 100n, 1350n, false), 1100n, "behind: catch up");
  assertEquals(nextPeriodicExpiry(1000n, 100n, 1350n, true), 1400n, "lazy: skip");
  const far = 1000n + 100n * (STIMER_MAX_CATCHUP + 5n) + 30n;
  assertEquals(nextPeriodicExpiry(1000n, 100n, far, false), far + 70n, "too far behind: skip");

  const { rig } = setup();
  assert(rig.hv.wrmsr(0, COUNT(3), 100n));
  const lazy = T.HV_STIMER_ENABLE | T.HV_STIMER_PERIODIC | T.HV_STIMER_LAZY | SINT(2);
  assert(rig.hv.wrmsr(0, CONFIG(3), lazy));
  assertEquals(rig.hv.rdmsr(0, CONFIG(3)), lazy);
  rig.hv.stimers.expire(0, 3, 1350n);
  assertEquals(rig.scheduler.deadline(0, 3), 1400n);
});

Deno.test("direct mode: interrupt on apic_vector, no message; needs stimer-direct", () => {
  const { rig, simp } = setup();
  const cfg = T.HV_STIMER_ENABLE | T.HV_STIMER_AUTO_ENABLE | T.HV_STIMER_DIRECT_MODE | VECTOR(0xed);
  assert(rig.hv.wrmsr(0, CONFIG(0), cfg));
  assert(rig.hv.wrmsr(0, COUNT(0), 1500n));
  rig.hv.stimers.expire(0, 0, 1500n);
  assertEquals(rig.msi.targets(), [[0, 0xed]]);
  assertEquals(timerMessage(rig, simp, 2).header.messageType, 0);
  assertFalse(
    rig.hv.wrmsr(0, CONFIG(1), T.HV_STIMER_ENABLE | T.HV_STIMER_DIRECT_MODE | VECTOR(0x0f)),
    "vector < 16",
  );

  const noDirect = makeRig({ features: parseHvFeatures("all,-stimer-direct") });
  assertFalse(noDirect.hv.wrmsr(0, CONFIG(0), cfg), "#GP without stimer-direct");
  assert(noDirect.hv.wrmsr(0, CONFIG(0), T.HV_STIMER_ENABLE | SINT(2)));
});

Deno.test("CONFIG checks: RsvdZ #GP, SINTx 0 disables, stale expiry after reprogramming", () => {
  const { rig } = setup();
  assertFalse(rig.hv.wrmsr(0, CONFIG(0), 1n << 13n));
  assertFalse(rig.hv.wrmsr(0, CONFIG(0), 1n << 20n));
  assert(rig.hv.wrmsr(0, COUNT(0), 5000n));
  assert(rig.hv.wrmsr(0, CONFIG(0), T.HV_STIMER_ENABLE));
  assertEquals(rig.hv.rdmsr(0, CONFIG(0)), 0n, "SINTx 0 in message mode: disabled at once");
  assertEquals(rig.scheduler.deadline(0, 0), undefined);

  assert(rig.hv.wrmsr(0, CONFIG(0), T.HV_STIMER_ENABLE | SINT(2)));
  assertEquals(rig.scheduler.deadline(0, 0), 5000n);
  assert(rig.hv.wrmsr(0, COUNT(0), 9000n)); // reprogrammed
  rig.hv.stimers.expire(0, 0, 5000n); // the old deadline fires: early, re-armed for 9000
  assertEquals(rig.msi.sent.length, 0);
  assertEquals(rig.scheduler.deadline(0, 0), 9000n);
  rig.hv.stimers.expire(7, 0, 9000n); // bad VP: ignored
  rig.hv.stimers.expire(0, 9, 9000n); // bad timer: ignored
});

Deno.test("timers are per VP", () => {
  const rig = makeRig();
  enableSynic(rig, 1, { sint: 2, vector: 0x41 });
  rig.clock.set100ns(100n);
  assert(rig.hv.wrmsr(1, COUNT(0), 10n));
  assert(rig.hv.wrmsr(1, CONFIG(0), T.HV_STIMER_ENABLE | SINT(2)));
  assertEquals(rig.hv.rdmsr(0, COUNT(0)), 0n);
  assertEquals(rig.msi.targets(), [[1, 0x41]], "count 10 is already past: fired on VP 1");
});
