import { assert, assertNoBugs, bringUp } from "./harness.ts";
import { HEARTBEAT_GUID } from "./linux_hv_utils.ts";
import type { HeartbeatStatus } from "../../../../src/devices/ic/heartbeat.ts";

Deno.test("heartbeat: Linux 6.1 negotiates 3.0; the first beat goes out right away", () => {
  const rig = bringUp();
  assert.ok(rig.linux.dmesg.includes("Heartbeat IC version 3.0"), rig.linux.dmesg.join("\n"));
  const h = rig.ics.heartbeat.health;
  assert.equal(h.status, "healthy");
  assert.equal(h.lastSequence, 1n);
  assert.equal(h.lastSeenMs, 0);
  assert.equal(h.answered, 1);
  assert.deepEqual(rig.linux.heartbeats, [1n]);
  assertNoBugs(rig);
});

Deno.test("heartbeat: sequence numbers advance by one per interval; request bytes", () => {
  const rig = bringUp();
  rig.advance(2000 * 5);
  assert.deepEqual(rig.linux.heartbeats, [1n, 2n, 3n, 4n, 5n, 6n]);
  const h = rig.ics.heartbeat.health;
  assert.equal(h.status, "healthy");
  assert.equal(h.lastSequence, 6n);
  assert.equal(h.lastSeenMs, 10_000);
  assert.equal(h.answered, 6);
  assert.equal(h.missed, 0);
  const beats = rig.linux.rx.filter((r) => r.classId === HEARTBEAT_GUID).slice(1);
  const last = beats[beats.length - 1]!;
  assert.equal(last.payload.length, 72, "28 + 40 bytes, padded to 8");
  const d = new DataView(last.payload.buffer, last.payload.byteOffset);
  assert.deepEqual(
    [0, 2, 4, 6, 8, 10].map((o) => d.getUint16(8 + o, true)),
    [3, 0, 1, 3, 0, 40],
  );
  assert.equal(d.getBigUint64(28, true), 5n);
  // Every beat has its own VMBus transaction id.
  assert.equal(new Set(beats.map((b) => b.requestId)).size, beats.length);
  assertNoBugs(rig);
});

Deno.test("heartbeat: a stalled guest turns unresponsive, then healthy again", () => {
  const seen: HeartbeatStatus[] = [];
  const rig = bringUp({
    ics: { heartbeat: { onHealthChange: (h) => seen.push(h.status) } },
  });
  assert.deepEqual(seen, ["pending", "healthy"]);
  rig.linux.heartbeatStalled = true;
  rig.advance(4000);
  assert.equal(rig.ics.heartbeat.health.status, "healthy", "two intervals are not enough");
  rig.advance(2000);
  assert.equal(rig.ics.heartbeat.health.status, "unresponsive");
  assert.equal(rig.ics.heartbeat.health.lastSeenMs, 0);
  rig.advance(6000);
  assert.equal(rig.ics.heartbeat.health.missed, 1);
  rig.linux.heartbeatStalled = false;
  // The guest catches up: the beat that timed out is answered late (stale), the one re-sent
  // after the timeout is answered in time.
  rig.linux.pump();
  assert.equal(rig.ics.heartbeat.stats.stale, 1);
  assert.equal(rig.ics.heartbeat.health.status, "healthy");
  assert.equal(rig.ics.heartbeat.health.lastSeenMs, 12_000);
  assert.deepEqual(seen, ["pending", "healthy", "unresponsive", "healthy"]);
  assertNoBugs(rig);
});

Deno.test("heartbeat: interval and threshold are configurable", () => {
  const rig = bringUp({ ics: { heartbeat: { intervalMs: 500, unresponsiveAfterMs: 1200 } } });
  rig.advance(1000);
  assert.deepEqual(rig.linux.heartbeats, [1n, 2n, 3n]);
  rig.linux.heartbeatStalled = true;
  rig.advance(1000);
  assert.equal(rig.ics.heartbeat.health.status, "healthy");
  rig.advance(500);
  assert.equal(rig.ics.heartbeat.health.status, "unresponsive");
});

Deno.test("heartbeat: a guest that never negotiates becomes unresponsive; closing goes offline", () => {
  const rig = bringUp();
  rig.linux.remove(HEARTBEAT_GUID);
  assert.equal(rig.ics.heartbeat.health.status, "offline");
  rig.linux.heartbeatStalled = true;
  rig.linux.probe(rig.offers.filter((o) => o.classId === HEARTBEAT_GUID));
  assert.equal(rig.ics.heartbeat.health.status, "pending");
  rig.advance(6000);
  assert.equal(rig.ics.heartbeat.health.status, "unresponsive");
  rig.linux.remove(HEARTBEAT_GUID);
  assert.equal(rig.ics.heartbeat.health.status, "offline");
  assert.equal(rig.ics.heartbeat.health.answered, 0);
});

Deno.test("heartbeat: timers are background ones and stop on close and dispose", () => {
  const rig = bringUp();
  assert.deepEqual(rig.sched.pending, { foreground: 0, background: 2 }, "heartbeat + timesync");
  rig.linux.remove(HEARTBEAT_GUID);
  assert.deepEqual(rig.sched.pending, { foreground: 0, background: 1 });
  rig.ics.dispose();
  assert.deepEqual(rig.sched.pending, { foreground: 0, background: 0 });
});
