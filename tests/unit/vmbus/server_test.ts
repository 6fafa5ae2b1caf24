import { assert, assertEquals } from "./assert.ts";
import { cmd, EchoDevice } from "./echo_device.ts";
import {
  ChannelMessageType as Msg,
  GpadlBody,
  GpadlCreated,
  GpadlHeader,
  HvStatus,
  InitiateContact,
  MessageHeader,
  NtStatus,
  OpenChannel,
  OpenResult,
  SUPPORTED_VERSIONS,
  TlConnectRequest,
  TlConnectResult,
  VersionResponse,
  VersionResponse2,
  VmbusVersion,
} from "../../../src/vmbus/protocol.ts";
import type { HvsockConnectRequest, VmbusServerOptions } from "../../../src/vmbus/server.ts";
import { encodePacket } from "../../../src/vmbus/testing/guest_ring.ts";
import {
  type GuestOffer,
  LINUX_VERSIONS,
  LoopbackGuest,
} from "../../../src/vmbus/testing/loopback_guest.ts";

function setup(
  devices: EchoDevice[] = [new EchoDevice()],
  server: Partial<VmbusServerOptions> = {},
) {
  const { guest } = LoopbackGuest.create({ devices, server });
  return { guest, server: guest.server, devices };
}

/** Linux's bring-up: connect at the highest version, request offers. */
function linuxUp(
  devices: EchoDevice[] = [new EchoDevice()],
  server: Partial<VmbusServerOptions> = {},
) {
  const s = setup(devices, server);
  assertEquals(s.guest.connect(), VmbusVersion.WIN10_V5_3);
  const offers = s.guest.requestOffers();
  return { ...s, offers };
}

function noBugs(server: { stats: { internalErrors: number } }): void {
  assertEquals(server.stats.internalErrors, 0, "internal errors");
}

Deno.test("Linux 6.1 sequence: contact 5.3, offers, GPADL with bodies, open, packets, close, unload", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  assertEquals(guest.messageConnectionId, 1);
  assertEquals(offers.length, 1);
  const o = offers[0]!;
  assertEquals(o.relid, 1);
  assertEquals(o.classId, dev.classId);
  assertEquals(o.instanceId, dev.instanceId);
  assertEquals(o.subChannelIndex, 0);
  assertEquals(o.connectionId, 0x2001);
  assert(o.dedicatedInterrupt);
  assert(!o.monitorAllocated);
  assertEquals(o.monitorId, 0xff);
  assertEquals(o.userDefined.subarray(0, 4), new Uint8Array([1, 2, 3, 0]));
  // 40 + 40 pages: the ring GPADL needs a header and two bodies.
  const ch = guest.open(o, {
    sendPages: 40,
    recvPages: 40,
    targetVp: 2,
    userData: new Uint8Array([9]),
  });
  assertEquals(dev.opened.length, 1);
  const hostCh = dev.opened[0]!;
  assertEquals(hostCh.targetVp, 2);
  assertEquals(hostCh.openParams!.userData[0], 9);
  assertEquals(hostCh.ringSizes, { incoming: 39 * 4096, outgoing: 39 * 4096 });
  for (let i = 0; i < 50; i++) {
    assert(
      ch.send(new Uint8Array(100 + i).fill(i), {
        completionRequested: true,
        transactionId: BigInt(i + 1),
      }),
    );
    const replies = ch.receive();
    assertEquals(replies.length, 1);
    assertEquals(replies[0]!.type, 11);
    assertEquals(replies[0]!.transactionId, BigInt(i + 1));
    assertEquals(replies[0]!.payload.subarray(0, 100 + i), new Uint8Array(100 + i).fill(i));
  }
  // The first reply went into an empty ring: the guest was interrupted on VP 2, flag = relid.
  assert(ch.takeInterrupt());
  assertEquals(guest.synic.signals[0], { vp: 2, sint: 2, flag: 1 });
  assert(guest.close(ch));
  assertEquals(dev.closed, [hostCh]);
  assertEquals(server.gpadlCount, 0);
  assert(guest.unload());
  assertEquals(server.connection, undefined);
  // Reconnect (kexec): same relids, channels usable again.
  assertEquals(guest.connect(), VmbusVersion.WIN10_V5_3);
  const again = guest.requestOffers();
  assertEquals(again.map((x) => x.relid), [1]);
  const ch2 = guest.open(again[0]!);
  assert(ch2.send(cmd("hi"), { completionRequested: true }));
  assertEquals(ch2.receive().length, 1);
  noBugs(server);
  assertEquals(server.stats.protocolErrors, 0);
});

