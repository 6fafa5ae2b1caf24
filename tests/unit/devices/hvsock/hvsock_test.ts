/**
 * hv_sock against the real VMBus server and a scripted Linux-like guest: the offer a guest
 * connect produces, bytes both ways with backpressure, the close order (FINs, then rescind, then
 * the relid freed), host connects to a guest listener, and connections dropped with VMBus.
 */
import { assert, assertEquals } from "../../vmbus/assert.ts";
import {
  HVSOCK_CHANNEL_FLAGS,
  HvsockOfferData,
  parseConnectLine,
  parsePipePacket,
  PipeDataHeader,
  portOfServiceId,
  serviceIdForPort,
} from "../../../../src/devices/hvsock/mod.ts";
import {
  drainGuest,
  FakeStream,
  guestConnect,
  offerFor,
  pattern,
  pipePacket,
  rig,
  settle,
} from "./harness.ts";
import {
  ChannelMessageType as Msg,
  NtStatus,
  TlConnectResult,
} from "../../../../src/vmbus/protocol.ts";

Deno.test("hvsock protocol: layout sizes and service ids", () => {
  assertEquals(PipeDataHeader.size, 8);
  assertEquals(HvsockOfferData.size, 26);
  assertEquals(HVSOCK_CHANNEL_FLAGS, 0x2011);
  assertEquals(serviceIdForPort(5000), "00001388-facb-11e6-bd58-64006a7986d3");
  assertEquals(portOfServiceId("00001388-FACB-11e6-bd58-64006a7986d3"), 5000);
  assertEquals(portOfServiceId(serviceIdForPort(0xffffffff)), 0xffffffff);
  assertEquals(portOfServiceId("00001388-facb-11e6-bd58-64006a7986d4"), undefined);
  assertEquals(portOfServiceId("0000138g-facb-11e6-bd58-64006a7986d3"), undefined);
});

Deno.test("hvsock protocol: pipe packets are bounded by the payload and the MTU", () => {
  assertEquals(parsePipePacket(new Uint8Array(7)).kind, "bad");
  assertEquals(parsePipePacket(pipePacket(new Uint8Array(0))).kind, "fin");
  const ok = parsePipePacket(pipePacket(new Uint8Array([1, 2, 3])));
  assert(ok.kind === "data" && ok.data.length === 3 && ok.data[2] === 3);
  const lying = pipePacket(new Uint8Array(8));
  PipeDataHeader.set(lying, 0, "dataSize", 9);
  assertEquals(parsePipePacket(lying).kind, "bad");
  const huge = pipePacket(new Uint8Array(16385));
  assertEquals(parsePipePacket(huge).kind, "bad");
  const wrongType = pipePacket(new Uint8Array(8));
  PipeDataHeader.set(wrongType, 0, "pktType", 2);
  assertEquals(parsePipePacket(wrongType).kind, "bad");
});

Deno.test("hvsock protocol: CONNECT lines (Firecracker's host handshake)", () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  const c = parseConnectLine(enc("CONNECT 52\nhello"));
  assert(c.kind === "connect" && c.port === 52 && new TextDecoder().decode(c.rest) === "hello");
  const crlf = parseConnectLine(enc("CONNECT 4294967295\r\n"));
  assert(crlf.kind === "connect" && crlf.port === 0xffffffff);
  assertEquals(parseConnectLine(enc("CONNECT 5")).kind, "partial");
  assertEquals(parseConnectLine(enc("CONNECT 4294967296\n")).kind, "bad");
  assertEquals(parseConnectLine(enc("connect 5\n")).kind, "bad");
  assertEquals(parseConnectLine(enc("CONNECT  5\n")).kind, "bad");
  assertEquals(parseConnectLine(enc("CONNECT -5\n")).kind, "bad");
  assertEquals(parseConnectLine(new Uint8Array(64).fill(0x41)).kind, "bad");
});

