/**
 * Seeded fuzzing of everything storvsp takes from the guest: vstor packets (mutated from a corpus
 * of valid init and SRB packets: operations, sizes, SRB fields, CDBs, transfer lengths, page
 * lists inside and outside RAM) sent through the real VMBus ring into a live device. Invariants
 * on every step: nothing escapes the device (no callback throws, no server error), every reply is
 * a well-formed COMPLETE_IO for a request we sent, as large as that request, and the device keeps
 * answering (a stopped channel is reopened and initialised again).
 */
import { MAX_VSTOR_PACKET_SIZE, VstorOperation } from "../../../../src/devices/storage/protocol.ts";
import { encodePacket } from "../../../../src/vmbus/testing/guest_ring.ts";
import {
  assert,
  assertEquals,
  be32,
  gpaExt,
  MemoryBackend,
  srbPacket,
  StorvscGuest,
  vstorPacket,
} from "./helpers.ts";
import { prng } from "../../prng.ts";

const SEED = Number(Deno.env.get("STORVSP_FUZZ_SEED") ?? 0x5c5105);
const ITERATIONS = 24_000;

const INTERESTING = [0, 1, 2, 7, 8, 0x10, 0x3f, 0x40, 0x7f, 0x80, 0xfe, 0xff];
const INTERESTING_U32 = [0, 1, 511, 512, 4095, 4096, 4097, 65536, 0x7fff_ffff, 0xffff_ffff];
const OPCODES = [
  0x00,
  0x03,
  0x08,
  0x0a,
  0x12,
  0x15,
  0x1a,
  0x1b,
  0x25,
  0x28,
  0x2a,
  0x2f,
  0x35,
  0x41,
  0x42,
  0x5a,
  0x88,
  0x8a,
  0x8f,
  0x91,
  0x93,
  0x9e,
  0xa0,
  0xa8,
  0xaa,
  0xc0,
  0xff,
];

