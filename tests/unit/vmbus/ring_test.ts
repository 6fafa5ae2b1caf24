import { assert, assertEquals, assertThrows } from "./assert.ts";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { GpadlTable } from "../../../src/vmbus/gpadl.ts";
import {
  IncomingRing,
  openRingPair,
  OutgoingRing,
  packetSize,
  RingData,
  RingError,
  type RingErrorCode,
  WriteResult,
} from "../../../src/vmbus/ring.ts";
import {
  encodePacket,
  GuestRingReader,
  GuestRingView,
  GuestRingWriter,
} from "../../../src/vmbus/testing/guest_ring.ts";

const PAGE = 4096;

/** A ring over `dataPages` data pages, contiguous or scattered; guest and host views of it. */
function makeRing(dataPages: number, scattered = false) {
  const ram = new Uint8Array((2 * dataPages + 4) * PAGE);
  const mem = new GuestMemory([{ gpa: 0x100000, bytes: ram }]);
  const gpas = [0x100000];
  for (let i = 0; i < dataPages; i++) {
    gpas.push(0x100000 + (scattered ? (2 * dataPages + 2 - 2 * i) : 1 + i) * PAGE);
  }
  const guest = new GuestRingView(mem, gpas);
  guest.init();
  const control = mem.slice(gpas[0]!, PAGE);
  const data = new RingData(gpas.slice(1).map((g) => mem.slice(g, PAGE)));
  return { mem, guest, control, data };
}

