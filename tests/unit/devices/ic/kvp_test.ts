import { assert, assertNoBugs, bringUp, settle } from "./harness.ts";
import { HV_E_FAIL, KVP_GUID, prepNegotiateResp } from "./linux_hv_utils.ts";
import { IcError } from "../../../../src/devices/ic/framework.ts";
import { KvpPool } from "../../../../src/devices/ic/protocol.ts";

function withDaemon() {
  const rig = bringUp();
  const daemon = rig.linux.startDaemon();
  return { rig, daemon, kvp: rig.ics.kvp };
}

/** Runs the request while the Linux side processes it. */
async function run<T>(rig: ReturnType<typeof bringUp>, p: Promise<T>): Promise<T> {
  rig.linux.pump();
  return await p;
}

Deno.test("kvp: without hv_kvp_daemon Linux never answers NEGOTIATE; requests fail fast", async () => {
  const rig = bringUp();
  const kvp = rig.ics.kvp;
  assert.equal(kvp.state, "negotiating");
  assert.ok(!rig.linux.dmesg.some((l) => l.startsWith("KVP")));
  await assert.rejects(
    kvp.set(KvpPool.EXTERNAL, "k", "v"),
    (e) => e instanceof IcError && e.code === "not-ready" && /hv_kvp_daemon/.test(e.message),
  );
  const ready = kvp.waitReady();
  rig.linux.startDaemon();
  assert.ok(rig.linux.dmesg.includes("KVP IC version 4.0"), rig.linux.dmesg.join("\n"));
  assert.deepEqual((await ready).message, { major: 4, minor: 0 });
  assert.equal(kvp.state, "ready");
});

Deno.test("kvp: waitReady times out through the scheduler", async () => {
  const rig = bringUp();
  const w = rig.ics.kvp.waitReady(1000);
  rig.sched.advance(1000);
  await assert.rejects(w, (e) => e instanceof IcError && e.code === "timeout");
});

Deno.test("kvp: set request bytes; the daemon stores the pair in pool 0", async () => {
  const { rig, daemon, kvp } = withDaemon();
  await run(rig, kvp.set(KvpPool.EXTERNAL, "HostName", "vm-42"));
  assert.deepEqual(daemon.entries(0), [{ key: "HostName", value: "vm-42" }]);
  const pkt = rig.linux.rx.filter((r) => r.classId === KVP_GUID).at(-1)!;
  assert.equal(pkt.payload.length, 28 + 2580);
  const d = new DataView(pkt.payload.buffer, pkt.payload.byteOffset);
  assert.deepEqual(
    [0, 2, 4, 6, 8, 10].map((o) => d.getUint16(8 + o, true)),
    [3, 0, 2, 4, 0, 2580],
  );
  assert.equal(pkt.payload[8 + 17], 3);
  const m = 28;
  assert.deepEqual([pkt.payload[m], pkt.payload[m + 1]], [1, 0], "SET, pool 0");
  assert.equal(d.getUint32(m + 4, true), 1, "REG_SZ");
  assert.equal(d.getUint32(m + 8, true), 18, "key_size: 8 units + NUL");
  assert.equal(d.getUint32(m + 12, true), 12, "value_size: 5 units + NUL");
  assert.equal(
    new TextDecoder("utf-16le").decode(pkt.payload.subarray(m + 16, m + 32)),
    "HostName",
  );
  assert.equal(new TextDecoder("utf-16le").decode(pkt.payload.subarray(m + 528, m + 538)), "vm-42");
  assertNoBugs(rig);
});

