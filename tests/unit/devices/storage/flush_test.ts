/**
 * Durability of the guest's `sync` and the per-disk counters: SYNCHRONIZE CACHE answers GOOD
 * only after the backend's fdatasync returned (raw and qcow2, after every data and metadata write
 * of the writes it covers settled), a failed fdatasync is a sense and not a flush, and
 * `ScsiDisk.stats` / `inflight` count what reached the host.
 */
import { AsyncFile } from "../../../../src/devices/storage/backend/aio.ts";
import type { DiskBackend } from "../../../../src/devices/storage/backend/backend.ts";
import { DiskError } from "../../../../src/devices/storage/backend/backend.ts";
import { createDisk } from "../../../../src/devices/storage/backend/create.ts";
import { Qcow2Backend } from "../../../../src/devices/storage/backend/qcow2.ts";
import { RawFileBackend } from "../../../../src/devices/storage/backend/raw.ts";
import { ScsiDisk } from "../../../../src/devices/storage/scsi/disk.ts";
import type { ScsiResult } from "../../../../src/devices/storage/scsi/sense.ts";
import {
  assert,
  assertEquals,
  be32,
  linearBuffer,
  MemoryBackend,
  pattern,
  tempDir,
} from "./helpers.ts";

const SYNC10 = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

function run(disk: ScsiDisk, cdb: readonly number[], data: Uint8Array = new Uint8Array(0)) {
  return disk.execute({
    cdb: Uint8Array.from(cdb),
    data: linearBuffer(data, Math.max(1, data.length / 4096)),
    dataLength: data.length,
  });
}

const write10 = (lba: number, blocks: number, fua = false) => [
  0x2a,
  fua ? 0x08 : 0,
  ...be32(lba),
  0,
  blocks >> 8,
  blocks & 0xff,
  0,
];
const read10 = (
  lba: number,
  blocks: number,
) => [0x28, 0, ...be32(lba), 0, blocks >> 8, blocks & 0xff, 0];

/**
 * Instruments `AsyncFile` (all backends' file I/O): counts writes in flight, records what was in
 * flight when each fdatasync started, and holds each fdatasync until `release()`.
 */
function instrumentFiles() {
  const proto = AsyncFile.prototype;
  const orig = { write: proto.write, writev: proto.writev, datasync: proto.datasync };
  let writing = 0;
  const syncs: { writesInFlight: number; returned: boolean }[] = [];
  const gates: (() => void)[] = [];
  const track = <A extends unknown[]>(fn: (this: AsyncFile, ...a: A) => Promise<void>) =>
    async function (this: AsyncFile, ...a: A): Promise<void> {
      writing++;
      try {
        await fn.apply(this, a);
      } finally {
        writing--;
      }
    };
  proto.write = track(orig.write);
  proto.writev = track(orig.writev);
  proto.datasync = async function (this: AsyncFile): Promise<void> {
    const rec = { writesInFlight: writing, returned: false };
    syncs.push(rec);
    await new Promise<void>((r) => gates.push(r));
    await orig.datasync.call(this);
    rec.returned = true;
  };
  return {
    syncs,
    release() {
      for (const g of gates.splice(0)) g();
    },
    [Symbol.dispose]() {
      Object.assign(proto, orig);
    },
  };
}

async function settleTicks(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setTimeout(r, 1));
}