function errorCode(fn: () => unknown): RingErrorCode | "ok" {
  try {
    fn();
  } catch (e) {
    if (e instanceof RingError) return e.code;
    throw e;
  }
  return "ok";
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

Deno.test("ring data is flat when pages are adjacent, paged otherwise", () => {
  assert(makeRing(3).data.flat !== undefined);
  assertEquals(makeRing(3, true).data.flat, undefined);
  assertThrows(() => new RingData([]), RingError);
  assertThrows(() => new RingData([new Uint8Array(100)]), RingError);
});

for (const scattered of [false, true]) {
  const kind = scattered ? "scattered" : "contiguous";

  Deno.test(`guest-to-host packets round-trip through wrap-around (${kind})`, () => {
    const { guest, control, data } = makeRing(2, scattered);
    const host = new IncomingRing(control, data);
    const writer = new GuestRingWriter(guest);
    // Sizes chosen so packets straddle the end of the ring in every position over time.
    for (let i = 0; i < 400; i++) {
      const payload = bytes(1 + ((i * 97) % 1500), i);
      const r = writer.write(encodePacket(6, i & 1, BigInt(i) << 20n, new Uint8Array(0), payload));
      assert(r !== "full");
      const pkt = host.readPacket()!;
      assertEquals(pkt.type, 6);
      assertEquals(pkt.completionRequested, (i & 1) === 1);
      assertEquals(pkt.transactionId, BigInt(i) << 20n);
      assertEquals(pkt.payload.subarray(0, payload.length), payload);
      assertEquals(pkt.payloadLength, (payload.length + 7) & ~7);
      assertEquals(host.readPacket(), null);
      host.commitRead();
      assertEquals(guest.readIndex, guest.writeIndex);
    }
  });

  Deno.test(`host-to-guest packets round-trip through wrap-around (${kind})`, () => {
    const { guest, control, data } = makeRing(2, scattered);
    const host = new OutgoingRing(control, data);
    assertEquals(guest.featureBits & 1, 1);
    const reader = new GuestRingReader(guest);
    for (let i = 0; i < 400; i++) {
      const payload = bytes((i * 131) % 2000, i);
      const r = host.writePacket(11, 0, i, 0x100 + i, null, payload);
      assert(r !== WriteResult.FULL);
      const { packet } = reader.read();
      assertEquals(packet!.type, 11);
      assertEquals(packet!.transactionId, (BigInt(0x100 + i) << 32n) | BigInt(i));
      assertEquals(packet!.payload.subarray(0, payload.length), payload);
      assertEquals(
        packet!.payload.subarray(payload.length),
        new Uint8Array(packet!.payload.length - payload.length),
      );
    }
  });
}

Deno.test("a descriptor split by the end of the ring is read correctly", () => {
  const { guest, control, data } = makeRing(1);
  // Start 8 bytes before the end: the descriptor's two halves are at the end and the start.
  guest.readIndex = guest.writeIndex = PAGE - 8;
  const host = new IncomingRing(control, data);
  const w = new GuestRingWriter(guest);
  w.write(encodePacket(6, 0, 0x1234n, new Uint8Array(0), bytes(40, 1)));
  const pkt = host.readPacket()!;
  assertEquals(pkt.transactionId, 0x1234n);
  assertEquals(pkt.payload.subarray(0, 40), bytes(40, 1));
});

Deno.test("host write signals only on empty -> non-empty with interrupts unmasked", () => {
  const { guest, control, data } = makeRing(2);
  const host = new OutgoingRing(control, data);
  const reader = new GuestRingReader(guest);
  assertEquals(host.writePacket(6, 0, 0, 0, null, bytes(10, 0)), WriteResult.WRITTEN_SIGNAL);
  assertEquals(host.writePacket(6, 0, 0, 0, null, bytes(10, 0)), WriteResult.WRITTEN);
  reader.read();
  reader.read();
  guest.interruptMask = 1;
  assertEquals(host.writePacket(6, 0, 0, 0, null, bytes(10, 0)), WriteResult.WRITTEN);
  reader.read();
  guest.interruptMask = 0;
  assertEquals(host.writePacket(6, 0, 0, 0, null, bytes(10, 0)), WriteResult.WRITTEN_SIGNAL);
});

Deno.test("a full host ring sets pending_send_sz; the guest signals once there is room", () => {
  const { guest, control, data } = makeRing(1);
  const host = new OutgoingRing(control, data);
  const reader = new GuestRingReader(guest);
  const payload = bytes(1000, 3);
  let written = 0;
  while (host.writePacket(6, 0, 0, 0, null, payload) !== WriteResult.FULL) written++;
  assertEquals(written, 3); // 3 * 1024 bytes fit; a fourth would leave no gap
  const need = packetSize(0, payload.length);
  assertEquals(guest.pendingSendSize, need);
  assertEquals(host.pendingSendSize, need);
  assert(!host.hasSpace(need));
  // The guest reads one packet: free space goes from below to above the pending size: signal.
  const first = reader.read();
  assert(first.signal);
  assert(host.hasSpace(need));
  // Reading more while the host has not cleared pending is a null transition: no signal.
  assert(!reader.read().signal);
  assertEquals(host.writePacket(6, 0, 0, 0, null, payload), WriteResult.WRITTEN);
  assertEquals(guest.pendingSendSize, 0);
});

Deno.test("the ring is never filled completely", () => {
  const { guest, control, data } = makeRing(1);
  const host = new OutgoingRing(control, data);
  // One packet of exactly the ring size minus 8 would make full == empty: refused forever.
  assertThrows(() => host.writePacket(6, 0, 0, 0, null, new Uint8Array(PAGE - 16 - 8)), RangeError);
  // The largest packet that fits leaves 8 bytes free.
  assertEquals(
    host.writePacket(6, 0, 0, 0, null, new Uint8Array(PAGE - 16 - 8 - 8)),
    WriteResult.WRITTEN_SIGNAL,
  );
  assertEquals(guest.bytesToWrite(), 8);
  assertThrows(() => host.writePacket(6, 0, 0, 0, new Uint8Array(3), null), RangeError);
});

Deno.test("host read publishes the read index and honours the guest's pending_send_sz", () => {
  const { guest, control, data } = makeRing(1);
  const host = new IncomingRing(control, data);
  const w = new GuestRingWriter(guest);
  const pkt = encodePacket(6, 0, 1n, new Uint8Array(0), bytes(1000, 0));
  while (w.write(pkt) !== "full");
  guest.pendingSendSize = pkt.length + 8;
  assert(host.readPacket() !== null);
  assertEquals(guest.readIndex, 0); // not yet published
  assert(host.commitRead()); // free space crossed the pending size
  assertEquals(guest.readIndex, pkt.length + 8);
  assert(host.readPacket() !== null);
  assert(!host.commitRead()); // already above
  assert(!host.commitRead()); // nothing new read
});

Deno.test("rewind puts the last packet back", () => {
  const { guest, control, data } = makeRing(1);
  const host = new IncomingRing(control, data);
  const w = new GuestRingWriter(guest);
  w.write(encodePacket(6, 0, 5n, new Uint8Array(0), bytes(8, 0)));
  w.write(encodePacket(6, 0, 6n, new Uint8Array(0), bytes(8, 0)));
  assertEquals(host.readPacket()!.tidLo, 5);
  assertEquals(host.readPacket()!.tidLo, 6);
  host.rewind();
  assertEquals(host.readPacket()!.tidLo, 6);
  assertEquals(host.readPacket(), null);
});

Deno.test("GPA-direct and transfer-page packets expose their ranges", () => {
  const { guest, control, data } = makeRing(2);
  const host = new IncomingRing(control, data);
  const w = new GuestRingWriter(guest);
  // vmdata_gpa_direct: reserved, range_cnt=2; range 1: 5000 bytes at 100 (2 PFNs); range 2: 10 bytes.
  const ext = new Uint8Array(8 + 8 + 16 + 8 + 8);
  const dv = new DataView(ext.buffer);
  dv.setUint32(4, 2, true);
  dv.setUint32(8, 5000, true);
  dv.setUint32(12, 100, true);
  dv.setBigUint64(16, 0x1234n, true);
  dv.setBigUint64(24, 0x1235n, true);
  dv.setUint32(32, 10, true);
  dv.setUint32(36, 0, true);
  dv.setBigUint64(40, 0x99n, true);
  w.write(encodePacket(9, 1, 77n, ext, bytes(24, 9)));
  const pkt = host.readPacket()!;
  assertEquals(pkt.type, 9);
  assertEquals(pkt.rangeCount, 2);
  assertEquals(pkt.gpaRanges(), [
    { byteCount: 5000, byteOffset: 100, pfns: [0x1234, 0x1235] },
    { byteCount: 10, byteOffset: 0, pfns: [0x99] },
  ]);
  assertEquals(pkt.payload, bytes(24, 9));
  // Transfer pages: set 3, 2 ranges.
  const tp = new Uint8Array(8 + 16);
  const tv = new DataView(tp.buffer);
  tv.setUint16(0, 3, true);
  tv.setUint32(4, 2, true);
  tv.setUint32(8, 100, true);
  tv.setUint32(12, 0, true);
  tv.setUint32(16, 200, true);
  tv.setUint32(20, 4096, true);
  w.write(encodePacket(7, 1, 78n, tp, new Uint8Array(0)));
  const t = host.readPacket()!;
  assertEquals(t.transferPageSetId, 3);
  assertEquals(t.transferPageRanges(), [{ byteCount: 100, byteOffset: 0 }, {
    byteCount: 200,
    byteOffset: 4096,
  }]);
  assertEquals(t.gpaRanges(), []);
});

Deno.test("malformed guest packets are refused with a typed error", () => {
  const cases: [string, (g: GuestRingView) => void, RingErrorCode][] = [
    ["write index past the end", (g) => g.writeIndex = 2 * PAGE, "invalid-pointer"],
    ["unaligned write index", (g) => g.writeIndex = 12, "invalid-pointer"],
    ["fewer bytes than a descriptor", (g) => g.writeIndex = 16, "invalid-available"],
    ["len8 < offset8", (g) => raw(g, [6, 4, 3, 0]), "invalid-descriptor"],
    ["offset8 < 2", (g) => raw(g, [6, 1, 4, 0]), "invalid-descriptor"],
    ["len8 beyond available", (g) => raw(g, [6, 2, 200, 0]), "invalid-descriptor"],
    ["packet with no room for its trailer", (g) => raw(g, [6, 2, 4, 0], 32), "invalid-descriptor"],
    ["unknown flags", (g) => raw(g, [6, 2, 4, 2]), "invalid-flags"],
    ["unknown type", (g) => raw(g, [0x42, 2, 4, 0]), "invalid-type"],
    ["GPA-direct without the extension", (g) => raw(g, [9, 2, 4, 0]), "invalid-descriptor"],
    ["GPA-direct with zero ranges", (g) => raw(g, [9, 3, 4, 0], 64, [0, 0]), "invalid-ranges"],
    [
      "GPA-direct range past its header",
      (g) => raw(g, [9, 4, 5, 0], 64, [0, 1, 4096, 0]),
      "invalid-ranges",
    ],
    [
      "GPA-direct range offset >= 4096",
      (g) => raw(g, [9, 5, 6, 0], 64, [0, 1, 1, 4096, 5, 0]),
      "invalid-ranges",
    ],
    [
      "GPA-direct zero byte count",
      (g) => raw(g, [9, 5, 6, 0], 64, [0, 1, 0, 0, 5, 0]),
      "invalid-ranges",
    ],
    [
      "GPA-direct huge PFN",
      (g) => raw(g, [9, 5, 6, 0], 64, [0, 1, 1, 0, 5, 0x200]),
      "invalid-ranges",
    ],
    [
      "transfer pages with too many ranges",
      (g) => raw(g, [7, 4, 5, 0], 64, [0, 5]),
      "invalid-ranges",
    ],
  ];
  for (const [name, corrupt, want] of cases) {
    const { guest, control, data } = makeRing(2);
    const host = new IncomingRing(control, data);
    corrupt(guest);
    assertEquals(errorCode(() => host.readPacket()), want, name);
  }
  // The host never trusts the in-ring read index it did not write, but validates it on open.
  const { guest, control, data } = makeRing(1);
  guest.readIndex = 3;
  assertEquals(errorCode(() => new IncomingRing(control, data)), "invalid-pointer");
  guest.readIndex = 0;
  guest.writeIndex = PAGE;
  assertEquals(errorCode(() => new OutgoingRing(control, data)), "invalid-pointer");
  // A corrupt read index on the host-to-guest ring stops writes.
  guest.writeIndex = 0;
  const out = new OutgoingRing(control, data);
  guest.readIndex = 5;
  assertEquals(errorCode(() => out.writePacket(6, 0, 0, 0, null, null)), "invalid-pointer");
  assertEquals(errorCode(() => out.hasSpace(8)), "invalid-pointer");
});

/**
 * Writes a raw descriptor [type, offset8, len8, flags] at 0 followed by u32 `ext` words, and sets
 * the write index to `avail`.
 */
function raw(g: GuestRingView, d: number[], avail = 256, ext: number[] = []): void {
  const b = new Uint8Array(16 + ext.length * 4);
  const dv = new DataView(b.buffer);
  d.forEach((v, i) => dv.setUint16(i * 2, v, true));
  ext.forEach((v, i) => dv.setUint32(16 + i * 4, v, true));
  g.putBytes(0, b);
  g.writeIndex = avail;
}

Deno.test("control pages must be word-aligned in host memory", () => {
  const buf = new Uint8Array(3 * PAGE + 2);
  const control = buf.subarray(2, 2 + PAGE);
  const data = new RingData([new Uint8Array(PAGE)]);
  assertEquals(errorCode(() => new IncomingRing(control, data)), "misaligned");
});

Deno.test("ring pairs come from one page-aligned GPADL split at the downstream offset", () => {
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(0x20000) }]);
  const t = new GpadlTable();
  const g = t.begin(1, 1, 1, 8 + 6 * 8);
  const d = new Uint8Array(8 + 6 * 8);
  const dv = new DataView(d.buffer);
  dv.setUint32(0, 6 * PAGE, true);
  for (let i = 0; i < 6; i++) dv.setBigUint64(8 + i * 8, BigInt(10 + i), true);
  g.append(d);
  g.finish(mem);
  for (const bad of [0, 1, 5, 6, 7, 0xffff_ffff]) {
    assertEquals(errorCode(() => openRingPair(mem, g, bad)), "bad-layout", `offset ${bad}`);
  }
  const pair = openRingPair(mem, g, 2);
  assertEquals(pair.incoming.size, PAGE);
  assertEquals(pair.outgoing.size, 3 * PAGE);
});