Deno.test("fuzz: mutated vstor packets never escape the device", async () => {
  const mem = new MemoryBackend(4 << 20);
  const g = StorvscGuest.withDisks([mem, new MemoryBackend(1 << 20, { readOnly: true })], {
    maxSubChannels: 1,
    ringPages: 64,
  });
  await g.init();
  const rng = prng(SEED);
  const buf = g.pages(9);
  const start = performance.now();
  let sent = 0;
  let replies = 0;
  let reopened = 0;
  const pending = new Map<bigint, number>(); // tid -> expected reply size
  let tid = 1n << 40n;

  const check = (): void => {
    g.poll();
    for (const [t, r] of g.replies) {
      const want = pending.get(t);
      assert(want !== undefined, `reply to unknown transaction ${t}`);
      assertEquals(r.operation, VstorOperation.COMPLETE_IO);
      assertEquals(r.packetSize, want, "reply as large as the request");
      assert(r.senseLength <= 20);
      pending.delete(t);
      g.replies.delete(t);
      replies++;
    }
    assertEquals(g.guest.server.stats.deviceErrors, 0, "device callbacks threw");
    assertEquals(g.guest.server.stats.internalErrors, 0, "server errors");
  };

  const mutateBytes = (p: Uint8Array, n: number) => {
    for (let k = 0; k < n; k++) {
      const at = rng.int(p.length);
      p[at] = rng.chance(0.5) ? rng.pick(INTERESTING) : rng.int(256);
    }
  };

  for (let i = 0; i < ITERATIONS; i++) {
    // A valid SRB to start from.
    const op = rng.pick(OPCODES);
    const blocks = rng.pick([0, 1, 8, 9, 64, 256]);
    const lba = rng.pick([0, 1, 100, 8191, 8192, 0xffff_ffff]);
    const cdb = new Uint8Array(16);
    cdb[0] = op;
    cdb.set(be32(lba), 2);
    cdb[8] = blocks;
    cdb[4] = blocks;
    if (rng.chance(0.3)) mutateBytes(cdb, 1 + rng.int(4));
    const length = rng.chance(0.7) ? blocks * 512 : rng.pick(INTERESTING_U32);
    let payload: Uint8Array = srbPacket({
      cdb,
      cdbLength: rng.chance(0.9) ? rng.pick([6, 10, 12, 16]) : rng.int(256),
      lun: rng.chance(0.9) ? rng.int(3) : rng.int(256),
      pathId: rng.chance(0.95) ? 0 : rng.int(256),
      targetId: rng.chance(0.95) ? 0 : rng.int(256),
      dataIn: rng.int(3),
      length,
      packetSize: rng.chance(0.9) ? MAX_VSTOR_PACKET_SIZE : rng.pick([48, 40, 56]),
    });
    if (rng.chance(0.2)) mutateBytes(payload, 1 + rng.int(6));
    if (rng.chance(0.03)) payload = payload.subarray(0, rng.int(12)); // malformed: stops the channel
    if (rng.chance(0.05)) {
      // Another operation (reset, sub-channels, init operations after init, unknown).
      new DataView(payload.buffer, payload.byteOffset).setUint32(0, rng.int(16), true);
    }
    let ext: Uint8Array = new Uint8Array(0);
    let type = 6;
    if (rng.chance(0.8) && payload.length >= 12) {
      type = 9;
      const offset = rng.chance(0.8) ? 0 : rng.int(4096);
      const bytes = rng.chance(0.8)
        ? Math.max(1, Math.min(length, 8 * 4096 - offset))
        : 1 + rng.int(9 * 4096 - offset);
      const pages = Math.ceil((offset + bytes) / 4096);
      const gpas = Array.from(
        { length: pages },
        (_, k) =>
          rng.chance(0.97)
            ? buf[k % buf.length]!
            : rng.pick([0, 0x1000_0000, 0x8000_0000, 2 ** 40]),
      );
      ext = gpaExt(gpas, offset, bytes);
    }
    const t = tid++;
    // The ring pads payloads to 8 bytes; the device sees (and mirrors) the padded size.
    const padded = (payload.length + 7) & ~7;
    const sizeWanted = padded >= 12 ? 12 + Math.min(padded - 12, 52) : 0;
    const raw = encodePacket(type, 1, t, ext, payload);
    const malformedBefore = g.device.stats.malformed;
    if (g.ch.sendRaw(raw) === "full") {
      // Drain and retry once.
      for (let k = 0; k < 50 && g.device.inflight > 0; k++) {
        check();
        await new Promise((r) => setTimeout(r, 0));
      }
      check();
      if (g.ch.sendRaw(raw) === "full") continue;
    }
    sent++;
    // Replies come padded to 8 bytes by the ring.
    pending.set(t, (sizeWanted + 7) & ~7);
    if (g.device.stats.malformed !== malformedBefore) {
      pending.delete(t);
      // That channel stopped: start over, as the guest driver would after a reset.
      check();
      for (const k of [...pending.keys()]) pending.delete(k);
      // The ring is torn down once the commands still in flight on it settled.
      const closing = g.ch;
      if (!g.guest.close(closing)) {
        await g.guest.server.settled();
        assert(g.guest.torndown(closing.gpadl), "ring torn down after in-flight I/O");
        g.guest.pages.free(closing.pages);
      }
      g.ch = g.guest.open(g.offer, { sendPages: 64, recvPages: 64 });
      await g.init();
      g.replies.clear();
      reopened++;
      continue;
    }
    if (i % 16 === 15) {
      check();
      await new Promise((r) => setTimeout(r, 0));
    }
  }
  for (let k = 0; k < 200 && pending.size > 0; k++) {
    check();
    await new Promise((r) => setTimeout(r, 1));
  }
  check();
  // Packets that asked for nothing we answer (none) or went to a stopped channel were dropped.
  assertEquals(pending.size, 0, `${pending.size} requests were never answered`);
  assertEquals(g.device.inflight, 0);
  // The device still works.
  const ok = await g.rw("read", 0, 8);
  assertEquals(ok.reply.srbStatus, 1);
  const ms = performance.now() - start;
  console.log(
    `fuzz: ${sent} packets, ${replies} replies, ${reopened} channel restarts, ` +
      `${g.device.stats.protocolErrors} protocol errors in ${ms.toFixed(0)} ms`,
  );
  assert(sent >= 20_000, `only ${sent} packets sent`);
  assert(ms < 20_000, `fuzzing took ${ms} ms`);
  void vstorPacket;
});
