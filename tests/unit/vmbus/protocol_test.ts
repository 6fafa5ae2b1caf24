import { assertEquals } from "./assert.ts";
import type { FieldSpec, Layout } from "../../../src/util/layout.ts";
import * as P from "../../../src/vmbus/protocol.ts";

// Sizes from Linux include/linux/hyperv.h (sizeof of each __packed struct) and hyperv_vmbus.h.
const SIZES: [Layout<Record<string, FieldSpec>>, number][] = [
  [P.MessageHeader, 8],
  [P.OfferChannel, 0xc4],
  [P.RescindOffer, 12],
  [P.OpenChannel, 148],
  [P.OpenResult, 20],
  [P.CloseChannel, 12],
  [P.GpadlHeader, 20],
  [P.GpaRangeHeader, 8],
  [P.GpadlBody, 16],
  [P.GpadlCreated, 20],
  [P.GpadlTeardown, 16],
  [P.GpadlTorndown, 12],
  [P.RelidReleased, 12],
  [P.InitiateContact, 40],
  [P.InitiateContact2, 56],
  [P.VersionResponse, 16],
  [P.VersionResponse2, 20],
  [P.TlConnectRequest, 40],
  [P.TlConnectRequest2, 56],
  [P.TlConnectResult, 44],
  [P.ModifyChannel, 16],
  [P.ModifyChannelResponse, 16],
  [P.RingControl, 4096],
  [P.PacketDescriptor, 16],
  [P.GpaDirectHeader, 8],
  [P.TransferPageHeader, 8],
  [P.TransferPageRange, 8],
  [P.PacketTrailer, 8],
];

Deno.test("every VMBus layout has its C size", () => {
  for (const [layout, size] of SIZES) assertEquals(layout.size, size, layout.name);
});

function sample(type: FieldSpec["type"], seed: number): number | bigint | Uint8Array {
  switch (type) {
    case "u8":
      return (seed * 37 + 11) & 0xff;
    case "u16":
    case "u16be":
      return (seed * 7919 + 3) & 0xffff;
    case "u32":
    case "u32be":
      return ((seed * 2654435761) >>> 0) || 1;
    case "i32":
      return (seed * 2654435761) | 0;
    case "u64":
    case "u64be":
      return BigInt.asUintN(64, BigInt(seed) * 0x9e3779b97f4a7c15n + 1n);
    case "i64":
      return BigInt.asIntN(64, BigInt(seed) * 0x9e3779b97f4a7c15n);
    default: {
      const b = new Uint8Array(type.bytes);
      for (let i = 0; i < b.length; i++) b[i] = (seed + i * 13) & 0xff;
      return b;
    }
  }
}

// Layouts with overlapping views of one field are covered separately below.
const OVERLAPPING = new Set<unknown>([P.InitiateContact, P.InitiateContact2]);

Deno.test("every VMBus layout round-trips through encode/decode", () => {
  for (const [layout] of SIZES) {
    if (OVERLAPPING.has(layout)) continue;
    const value: Record<string, unknown> = {};
    let seed = 1;
    for (const [k, f] of Object.entries(layout.fields)) value[k] = sample(f.type, seed++);
    const bytes = layout.encode(value as never);
    assertEquals(bytes.length, layout.size);
    assertEquals(layout.decode(bytes), value, layout.name);
    // Too short: decode refuses instead of reading past the end.
    assertEquals(layout.decode(bytes.subarray(0, layout.size - 1)), undefined);
  }
});

Deno.test("OFFERCHANNEL fields sit where Linux reads them", () => {
  const b = P.OfferChannel.encode({
    msgtype: P.ChannelMessageType.OFFERCHANNEL,
    subChannelIndex: 3,
    childRelid: 0x11223344,
    monitorId: 0xff,
    isDedicatedInterrupt: 1,
    connectionId: 0x2005,
  });
  const dv = new DataView(b.buffer);
  assertEquals(dv.getUint32(0, true), 1);
  assertEquals(dv.getUint16(180, true), 3); // offer.sub_channel_index
  assertEquals(dv.getUint32(184, true), 0x11223344); // child_relid
  assertEquals(dv.getUint8(188), 0xff); // monitorid
  assertEquals(dv.getUint16(190, true), 1); // is_dedicated_interrupt
  assertEquals(dv.getUint32(192, true), 0x2005); // connection_id
});

Deno.test("INITIATE_CONTACT: interrupt page and msg_sint share bytes 16..23", () => {
  const a = P.InitiateContact.encode({
    msgtype: 14,
    versionRequested: P.VmbusVersion.WIN8_1,
    targetVcpu: 3,
    interruptPage: 0x12345000n,
    monitorPage1: 0x1000n,
    monitorPage2: 0x2000n,
  });
  const d = P.InitiateContact.decode(a)!;
  assertEquals(d.versionRequested, 0x30000);
  assertEquals(d.targetVcpu, 3);
  assertEquals(d.interruptPage, 0x12345000n);
  assertEquals(d.monitorPage2, 0x2000n);
  const b = P.InitiateContact.encode({
    msgtype: 14,
    versionRequested: P.VmbusVersion.WIN10_V5_3,
    msgSint: 2,
  });
  assertEquals(P.InitiateContact.decode(b)!.msgSint, 2);
  assertEquals(P.InitiateContact.decode(b)!.interruptPage, 2n);
  const c = P.InitiateContact2.encode({
    msgtype: 14,
    featureFlags: 8,
    clientId: new Uint8Array(16).fill(7),
  });
  assertEquals(P.InitiateContact2.decode(c)!.featureFlags, 8);
  assertEquals(P.InitiateContact2.decode(c)!.clientId, new Uint8Array(16).fill(7));
});

Deno.test("version numbers match Linux hyperv.h", () => {
  assertEquals(P.VmbusVersion.WS2008, 13);
  assertEquals(P.VmbusVersion.WIN7, 0x10001);
  assertEquals(P.VmbusVersion.WIN8, 0x20004);
  assertEquals(P.VmbusVersion.WIN8_1, 0x30000);
  assertEquals(P.VmbusVersion.WIN10, 0x40000);
  assertEquals(P.VmbusVersion.WIN10_V4_1, 0x40001);
  assertEquals(P.VmbusVersion.WIN10_V5, 0x50000);
  assertEquals(P.VmbusVersion.WIN10_V5_1, 0x50001);
  assertEquals(P.VmbusVersion.WIN10_V5_2, 0x50002);
  assertEquals(P.VmbusVersion.WIN10_V5_3, 0x50003);
  assertEquals(P.VmbusVersion.V6_0, 0x60000);
  assertEquals(P.SUPPORTED_VERSIONS.length, 11);
  assertEquals(P.formatVersion(P.VmbusVersion.WIN10_V5_3), "5.3");
  assertEquals(P.formatVersion(P.VmbusVersion.WS2008), "0.13");
});

Deno.test("message type names are an open enum", () => {
  assertEquals(P.messageTypeName(P.ChannelMessageType.GPADL_HEADER), "GPADL_HEADER");
  assertEquals(P.messageTypeName(24), "MODIFYCHANNEL_RESPONSE");
  assertEquals(P.messageTypeName(99), "UNKNOWN(99)");
});