for (const scattered of [false, true]) {
  const kind = scattered ? "scattered" : "contiguous";

  Deno.test(`payloads wrapped at every 8-byte boundary are copied straight out (${kind})`, () => {
    // Two pages: in the scattered ring a payload also crosses a page boundary in the middle.
    const dataPages = 2;
    const size = dataPages * PAGE;
    for (const payloadLength of [0, 8, 40, 48, 200]) {
      for (let start = 0; start < size; start += 8) {
        const { guest, control, data } = makeRing(dataPages, scattered);
        guest.readIndex = guest.writeIndex = start;
        const host = new IncomingRing(control, data);
        const payload = bytes(payloadLength, start);
        assert(
          new GuestRingWriter(guest).write(encodePacket(6, 0, 9n, new Uint8Array(0), payload)) !==
            "full",
        );
        const pkt = host.readPacket()!;
        assertEquals(pkt.payloadLength, payloadLength);
        const at = (start + 16) % size;
        const contiguous = at + payloadLength <= size &&
          (!scattered || (at % PAGE) + payloadLength <= PAGE);
        assertEquals(pkt.isContiguous, contiguous, `start ${start}`);
        // Whole payload, at an offset in the destination.
        const dst = new Uint8Array(payloadLength + 5).fill(0xee);
        pkt.copyPayload(dst, 3);
        assertEquals(dst.subarray(3, 3 + payloadLength), payload);
        assertEquals([dst[0], dst[1], dst[2], dst[3 + payloadLength], dst[4 + payloadLength]], [
          0xee,
          0xee,
          0xee,
          0xee,
          0xee,
        ]);
        // Every split of the payload into a head and a tail (across the wrap when it wraps).
        for (let from = 0; from <= payloadLength; from += payloadLength > 48 ? 64 : 8) {
          const part = new Uint8Array(payloadLength - from);
          pkt.copyPayload(part, 0, from);
          assertEquals(part, payload.subarray(from));
          const head = new Uint8Array(from);
          pkt.copyPayload(head, 0, 0, from);
          assertEquals(head, payload.subarray(0, from));
        }
        // The view is made on demand and agrees; copies after it still do.
        assertEquals(pkt.payload, payload);
        assertEquals(
          pkt.data.subarray(pkt.payloadOffset, pkt.payloadOffset + payloadLength),
          payload,
        );
        assertEquals(pkt.isContiguous, contiguous);
        const again = new Uint8Array(payloadLength);
        pkt.copyPayload(again);
        assertEquals(again, payload);
        assertEquals(host.readPacket(), null);
        host.commitRead();
        assertEquals(guest.readIndex, guest.writeIndex);
      }
    }
  });

  Deno.test(`host packets are written at every 8-byte start offset (${kind})`, () => {
    const size = 2 * PAGE;
    for (let start = 0; start < size; start += 8) {
      const { guest, control, data } = makeRing(2, scattered);
      guest.readIndex = guest.writeIndex = start;
      const host = new OutgoingRing(control, data);
      const payload = bytes(37, start);
      assert(host.writePacket(6, 1, start, 7, null, payload) !== WriteResult.FULL);
      const { packet } = new GuestRingReader(guest).read();
      assertEquals(packet!.flags, 1);
      assertEquals(packet!.transactionId, (7n << 32n) | BigInt(start));
      assertEquals(packet!.payload, Uint8Array.of(...payload, 0, 0, 0));
    }
  });
}

