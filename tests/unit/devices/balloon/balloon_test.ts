/**
 * The Dynamic Memory device against the real VMBus server and a scripted guest that speaks like
 * Linux's hv_balloon: negotiation, status reports, inflate (only valid, unballooned guest RAM is
 * released), deflate (exactly the ranges the guest gave, in messages within 4096 bytes), and a
 * fuzzed guest.
 */
import { assert, assertEquals } from "../../vmbus/assert.ts";
import {
  decodePageRange,
  DM_MAX_MESSAGE,
  DmBalloon,
  DmBalloonResponse,
  DmCapabilities,
  DmHeader,
  DmMessageType,
  DmStatus,
  DmUnballoonRequest,
  DmVersion,
  DmVersionRequest,
  DmVersionResponse,
  DynamicMemoryDevice,
  encodePageRange,
  type PageRange,
} from "../../../../src/devices/balloon/mod.ts";
import { LoopbackGuest } from "../../../../src/vmbus/testing/loopback_guest.ts";
import { prng } from "../../prng.ts";

const RAM_BASE_PFN = 0x100; // LoopbackGuest RAM starts at 1 MiB
const RAM_PAGES = 4096; // 16 MiB

function setup() {
  const released: PageRange[] = [];
  const { guest, server } = LoopbackGuest.create({ devices: [] });
  const dev = new DynamicMemoryDevice(guest.memory, {
    release: (gpa, bytes) => released.push({ startPfn: gpa / 4096, pages: bytes / 4096 }),
    timeoutMs: 1000,
  });
  server.addDevice(dev);
  guest.connect();
  const offer = guest.requestOffers().find((o) => o.classId === dev.classId)!;
  const ch = guest.open(offer, { sendPages: 4, recvPages: 4 });
  const msg = (type: number, layout: { size: number }, fields: Record<string, unknown> = {}) => {
    const out = new Uint8Array(layout.size);
    DmHeader.encode({ type, size: layout.size, transId: 7 }, out);
    (layout as typeof DmStatus).encode({ ...fields } as never, out);
    DmHeader.encode({ type, size: layout.size, transId: 7 }, out);
    return out;
  };
  return { guest, server, dev, ch, released, msg };
}

function handshake(s: ReturnType<typeof setup>): void {
  s.ch.send(s.msg(DmMessageType.VERSION_REQUEST, DmVersionRequest, { version: DmVersion.WIN10 }));
  const v = s.ch.receive();
  assertEquals(v.length, 1);
  assertEquals(DmVersionResponse.decode(v[0]!.payload)!.isAccepted, 1n);
  s.ch.send(s.msg(DmMessageType.CAPABILITIES_REPORT, DmCapabilities, { caps: 0x1dn }));
  const c = s.ch.receive();
  assertEquals(DmHeader.get(c[0]!.payload, 0, "type"), DmMessageType.CAPABILITIES_RESPONSE);
  assert(s.dev.isReady);
}

function balloonResponse(ranges: PageRange[], more: boolean, claim = ranges.length): Uint8Array {
  const size = DmBalloonResponse.size + ranges.length * 8;
  const out = new Uint8Array(size);
  DmHeader.encode({ type: DmMessageType.BALLOON_RESPONSE, size, transId: 1 }, out);
  DmBalloonResponse.set(out, 0, "moreAndCount", ((claim << 1) | (more ? 1 : 0)) >>> 0);
  ranges.forEach((r, i) => encodePageRange(out, DmBalloonResponse.size + i * 8, r));
  return out;
}

Deno.test("balloon protocol: layout sizes and the 40/24-bit page range", () => {
  assertEquals(DmHeader.size, 8);
  assertEquals(DmVersionRequest.size, 16);
  assertEquals(DmCapabilities.size, 32);
  assertEquals(DmStatus.size, 48);
  assertEquals(DmBalloon.size, 16);
  assertEquals(DmUnballoonRequest.size, 16);
  const b = new Uint8Array(8);
  encodePageRange(b, 0, { startPfn: 0xab_1234_5678, pages: 0xfedcba });
  assertEquals(decodePageRange(b, 0), { startPfn: 0xab_1234_5678, pages: 0xfedcba });
});