Deno.test("kvp: set, enumerate, lookup, get, delete round trip through the fake daemon", async () => {
  const { rig, daemon, kvp } = withDaemon();
  await run(rig, kvp.set(KvpPool.EXTERNAL, "a", "one"));
  await run(rig, kvp.set(KvpPool.EXTERNAL, "b", 42));
  await run(rig, kvp.set(KvpPool.EXTERNAL, "c", 12345678901234n));
  await run(rig, kvp.set(KvpPool.EXTERNAL, "a", "uno"));
  assert.deepEqual(daemon.entries(0), [
    { key: "a", value: "uno" },
    { key: "b", value: "42" },
    { key: "c", value: "12345678901234" },
  ]);
  const list = kvp.list(KvpPool.EXTERNAL);
  for (let i = 0; i < 5; i++) {
    rig.linux.pump();
    await settle();
  }
  assert.deepEqual(await list, [
    { key: "a", value: "uno" },
    { key: "b", value: "42" },
    { key: "c", value: "12345678901234" },
  ]);
  assert.deepEqual(await run(rig, kvp.enumerate(KvpPool.EXTERNAL, 3)), undefined);
  const found = kvp.lookup(KvpPool.EXTERNAL, "b");
  for (let i = 0; i < 3; i++) {
    rig.linux.pump();
    await settle();
  }
  assert.equal(await found, "42");
  // Linux 6.1's GET: existing keys read as "", missing ones as undefined.
  assert.equal(await run(rig, kvp.get(KvpPool.EXTERNAL, "a")), "");
  assert.equal(await run(rig, kvp.get(KvpPool.EXTERNAL, "zzz")), undefined);
  assert.equal(await run(rig, kvp.delete(KvpPool.EXTERNAL, "a")), true);
  assert.equal(await run(rig, kvp.delete(KvpPool.EXTERNAL, "a")), false);
  assert.deepEqual(daemon.entries(0).map((e) => e.key), ["b", "c"]);
  const auto = kvp.list(KvpPool.AUTO);
  for (let i = 0; i < 4; i++) {
    rig.linux.pump();
    await settle();
  }
  assert.deepEqual(await auto, [
    { key: "FullyQualifiedDomainName", value: "guest.example" },
    { key: "IntegrationServicesVersion", value: "3.1" },
  ]);
  assertNoBugs(rig);
});

Deno.test("kvp: one transaction at a time, in order, while the daemon is slow", async () => {
  const { rig, daemon, kvp } = withDaemon();
  daemon.hold = true;
  const before = rig.linux.rx.length;
  const p1 = kvp.set(0, "k1", "v1");
  const p2 = kvp.set(0, "k2", "v2");
  const p3 = kvp.delete(0, "k1");
  assert.equal(kvp.queued, 2);
  rig.linux.pump();
  assert.equal(rig.linux.rx.length - before, 1, "only the first request is on the ring");
  rig.linux.releaseDaemon();
  await p1;
  assert.equal(rig.linux.rx.length - before, 2);
  rig.linux.releaseDaemon();
  await p2;
  rig.linux.releaseDaemon();
  assert.equal(await p3, true);
  assert.deepEqual(daemon.entries(0), [{ key: "k2", value: "v2" }]);
  assert.deepEqual(daemon.seen.slice(-3), ["1/0", "1/0", "2/0"]);
});

Deno.test("kvp: a hung daemon gives the guest's E_FAIL after its 30 s timeout", async () => {
  const { rig, daemon, kvp } = withDaemon();
  daemon.hung = true;
  const p = kvp.set(0, "k", "v");
  rig.linux.pump();
  rig.sched.advance(30_000);
  rig.linux.kvpTimeout();
  await assert.rejects(
    p,
    (e) =>
      e instanceof IcError && e.code === "status" && e.status === HV_E_FAIL &&
      /0x80004005 \(E_FAIL\)/.test(e.message),
  );
});

Deno.test("kvp: host timeouts (in flight and queued); the late answer is dropped", async () => {
  const rig = bringUp({ ics: { kvp: { requestTimeoutMs: 1000 } } });
  const daemon = rig.linux.startDaemon();
  daemon.hung = true;
  const p1 = rig.ics.kvp.set(0, "k1", "v1");
  const p2 = rig.ics.kvp.set(0, "k2", "v2", { timeoutMs: 500 });
  rig.linux.pump();
  rig.sched.advance(500);
  await assert.rejects(
    p2,
    (e) => e instanceof IcError && e.code === "timeout" && /queued/.test(e.message),
  );
  rig.sched.advance(500);
  await assert.rejects(p1, (e) => e instanceof IcError && e.code === "timeout");
  daemon.hung = false;
  rig.linux.kvpTimeout(); // the guest gives up on k1: E_FAIL, stale for the host
  assert.equal(rig.ics.kvp.stats.stale, 1);
  await run(rig, rig.ics.kvp.set(0, "k3", "v3"));
  assert.deepEqual(daemon.entries(0), [{ key: "k3", value: "v3" }]);
  assertNoBugs(rig);
});

Deno.test("kvp: daemon exit fails the pending request; channel close fails queued ones", async () => {
  const { rig, daemon, kvp } = withDaemon();
  daemon.hold = true;
  const p1 = kvp.set(0, "k1", "v1");
  rig.linux.pump();
  rig.linux.stopDaemon();
  await assert.rejects(p1, (e) => e instanceof IcError && e.status === HV_E_FAIL);
  rig.linux.startDaemon().hold = true;
  const p2 = kvp.set(0, "k2", "v2");
  const p3 = kvp.set(0, "k3", "v3");
  rig.linux.pump();
  rig.linux.remove(KVP_GUID);
  await assert.rejects(p2, (e) => e instanceof IcError && e.code === "closed");
  await assert.rejects(p3, (e) => e instanceof IcError && e.code === "closed");
  await assert.rejects(
    kvp.set(0, "k4", "v4"),
    (e) => e instanceof IcError && e.code === "not-ready",
  );
  assert.equal(kvp.queued, 0);
});

