import { assert, assertEquals, assertThrows } from "./assert.ts";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import {
  checkRangesInMemory,
  GpadlError,
  GpadlTable,
  parseGpaRanges,
  SgBuffer,
} from "../../../src/vmbus/gpadl.ts";

/** Encodes ranges as `gpa_range` data: [byteCount, byteOffset, ...pfns]. */
function rangeData(...ranges: [number, number, ...(number | bigint)[]][]): Uint8Array {
  const words = ranges.reduce((n, r) => n + 1 + (r.length - 2), 0);
  const out = new Uint8Array(words * 8);
  const dv = new DataView(out.buffer);
  let at = 0;
  for (const [count, offset, ...pfns] of ranges) {
    dv.setUint32(at, count, true);
    dv.setUint32(at + 4, offset, true);
    at += 8;
    for (const p of pfns) {
      dv.setBigUint64(at, BigInt(p), true);
      at += 8;
    }
  }
  return out;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof GpadlError) return e.code;
    throw e;
  }
  return "ok";
}

Deno.test("GPA ranges: one or several ranges, offsets, trailing data", () => {
  const { ranges, used } = parseGpaRanges(rangeData([8192, 0, 10, 11], [100, 4000, 20, 21]), 2);
  assertEquals(used, 6 * 8);
  assertEquals(ranges, [
    { byteCount: 8192, byteOffset: 0, pfns: [10, 11] },
    { byteCount: 100, byteOffset: 4000, pfns: [20, 21] },
  ]);
  // Extra bytes after the declared ranges are ignored.
  const extra = new Uint8Array(64);
  extra.set(rangeData([1, 0, 5]));
  assertEquals(parseGpaRanges(extra, 1).used, 16);
  // A PFN just below the safe-integer limit is fine.
  assertEquals(parseGpaRanges(rangeData([1, 0, 0x1ff_ffff_ffffn]), 1).ranges[0]!.pfns, [
    0x1ff_ffff_ffff,
  ]);
});

Deno.test("GPA ranges: every malformed shape is refused with its reason", () => {
  assertEquals(code(() => parseGpaRanges(rangeData([1, 0, 1]), 0)), "empty-range-list");
  assertEquals(code(() => parseGpaRanges(new Uint8Array(4), 1)), "truncated-range");
  assertEquals(code(() => parseGpaRanges(rangeData([0, 0, 1]), 1)), "zero-byte-count");
  assertEquals(code(() => parseGpaRanges(rangeData([1, 4096, 1]), 1)), "offset-too-large");
  // 4097 bytes from offset 0 need two PFNs.
  assertEquals(code(() => parseGpaRanges(rangeData([4097, 0, 1]), 1)), "truncated-range");
  // An enormous byte count must not allocate: it is refused for missing PFNs.
  assertEquals(code(() => parseGpaRanges(rangeData([0xffff_ffff, 4095, 1]), 1)), "truncated-range");
  assertEquals(code(() => parseGpaRanges(rangeData([1, 0, 1n << 41n]), 1)), "pfn-too-large");
  assertEquals(
    code(() => parseGpaRanges(rangeData([1, 0, 0xffff_ffff_ffff_ffffn]), 1)),
    "pfn-too-large",
  );
  // Second range missing entirely.
  assertEquals(code(() => parseGpaRanges(rangeData([1, 0, 1]), 2)), "truncated-range");
  // A length shorter than the buffer hides the tail.
  assertEquals(code(() => parseGpaRanges(rangeData([1, 0, 1]), 1, 8)), "truncated-range");
});

Deno.test("GPA ranges must be guest RAM", () => {
  const mem = new GuestMemory([{ gpa: 0x10000, bytes: new Uint8Array(0x4000) }]);
  checkRangesInMemory(mem, [{ byteCount: 0x4000, byteOffset: 0, pfns: [0x10, 0x11, 0x12, 0x13] }]);
  assertEquals(
    code(() => checkRangesInMemory(mem, [{ byteCount: 1, byteOffset: 0, pfns: [0x14] }])),
    "not-guest-ram",
  );
  assertEquals(
    code(() => checkRangesInMemory(mem, [{ byteCount: 1, byteOffset: 0, pfns: [0] }])),
    "not-guest-ram",
  );
});

