import { assert } from "./harness.ts";
import type { FieldSpec, Layout } from "../../../../src/util/layout.ts";
import * as P from "../../../../src/devices/ic/protocol.ts";
import { parseGuid } from "../../../../src/vmbus/guid.ts";

// sizeof of each __packed struct in Linux include/linux/hyperv.h and include/uapi/linux/hyperv.h.
const SIZES: [Layout<Record<string, FieldSpec>>, number][] = [
  [P.PipeHeader, 8],
  [P.IcMessageHeader, 20],
  [P.IcVersionLayout, 4],
  [P.NegotiateMessage, 8],
  [P.ShutdownMessage, 2060],
  [P.HeartbeatMessage, 40],
  [P.TimesyncMessage, 25],
  [P.TimesyncRefMessage, 22],
  [P.KvpHeader, 4],
  [P.KvpGetSetMessage, 4 + 2572],
  [P.KvpEnumerateMessage, 4 + 4 + 2572],
  [P.KvpDeleteMessage, 4 + 4 + 512],
];

Deno.test("every IC layout has its C size", () => {
  for (const [layout, size] of SIZES) assert.equal(layout.size, size, layout.name);
  assert.equal(P.ICMSG_HDR, 28);
  assert.equal(P.KVP_MESSAGE_SIZE, 2580);
});

Deno.test("icmsg_hdr fields sit at the C offsets", () => {
  const b = P.IcMessageHeader.encode({
    frameworkMajor: 3,
    frameworkMinor: 0,
    msgType: P.IcMessageType.SHUTDOWN,
    messageMajor: 3,
    messageMinor: 2,
    msgSize: 2060,
    status: P.IcStatus.E_FAIL,
    transactionId: 9,
    flags: P.IcHeaderFlags.TRANSACTION | P.IcHeaderFlags.RESPONSE,
  });
  assert.deepEqual(
    [...b],
    [3, 0, 0, 0, 3, 0, 3, 0, 2, 0, 0x0c, 0x08, 0x05, 0x40, 0x00, 0x80, 9, 5, 0, 0],
  );
});

Deno.test("class GUIDs match Linux's GUID_INIT bytes", () => {
  // HV_SHUTDOWN_GUID: GUID_INIT(0x0e0b6031, 0x5213, 0x4934, 0x81, 0x8b, 0x38, 0xd9, 0x0c, 0xed, 0x39, 0xdb)
  assert.deepEqual(
    [...parseGuid(P.IcClassId.SHUTDOWN)],
    [
      0x31,
      0x60,
      0x0b,
      0x0e,
      0x13,
      0x52,
      0x34,
      0x49,
      0x81,
      0x8b,
      0x38,
      0xd9,
      0x0c,
      0xed,
      0x39,
      0xdb,
    ],
  );
  assert.deepEqual(
    [...parseGuid(P.IcClassId.KVP)],
    [
      0xe7,
      0xf4,
      0xa0,
      0xa9,
      0x45,
      0x5a,
      0x96,
      0x4d,
      0xb8,
      0x27,
      0x8a,
      0x84,
      0x1e,
      0x8c,
      0x03,
      0xe6,
    ],
  );
  assert.equal(P.IcClassId.TIMESYNC, "9527e630-d0ae-497b-adce-e80ab0175caf");
  assert.equal(P.IcClassId.HEARTBEAT, "57164f39-9115-4e78-ab55-382f3bd5422d");
});

Deno.test("UTF-16 strings: terminator counted, limits enforced, hostile sizes clamped", () => {
  const k = P.encodeUtf16z("Ab€", 512)!;
  assert.deepEqual([...k], [0x41, 0, 0x62, 0, 0xac, 0x20, 0, 0]);
  assert.equal(P.encodeUtf16z("x".repeat(255), 512)!.length, 512);
  assert.equal(P.encodeUtf16z("x".repeat(256), 512), undefined);
  assert.equal(P.decodeUtf16z(k, k.length), "Ab€");
  assert.equal(P.decodeUtf16z(k, 0xffff_ffff), "Ab€");
  assert.equal(P.decodeUtf16z(k, 3), "A");
  assert.equal(P.decodeUtf16z(new Uint8Array([0x41, 0, 0x42]), 3), "A");
  assert.equal(P.decodeUtf16z(new Uint8Array([0x00, 0xd8, 0x41, 0]), 4), "\ufffdA");
  assert.equal(P.decodeUtf16z(new Uint8Array(0), -5), "");
});

Deno.test("FILETIME conversion and status formatting", () => {
  assert.equal(P.filetimeFromUnixMs(0), P.WLTIMEDELTA);
  assert.equal(P.filetimeFromUnixMs(1.5), P.WLTIMEDELTA + 15_000n);
  assert.equal(P.formatIcStatus(0x80004005), "0x80004005 (E_FAIL)");
  assert.equal(P.formatIcStatus(0x12345678), "0x12345678");
});