Deno.test("every version from 0.13 to 6.0 is accepted as requested", () => {
  for (const v of SUPPORTED_VERSIONS) {
    const { guest, server } = setup();
    assert(guest.initiateContact(v), `version ${v.toString(16)}`);
    const resp = guest.log.find((m) => m.type === Msg.VERSION_RESPONSE)!;
    if (v >= VmbusVersion.V6_0) {
      assertEquals(resp.payload.length, VersionResponse2.size);
      assertEquals(VersionResponse2.decode(resp.payload)!.supportedFeatures, 0);
    } else {
      assertEquals(resp.payload.length, VersionResponse.size);
    }
    // 5.0+: use connection id 1 from now on; before: the field echoes the version.
    assertEquals(
      VersionResponse.decode(resp.payload)!.msgConnId,
      v >= VmbusVersion.WIN10_V5 ? 1 : v,
    );
    assertEquals(server.connection!.version, v);
    const offers = guest.requestOffers();
    assertEquals(offers[0]!.dedicatedInterrupt, v >= VmbusVersion.WIN7);
    assertEquals(offers[0]!.connectionId, v >= VmbusVersion.WIN7 ? 0x2001 : 2);
    // A packet round trip works at every version (interrupt page before 2.4).
    const ch = guest.open(offers[0]!);
    assert(ch.send(cmd("ping"), { completionRequested: true }));
    assertEquals(ch.receive().length, 1);
    assert(ch.takeInterrupt(), `interrupt at ${v.toString(16)}`);
    noBugs(server);
  }
});

Deno.test("unsupported versions are refused; Linux walks down to what the host allows", () => {
  const { guest, server } = setup([new EchoDevice()], { maxVersion: VmbusVersion.WIN10 });
  assertEquals(guest.connect(), VmbusVersion.WIN10);
  const refused = guest.log.filter((m) =>
    m.type === Msg.VERSION_RESPONSE && !VersionResponse.decode(m.payload)!.versionSupported
  );
  assertEquals(refused.length, LINUX_VERSIONS.indexOf(VmbusVersion.WIN10));
  for (const bogus of [0, 0x70000, 0x50004, 0xffffffff]) {
    assert(!guest.initiateContact(bogus));
    assertEquals(server.connection, undefined);
  }
  noBugs(server);
});

Deno.test("replies go to the VP named in INITIATE_CONTACT from 3.0, to VP 0 before", () => {
  for (
    const [v, want] of [[VmbusVersion.WIN10_V5_3, 3], [VmbusVersion.WIN8_1, 3], [
      VmbusVersion.WIN8,
      0,
    ]] as const
  ) {
    const { guest, server } = setup();
    const msg = InitiateContact.encode({
      msgtype: Msg.INITIATE_CONTACT,
      versionRequested: v,
      targetVcpu: 3,
    });
    if (v >= VmbusVersion.WIN10_V5) InitiateContact.set(msg, 0, "msgSint", 2);
    assertEquals(guest.post(msg, v >= VmbusVersion.WIN10_V5 ? 4 : 1), HvStatus.SUCCESS);
    assert(guest.synic.hasMessage(want, 2), `version ${v.toString(16)}`);
    assertEquals(server.connection!.targetVp, want);
  }
  // A VP that does not exist: failed connection (2.4+ can say so).
  const { guest, server } = setup();
  const msg = InitiateContact.encode({
    msgtype: Msg.INITIATE_CONTACT,
    versionRequested: VmbusVersion.WIN8_1,
    targetVcpu: 9,
  });
  guest.post(msg);
  const r = VersionResponse.decode(guest.expect(Msg.VERSION_RESPONSE)!.payload)!;
  assertEquals([r.versionSupported, r.connectionState], [1, 2]);
  assertEquals(server.connection, undefined);
  // Only one monitor page: failed. A SINT other than 2: unsupported.
  const one = InitiateContact.encode({
    msgtype: Msg.INITIATE_CONTACT,
    versionRequested: VmbusVersion.WIN10,
    monitorPage1: 0x200000n,
  });
  guest.post(one);
  assertEquals(
    VersionResponse.decode(guest.expect(Msg.VERSION_RESPONSE)!.payload)!.connectionState,
    2,
  );
  const sint5 = InitiateContact.encode({
    msgtype: Msg.INITIATE_CONTACT,
    versionRequested: VmbusVersion.WIN10_V5_3,
    msgSint: 5,
  });
  guest.post(sint5, 4);
  const m = guest.synic.take(0, 5)!;
  assertEquals(VersionResponse.decode(m.payload)!.versionSupported, 0);
  // 5.1+ with a VTL other than 0: unsupported.
  const vtl2 = InitiateContact.encode({
    msgtype: Msg.INITIATE_CONTACT,
    versionRequested: VmbusVersion.WIN10_V5_3,
    msgSint: 2,
    msgVtl: 2,
  });
  guest.post(vtl2, 4);
  assertEquals(
    VersionResponse.decode(guest.expect(Msg.VERSION_RESPONSE)!.payload)!.versionSupported,
    0,
  );
  // Pre-2.4 interrupt page outside RAM: refused.
  const badPage = InitiateContact.encode({
    msgtype: Msg.INITIATE_CONTACT,
    versionRequested: VmbusVersion.WIN7,
    interruptPage: 0x5000n,
  });
  guest.post(badPage);
  assertEquals(
    VersionResponse.decode(guest.expect(Msg.VERSION_RESPONSE)!.payload)!.versionSupported,
    0,
  );
  noBugs(server);
});

