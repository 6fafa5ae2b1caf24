/**
 * The shared IC machinery against a scripted guest that writes raw bytes: the NEGOTIATE the host
 * sends, negotiation outcomes, and hostile answers (short, unexpected, unmatched, oversized
 * counts), which must be counted, logged with a rate limit and never thrown.
 */
import { assert, assertNoBugs, bringUp, captureLogs, settle, text } from "./harness.ts";
import { HEARTBEAT_GUID, KVP_GUID, prepNegotiateResp, SHUTDOWN_GUID } from "./linux_hv_utils.ts";
import { IcError, type IcState } from "../../../../src/devices/ic/framework.ts";
import { encodePacket } from "../../../../src/vmbus/testing/guest_ring.ts";
import type { GuestChannel } from "../../../../src/vmbus/testing/loopback_guest.ts";

/** Opens IC `classId` with a raw guest; returns the channel and the host's NEGOTIATE. */
function rawOpen(classId: string, opts: Parameters<typeof bringUp>[0] = {}) {
  const rig = bringUp({ ...opts, noProbe: true });
  const offer = rig.offers.find((o) => o.classId === classId)!;
  const ch = rig.guest.open(offer);
  const [neg] = ch.receive();
  return { rig, ch, offer, neg: neg! };
}

/** Answers `pkt` with its payload after `edit`, as Linux does (TRANSACTION | RESPONSE). */
function answer(
  ch: GuestChannel,
  pkt: { payload: Uint8Array; transactionId: bigint },
  edit?: (b: Uint8Array, d: DataView) => void,
) {
  const b = pkt.payload.slice();
  const d = new DataView(b.buffer);
  edit?.(b, d);
  if (b.length > 25) b[8 + 17] = 5;
  ch.send(b, { transactionId: pkt.transactionId });
}

function negotiateLinux(
  ch: GuestChannel,
  neg: { payload: Uint8Array; transactionId: bigint },
  srv: number[],
) {
  answer(ch, neg, (b) => void prepNegotiateResp(b, b.length, [3 << 16, 1 << 16], srv));
}

Deno.test("framework: the offer is a message-mode pipe; NEGOTIATE lists framework then message versions", () => {
  const { rig, offer, neg } = rawOpen(SHUTDOWN_GUID);
  assert.equal(offer.channelFlags, 0x10);
  assert.equal(
    new DataView(offer.userDefined.buffer, offer.userDefined.byteOffset).getUint32(0, true),
    4,
  );
  assert.equal(offer.instanceId, "b6650ff7-33bc-4840-8048-e0676786f393");
  assert.equal(neg.type, 6);
  assert.notEqual(neg.transactionId, 0n);
  const p = neg.payload;
  const d = new DataView(p.buffer, p.byteOffset);
  assert.equal(p.length, 64, "8 + 52 bytes, padded to 8");
  assert.deepEqual([d.getUint32(0, true), d.getUint32(4, true)], [1, 52]);
  assert.deepEqual(
    [0, 2, 4, 6, 8, 10].map((o) => d.getUint16(8 + o, true)),
    [0, 0, 0, 0, 0, 32],
  );
  assert.equal(d.getUint32(8 + 12, true), 0);
  assert.deepEqual([p[8 + 16], p[8 + 17]], [0, 3]);
  const versions = [];
  for (let i = 0; i < 6; i++) {
    versions.push(`${d.getUint16(36 + i * 4, true)}.${d.getUint16(38 + i * 4, true)}`);
  }
  assert.deepEqual([d.getUint16(28, true), d.getUint16(30, true)], [2, 4]);
  assert.deepEqual(versions, ["3.0", "1.0", "3.2", "3.1", "3.0", "1.0"]);
  assert.equal(rig.ics.shutdown.state, "negotiating");
});

Deno.test("framework: an older guest gets the highest version it knows", () => {
  const { rig, ch, neg } = rawOpen(SHUTDOWN_GUID);
  negotiateLinux(ch, neg, [(3 << 16) | 1, 1 << 16]);
  assert.deepEqual(rig.ics.shutdown.versions, {
    framework: { major: 3, minor: 0 },
    message: { major: 3, minor: 1 },
  });
  const ws2008 = rawOpen(HEARTBEAT_GUID);
  answer(ws2008.ch, ws2008.neg, (b) => void prepNegotiateResp(b, b.length, [1 << 16], [1 << 16]));
  assert.deepEqual(ws2008.rig.ics.heartbeat.versions, {
    framework: { major: 1, minor: 0 },
    message: { major: 1, minor: 0 },
  });
});