Deno.test("copyPayload refuses ranges outside the payload or the destination", () => {
  const { guest, control, data } = makeRing(1);
  // The payload wraps: a refused copy must not write half of it first.
  guest.readIndex = guest.writeIndex = PAGE - 32;
  const host = new IncomingRing(control, data);
  new GuestRingWriter(guest).write(encodePacket(6, 0, 1n, new Uint8Array(0), bytes(64, 1)));
  const pkt = host.readPacket()!;
  assertEquals(pkt.isContiguous, false);
  const dst = new Uint8Array(64);
  const bad: [number, number, number][] = [
    [0, 0, 65], // longer than the payload
    [0, 8, 57], // runs past the payload's end
    [1, 0, 64], // runs past the destination
    [-1, 0, 8],
    [0, -8, 8],
    [0, 0, -1],
    [0.5, 0, 8],
    [0, 0, NaN],
    [0, 64, 1],
  ];
  for (const [dstOffset, from, length] of bad) {
    assertThrows(() => pkt.copyPayload(dst, dstOffset, from, length), RangeError);
    assertEquals(dst, new Uint8Array(64), `${dstOffset} ${from} ${length}`);
  }
  assertThrows(() => pkt.copyPayload(new Uint8Array(63)), RangeError);
  pkt.copyPayload(dst, 0, 64, 0); // empty copy at the end is fine
  pkt.copyPayload(dst);
  assertEquals(dst, bytes(64, 1));
});