Deno.test("transport errors get HV statuses; protocol garbage is dropped and counted", () => {
  const { guest, server } = setup();
  assertEquals(
    server.onPostMessage(7, 1, MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS })),
    HvStatus.INVALID_CONNECTION_ID,
  );
  assertEquals(
    server.onPostMessage(1, 2, MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS })),
    HvStatus.INVALID_PARAMETER,
  );
  assertEquals(server.onPostMessage(1, 1, new Uint8Array(241)), HvStatus.INVALID_PARAMETER);
  assertEquals(server.onSignalEvent(0x2001, 0), HvStatus.INVALID_CONNECTION_ID);
  assertEquals(server.onSignalEvent(5, 0), HvStatus.INVALID_CONNECTION_ID);
  const before = server.stats.protocolErrors;
  // Before contact: ignored. Short, unknown, host-only types: ignored.
  for (
    const m of [
      MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS }),
      new Uint8Array(4),
      MessageHeader.encode({ msgtype: 99 }),
      MessageHeader.encode({ msgtype: Msg.OFFERCHANNEL }),
      new Uint8Array([14, 0, 0, 0, 0, 0, 0, 0]), // INITIATE_CONTACT, truncated
    ]
  ) {
    assertEquals(guest.post(m), HvStatus.SUCCESS);
  }
  assertEquals(guest.receive().length, 0);
  assertEquals(server.stats.protocolErrors, before + 5);
  guest.connect();
  guest.requestOffers();
  // REQUESTOFFERS twice, unknown relids, wrong-state messages: no effect, no reply.
  guest.post(MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS }));
  guest.post(OpenChannel.encode({ msgtype: Msg.OPENCHANNEL, childRelid: 77, openId: 1 }));
  guest.post(new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])); // CLOSECHANNEL of a closed channel
  guest.release(1); // RELID_RELEASED of a channel that was not rescinded
  assertEquals(guest.receive().length, 0);
  assertEquals(server.channels().length, 1);
  noBugs(server);
});

