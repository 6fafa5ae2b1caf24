import assert from "node:assert/strict";
import {
  NdisObjectType,
  NvspType,
  Oid,
  PpiType,
  RndisStatus,
  RndisType,
  TxCsum,
} from "../../../../src/devices/net/protocol.ts";
import { SEND_SECTION_SIZE } from "../../../../src/devices/net/netvsp.ts";
import { ethFrame, NetvscGuest, nvsp, rndisMessage, rndisPacket, u32 } from "./helpers.ts";

const MAC = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const BCAST = new Uint8Array(6).fill(0xff);

Deno.test("netvsp: Linux probe sequence: NVSP 6.1, buffers, RNDIS init and the OIDs Linux needs", () => {
  const g = new NetvscGuest({ mtu: 1400 });
  g.probe();
  assert.equal(g.version, 0x60001);
  assert.equal(g.device.version, 0x60001);
  assert.equal(g.sectionSize, SEND_SECTION_SIZE);
  assert.ok(g.subAllocSize >= 68 && g.subAllocs * g.subAllocSize <= 128 * 4096);
  assert.deepEqual([...g.query(Oid.P802_3_PERMANENT_ADDRESS).info], [...MAC]);
  assert.equal(u32(g.query(Oid.GEN_MAXIMUM_FRAME_SIZE).info, 0), 1400);
  assert.equal(u32(g.query(Oid.GEN_MEDIA_CONNECT_STATUS).info, 0), 0);
  assert.equal(u32(g.query(Oid.GEN_LINK_SPEED).info, 0), 100_000_000);
  const caps = g.query(Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES).info;
  assert.equal(caps.length, 156);
  assert.equal(caps[0], NdisObjectType.OFFLOAD);
  assert.ok(caps[1]! >= 1);
  const rss = g.query(Oid.GEN_RECEIVE_SCALE_CAPABILITIES).info;
  assert.equal(rss.length, 18);
  assert.equal(u32(rss, 12), 1, "one queue: no vRSS");
  const unknown = g.query(0x12345678);
  assert.equal(unknown.status, RndisStatus.NOT_SUPPORTED);
  assert.equal(unknown.info.length, 0);
  assert.equal(g.set(Oid.TCP_OFFLOAD_PARAMETERS, new Uint8Array(40)), 0);
  assert.equal(g.device.packetFilter, 0x0d);
  // Keepalive answered with the request id.
  const ka = g.control(rndisMessage(RndisType.KEEPALIVE, [77]));
  assert.equal(ka?.type, RndisType.KEEPALIVE_C);
  assert.equal(u32(ka!.bytes, 8), 77);
});

Deno.test("netvsp: unsupported NVSP versions get status FAIL; the guest falls back", () => {
  const g = new NetvscGuest();
  g.open();
  const bad = g.completion(g.send(nvsp(NvspType.INIT, 0x2, 0x2)));
  assert.equal(u32(bad, 0), NvspType.INIT_COMPLETE);
  assert.equal(u32(bad, 12), 2);
  assert.ok(bad.length >= 28);
  const ok = g.completion(g.send(nvsp(NvspType.INIT, 0x50000, 0x50000)));
  assert.equal(u32(ok, 12), 1);
});

Deno.test("netvsp: frames to the guest pass the packet filter, arrive intact, carry the checksum PPI", () => {
  const g = new NetvscGuest();
  g.probe();
  const mine = ethFrame(MAC, 1514, 3);
  const other = ethFrame(new Uint8Array([0x52, 0x54, 0, 9, 9, 9]), 100);
  const bcast = ethFrame(BCAST, 60, 5);
  g.backend.deliver(mine, 0, true);
  g.backend.deliver(other);
  g.backend.deliver(bcast);
  g.poll();
  const msgs = g.received.filter((m) => m.type === RndisType.PACKET);
  const frames = g.takeFrames();
  assert.deepEqual(frames, [mine, bcast]);
  assert.equal(g.device.stats.rxDropped, 1);
  // The checksum PPI of the first says the host verified it.
  const ppiOff = u32(msgs[0]!.bytes, 8 + 20);
  const ppi = 8 + ppiOff;
  assert.equal(u32(msgs[0]!.bytes, ppi + 4), PpiType.TCPIP_CHKSUM);
  assert.ok((u32(msgs[0]!.bytes, ppi + 12) & 0x18) === 0x18);
  const q = g.device.queueStats()[0]!;
  assert.equal(q.rxPackets, 2);
  assert.equal(q.rxBytes, 1514 + 60);
});