Deno.test("kvp: bad arguments are rejected before anything is sent", async () => {
  const { kvp } = withDaemon();
  await assert.rejects(kvp.set(5, "k", "v"), RangeError);
  await assert.rejects(kvp.set(0.5, "k", "v"), RangeError);
  await assert.rejects(kvp.set(0, "", "v"), TypeError);
  await assert.rejects(kvp.set(0, "k".repeat(256), "v"), RangeError);
  await assert.rejects(kvp.set(0, "k", "v".repeat(1024)), RangeError);
  await assert.rejects(kvp.set(0, "k", -1), RangeError);
  await assert.rejects(kvp.set(0, "k", 2 ** 32), RangeError);
  await assert.rejects(kvp.set(0, "k", 1n << 64n), RangeError);
  await assert.rejects(kvp.set(0, "k", {} as string), TypeError);
  await assert.rejects(kvp.enumerate(0, -1), RangeError);
  assert.equal(kvp.stats.packets, 1, "only the negotiate answer");
});

Deno.test("kvp: a guest that answers GET fully (REG_SZ, REG_U32, REG_U64) is decoded", async () => {
  const rig = bringUp({ noProbe: true });
  const offer = rig.offers.find((o) => o.classId === KVP_GUID)!;
  const ch = rig.guest.open(offer);
  const answer = (fill: (b: Uint8Array, d: DataView) => void) => {
    const pkt = ch.receive()[0]!;
    const b = pkt.payload.slice();
    const d = new DataView(b.buffer);
    fill(b, d);
    b[8 + 17] = 5;
    ch.send(b, { transactionId: pkt.transactionId });
  };
  answer((b) => assert.ok(prepNegotiateResp(b, b.length, [3 << 16], [4 << 16]).ok));
  assert.equal(rig.ics.kvp.state, "ready");
  const m = 28;
  const s = rig.ics.kvp.get(1, "OSName");
  answer((b, d) => {
    d.setUint32(m + 4, 1, true);
    const text = "Linux";
    for (let i = 0; i < text.length; i++) d.setUint16(m + 528 + i * 2, text.charCodeAt(i), true);
    d.setUint32(m + 12, 12, true);
    void b;
  });
  assert.equal(await s, "Linux");
  const u32 = rig.ics.kvp.get(1, "n");
  answer((_b, d) => {
    d.setUint32(m + 4, 4, true);
    d.setUint32(m + 12, 4, true);
    d.setUint32(m + 528, 0xdeadbeef, true);
  });
  assert.equal(await u32, 0xdeadbeef);
  const u64 = rig.ics.kvp.get(1, "n");
  answer((_b, d) => {
    d.setUint32(m + 4, 8, true);
    d.setUint32(m + 12, 8, true);
    d.setBigUint64(m + 528, 0x1_0000_0001n, true);
  });
  assert.equal(await u64, 0x1_0000_0001n);
  assertNoBugs(rig);
});

Deno.test("kvp: GET_IP_INFO asks the daemon by MAC and decodes the adapter's addresses", async () => {
  const { rig, daemon, kvp } = withDaemon();
  daemon.interfaces.set("52:54:00:AB:CD:02", {
    ip: "10.77.0.2;fe80::5054:ff:feab:cd02",
    subnet: "255.255.255.0;64",
    gateway: "10.77.0.1",
  });
  const info = await run(rig, kvp.ipInfo("52:54:00:ab:cd:02"));
  assert.deepEqual(info?.addresses, ["10.77.0.2", "fe80::5054:ff:feab:cd02"]);
  assert.deepEqual(info?.subnets, ["255.255.255.0", "64"]);
  assert.deepEqual(info?.gateways, ["10.77.0.1"]);
  const pkt = rig.linux.rx.filter((r) => r.classId === KVP_GUID).at(-1)!;
  assert.equal(pkt.payload.length, 28 + 7428, "room for the whole hv_kvp_ip_msg answer");
  assert.equal(pkt.payload[28], 4, "KVP_OP_GET_IP_INFO");
  assert.equal(await run(rig, kvp.ipInfo("52:54:00:00:00:09")), undefined, "no such adapter");
  assertNoBugs(rig);
});