Deno.test("hvsock: a guest connect becomes an offer; data flows both ways; FINs then rescind", async () => {
  const r = rig();
  const { guest, server, streams } = r;
  guestConnect(guest, 1234, 5000);
  await settle(guest);
  const offer = offerFor(guest, 5000);
  assert(offer, "offered");
  assertEquals(offer.instanceId, serviceIdForPort(1234));
  assertEquals(offer.channelFlags, 0x2011);
  assertEquals(HvsockOfferData.decode(offer.userDefined)!.isForGuestAccept, 0);
  const ch = guest.open(offer, { sendPages: 6, recvPages: 6 });
  const stream = streams.get(5000)!;

  // guest → host
  const up = pattern(20000, 7);
  for (let at = 0; at < up.length; at += 4088) {
    assert(ch.send(pipePacket(up.subarray(at, at + 4088))));
  }
  await settle(guest);
  assertEquals(stream.written.length, up.length);
  assertEquals(new Uint8Array(stream.written), up);

  // host → guest, more than the ring holds: the guest drains as it goes.
  const down = pattern(100_000, 9);
  stream.feed(down);
  const got: number[] = [];
  for (let i = 0; i < 200 && got.length < down.length; i++) {
    await settle(guest, 1);
    got.push(...drainGuest(ch).data);
  }
  assertEquals(new Uint8Array(got), down);

  // Guest FIN: the host stream's write side closes; no rescind yet (the host may still send).
  assert(ch.send(pipePacket(new Uint8Array(0))));
  await settle(guest);
  assert(stream.writeClosed);
  assertEquals(guest.rescinded.length, 0);
  // Host end of stream: FIN to the guest, then the rescind.
  stream.feed(null);
  await settle(guest);
  assert(drainGuest(ch).fin, "FIN sent");
  guest.receive();
  assertEquals(guest.rescinded, [offer.relid]);
  assert(stream.closed);
  assertEquals(r.host.connections().length, 0);
  // Linux: CLOSECHANNEL (no GPADL teardown on a rescinded channel), then RELID_RELEASED.
  guest.post(new Uint8Array([0x11, 0, 0, 0, 0, 0, 0, 0, offer.relid, 0, 0, 0]));
  guest.release(offer.relid);
  assertEquals(server.channels().filter((c) => c.device.startsWith("hv_sock")).length, 0);
  assertEquals(server.stats.internalErrors, 0);
  assertEquals(server.stats.deviceErrors, 0);
});

Deno.test("hvsock: host data ahead of the FIN and the rescind stays in order", async () => {
  const { guest, streams } = rig();
  guestConnect(guest, 1, 2);
  await settle(guest);
  const ch = guest.open(offerFor(guest, 2)!, { sendPages: 3, recvPages: 3 });
  const stream = streams.get(2)!;
  assert(ch.send(pipePacket(new Uint8Array(0)))); // guest FIN first
  const down = pattern(30_000, 3);
  stream.feed(down);
  stream.feed(null);
  const got: number[] = [];
  let fin = false;
  for (let i = 0; i < 100 && !fin; i++) {
    await settle(guest, 1);
    const d = drainGuest(ch);
    got.push(...d.data);
    fin = d.fin;
  }
  assert(fin);
  assertEquals(new Uint8Array(got), down);
  await settle(guest);
  guest.receive();
  assertEquals(guest.rescinded.length, 1, "rescinded after both FINs");
});

Deno.test("hvsock: a slow host stream leaves guest packets in the ring (backpressure)", async () => {
  const { guest, streams, server } = rig();
  guestConnect(guest, 10, 20);
  await settle(guest);
  const ch = guest.open(offerFor(guest, 20)!, { sendPages: 9, recvPages: 4 });
  const stream = streams.get(20)!;
  stream.stallWrites = true;
  const up = pattern(1_000_000, 5);
  let sent = 0;
  let stalledAt = -1;
  for (let i = 0; i < 2000 && stream.written.length < up.length; i++) {
    while (sent < up.length && ch.send(pipePacket(up.subarray(sent, sent + 4088)))) sent += 4088;
    await settle(guest, 1);
    if (stalledAt < 0 && sent < up.length && stream.stallWrites) {
      // Stalled: the host took at most its high-water mark and left the rest in the ring.
      stalledAt = sent;
      assert(sent <= 256 * 1024 + 8 * 4096, `the host kept taking packets: ${sent}`);
      stream.releaseWrites();
      stream.maxWrite = 10_000; // partial writes from now on
    }
  }
  assert(stalledAt > 0, "the guest ring filled while the host stream stalled");
  assertEquals(stream.written.length, up.length);
  assertEquals(new Uint8Array(stream.written), up);
  assertEquals(server.stats.ringErrors, 0);
});