Deno.test("scatter/gather buffer reads and writes across scattered pages", () => {
  const ram = new Uint8Array(0x10000);
  const mem = new GuestMemory([{ gpa: 0, bytes: ram }]);
  // Pages 5, 2, 3 (2 and 3 adjacent: merged), starting 100 bytes into page 5.
  const sg = SgBuffer.fromRanges(mem, [{
    byteCount: 2 * 4096 + 50,
    byteOffset: 100,
    pfns: [5, 2, 3],
  }]);
  assertEquals(sg.length, 8242);
  assertEquals(sg.segments.length, 2);
  const src = new Uint8Array(sg.length).map((_, i) => i * 7);
  sg.write(0, src);
  assertEquals(ram[5 * 4096 + 100], src[0]);
  assertEquals(ram[2 * 4096], src[3996]);
  assertEquals(ram[3 * 4096 + 49 + 4096 - 4096], src[3996 + 4096 + 49]);
  const back = new Uint8Array(300);
  sg.read(3900, back);
  assertEquals(back, src.subarray(3900, 4200));
  assert(sg.view(0, 3996) !== undefined);
  assertEquals(sg.view(3990, 20), undefined);
  assertEquals(sg.view(4000, 4096)!.length, 4096);
  assertThrows(() => sg.read(sg.length - 1, new Uint8Array(2)), RangeError);
  assertThrows(() => sg.write(-1, new Uint8Array(1)), RangeError);
  assertThrows(
    () => SgBuffer.fromRanges(mem, [{ byteCount: 1, byteOffset: 0, pfns: [0x10] }]),
    GpadlError,
  );
});

Deno.test("GPADL table: handles, limits, header validation, assembly", () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(0x10000) }]);
  const t = new GpadlTable(2);
  assertEquals(code(() => t.begin(1, 1, 0, 16)), "empty-range-list");
  assertEquals(code(() => t.begin(1, 1, 1, 12)), "bad-range-length");
  assertEquals(code(() => t.begin(1, 1, 1, 8)), "bad-range-length");
  const g = t.begin(7, 3, 1, 8 + 3 * 8);
  assertEquals(code(() => t.begin(7, 4, 1, 16)), "duplicate-handle");
  t.begin(8, 3, 1, 16);
  assertEquals(code(() => t.begin(9, 3, 1, 16)), "too-many-gpadls");
  const data = rangeData([3 * 4096, 0, 1, 2, 3]);
  assertEquals(g.append(data.subarray(0, 16)), false);
  assertEquals(g.missing, 16);
  // Extra bytes past range_buflen are ignored.
  const tail = new Uint8Array(24);
  tail.set(data.subarray(16));
  assertEquals(g.append(tail), true);
  g.finish(mem);
  assertEquals(g.state, "ready");
  assertEquals(g.byteLength, 3 * 4096);
  assertEquals(g.pageViews(mem)!.length, 3);
  assertEquals(code(() => g.append(new Uint8Array(8))), "already-complete");
  t.deleteForChannel(3);
  assertEquals(t.size, 0);
});

Deno.test("GPADL with a PFN outside RAM fails to finish", () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(0x4000) }]);
  const g = new GpadlTable().begin(1, 1, 1, 16);
  g.append(rangeData([4096, 0, 99]));
  assertEquals(code(() => g.finish(mem)), "not-guest-ram");
  assertEquals(g.state, "building");
});

Deno.test("ring page views need one page-aligned range", () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(0x10000) }]);
  const t = new GpadlTable();
  const a = t.begin(1, 1, 2, 32);
  a.append(rangeData([4096, 0, 1], [4096, 0, 2]));
  a.finish(mem);
  assertEquals(a.pageViews(mem), undefined);
  const b = t.begin(2, 1, 1, 16);
  b.append(rangeData([4000, 96, 1]));
  b.finish(mem);
  assertEquals(b.pageViews(mem), undefined);
});