Deno.test("netvsp: batched packets in a send-buffer section and GPA-direct packets reach the backend", () => {
  const g = new NetvscGuest();
  g.probe();
  const a = ethFrame(BCAST, 98, 1);
  const b = ethFrame(BCAST, 1514, 2);
  const tid = g.sendInSection([rndisPacket(a), rndisPacket(b)], 3);
  const c = g.completion(tid);
  assert.equal(u32(c, 0), NvspType.SEND_RNDIS_PKT_COMPLETE);
  assert.equal(u32(c, 4), 1);
  const big = ethFrame(BCAST, 9000, 4); // crosses pages: several ranges
  const tid2 = g.sendDirect(nvsp(NvspType.SEND_RNDIS_PKT, 0, 0xffffffff, 0), rndisPacket(big));
  assert.equal(u32(g.completion(tid2), 4), 1);
  assert.deepEqual(g.backend.sent.map((s) => s.frame), [a, b, big]);
  assert.equal(g.device.queueStats()[0]!.txPackets, 3);
});

/** An IPv4/TCP frame with `payload` bytes of data. */
function tcpFrame(payload: number): Uint8Array {
  const f = ethFrame(BCAST, 14 + 20 + 20 + payload, 9);
  f[14] = 0x45;
  f[14 + 9] = 6;
  f.fill(0, 16, 18); // tot_len zeroed, as Linux does for LSO
  f[14 + 20 + 12] = 5 << 4;
  f[14 + 20 + 16] = 0x12; // pseudo-header sum without length
  f[14 + 20 + 17] = 0x34;
  return f;
}

Deno.test("netvsp: LSO, checksum and VLAN PPIs become the backend's offload record", () => {
  const g = new NetvscGuest();
  g.probe();
  const lsoFrame = tcpFrame(20000);
  const lso = 1460 | (34 << 20) | (1 << 30);
  const t1 = g.sendDirect(
    nvsp(NvspType.SEND_RNDIS_PKT, 0, 0xffffffff, 0),
    rndisPacket(lsoFrame, [[PpiType.TCP_LARGESEND, lso]]),
  );
  assert.equal(u32(g.completion(t1), 4), 1);
  const s = g.backend.sent.shift()!;
  assert.equal(s.offload.gsoType, 1);
  assert.equal(s.offload.gsoSize, 1460);
  assert.equal(s.offload.csumStart, 34);
  assert.equal(s.offload.csumOffset, 16);
  assert.equal(s.offload.hdrLen, 54);
  assert.equal((s.frame[16]! << 8) | s.frame[17]!, lsoFrame.length - 14, "IPv4 total length set");
  assert.equal((s.frame[50]! << 8) | s.frame[51]!, 0x1234 + 20020, "length added to the sum");

  const csum = TxCsum.IS_IPV4 | TxCsum.TCP | (34 << TxCsum.HEADER_OFFSET_SHIFT);
  const t2 = g.sendInSection([rndisPacket(tcpFrame(100), [[PpiType.TCPIP_CHKSUM, csum]])], 1);
  assert.equal(u32(g.completion(t2), 4), 1);
  const s2 = g.backend.sent.shift()!;
  assert.equal(s2.offload.needsCsum, 1);
  assert.equal(s2.offload.csumStart, 34);
  assert.equal(s2.offload.gsoType, 0);

  const plain = ethFrame(BCAST, 64, 1);
  const tci = 5 | (0 << 3) | (100 << 4); // pri 5, vlan 100
  const t3 = g.sendInSection([rndisPacket(plain, [[PpiType.IEEE_8021Q, tci]])], 2);
  assert.equal(u32(g.completion(t3), 4), 1);
  const s3 = g.backend.sent.shift()!;
  assert.equal(s3.frame.length, 68);
  assert.deepEqual([...s3.frame.subarray(0, 12)], [...plain.subarray(0, 12)]);
  assert.deepEqual([...s3.frame.subarray(12, 16)], [0x81, 0x00, 0xa0, 100]);
  assert.deepEqual([...s3.frame.subarray(16)], [...plain.subarray(12)]);
});