Deno.test("a hostile descriptor's payload is bounded by what was validated", () => {
  const { guest, control, data } = makeRing(1);
  const host = new IncomingRing(control, data);
  // offset8 == len8: a packet with an empty payload right before the trailer.
  raw(guest, [6, 4, 4, 0], 40);
  let pkt = host.readPacket()!;
  assertEquals(pkt.payloadLength, 0);
  pkt.copyPayload(new Uint8Array(0));
  assertEquals(pkt.payload.length, 0);
  // A payload that starts past the end of the ring (the header wraps): read from the start.
  const { guest: g2, control: c2, data: d2 } = makeRing(1);
  g2.readIndex = g2.writeIndex = PAGE - 16;
  const h2 = new IncomingRing(c2, d2);
  const ext = new Uint8Array(16);
  new DataView(ext.buffer).setUint32(4, 1, true); // transfer pages: 1 range
  new GuestRingWriter(g2).write(encodePacket(7, 0, 2n, ext, bytes(24, 5)));
  pkt = h2.readPacket()!;
  assertEquals(pkt.isContiguous, true);
  assertEquals(pkt.payload, bytes(24, 5));
  // The guest rewriting the descriptor after the read changes nothing the host validated.
  g2.putBytes(PAGE - 16 + 4, Uint8Array.of(0xff, 0xff));
  assertEquals(pkt.payloadLength, 24);
  const out = new Uint8Array(24);
  pkt.copyPayload(out);
  assertEquals(out, bytes(24, 5));
});