Deno.test("GPADL validation answers GPADL_CREATED with a failure and keeps nothing", () => {
  const { guest, server, offers } = linuxUp();
  const relid = offers[0]!.relid;
  const header = (
    o: { relid?: number; gpadl: number; buflen: number; count: number; data: number[] },
  ) => {
    const msg = new Uint8Array(GpadlHeader.size + o.data.length * 8);
    GpadlHeader.encode({
      msgtype: Msg.GPADL_HEADER,
      childRelid: o.relid ?? relid,
      gpadl: o.gpadl,
      rangeBufLen: o.buflen,
      rangeCount: o.count,
    }, msg);
    const dv = new DataView(msg.buffer);
    o.data.forEach((v, i) => dv.setBigUint64(GpadlHeader.size + i * 8, BigInt(v), true));
    guest.post(msg);
    const m = guest.expect(Msg.GPADL_CREATED);
    return m ? GpadlCreated.decode(m.payload)!.creationStatus : undefined;
  };
  const range = (count: number, offset = 0) => count + offset * 2 ** 32;
  const ram = 0x100000 / 4096;
  // Good one first, so "duplicate" has something to collide with.
  assertEquals(header({ gpadl: 1, buflen: 16, count: 1, data: [range(4096), ram + 10] }), 0);
  assertEquals(server.gpadlCount, 1);
  const bad: [string, Parameters<typeof header>[0]][] = [
    ["duplicate handle", { gpadl: 1, buflen: 16, count: 1, data: [range(4096), ram + 11] }],
    ["unknown relid", { relid: 55, gpadl: 2, buflen: 16, count: 1, data: [range(4096), ram] }],
    ["zero ranges", { gpadl: 3, buflen: 16, count: 0, data: [range(4096), ram] }],
    ["buflen not 8-aligned", { gpadl: 4, buflen: 20, count: 1, data: [range(4096), ram, 0] }],
    ["byte count needs more PFNs than given", {
      gpadl: 5,
      buflen: 16,
      count: 1,
      data: [range(8192), ram],
    }],
    ["overflowing byte count", {
      gpadl: 6,
      buflen: 16,
      count: 1,
      data: [range(0xffffffff, 4095), ram],
    }],
    ["offset past the page", { gpadl: 7, buflen: 16, count: 1, data: [range(1, 4096), ram] }],
    ["PFN outside RAM", { gpadl: 8, buflen: 16, count: 1, data: [range(4096), 5] }],
    ["huge PFN", { gpadl: 9, buflen: 16, count: 1, data: [range(4096), 2 ** 52] }],
    ["second range missing", { gpadl: 10, buflen: 16, count: 2, data: [range(4096), ram] }],
  ];
  for (const [name, h] of bad) assertEquals(header(h), NtStatus.UNSUCCESSFUL, name);
  assertEquals(server.gpadlCount, 1);
  // A body for an unknown handle, or after completion: ignored.
  const body = (gpadl: number, pfns: number[]) => {
    const m = new Uint8Array(GpadlBody.size + pfns.length * 8);
    GpadlBody.encode({ msgtype: Msg.GPADL_BODY, gpadl }, m);
    pfns.forEach((p, i) =>
      new DataView(m.buffer).setBigUint64(GpadlBody.size + i * 8, BigInt(p), true)
    );
    guest.post(m);
  };
  body(999, [ram]);
  body(1, [ram]);
  assertEquals(guest.receive().length, 0);
  // Header promising 3 pages, bodies delivering a bad PFN: failure when complete.
  assertEquals(
    header({ gpadl: 20, buflen: 32, count: 1, data: [range(3 * 4096), ram] }),
    undefined,
  );
  body(20, [ram + 1]);
  assertEquals(guest.receive().length, 0);
  body(20, [1]);
  assertEquals(
    GpadlCreated.decode(guest.expect(Msg.GPADL_CREATED)!.payload)!.creationStatus,
    NtStatus.UNSUCCESSFUL,
  );
  assertEquals(server.gpadlCount, 1);
  // Teardown of unknown / mismatched relid: ignored; of the good one: TORNDOWN.
  assert(!guest.teardownGpadl(relid, 999));
  assert(!guest.teardownGpadl(relid + 1, 1));
  assert(guest.teardownGpadl(relid, 1));
  assertEquals(server.gpadlCount, 0);
  noBugs(server);
});

Deno.test("a GPADL in use by an open ring is torn down only after the channel closes", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!);
  assert(!guest.teardownGpadl(ch.relid, ch.gpadl));
  assertEquals(server.gpadlCount, 1);
  // The channel still works.
  assert(ch.send(cmd("x"), { completionRequested: true }));
  assertEquals(ch.receive().length, 1);
  guest.post(new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0, ch.relid, 0, 0, 0]));
  assert(guest.torndown(ch.gpadl));
  assertEquals(server.gpadlCount, 0);
  noBugs(server);
});

Deno.test("a device holding a GPADL is asked to release it before TORNDOWN", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!);
  const buf = guest.establishGpadl(ch.relid, guest.pages.alloc(3, true));
  assertEquals(buf.status, 0);
  ch.send(cmd(`hold:${buf.handle}`));
  assertEquals(ch.receive()[0]!.payload[0], 1);
  // Another device's channel cannot take it.
  assert(guest.teardownGpadl(ch.relid, buf.handle));
  assertEquals(dev.teardownRequests, [buf.handle]);
  noBugs(server);
});