async function syncAfterWrites(backend: DiskBackend): Promise<void> {
  using files = instrumentFiles();
  const disk = new ScsiDisk(backend);
  // Writes that allocate (qcow2: data, refcounts, L2, L1).
  const data = pattern(64 * 1024, 5);
  const w = await Promise.all([
    run(disk, write10(0, 128), data),
    run(disk, write10(1000, 128), data),
  ]);
  for (const r of w) assertEquals(r.scsiStatus, 0);
  let answered: ScsiResult | undefined;
  const p = run(disk, SYNC10).then((r) => answered = r);
  await settleTicks();
  assertEquals(files.syncs.length, 1, "fdatasync started");
  assertEquals(files.syncs[0]!.writesInFlight, 0, "every write of the completed commands settled");
  assertEquals(answered, undefined, "no answer before fdatasync returned");
  assertEquals(disk.stats.flushes, 0);
  assertEquals(disk.inflight, 1);
  files.release();
  await p;
  assert(files.syncs[0]!.returned);
  assertEquals(answered!.scsiStatus, 0);
  assertEquals(disk.stats.flushes, 1);
  // A FUA write answers after its own fdatasync too.
  let fua: ScsiResult | undefined;
  const f = run(disk, write10(5000, 8, true), data.subarray(0, 4096)).then((r) => fua = r);
  await settleTicks();
  assertEquals(fua, undefined);
  files.release();
  await f;
  assertEquals([fua!.scsiStatus, disk.stats.flushes], [0, 2]);
  backend.close();
}

Deno.test("raw: SYNCHRONIZE CACHE and FUA answer only after fdatasync returned", async () => {
  using dir = tempDir();
  const path = `${dir.path}/s.raw`;
  Deno.writeFileSync(path, new Uint8Array(4 << 20));
  await syncAfterWrites(RawFileBackend.open(path));
});

Deno.test("qcow2: SYNCHRONIZE CACHE answers after fdatasync, which starts after all metadata writes", async () => {
  using dir = tempDir();
  const path = `${dir.path}/s.qcow2`;
  await createDisk(path, 4 << 20, { format: "qcow2" });
  await syncAfterWrites(await Qcow2Backend.open(path));
});

Deno.test("scsi stats: reads, writes, flushes, bytes and commands in flight", async () => {
  const mem = new MemoryBackend(1 << 20);
  const disk = new ScsiDisk(mem);
  assertEquals(disk.stats, { reads: 0, writes: 0, flushes: 0, bytesRead: 0, bytesWritten: 0 });
  assertEquals((await run(disk, write10(0, 8), pattern(4096, 1))).scsiStatus, 0);
  assertEquals((await run(disk, read10(0, 16), new Uint8Array(8192))).scsiStatus, 0);
  assertEquals((await run(disk, read10(8, 1), new Uint8Array(512))).scsiStatus, 0);
  assertEquals((await run(disk, SYNC10)).scsiStatus, 0);
  assertEquals(disk.stats, {
    reads: 2,
    writes: 1,
    flushes: 1,
    bytesRead: 8704,
    bytesWritten: 4096,
  });
  // WRITE SAME counts as a write of every block it wrote.
  const ws = [0x41, 0, ...be32(100), 0, 0, 4, 0];
  assertEquals((await run(disk, ws, new Uint8Array(512).fill(7))).scsiStatus, 0);
  assertEquals([disk.stats.writes, disk.stats.bytesWritten], [2, 4096 + 2048]);
  // Failures are not counted.
  mem.failNext = new DiskError("io", "injected");
  assertEquals((await run(disk, SYNC10)).scsiStatus, 2);
  mem.failNext = new DiskError("io", "injected");
  assertEquals((await run(disk, read10(0, 1), new Uint8Array(512))).scsiStatus, 2);
  assertEquals([disk.stats.flushes, disk.stats.reads], [1, 2]);
  // In flight while the backend works.
  mem.delayMs = 20;
  const p = run(disk, read10(0, 1), new Uint8Array(512));
  const q = run(disk, SYNC10);
  assertEquals(disk.inflight, 2);
  await Promise.all([p, q]);
  assertEquals([disk.inflight, disk.stats.reads, disk.stats.flushes], [0, 3, 2]);
  // A read-only unit has nothing to flush: SYNCHRONIZE CACHE is GOOD, no fdatasync counted.
  const ro = new ScsiDisk(new MemoryBackend(1 << 20), { readOnly: true });
  assertEquals((await run(ro, SYNC10)).scsiStatus, 0);
  assertEquals(ro.stats.flushes, 0);
});