Deno.test("endRead publishes the read index, unmasks and decides like commitRead", () => {
  const { guest, control, data } = makeRing(1);
  const host = new IncomingRing(control, data);
  const w = new GuestRingWriter(guest);
  const pkt = encodePacket(6, 0, 1n, new Uint8Array(0), bytes(1000, 0));
  while (w.write(pkt) !== "full");
  guest.pendingSendSize = pkt.length + 8;
  host.setInterruptMask(true);
  assertEquals(guest.interruptMask, 1);
  assert(host.readPacket() !== null);
  assert(host.endRead()); // free space crossed the pending size
  assertEquals(guest.readIndex, pkt.length + 8);
  assertEquals(guest.interruptMask, 0);
  host.setInterruptMask(true);
  assert(host.readPacket() !== null);
  assert(!host.endRead()); // already above
  assertEquals(guest.interruptMask, 0);
  host.setInterruptMask(true);
  assert(!host.endRead()); // nothing new read, still unmasks
  assertEquals(guest.interruptMask, 0);
  assertEquals(guest.readIndex, 2 * (pkt.length + 8));
});

Deno.test("data pages that are not word-aligned in host memory take the copying path", () => {
  const control = new Uint8Array(PAGE);
  new Uint32Array(control.buffer)[16] = 1; // feature bits
  const ram = new Uint8Array(2 * PAGE + 2);
  const pages = [ram.subarray(2, 2 + PAGE), ram.subarray(2 + PAGE, 2 + 2 * PAGE)];
  const data = new RingData(pages);
  assert(data.flat !== undefined);
  assertEquals(data.wordsAt(0, 16), undefined);
  const out = new OutgoingRing(control, data);
  const inc = new IncomingRing(control, data);
  for (let i = 0; i < 50; i++) {
    const payload = bytes(100 + i * 13, i);
    assert(out.writePacket(6, 0, i, 0, null, payload) !== WriteResult.FULL);
    const pkt = inc.readPacket()!;
    assertEquals(pkt.tidLo, i);
    const got = new Uint8Array(payload.length);
    pkt.copyPayload(got, 0, 0, payload.length);
    assertEquals(got, payload);
    inc.commitRead();
  }
});

Deno.test("a guest waiting for space gets the read index before the pass ends", () => {
  const { guest, control, data } = makeRing(1);
  const host = new IncomingRing(control, data);
  const w = new GuestRingWriter(guest);
  const pkt = encodePacket(6, 0, 1n, new Uint8Array(0), bytes(1000, 0));
  while (w.write(pkt) !== "full");
  // Nobody waits: nothing is published before the end of the pass.
  assert(host.readPacket() !== null);
  assert(!host.commitIfGuestWaits());
  assertEquals(guest.readIndex, 0);
  // The guest blocks on a packet needing two packets' room: published at once, signalled at
  // the crossing only.
  guest.pendingSendSize = 2 * (pkt.length + 8);
  assert(!host.commitIfGuestWaits()); // one packet freed: still below
  assertEquals(guest.readIndex, pkt.length + 8);
  assert(host.readPacket() !== null);
  assert(host.commitIfGuestWaits()); // two packets freed: crossed
  assertEquals(guest.readIndex, 2 * (pkt.length + 8));
  assert(host.readPacket() !== null);
  assert(!host.commitIfGuestWaits()); // already above
  assert(!host.endRead());
  assertEquals(guest.readIndex, 3 * (pkt.length + 8));
});