Deno.test("OPENCHANNEL failures answer with a failure status; the channel stays usable", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev, new EchoDevice(2)]);
  const o = offers[0]!;
  const open = (fields: Record<string, number>) => {
    guest.post(
      OpenChannel.encode({ msgtype: Msg.OPENCHANNEL, childRelid: o.relid, openId: 42, ...fields }),
    );
    const m = guest.expect(Msg.OPENCHANNEL_RESULT);
    return m ? OpenResult.decode(m.payload)!.status : undefined;
  };
  const pages = guest.pages.alloc(8);
  const ring = guest.establishGpadl(o.relid, pages);
  const other = guest.establishGpadl(offers[1]!.relid, guest.pages.alloc(8));
  const bad = NtStatus.UNSUCCESSFUL;
  assertEquals(open({ ringbufferGpadlHandle: 12345, downstreamRingbufferPageOffset: 4 }), bad);
  assertEquals(
    open({ ringbufferGpadlHandle: other.handle, downstreamRingbufferPageOffset: 4 }),
    bad,
  );
  for (const off of [0, 1, 7, 8, 100]) {
    assertEquals(
      open({ ringbufferGpadlHandle: ring.handle, downstreamRingbufferPageOffset: off }),
      bad,
    );
  }
  assertEquals(
    open({ ringbufferGpadlHandle: ring.handle, downstreamRingbufferPageOffset: 4, targetVp: 4 }),
    bad,
  );
  dev.refuseOpen = true;
  assertEquals(
    open({ ringbufferGpadlHandle: ring.handle, downstreamRingbufferPageOffset: 4 }),
    bad,
  );
  dev.refuseOpen = false;
  // A corrupt ring header (write index past the end) refuses the open.
  guest.memory.writeU32(pages[4]!, 0x7fff0000);
  assertEquals(
    open({ ringbufferGpadlHandle: ring.handle, downstreamRingbufferPageOffset: 4 }),
    bad,
  );
  guest.memory.writeU32(pages[4]!, 0);
  assertEquals(open({ ringbufferGpadlHandle: ring.handle, downstreamRingbufferPageOffset: 4 }), 0);
  assertEquals(
    open({ ringbufferGpadlHandle: ring.handle, downstreamRingbufferPageOffset: 4 }),
    bad,
  );
  assertEquals(dev.opened.length, 1);
  noBugs(server);
});

Deno.test("message slot busy: replies queue, then flow in order; too many queued -> INSUFFICIENT_BUFFERS", () => {
  const { guest, server } = setup([new EchoDevice(1), new EchoDevice(2), new EchoDevice(3)], {
    maxQueuedMessages: 4,
  });
  guest.connect();
  guest.synic.refuseAll = true;
  guest.post(MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS }));
  assertEquals(server.queuedMessages, 4); // 3 offers + ALLOFFERS_DELIVERED
  assertEquals(
    guest.post(MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS })),
    HvStatus.INSUFFICIENT_BUFFERS,
  );
  guest.synic.refuseAll = false;
  server.pump();
  const types = guest.receive().map((m) => m.type);
  assertEquals(types, [
    Msg.OFFERCHANNEL,
    Msg.OFFERCHANNEL,
    Msg.OFFERCHANNEL,
    Msg.ALLOFFERS_DELIVERED,
  ]);
  assertEquals(server.queuedMessages, 0);
  // UNLOAD is always accepted, and drops what is queued.
  guest.synic.refuseAll = true;
  for (let i = 0; i < 4; i++) guest.post(MessageHeader.encode({ msgtype: 99 }));
  guest.post(TlConnectRequest.encode({ msgtype: Msg.TL_CONNECT_REQUEST }));
  guest.synic.refuseAll = false;
  assert(guest.unload());
  noBugs(server);
});