Deno.test("framework: no common version, bad counts, or an unoffered choice fail negotiation", async () => {
  const logs = await captureLogs();
  try {
    const cases: [string, (b: Uint8Array, d: DataView) => void][] = [
      ["none in common", (b) => void prepNegotiateResp(b, b.length, [3 << 16], [9 << 16])],
      ["zero counts", (_b, d) => d.setUint32(28, 0, true)],
      ["oversized counts", (_b, d) => d.setUint32(28, 0xffff_ffff, true)],
      ["two each", (_b, d) => d.setUint32(28, 0x0002_0002, true)],
      ["unoffered version", (_b, d) => {
        d.setUint32(28, 0x0001_0001, true);
        d.setUint32(36, 3, true);
        d.setUint32(40, 3 | (3 << 16), true);
      }],
      ["truncated", (_b, d) => d.setUint16(8 + 10, 4, true)],
    ];
    for (const [what, edit] of cases) {
      const states: IcState[] = [];
      const { rig, ch, neg } = rawOpen(SHUTDOWN_GUID, {
        ics: { shutdown: { onStateChange: (s) => states.push(s) } },
      });
      const waiting = rig.ics.shutdown.waitReady();
      answer(ch, neg, edit);
      assert.equal(rig.ics.shutdown.state, "failed", what);
      assert.deepEqual(states, ["negotiating", "failed"], what);
      await assert.rejects(waiting, (e) => e instanceof IcError && e.code === "protocol", what);
      await assert.rejects(
        rig.ics.shutdown.request("poweroff"),
        (e) =>
          e instanceof IcError && e.code === "not-ready" && /negotiation failed/.test(e.message),
      );
      assertNoBugs(rig);
    }
    assert.ok(logs.records.some((r) => /version negotiation failed/.test(text(r))));
  } finally {
    await logs.stop();
  }
});

Deno.test("framework: hostile packets are counted and dropped; matched ones fail only their request", async () => {
  const { rig, ch, neg } = rawOpen(SHUTDOWN_GUID);
  negotiateLinux(ch, neg, [(3 << 16) | 2]);
  const sd = rig.ics.shutdown;
  // Short packets with no request behind them.
  for (let n = 0; n < 28; n += 3) ch.send(new Uint8Array(n), { transactionId: 777n });
  assert.equal(sd.stats.malformed, 10);
  // A short answer to a pending request fails that request.
  let p = sd.request("poweroff");
  let [req] = ch.receive();
  ch.send(new Uint8Array(12), { transactionId: req!.transactionId });
  await assert.rejects(p, (e) => e instanceof IcError && e.code === "protocol");
  // A guest "request" (no RESPONSE flag) is not an answer; the request still waits.
  p = sd.request("poweroff", { timeoutMs: 100 });
  [req] = ch.receive();
  const asRequest = req!.payload.slice();
  ch.send(asRequest, { transactionId: req!.transactionId });
  assert.equal(sd.inProgress, true);
  // An answer of the wrong type fails it.
  answer(ch, req!, (_b, d) => d.setUint16(8 + 4, 1, true));
  await assert.rejects(p, (e) => e instanceof IcError && /type 1 to a type 3/.test(e.message));
  // Unknown transaction ids are stale; tid 0 answers are echoes.
  answer(ch, { payload: req!.payload, transactionId: 0xdead_beefn });
  answer(ch, { payload: req!.payload, transactionId: 0n });
  assert.equal(sd.stats.stale, 1);
  assert.equal(sd.stats.echoes, 1);
  // Other packet types are not IC traffic.
  ch.sendRaw(encodePacket(11, 0, 5n, new Uint8Array(0), new Uint8Array(32)));
  const gpa = new Uint8Array(24);
  const gd = new DataView(gpa.buffer);
  gd.setUint32(4, 1, true); // one range: 8 bytes of the first guest RAM page
  gd.setUint32(8, 8, true);
  gd.setBigUint64(16, 0x100n, true);
  ch.sendRaw(encodePacket(9, 0, 5n, gpa, new Uint8Array(32)));
  assert.equal(rig.guest.server.stats.ringErrors, 0);
  assert.equal(sd.stats.malformed, 15);
  // A data packet asking for a completion gets one.
  ch.send(new Uint8Array(40), { transactionId: 99n, completionRequested: true });
  const comp = ch.receive();
  assert.deepEqual(comp.map((c) => [c.type, c.transactionId]), [[11, 99n]]);
  assert.equal(sd.stats.internalErrors, 0);
  // Still works afterwards.
  p = sd.request("reboot");
  [req] = ch.receive();
  answer(ch, req!);
  assert.deepEqual(await p, { status: 0, accepted: true });
  assertNoBugs(rig);
});