Deno.test("balloon: negotiation, status reports, inflate releases only valid ranges, deflate returns them", async () => {
  const s = setup();
  handshake(s);
  s.ch.send(s.msg(DmMessageType.STATUS_REPORT, DmStatus, { numAvail: 1000n, numCommitted: 2000n }));
  assertEquals(s.dev.info().status?.committedPages, 2000);

  const inflating = s.dev.inflate(600);
  const req = s.ch.receive();
  assertEquals(DmBalloon.decode(req[0]!.payload)!.numPages, 600);
  const good1 = { startPfn: RAM_BASE_PFN + 512, pages: 512 };
  const good2 = { startPfn: RAM_BASE_PFN + 100, pages: 50 };
  const outside = { startPfn: RAM_BASE_PFN + RAM_PAGES - 10, pages: 20 };
  const overlap = { startPfn: RAM_BASE_PFN + 600, pages: 8 };
  s.ch.send(balloonResponse([good1, outside], true));
  s.ch.send(balloonResponse([overlap, good2], false, 2));
  assertEquals(await inflating, 562);
  assertEquals(s.released, [good1, good2]);
  assertEquals(s.dev.balloonedPages, 562);
  assertEquals(s.dev.info().malformed, 2);

  // Deflate part: the newest range first, split as needed.
  const deflating = s.dev.deflate(100);
  const un = s.ch.receive();
  assertEquals(un.length, 1);
  const u = DmUnballoonRequest.decode(un[0]!.payload)!;
  assertEquals(u.moreFlags, 0);
  const given = Array.from(
    { length: u.rangeCount },
    (_, i) => decodePageRange(un[0]!.payload, 16 + i * 8),
  );
  assertEquals(given, [good2, { startPfn: good1.startPfn + 462, pages: 50 }]);
  const resp = new Uint8Array(8);
  DmHeader.encode({ type: DmMessageType.UNBALLOON_RESPONSE, size: 8, transId: 3 }, resp);
  s.ch.send(resp);
  assertEquals(await deflating, 100);
  assertEquals(s.dev.balloonedPages, 462);
  assertEquals(s.server.stats.deviceErrors, 0);
});

Deno.test("balloon: a big deflate is split into messages within 4096 bytes", async () => {
  const s = setup();
  handshake(s);
  const inflating = s.dev.inflate(2000);
  s.ch.receive();
  // 1000 single-page ranges (every other page), in two responses.
  const ranges = Array.from({ length: 1000 }, (_, i) => ({
    startPfn: RAM_BASE_PFN + i * 2,
    pages: 1,
  }));
  s.ch.send(balloonResponse(ranges.slice(0, 500), true));
  s.ch.send(balloonResponse(ranges.slice(500), false));
  assertEquals(await inflating, 1000);
  const deflating = s.dev.deflate(5000);
  const msgs = s.ch.receive();
  assert(msgs.length >= 2);
  let total = 0;
  for (const [i, m] of msgs.entries()) {
    const size = DmHeader.get(m.payload, 0, "size");
    assert(size <= DM_MAX_MESSAGE, `message ${i} is ${size} bytes`);
    const u = DmUnballoonRequest.decode(m.payload)!;
    assertEquals(u.moreFlags, i < msgs.length - 1 ? 1 : 0);
    total += u.rangeCount;
  }
  assertEquals(total, 1000);
  const resp = new Uint8Array(8);
  DmHeader.encode({ type: DmMessageType.UNBALLOON_RESPONSE, size: 8, transId: 3 }, resp);
  s.ch.send(resp);
  assertEquals(await deflating, 1000);
  assertEquals(s.dev.balloonedPages, 0);
});

Deno.test("balloon fuzz: random guest messages never escape and never release outside RAM", async () => {
  const s = setup();
  handshake(s);
  const rng = prng(0xba11);
  let pending: Promise<unknown> | undefined;
  for (let step = 0; step < 4000; step++) {
    const a = rng.int(6);
    if (a === 0 && !pending) {
      pending = s.dev.inflate(1 + rng.int(3000)).catch(() => {}).finally(() => pending = undefined);
    } else if (a === 1 && !pending) {
      pending = s.dev.deflate(1 + rng.int(3000)).catch(() => {}).finally(() => pending = undefined);
    } else {
      const n = rng.int(40);
      const ranges = Array.from({ length: n }, () => ({
        startPfn: rng.chance(0.7) ? RAM_BASE_PFN + rng.int(RAM_PAGES) : rng.int(2 ** 40),
        pages: rng.chance(0.8) ? 1 + rng.int(64) : rng.int(0x1000000),
      }));
      let m = balloonResponse(ranges, rng.chance(0.5), rng.chance(0.9) ? n : rng.int(2 ** 31));
      if (rng.chance(0.3)) {
        m = m.slice(0, rng.int(m.length + 1));
        if (m.length >= 4 && rng.chance(0.5)) DmHeader.set(m, 0, "size", rng.int(65536));
      }
      if (rng.chance(0.2) && m.length >= 2) DmHeader.set(m, 0, "type", rng.int(16));
      if (m.length > 0) s.ch.send(m);
    }
    s.ch.receive(); // the host's requests
    if (step % 50 === 0) await new Promise((r) => setTimeout(r, 0));
  }
  for (const r of s.released) {
    assert(r.startPfn >= RAM_BASE_PFN && r.startPfn + r.pages <= RAM_BASE_PFN + RAM_PAGES);
  }
  assertEquals(s.server.stats.deviceErrors, 0);
  assertEquals(s.server.stats.internalErrors, 0);
  await new Promise((r) => setTimeout(r, 1100)); // let a pending operation time out
});