Deno.test("hot-add and rescind at run time; a re-added identity waits for the release", () => {
  const a = new EchoDevice(1);
  const { guest, server, offers } = linuxUp([a]);
  const ch = guest.open(offers[0]!);
  const b = new EchoDevice(2);
  server.addDevice(b);
  const added = [...guest.receive()].filter((m) => m.type === Msg.OFFERCHANNEL);
  assertEquals(added.length, 1);
  assertEquals(guest.offers.get(2)!.instanceId, b.instanceId);
  // Remove the open device: it sees onClose, the guest sees a rescind.
  assert(server.removeDevice(a));
  assert(!server.removeDevice(a));
  assertEquals(a.closed.length, 1);
  guest.receive();
  assertEquals(guest.rescinded, [ch.relid]);
  assert(!ch.send(cmd("late"), { completionRequested: true }) || ch.receive().length === 0);
  // Re-add the same identity before the guest released the old relid: held back.
  const a2 = new EchoDevice(1);
  server.addDevice(a2);
  assertEquals(guest.receive().filter((m) => m.type === Msg.OFFERCHANNEL).length, 0);
  // Linux: close (CLOSECHANNEL, no teardown after rescind), then RELID_RELEASED.
  guest.post(new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0, ch.relid, 0, 0, 0]));
  guest.release(ch.relid);
  const reoffer = guest.receive().filter((m) => m.type === Msg.OFFERCHANNEL);
  assertEquals(reoffer.length, 1);
  assertEquals(guest.offers.get(1)!.instanceId, a2.instanceId); // relid 1 reused
  assertEquals(server.gpadlCount, 0); // the old ring GPADL went with the relid
  // Duplicate identity is a host bug.
  let threw = false;
  try {
    server.addDevice(new EchoDevice(2));
  } catch {
    threw = true;
  }
  assert(threw);
  noBugs(server);
});

Deno.test("sub-channels: offered on device request, usable, rescinded when the primary closes", () => {
  const dev = new EchoDevice(1, 3);
  const { guest, server, offers } = linuxUp([dev]);
  const primary = guest.open(offers[0]!);
  primary.send(cmd("sub:4"));
  assertEquals(primary.receive()[0]!.payload[0], 0); // over the device's limit
  primary.send(cmd("sub:2"));
  assertEquals(primary.receive()[0]!.payload[0], 1);
  const subs = guest.subChannelOffers(offers[0]!);
  assertEquals(subs.map((s) => s.subChannelIndex), [1, 2]);
  assertEquals(subs.map((s) => s.relid), [2, 3]);
  const s1 = guest.open(subs[0]!);
  const s2 = guest.open(subs[1]!, { targetVp: 1 });
  assert(s1.send(cmd("a"), { completionRequested: true }));
  assert(s2.send(cmd("b"), { completionRequested: true }));
  assertEquals(s1.receive().length, 1);
  assertEquals(s2.receive().length, 1);
  assertEquals(dev.opened.map((c) => c.subChannelIndex), [0, 1, 2]);
  assert(dev.opened[1]!.primary === dev.opened[0]);
  // Asking again for fewer is a no-op.
  primary.send(cmd("sub:1"));
  primary.receive();
  assertEquals(guest.subChannelOffers(offers[0]!).length, 2);
  // Linux closes sub-channels first, then the primary; the host then rescinds the sub-channels.
  assert(guest.close(s1));
  assert(guest.close(primary));
  guest.receive();
  assertEquals(guest.rescinded.sort(), [2, 3]);
  assertEquals(dev.closed.length, 3); // s1, primary, and s2 (still open, closed by the host)
  guest.release(2);
  guest.release(3);
  assertEquals(server.channels().map((c) => c.relid), [1]);
  // Reopen: sub-channels can be requested again, with fresh relids.
  const again = guest.open(offers[0]!);
  again.send(cmd("sub:1"));
  again.receive();
  assertEquals(guest.subChannelOffers(offers[0]!).map((s) => s.relid), [2]);
  noBugs(server);
});

Deno.test("sub-channels need protocol 2.4", () => {
  const dev = new EchoDevice(1, 2);
  const { guest, server } = setup([dev]);
  guest.connect([VmbusVersion.WIN7]);
  const [o] = guest.requestOffers();
  const ch = guest.open(o!);
  ch.send(cmd("sub:1"));
  assertEquals(ch.receive()[0]!.payload[0], 0);
  noBugs(server);
});

Deno.test("MODIFYCHANNEL retargets interrupts; acknowledged from 5.3", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!);
  assertEquals(guest.modify(ch.relid, 3), 0);
  assertEquals(dev.retargets, [3]);
  ch.targetVp = 3;
  ch.send(cmd("x"), { completionRequested: true });
  ch.receive();
  assert(ch.takeInterrupt());
  assertEquals(guest.modify(ch.relid, 4), NtStatus.UNSUCCESSFUL); // no VP 4
  assertEquals(guest.modify(99, 1), NtStatus.UNSUCCESSFUL);
  noBugs(server);
  // 5.2: no acknowledgement. 4.0: not a valid message.
  for (const [v, errs] of [[VmbusVersion.WIN10_V5_2, 0], [VmbusVersion.WIN10, 1]] as const) {
    const s = setup([new EchoDevice()]);
    s.guest.connect([v]);
    const c = s.guest.open(s.guest.requestOffers()[0]!);
    const before = s.server.stats.protocolErrors;
    assertEquals(s.guest.modify(c.relid, 1), undefined);
    assertEquals(s.server.stats.protocolErrors - before, errs);
  }
});

