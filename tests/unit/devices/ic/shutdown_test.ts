import { assert, assertNoBugs, bringUp, settle } from "./harness.ts";
import { HV_E_FAIL, SHUTDOWN_GUID } from "./linux_hv_utils.ts";
import { IcError } from "../../../../src/devices/ic/framework.ts";

function lastShutdownPacket(rig: ReturnType<typeof bringUp>) {
  const rx = rig.linux.rx.filter((r) => r.classId === SHUTDOWN_GUID);
  return rx[rx.length - 1]!;
}

Deno.test("shutdown: Linux 6.1 negotiates 3.2 on framework 3.0", () => {
  const rig = bringUp();
  assert.ok(rig.linux.dmesg.includes("Shutdown IC version 3.2"), rig.linux.dmesg.join("\n"));
  assert.equal(rig.ics.shutdown.state, "ready");
  assert.deepEqual(rig.ics.shutdown.versions, {
    framework: { major: 3, minor: 0 },
    message: { major: 3, minor: 2 },
  });
  assertNoBugs(rig);
});

Deno.test("shutdown: power-off request bytes, the guest's S_OK, and the scheduled power-off", async () => {
  const rig = bringUp();
  const answer = rig.ics.shutdown.request("poweroff");
  assert.equal(rig.ics.shutdown.inProgress, true);
  rig.linux.pump();
  const pkt = lastShutdownPacket(rig);
  assert.equal(pkt.type, 6);
  assert.equal(pkt.flags, 0, "no VMBus completion requested");
  assert.notEqual(pkt.requestId, 0n);
  assert.equal(pkt.payload.length, 28 + 2060);
  const d = new DataView(pkt.payload.buffer, pkt.payload.byteOffset);
  // vmbuspipe_hdr
  assert.equal(d.getUint32(0, true), 1);
  assert.equal(d.getUint32(4, true), 20 + 2060);
  // icmsg_hdr: framework 3.0, SHUTDOWN, message 3.2, size 2060, status 0, TRANSACTION|REQUEST
  assert.deepEqual(
    [0, 2, 4, 6, 8, 10].map((o) => d.getUint16(8 + o, true)),
    [3, 0, 3, 3, 2, 2060],
  );
  assert.equal(d.getUint32(8 + 12, true), 0);
  assert.equal(pkt.payload[8 + 17], 3);
  // shutdown_msg_data: planned, timeout 0, flags 0 (power off), empty message
  assert.equal(d.getUint32(28, true), 0x80000000);
  assert.equal(d.getUint32(32, true), 0);
  assert.equal(d.getUint32(36, true), 0);
  assert.ok(pkt.payload.subarray(40).every((b) => b === 0));
  assert.deepEqual(await answer, { status: 0, accepted: true });
  assert.deepEqual(rig.linux.shutdownWork, ["poweroff"]);
  assert.ok(rig.linux.dmesg.includes("Shutdown request received - graceful shutdown initiated"));
  assert.equal(rig.ics.shutdown.inProgress, false);
  assertNoBugs(rig);
});

Deno.test("shutdown: reboot, force bit and display message", async () => {
  const rig = bringUp();
  const answer = rig.ics.shutdown.request("reboot", {
    force: true,
    message: "host maintenance",
    reasonCode: 0x80020003,
    timeoutSeconds: 30,
  });
  rig.linux.pump();
  const pkt = lastShutdownPacket(rig);
  const d = new DataView(pkt.payload.buffer, pkt.payload.byteOffset);
  assert.equal(d.getUint32(28, true), 0x80020003);
  assert.equal(d.getUint32(32, true), 30);
  assert.equal(d.getUint32(36, true), 3);
  const text = new TextDecoder("utf-16le").decode(pkt.payload.subarray(40, 40 + 32));
  assert.equal(text, "host maintenance");
  assert.equal(d.getUint16(40 + 32, true), 0);
  assert.deepEqual(await answer, { status: 0, accepted: true });
  assert.deepEqual(rig.linux.shutdownWork, ["reboot"]);
});

Deno.test("shutdown: hibernate is refused without guest support, accepted with it", async () => {
  const rig = bringUp();
  const refused = rig.ics.shutdown.request("hibernate");
  rig.linux.pump();
  assert.deepEqual(await refused, { status: HV_E_FAIL, accepted: false });
  assert.deepEqual(rig.linux.shutdownWork, []);
  assert.equal(new DataView(lastShutdownPacket(rig).payload.buffer).getUint32(36, true), 4);
  rig.linux.hibernationSupported = true;
  const ok = rig.ics.shutdown.request("hibernate");
  rig.linux.pump();
  assert.deepEqual(await ok, { status: 0, accepted: true });
  assert.deepEqual(rig.linux.shutdownWork, ["hibernate"]);
});

Deno.test("shutdown: one request at a time; bad arguments are rejected up front", async () => {
  const rig = bringUp();
  const first = rig.ics.shutdown.request("poweroff");
  await assert.rejects(
    rig.ics.shutdown.request("reboot"),
    (e) => e instanceof IcError && e.code === "busy",
  );
  await assert.rejects(
    rig.ics.shutdown.request("suspend" as "poweroff"),
    (e) => e instanceof TypeError && /poweroff, reboot or hibernate/.test(e.message),
  );
  await assert.rejects(
    rig.ics.shutdown.request("poweroff", { message: "x".repeat(1024) }),
    RangeError,
  );
  rig.linux.pump();
  assert.equal((await first).accepted, true);
});

Deno.test("shutdown: not-ready without a channel, timeout without an answer, late answer is stale", async () => {
  const rig = bringUp({ noProbe: true });
  await assert.rejects(
    rig.ics.shutdown.request("poweroff"),
    (e) => e instanceof IcError && e.code === "not-ready" && /hv_utils/.test(e.message),
  );
  rig.linux.probe(rig.offers);
  // The guest has not run its callback yet: still negotiating.
  assert.equal(rig.ics.shutdown.state, "negotiating");
  await assert.rejects(
    rig.ics.shutdown.request("poweroff"),
    (e) => e instanceof IcError && e.code === "not-ready",
  );
  rig.linux.pump();
  const p = rig.ics.shutdown.request("poweroff", { timeoutMs: 5000 });
  rig.sched.advance(4999);
  await settle();
  rig.sched.advance(1);
  await assert.rejects(p, (e) => e instanceof IcError && e.code === "timeout");
  assert.equal(rig.ics.shutdown.inProgress, false);
  rig.linux.pump(); // the guest answers after all
  assert.equal(rig.ics.shutdown.stats.stale, 1);
  assert.equal(rig.ics.shutdown.stats.timeouts, 1);
  assertNoBugs(rig);
});

Deno.test("shutdown: a pending request fails with closed when the guest closes the channel", async () => {
  const rig = bringUp();
  const p = rig.ics.shutdown.request("poweroff");
  rig.linux.remove(SHUTDOWN_GUID);
  await assert.rejects(p, (e) => e instanceof IcError && e.code === "closed");
  assert.equal(rig.ics.shutdown.state, "closed");
  // Reopen (hv_utils reloaded): negotiation runs again and requests work.
  rig.linux.probe(rig.offers.filter((o) => o.classId === SHUTDOWN_GUID));
  rig.linux.pump();
  assert.equal(rig.ics.shutdown.state, "ready");
  const again = rig.ics.shutdown.request("poweroff");
  rig.linux.pump();
  assert.equal((await again).accepted, true);
  assertNoBugs(rig);
});
