import { assert, assertEquals, assertThrows } from "./assert.ts";
import { formatGuid, guidEquals, parseGuid } from "../../../src/vmbus/guid.ts";

Deno.test("GUIDs use the mixed-endian Windows wire layout", () => {
  // Storage (storvsc) class id, as Linux HV_SCSI_GUID spells its bytes.
  const g = parseGuid("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
  assertEquals(
    [...g],
    [
      0xd9,
      0x63,
      0x61,
      0xba,
      0xa1,
      0x04,
      0x29,
      0x4d,
      0xb6,
      0x05,
      0x72,
      0xe2,
      0xff,
      0xb1,
      0xdc,
      0x7f,
    ],
  );
  assertEquals(formatGuid(g), "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
});

Deno.test("GUID parsing accepts braces and upper case, refuses garbage", () => {
  const a = parseGuid("{F8615163-DF3E-46C5-913F-F2D2F965ED0E}");
  assertEquals(formatGuid(a), "f8615163-df3e-46c5-913f-f2d2f965ed0e");
  assert(guidEquals(a, parseGuid("f8615163-df3e-46c5-913f-f2d2f965ed0e")));
  assertThrows(() => parseGuid("f8615163-df3e-46c5-913f"), TypeError);
  assertThrows(() => parseGuid("g8615163-df3e-46c5-913f-f2d2f965ed0e"), TypeError);
  assertThrows(() => formatGuid(new Uint8Array(15)), RangeError);
  assertEquals(formatGuid(new Uint8Array(20), 4), "00000000-0000-0000-0000-000000000000");
});