Deno.test("flow control: a full ring blocks sends until the guest reads; onWritable resumes", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!, { sendPages: 2, recvPages: 2 });
  // 10 x 1000 bytes into a 4 KiB ring: 3 fit, 7 wait.
  ch.send(cmd("burst:10:1000"));
  assertEquals(dev.backlog.length, 7);
  assert(dev.opened[0]!.isBlocked);
  let got = 0;
  for (let round = 0; round < 20 && got < 10; round++) got += ch.receive().length;
  assertEquals(got, 10);
  assertEquals(dev.backlog.length, 0);
  assert(dev.writable > 0);
  noBugs(server);
});

Deno.test("poll() serves guests that never signal when they free ring space", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!, { sendPages: 2, recvPages: 2 });
  ch.send(cmd("burst:5:1000"));
  assertEquals(dev.backlog.length, 2);
  // An old guest reads without looking at pending_send_sz, so it never signals.
  while (ch.in.read().packet);
  assertEquals(dev.writable, 0);
  server.poll();
  assertEquals(dev.writable, 1);
  assertEquals(dev.backlog.length, 0);
  noBugs(server);
});

Deno.test("backpressure: a packet the device cannot answer stays in the ring until there is room", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!, { sendPages: 4, recvPages: 2 });
  // Each echo is ~1 KiB; the host->guest ring holds 3. Send 8 without reading replies.
  for (let i = 0; i < 8; i++) {
    assert(ch.send(new Uint8Array(1000).fill(i), { completionRequested: true }));
  }
  assertEquals(dev.received.length, 4); // 3 answered, the 4th is held back
  const replies = [];
  for (let round = 0; round < 10 && replies.length < 8; round++) replies.push(...ch.receive());
  assertEquals(replies.map((r) => r.payload[0]), [0, 1, 2, 3, 4, 5, 6, 7]);
  // Each packet was delivered once per attempt; all 8 eventually answered.
  assertEquals(new Set(dev.received.map((r) => r.payload[0])).size, 8);
  noBugs(server);
});

Deno.test("a corrupt ring stops only its channel", () => {
  const a = new EchoDevice(1);
  const b = new EchoDevice(2);
  const { guest, server, offers } = linuxUp([a, b]);
  const ca = guest.open(offers[0]!);
  const cb = guest.open(offers[1]!);
  // len8 < offset8 on channel a.
  ca.sendRaw(
    encodePacket(6, 0, 1n, new Uint8Array(0), new Uint8Array(8)).map((v, i) => (i === 4 ? 1 : v)),
  );
  assertEquals(server.stats.ringErrors, 1);
  assertEquals(a.closed.length, 1);
  assert(a.opened[0]!.isBroken);
  assertEquals(server.channels().find((c) => c.relid === ca.relid)!.broken, true);
  // More signals on the broken channel do nothing; b works.
  ca.signalHost();
  assert(cb.send(cmd("ok"), { completionRequested: true }));
  assertEquals(cb.receive().length, 1);
  // The guest closes it; no second onClose; the GPADL goes.
  assert(guest.close(ca));
  assertEquals(a.closed.length, 1);
  noBugs(server);
});

Deno.test("device exceptions are contained and counted", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!);
  dev.throwOnPacket = true;
  ch.send(cmd("boom"), { completionRequested: true });
  assertEquals(server.stats.deviceErrors, 1);
  dev.throwOnPacket = false;
  ch.send(cmd("fine"), { completionRequested: true });
  assertEquals(ch.receive().length, 1);
  noBugs(server);
});

Deno.test("a long burst is drained in slices through the event loop", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev], { maxPacketsPerDrain: 4 });
  const ch = guest.open(offers[0]!, { sendPages: 8, recvPages: 8 });
  ch.out.ring.interruptMask = 0;
  // Write 10 packets, signal once.
  for (let i = 0; i < 10; i++) {
    ch.out.write(encodePacket(6, 0, BigInt(i), new Uint8Array(0), new Uint8Array(8)));
  }
  ch.signalHost();
  assertEquals(dev.received.length, 4);
  guest.runDeferred();
  assertEquals(dev.received.length, 10);
  noBugs(server);
});