Deno.test("framework: guest-triggered warnings are rate-limited", async () => {
  const logs = await captureLogs();
  try {
    const { rig, ch, neg } = rawOpen(HEARTBEAT_GUID);
    negotiateLinux(ch, neg, [3 << 16]);
    for (let i = 0; i < 1000; i++) ch.send(new Uint8Array(i % 28), { transactionId: 5n });
    assert.equal(rig.ics.heartbeat.stats.malformed, 1000);
    const hb = logs.records.filter((r) => r.category.join(".") === "hyperdeno.dev.heartbeat");
    const warnings = hb.filter((r) => r.level === "warning");
    assert.ok(warnings.length <= 10, `${warnings.length} warnings logged`);
    assert.ok(warnings.length >= 1);
    assertNoBugs(rig);
  } finally {
    await logs.stop();
  }
});

Deno.test("framework: hostile heartbeat and KVP answers", async () => {
  const hb = rawOpen(HEARTBEAT_GUID);
  negotiateLinux(hb.ch, hb.neg, [3 << 16]);
  const [beat] = hb.ch.receive();
  // Wrong sequence, then failure status, then a short body: none counts as a sign of life.
  answer(hb.ch, beat!, (_b, d) => d.setBigUint64(28, 77n, true));
  hb.rig.sched.advance(2000);
  const [b2] = hb.ch.receive();
  answer(hb.ch, b2!, (_b, d) => d.setUint32(8 + 12, 0x80004005, true));
  hb.rig.sched.advance(2000);
  const [b3] = hb.ch.receive();
  answer(hb.ch, b3!, (_b, d) => d.setUint16(8 + 10, 4, true));
  assert.equal(hb.rig.ics.heartbeat.health.answered, 0);
  assert.equal(hb.rig.ics.heartbeat.stats.malformed, 3);
  hb.rig.sched.advance(2000);
  assert.equal(hb.rig.ics.heartbeat.health.status, "unresponsive");
  assertNoBugs(hb.rig);

  const kv = rawOpen(KVP_GUID);
  negotiateLinux(kv.ch, kv.neg, [4 << 16]);
  const m = 28;
  const hostile: [string, (d: DataView) => void][] = [
    ["value type", (d) => d.setUint32(m + 8, 99, true)],
    ["key size", (d) => d.setUint32(m + 12, 0xffff_fff0, true)],
    ["value size", (d) => {
      d.setUint32(m + 8, 1, true);
      d.setUint32(m + 16, 4096, true);
    }],
    ["u32 size", (d) => {
      d.setUint32(m + 8, 4, true);
      d.setUint32(m + 16, 2, true);
    }],
    ["truncated", (d) => d.setUint16(8 + 10, 100, true)],
  ];
  for (const [what, edit] of hostile) {
    const p = kv.rig.ics.kvp.enumerate(0, 0);
    const [req] = kv.ch.receive();
    answer(kv.ch, req!, (_b, d) => edit(d));
    await assert.rejects(p, (e) => e instanceof IcError && e.code === "protocol", what);
  }
  // A key size beyond the buffer is clamped, not trusted.
  const p = kv.rig.ics.kvp.enumerate(0, 0);
  const [req] = kv.ch.receive();
  answer(kv.ch, req!, (b, d) => {
    d.setUint32(m + 8, 1, true);
    d.setUint32(m + 12, 512, true);
    b.fill(0x41, m + 20, m + 20 + 512);
    d.setUint32(m + 16, 2, true);
  });
  const e = await p;
  assert.equal(e!.key, "䅁".repeat(256));
  assert.equal(e!.value, "");
  assertNoBugs(kv.rig);
});

Deno.test("framework: callbacks that throw are contained; dispose fails everything once", async () => {
  const rig = bringUp({
    ics: {
      shutdown: {
        onStateChange: () => {
          throw new Error("observer bug");
        },
      },
      heartbeat: {
        onHealthChange: () => {
          throw new Error("observer bug");
        },
      },
    },
  });
  assert.equal(rig.ics.shutdown.state, "ready");
  assert.equal(rig.ics.heartbeat.health.status, "healthy");
  rig.linux.startDaemon().hold = true;
  const pending = rig.ics.kvp.set(0, "a", "b");
  const queued = rig.ics.kvp.set(0, "c", "d");
  rig.linux.pump();
  const shut = rig.ics.shutdown.request("poweroff");
  const waitFailed = bringUp({ noProbe: true });
  const w = waitFailed.ics.timesync.waitReady().catch((e) => Promise.reject(e));
  w.catch(() => {});
  waitFailed.ics.dispose();
  rig.ics.dispose();
  rig.ics.dispose();
  for (const p of [pending, queued, shut, w]) {
    await assert.rejects(p, (e) => e instanceof IcError && e.code === "closed");
  }
  await assert.rejects(
    rig.ics.kvp.set(0, "x", "y"),
    (e) => e instanceof IcError && e.code === "closed",
  );
  await settle();
  assert.deepEqual(rig.sched.pending, { foreground: 0, background: 0 });
  assertNoBugs(rig);
});
