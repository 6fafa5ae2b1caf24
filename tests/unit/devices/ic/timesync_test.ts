import { assert, assertNoBugs, bringUp } from "./harness.ts";
import { TS_GUID } from "./linux_hv_utils.ts";
import {
  filetimeFromUnixMs,
  TimesyncFlags,
  WLTIMEDELTA,
} from "../../../../src/devices/ic/protocol.ts";

const T0 = filetimeFromUnixMs(Date.UTC(2024, 0, 2, 3, 4, 5));

/** A host clock and a partition reference counter that both advance with the manual scheduler. */
function clocks(rigNow: () => number) {
  return {
    hostTime: () => T0 + BigInt(rigNow()) * 10_000n,
    // The guest booted 1 s before the test started.
    referenceTime: () => 10_000_000n + BigInt(rigNow()) * 10_000n,
  };
}

Deno.test("timesync: with a reference time Linux 6.1 negotiates 4.0 and gets a SYNC with it", () => {
  let now = () => 0;
  const c = clocks(() => now());
  // The guest processes the message 123.4 µs of reference time after the host read the clocks.
  const rig = bringUp({
    ics: { timesync: c },
    refCounter: () => c.referenceTime() + 1234n,
  });
  now = () => rig.sched.now();
  assert.ok(rig.linux.dmesg.includes("TimeSync IC version 4.0"), rig.linux.dmesg.join("\n"));
  assert.equal(rig.linux.timeSamples.length, 1);
  const s = rig.linux.timeSamples[0]!;
  assert.equal(s.v4, true);
  assert.equal(s.flags, TimesyncFlags.SYNC);
  assert.equal(s.hostTime, T0 + 1234n, "the guest adds the delivery delay");
  assert.deepEqual(rig.ics.timesync.lastSent, {
    flags: TimesyncFlags.SYNC,
    hostTime: T0,
    referenceTime: 10_000_000n,
  });
  const pkt = rig.linux.rx.filter((r) => r.classId === TS_GUID)[1]!;
  assert.equal(pkt.requestId, 0n, "fire and forget");
  const d = new DataView(pkt.payload.buffer, pkt.payload.byteOffset);
  assert.deepEqual(
    [0, 2, 4, 6, 8, 10].map((o) => d.getUint16(8 + o, true)),
    [3, 0, 4, 4, 0, 22],
  );
  assert.equal(pkt.payload[8 + 17], 0, "no transaction flags");
  assert.equal(d.getBigUint64(28, true), T0);
  assert.equal(d.getBigUint64(36, true), 10_000_000n);
  assert.equal(pkt.payload[44], 1);
  assertNoBugs(rig);
});

Deno.test("timesync: samples every 5 s carry the current clocks; echoes are dropped quietly", () => {
  let now = () => 0;
  const c = clocks(() => now());
  const rig = bringUp({ ics: { timesync: c }, refCounter: () => c.referenceTime() });
  now = () => rig.sched.now();
  rig.advance(15_000);
  const samples = rig.linux.timeSamples;
  assert.deepEqual(samples.map((s) => s.flags), [1, 2, 2, 2]);
  assert.deepEqual(
    samples.map((s) => s.hostTime - T0),
    [0n, 50_000_000n, 100_000_000n, 150_000_000n],
  );
  assert.equal(rig.ics.timesync.sentCount, 4);
  assert.equal(rig.ics.timesync.stats.echoes, 4);
  assert.equal(rig.ics.timesync.stats.malformed, 0);
  assertNoBugs(rig);
});

Deno.test("timesync: without a reference time the host offers 3.0 and sends ictimesync_data", () => {
  const rig = bringUp({ ics: { timesync: { hostTime: () => T0, sampleIntervalMs: 1000 } } });
  assert.ok(rig.linux.dmesg.includes("TimeSync IC version 3.0"));
  assert.deepEqual(rig.ics.timesync.versions!.message, { major: 3, minor: 0 });
  rig.advance(1000);
  assert.deepEqual(rig.linux.timeSamples.map((s) => [s.v4, s.flags, s.hostTime]), [
    [false, 1, T0],
    [false, 2, T0],
  ]);
  const pkt = rig.linux.rx.filter((r) => r.classId === TS_GUID).at(-1)!;
  const d = new DataView(pkt.payload.buffer, pkt.payload.byteOffset);
  assert.equal(d.getUint16(8 + 10, true), 25);
  assert.equal(d.getBigUint64(28, true), T0);
  assert.equal(d.getBigUint64(36, true), 0n, "childtime");
  assert.equal(d.getBigUint64(44, true), 0n, "roundtriptime");
  assert.equal(pkt.payload[52], TimesyncFlags.SAMPLE);
});

Deno.test("timesync: sync() on demand, no samples with interval 0, nothing before negotiation", () => {
  const rig = bringUp({
    noProbe: true,
    ics: { timesync: { hostTime: () => T0, referenceTime: () => 5n, sampleIntervalMs: 0 } },
  });
  assert.equal(rig.ics.timesync.sync(), false);
  rig.linux.probe(rig.offers);
  rig.linux.pump();
  rig.advance(60_000);
  assert.equal(rig.linux.timeSamples.length, 1);
  assert.equal(rig.ics.timesync.sync(), true);
  assert.equal(rig.ics.timesync.sample(), true);
  rig.linux.pump();
  assert.deepEqual(rig.linux.timeSamples.map((s) => s.flags), [1, 1, 2]);
});

Deno.test("timesync: the default host clock is the system wall clock in FILETIME units", () => {
  const rig = bringUp({ ics: { timesync: { referenceTime: () => 0n } } });
  const sent = rig.ics.timesync.lastSent!.hostTime;
  const nowFt = WLTIMEDELTA + BigInt(Date.now()) * 10_000n;
  const diff = nowFt > sent ? nowFt - sent : sent - nowFt;
  assert.ok(diff < 10_000_000n, `host time within 1 s of Date.now(): off by ${diff}`);
  rig.ics.dispose();
});