Deno.test("a guest blocked on its full ring sees space and a signal before the read pass ends", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  const ch = guest.open(offers[0]!, { sendPages: 2, recvPages: 4 });
  const readIndexSeen: number[] = [];
  dev.onPacket = () => {
    readIndexSeen.push(ch.out.ring.readIndex);
    return true;
  };
  const pkt = encodePacket(6, 0, 1n, new Uint8Array(0), new Uint8Array(1000));
  while (ch.out.write(pkt) !== "full");
  // Linux sets pending_send_sz to what it waits for: room for two more packets.
  ch.out.ring.pendingSendSize = 2 * (pkt.length + 8);
  ch.takeInterrupt();
  ch.signalHost();
  // Published after every packet while the guest waits; signalled once, at the crossing.
  assertEquals(readIndexSeen, [0, 1024, 2048]);
  assertEquals(ch.out.ring.readIndex, 3072);
  assert(ch.takeInterrupt());
  noBugs(server);
});

Deno.test("the host does not interrupt a guest that masked its ring", () => {
  const { guest, server, offers } = linuxUp();
  const ch = guest.open(offers[0]!);
  ch.in.ring.interruptMask = 1;
  ch.send(cmd("x"), { completionRequested: true });
  assert(!ch.takeInterrupt());
  assertEquals(ch.receive().length, 1);
  noBugs(server);
});

Deno.test("hv_sock connect requests go to the handler, or are refused", () => {
  const seen: HvsockConnectRequest[] = [];
  const ep = "11111111-2222-3333-4444-555555555555";
  const svc = "00000016-facb-11e6-bd58-64006a7986d3";
  const req = TlConnectRequest.encode({
    msgtype: Msg.TL_CONNECT_REQUEST,
    guestEndpointId: new Uint8Array([
      0x11,
      0x11,
      0x11,
      0x11,
      0x22,
      0x22,
      0x33,
      0x33,
      0x44,
      0x44,
      0x55,
      0x55,
      0x55,
      0x55,
      0x55,
      0x55,
    ]),
  });
  new DataView(req.buffer).setUint32(24, 0x16, true);
  const a = linuxUp([new EchoDevice()], { onHvsockConnect: (r) => seen.push(r) });
  a.guest.post(req);
  assertEquals(seen.length, 1);
  assertEquals(seen[0]!.endpointId, ep);
  assertEquals(seen[0]!.serviceId.slice(0, 8), svc.slice(0, 8));
  assertEquals(a.guest.receive().length, 0);
  a.server.refuseHvsockConnect(seen[0]!);
  assertEquals(
    TlConnectResult.decode(a.guest.expect(Msg.TL_CONNECT_RESULT)!.payload)!.status,
    NtStatus.CONNECTION_REFUSED,
  );
  const b = linuxUp();
  b.guest.post(req);
  assertEquals(
    TlConnectResult.decode(b.guest.expect(Msg.TL_CONNECT_RESULT)!.payload)!.status,
    NtStatus.CONNECTION_REFUSED,
  );
  noBugs(a.server);
  noBugs(b.server);
});

Deno.test("reset() drops the connection without telling the guest; a new contact starts over", () => {
  const dev = new EchoDevice();
  const { guest, server, offers } = linuxUp([dev]);
  guest.open(offers[0]!);
  server.reset();
  assertEquals(dev.closed.length, 1);
  assertEquals(server.connection, undefined);
  assertEquals(server.gpadlCount, 0);
  assertEquals(server.channels().length, 0);
  assertEquals(guest.receive().length, 0);
  // A fresh INITIATE_CONTACT while connected also resets (no UNLOAD first, e.g. after a crash).
  guest.connect();
  guest.open(guest.requestOffers()[0]!);
  guest.connect();
  assertEquals(dev.closed.length, 2);
  assertEquals(guest.requestOffers().length, 1);
  noBugs(server);
});

Deno.test("offers before REQUESTOFFERS are only remembered; the order is registration order", () => {
  const devs = [new EchoDevice(3), new EchoDevice(1), new EchoDevice(2)];
  const { guest, server } = setup(devs);
  guest.connect();
  server.addDevice(new EchoDevice(4));
  assertEquals(guest.receive().length, 0);
  const offers: GuestOffer[] = guest.requestOffers();
  assertEquals(offers.map((o) => o.instanceId.slice(-1)), ["3", "1", "2", "4"]);
  assertEquals(offers.map((o) => o.relid), [1, 2, 3, 4]);
  noBugs(server);
});
