/**
 * Fuzz target (`tests/fuzz/mod.ts`): seeded fuzzing of everything storvsp takes from the guest: vstor packets (mutated from a corpus
 * of valid init and SRB packets: operations, sizes, SRB fields, CDBs, transfer lengths, page
 * lists inside and outside RAM) sent through the real VMBus ring into a live device. Invariants
 * on every step: nothing escapes the device (no callback throws, no server error), every reply is
 * a well-formed COMPLETE_IO for a request we sent, as large as that request, and the device keeps
 * answering (a stopped channel is reopened and initialised again). The disks are real backends
 * over temporary files, a raw one, a qcow2 one and a read-only raw one, and no backend I/O may
 * reach a file offset outside its image (`file_guard.ts`); the qcow2 image passes
 * `qemu-img check` afterwards when qemu-img is installed.
 * @module
 */
import { MAX_VSTOR_PACKET_SIZE, VstorOperation } from "../../../src/devices/storage/protocol.ts";
import {
  createDisk,
  type DiskBackend,
  Qcow2Backend,
  RawFileBackend,
} from "../../../src/devices/storage/backend/mod.ts";
import { encodePacket } from "../../../src/vmbus/testing/guest_ring.ts";
import {
  assert,
  assertEquals,
  be32,
  gpaExt,
  haveQemuImg,
  qemuImg,
  srbPacket,
  StorvscGuest,
} from "../../unit/devices/storage/helpers.ts";
import { prng } from "../../unit/prng.ts";
import { guardFile, takeFileViolations, unguardFile } from "../file_guard.ts";
import type { FuzzTarget } from "../target.ts";

const RAW_SIZE = 4 << 20;
const QCOW_SIZE = 4 << 20;
const RO_SIZE = 1 << 20;

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

/** `ITERATIONS` mutated vstor packets from `SEED` against real file backends. */
async function fuzzStorvsp(SEED: number, ITERATIONS: number): Promise<number> {
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-fuzz-storvsp-" });
  const paths = { raw: `${dir}/a.raw`, qcow2: `${dir}/b.qcow2`, ro: `${dir}/c.raw` };
  await createDisk(paths.raw, RAW_SIZE);
  await createDisk(paths.qcow2, QCOW_SIZE, { format: "qcow2" });
  await createDisk(paths.ro, RO_SIZE);
  guardFile(paths.raw, RAW_SIZE);
  guardFile(paths.ro, RO_SIZE);
  // qcow2 grows as clusters are allocated: data, L2 tables and refcounts for the whole
  // virtual size fit well inside three times it.
  guardFile(paths.qcow2, Deno.statSync(paths.qcow2).size + 3 * QCOW_SIZE, { reads: false });
  const backends: DiskBackend[] = [
    RawFileBackend.open(paths.raw),
    await Qcow2Backend.open(paths.qcow2),
    RawFileBackend.open(paths.ro, { readOnly: true }),
  ];
  try {
    return await fuzzWith(backends, SEED, ITERATIONS);
  } finally {
    for (const b of backends) b.close();
    for (const p of Object.values(paths)) unguardFile(p);
    const violations = takeFileViolations();
    const check = haveQemuImg() ? qemuImg("check", paths.qcow2) : { code: 0, out: "" };
    await Deno.remove(dir, { recursive: true });
    assertEquals(violations, [], "backend I/O outside the image files");
    assertEquals(check.code, 0, `qemu-img check after the fuzz: ${check.out}`);
  }
}

async function fuzzWith(
  backends: DiskBackend[],
  SEED: number,
  ITERATIONS: number,
): Promise<number> {
  const g = StorvscGuest.withDisks(backends, { maxSubChannels: 1, ringPages: 64 });
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
      lun: rng.chance(0.9) ? rng.int(4) : rng.int(256),
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
  if (Deno.env.get("STORVSP_FUZZ_TRACE")) {
    console.log(
      `fuzz: ${sent} packets, ${replies} replies, ${reopened} channel restarts, ` +
        `${g.device.stats.protocolErrors} protocol errors in ` +
        `${(performance.now() - start).toFixed(0)} ms`,
    );
  }
  assert(sent >= ITERATIONS * 0.8, `only ${sent} packets sent`);
  return sent;
}

/** storvsp: vstor packets and SRBs against real raw and qcow2 backends. */
export const STORVSP_SRBS: FuzzTarget = {
  name: "storvsp-srbs",
  what: "storvsp vstor packets and SRBs (CDBs, lengths, page lists) on real raw and qcow2 files",
  unitInputs: 24_000,
  batch: 8_000,
  run: fuzzStorvsp,
};