Deno.test("netvsp: a guest that stops completing receive batches stalls the reader, nothing is lost", () => {
  const g = new NetvscGuest();
  g.probe();
  g.autoComplete = false;
  const n = g.subAllocs + 50;
  for (let i = 0; i < n; i++) g.backend.deliver(ethFrame(MAC, 200, i));
  g.poll();
  assert.equal(g.device.freeReceiveSlots, 0);
  assert.ok(g.device.stats.rxStalls > 0);
  assert.equal(g.backend.queues[0]!.onReadable, undefined, "the backend is not watched");
  const first = g.takeFrames().length;
  assert.equal(first, g.subAllocs);
  for (const b of g.heldBatches.splice(0)) {
    b.ch.complete(b.tid, nvsp(NvspType.SEND_RNDIS_PKT_COMPLETE, 1).subarray(0, 8));
  }
  g.autoComplete = true;
  g.poll();
  g.backend.pump();
  g.poll();
  assert.equal(g.takeFrames().length, 50);
  assert.equal(g.device.stats.rxDropped, 0);
});

Deno.test("netvsp: link down and up are indicated to the guest", () => {
  const g = new NetvscGuest();
  g.probe();
  g.device.setLink(false);
  g.poll();
  g.device.setLink(true);
  g.poll();
  const ind = g.received.filter((m) => m.type === RndisType.INDICATE).map((m) => u32(m.bytes, 8));
  assert.deepEqual(ind, [RndisStatus.MEDIA_DISCONNECT, RndisStatus.MEDIA_CONNECT]);
});

Deno.test("netvsp: queues=2 grants a sub-channel, sends the indirection table, both channels carry traffic", () => {
  const g = new NetvscGuest({ queues: 2 });
  g.probe();
  assert.equal(u32(g.query(Oid.GEN_RECEIVE_SCALE_CAPABILITIES).info, 12), 2);
  const c = g.completion(g.send(nvsp(NvspType.SUBCHANNEL, 1, 7)));
  assert.equal(u32(c, 4), 1);
  assert.equal(u32(c, 8), 1, "granted one of seven");
  const table = g.inband.find((m) => u32(m, 0) === NvspType.SEND_INDIRECTION_TABLE)!;
  assert.equal(u32(table, 4), 16);
  const entries = Array.from({ length: 16 }, (_, i) => u32(table, u32(table, 8) + i * 4));
  assert.deepEqual(new Set(entries), new Set([0, 1]));
  const [sub] = g.guest.subChannelOffers(g.offer);
  assert.ok(sub);
  g.subs.push(g.guest.open(sub, { sendPages: 16, recvPages: 16 }));
  g.backend.deliver(ethFrame(MAC, 100, 1), 0);
  g.backend.deliver(ethFrame(MAC, 100, 2), 1);
  const t = g.sendInSection([rndisPacket(ethFrame(BCAST, 60))], 0, g.subs[0]!);
  assert.equal(u32(g.completion(t), 4), 1);
  assert.equal(g.takeFrames().length, 2);
  const stats = g.device.queueStats();
  assert.deepEqual(stats.map((s) => s.rxPackets), [1, 1]);
  assert.deepEqual(stats.map((s) => s.txPackets), [0, 1]);
  assert.equal(g.backend.sent[0]!.queue, 1);
});

Deno.test("netvsp: closing and reopening the channel re-runs the whole setup (MTU change)", () => {
  const g = new NetvscGuest();
  g.probe();
  g.send(nvsp(NvspType.REVOKE_RECV_BUF, 0xcafe), false);
  g.send(nvsp(NvspType.REVOKE_SEND_BUF, 0), false);
  g.poll();
  assert.ok(g.guest.close(g.ch));
  assert.ok(g.guest.teardownGpadl(g.offer.relid, g.recvGpadl));
  assert.ok(g.guest.teardownGpadl(g.offer.relid, g.sendGpadl));
  assert.equal(g.device.version, 0);
  g.probe();
  g.backend.deliver(ethFrame(MAC, 100));
  g.poll();
  assert.equal(g.takeFrames().length, 1);
});

Deno.test("netvsp: a full guest ring holds the receive batch until the guest reads; nothing is lost", () => {
  const g = new NetvscGuest();
  g.probe({ pages: 3 });
  const total = 600;
  for (let i = 0; i < total; i++) g.backend.deliver(ethFrame(MAC, 60 + (i % 200), i));
  assert.ok(g.device.stats.rxStalls > 0, "the ring filled");
  let got = 0;
  for (let round = 0; round < 200 && got < total; round++) {
    g.poll();
    g.backend.pump();
    got += g.takeFrames().length;
  }
  assert.equal(got, total);
  assert.equal(g.device.stats.rxDropped, 0);
});