Deno.test("hvsock: a refused guest connect gets TL_CONNECT_RESULT and no offer", async () => {
  const { guest } = rig({ refuse: [7] });
  guestConnect(guest, 1, 7);
  await settle(guest);
  guest.receive();
  assertEquals(offerFor(guest, 7), undefined);
  const result = guest.log.find((m) => m.type === Msg.TL_CONNECT_RESULT);
  assert(result, "TL_CONNECT_RESULT sent");
  assertEquals(TlConnectResult.decode(result.payload)!.status, NtStatus.CONNECTION_REFUSED);
});

Deno.test("hvsock: a host connect reaches a guest listener; greeting before guest bytes", async () => {
  const { guest, host } = rig();
  const stream = new FakeStream();
  const enc = new TextEncoder();
  const result = host.connectToGuest(6000, stream, (p) => enc.encode(`OK ${p}\n`));
  const offer = offerFor(guest, 6000)!;
  assert(offer);
  assertEquals(HvsockOfferData.decode(offer.userDefined)!.isForGuestAccept, 1);
  const ch = guest.open(offer);
  const hostPort = await result;
  assert(hostPort !== undefined);
  assertEquals(offer.instanceId, serviceIdForPort(hostPort));
  assert(ch.send(pipePacket(enc.encode("hi"))));
  await settle(guest);
  assertEquals(new TextDecoder().decode(new Uint8Array(stream.written)), `OK ${hostPort}\nhi`);
  stream.feed(enc.encode("yo"));
  await settle(guest);
  assertEquals(new TextDecoder().decode(new Uint8Array(drainGuest(ch).data)), "yo");
});

Deno.test("hvsock: a host connect nobody accepts is rescinded after the open timeout", async () => {
  const { guest, host } = rig({ openTimeoutMs: 20 });
  const stream = new FakeStream();
  const result = host.connectToGuest(6001, stream);
  const offer = offerFor(guest, 6001)!;
  assertEquals(await result, undefined);
  guest.receive();
  assertEquals(guest.rescinded, [offer.relid]);
  assert(stream.closed);
});

Deno.test("hvsock: connections are dropped with the guest's VMBus (unload), not offered again", async () => {
  const { guest, streams, host } = rig();
  guestConnect(guest, 1, 2);
  await settle(guest);
  guest.open(offerFor(guest, 2)!);
  assertEquals(host.connections().length, 1);
  guest.unload();
  await settle(guest);
  assert(streams.get(2)!.closed);
  assertEquals(host.connections().length, 0);
  guest.connect();
  const offers = guest.requestOffers();
  assertEquals(offers.filter((o) => o.channelFlags === 0x2011).length, 0);
});

Deno.test("hvsock: a malformed packet or a broken host stream ends the connection with a rescind", async () => {
  const { guest, streams, server } = rig();
  guestConnect(guest, 1, 2);
  guestConnect(guest, 3, 4);
  await settle(guest);
  const a = guest.open(offerFor(guest, 2)!);
  const b = guest.open(offerFor(guest, 4)!);
  const bad = pipePacket(new Uint8Array(8));
  PipeDataHeader.set(bad, 0, "dataSize", 100);
  assert(a.send(bad));
  streams.get(4)!.failWrites = true;
  assert(b.send(pipePacket(new Uint8Array([1]))));
  await settle(guest);
  guest.receive();
  assertEquals(guest.rescinded.sort(), [a.relid, b.relid].sort());
  assert(drainGuest(a).fin && drainGuest(b).fin, "each got a FIN before the rescind");
  assertEquals(server.stats.internalErrors, 0);
});

Deno.test("hvsock: many connections at once, each its own channel", async () => {
  const { guest, streams } = rig();
  const chans = [];
  for (let i = 0; i < 20; i++) guestConnect(guest, 100 + i, 200 + i);
  await settle(guest);
  for (let i = 0; i < 20; i++) chans.push(guest.open(offerFor(guest, 200 + i)!));
  for (let i = 0; i < 20; i++) assert(chans[i]!.send(pipePacket(pattern(100, i))));
  await settle(guest);
  for (let i = 0; i < 20; i++) {
    assertEquals(new Uint8Array(streams.get(200 + i)!.written), pattern(100, i));
  }
});

Deno.test("hvsock: a guest connect offer nobody opens is rescinded after the open timeout", async () => {
  const { guest, streams } = rig({ openTimeoutMs: 20 });
  guestConnect(guest, 1, 2);
  await settle(guest);
  const offer = offerFor(guest, 2)!;
  assert(offer);
  await new Promise((r) => setTimeout(r, 40));
  guest.receive();
  assertEquals(guest.rescinded, [offer.relid]);
  assert(streams.get(2)!.closed);
});
