/**
 * Scatter/gather I/O: `AsyncFile.readv`/`writev` (preadv/pwritev, IOV_MAX chunks, end of file),
 * raw and qcow2 `readv`/`writev` over scattered guest-like page lists compared byte for byte with
 * plain file reads, the SCSI target passing page lists through without a bounce copy, and raw
 * O_DIRECT with page lists (aligned, mid-sector, refused file systems).
 */
import { AsyncFile, stepOver } from "../../../../src/devices/storage/backend/aio.ts";
import { createDisk } from "../../../../src/devices/storage/backend/create.ts";
import { Qcow2Backend } from "../../../../src/devices/storage/backend/qcow2.ts";
import { RawFileBackend } from "../../../../src/devices/storage/backend/raw.ts";
import { Segments } from "../../../../src/devices/storage/backend/segments.ts";
import { ScsiDisk } from "../../../../src/devices/storage/scsi/disk.ts";
import { UsageError } from "../../../../src/util/errors.ts";
import {
  assert,
  assertEquals,
  assertRejects,
  diskTempDir,
  fsTypeOf,
  haveQemuImg,
  linearBuffer,
  MemoryBackend,
  pattern,
  qemuImg,
  tempDir,
} from "./helpers.ts";

const PAGE = 4096;
/** Page-list lengths the task names: one page, the old direct limit and one past it, many, > IOV_MAX. */
const COUNTS = [1, 8, 9, 300, 1100, 2100];

/**
 * `count` guest-like page views scattered over an arena in descending order with gaps (never
 * host-contiguous), covering `bytes` bytes starting `first` bytes into the first page.
 */
function scatteredPages(count: number, first = 0, bytes = count * PAGE - first): Uint8Array[] {
  const arena = new Uint8Array((count * 2 + 1) * PAGE);
  const parts: Uint8Array[] = [];
  let left = bytes;
  for (let i = 0; i < count && left > 0; i++) {
    const page = (count - i) * 2 * PAGE; // descending, one page gap between neighbours
    const start = i === 0 ? first : 0;
    const n = Math.min(PAGE - start, left);
    parts.push(arena.subarray(page + start, page + start + n));
    left -= n;
  }
  return parts;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const s = new Segments(parts);
  const out = new Uint8Array(s.length);
  s.copyOut(0, out);
  return out;
}

function fillParts(parts: readonly Uint8Array[], bytes: Uint8Array): void {
  new Segments(parts).copyIn(0, bytes);
}

Deno.test("aio: readv/writev over 1, 8, 9, 300, 1100 and 2100 scattered pages match plain file I/O", async () => {
  using dir = tempDir();
  const path = `${dir.path}/v.raw`;
  const size = (2100 + 8) * PAGE;
  Deno.writeFileSync(path, pattern(size, 7));
  using f = AsyncFile.open(path);
  for (const count of COUNTS) {
    // A buffer that starts 512 bytes into its first page and ends 512 bytes into its last.
    const bytes = (count - 1) * PAGE + (count === 1 ? 1024 : 512);
    const parts = scatteredPages(count, 512, bytes);
    const offset = 3 * PAGE + 512;
    const n = await f.readv(parts, offset);
    assertEquals(n, bytes, `${count} pages: bytes read`);
    const file = Deno.readFileSync(path);
    assert(
      concat(parts).every((b, i) => b === file[offset + i]),
      `${count} pages: data differs from the file`,
    );
    const data = pattern(bytes, 100 + count);
    fillParts(parts, data);
    await f.writev(parts, offset + 1000);
    const after = Deno.readFileSync(path);
    assert(
      data.every((b, i) => b === after[offset + 1000 + i]),
      `${count} pages: file differs from what was written`,
    );
  }
});

Deno.test("aio: readv stops at end of file mid-page and returns the bytes read", async () => {
  using dir = tempDir();
  const path = `${dir.path}/short.raw`;
  const content = pattern(10_000, 3);
  Deno.writeFileSync(path, content);
  using f = AsyncFile.open(path, { readOnly: true });
  const parts = scatteredPages(4);
  assertEquals(await f.readv(parts, 0), 10_000);
  assertEquals(concat(parts).subarray(0, 10_000), content);
  // Past the end: nothing.
  assertEquals(await f.readv(scatteredPages(2), 20_000), 0);
  // Empty views are skipped.
  const mixed = [new Uint8Array(0), new Uint8Array(100), new Uint8Array(0)];
  assertEquals(await f.readv(mixed, 0), 100);
  assertEquals(mixed[1], content.subarray(0, 100));
});

Deno.test("aio: a short transfer resumes inside the part where it stopped", () => {
  const parts = [new Uint8Array(100), new Uint8Array(0), new Uint8Array(50), new Uint8Array(10)];
  assertEquals(stepOver(parts, 0, 0, 0), [0, 0]);
  assertEquals(stepOver(parts, 0, 0, 30), [0, 30]); // inside the first part
  assertEquals(stepOver(parts, 0, 30, 70), [1, 0]); // exactly its end
  assertEquals(stepOver(parts, 0, 30, 71), [2, 1]); // past the empty one, 1 byte into the third
  assertEquals(stepOver(parts, 2, 1, 49), [3, 0]);
  assertEquals(stepOver(parts, 3, 0, 10), [4, 0]); // all done
});

Deno.test("raw: readv past a file that shrank zero-fills; writev then readv round-trips 2100 pages", async () => {
  using dir = tempDir();
  const path = `${dir.path}/shrink.raw`;
  Deno.writeFileSync(path, pattern(4 * PAGE, 9));
  const b = RawFileBackend.open(path);
  Deno.truncateSync(path, 10_000);
  const parts = scatteredPages(4);
  for (const p of parts) p.fill(0xff);
  await b.readv(0, parts);
  const got = concat(parts);
  assertEquals(got.subarray(0, 10_000), pattern(4 * PAGE, 9).subarray(0, 10_000));
  assert(got.subarray(10_000).every((x) => x === 0), "past end of file reads as zeros");
  b.close();

  const big = `${dir.path}/big.raw`;
  Deno.writeFileSync(big, new Uint8Array(2200 * PAGE));
  const r = RawFileBackend.open(big);
  const data = pattern(2100 * PAGE, 11);
  const src = scatteredPages(2100);
  fillParts(src, data);
  await r.writev(PAGE, src);
  const dst = scatteredPages(2100);
  await r.readv(PAGE, dst);
  assertEquals(concat(dst), data);
  assertEquals(Deno.readFileSync(big).subarray(PAGE, PAGE + data.length), data);
  r.close();
});

Deno.test("qcow2: readv/writev over scattered pages across clusters, allocated or not", async () => {
  using dir = tempDir();
  const path = `${dir.path}/v.qcow2`;
  const size = 8 << 20;
  await createDisk(path, size, { format: "qcow2", clusterSize: 65536 });
  const q = await Qcow2Backend.open(path);
  const model = new Uint8Array(size);
  // First write allocates (partial clusters at both ends); the second overlaps allocated and
  // unallocated clusters; reads cover holes, allocated runs and partial clusters.
  const writes: [number, number][] = [[65536 - 512, 300], [3 * 65536 + 1024, 1100], [
    100 * 512,
    9,
  ]];
  for (const [offset, count] of writes) {
    const data = pattern(count * PAGE, offset);
    const src = scatteredPages(count);
    fillParts(src, data);
    await q.writev(offset, src);
    model.set(data, offset);
  }
  for (const [offset, count] of [[0, 300], [65536 - 4096, 1100], [7 << 20, 8], [512, 1]]) {
    const dst = scatteredPages(count!);
    for (const p of dst) p.fill(0xee);
    await q.readv(offset!, dst);
    assertEquals(
      concat(dst),
      model.subarray(offset!, offset! + count! * PAGE),
      `read at ${offset}`,
    );
  }
  await q.flush();
  q.close();
  if (haveQemuImg()) {
    const c = qemuImg("check", path);
    assertEquals(c.code, 0, c.out);
    const raw = `${dir.path}/v.raw`;
    assertEquals(qemuImg("convert", "-O", "raw", path, raw).code, 0);
    assertEquals(Deno.readFileSync(raw), model);
  }
});

Deno.test({
  name: "qcow2: readv reads unallocated clusters through the backing file into scattered pages",
  ignore: !haveQemuImg(),
  fn: async () => {
    using dir = tempDir();
    const base = `${dir.path}/base.raw`;
    const content = pattern(4 << 20, 21);
    Deno.writeFileSync(base, content);
    const top = `${dir.path}/top.qcow2`;
    const r = qemuImg("create", "-f", "qcow2", "-b", base, "-F", "raw", top, "8M");
    assertEquals(r.code, 0, r.out);
    const q = await Qcow2Backend.open(top);
    const model = new Uint8Array(8 << 20);
    model.set(content);
    const data = pattern(9 * PAGE, 22);
    const src = scatteredPages(9);
    fillParts(src, data);
    await q.writev(65536 + 700, src); // partial cluster merged over backing data
    model.set(data, 65536 + 700);
    const dst = scatteredPages(1100, 0);
    await q.readv((4 << 20) - 300 * PAGE, dst); // crosses the backing file's end
    const at = (4 << 20) - 300 * PAGE;
    assertEquals(concat(dst), model.subarray(at, at + 1100 * PAGE));
    const d2 = scatteredPages(40);
    await q.readv(0, d2);
    assertEquals(concat(d2), model.subarray(0, 40 * PAGE));
    q.close();
  },
});

/** A memory disk that records how many views each readv/writev received. */
class CountingBackend extends MemoryBackend {
  readonly vectors: number[] = [];
  override readv(offset: number, dst: readonly Uint8Array[]): Promise<void> {
    this.vectors.push(dst.length);
    return super.readv(offset, dst);
  }
  override writev(offset: number, src: readonly Uint8Array[]): Promise<void> {
    this.vectors.push(src.length);
    return super.writev(offset, src);
  }
}

function rw10(op: number, lba: number, blocks: number): Uint8Array {
  return new Uint8Array([
    op,
    0,
    lba >>> 24,
    (lba >>> 16) & 0xff,
    (lba >>> 8) & 0xff,
    lba & 0xff,
    0,
    blocks >> 8,
    blocks & 0xff,
    0,
  ]);
}

Deno.test("scsi: READ/WRITE with 9 and 300 scattered pages go to the backend as page lists, no bounce", async () => {
  const backend = new CountingBackend(4 << 20);
  backend.bytes.set(pattern(4 << 20, 31));
  const disk = new ScsiDisk(backend, { maxTransferBytes: 2 << 20 });
  for (const count of [9, 300]) {
    const parts = scatteredPages(count);
    const bytes = count * PAGE;
    const buf = {
      length: bytes,
      segments: parts,
      read: (o: number, d: Uint8Array) => new Segments(parts).copyOut(o, d),
      write: (o: number, s: Uint8Array) => new Segments(parts).copyIn(o, s),
    };
    const r = await disk.execute({ cdb: rw10(0x28, 8, bytes / 512), data: buf, dataLength: bytes });
    assertEquals(r.scsiStatus, 0);
    assertEquals(backend.vectors.at(-1), count);
    assertEquals(concat(parts), backend.bytes.subarray(8 * 512, 8 * 512 + bytes));
    const data = pattern(bytes, count);
    fillParts(parts, data);
    const w = await disk.execute({
      cdb: rw10(0x2a, 16, bytes / 512),
      data: buf,
      dataLength: bytes,
    });
    assertEquals(w.scsiStatus, 0);
    assertEquals(backend.vectors.at(-1), count);
    assertEquals(backend.bytes.subarray(16 * 512, 16 * 512 + bytes), data);
  }
  // A buffer without known segments still works (one bounce copy).
  const flat = new Uint8Array(PAGE);
  const r = await disk.execute({
    cdb: rw10(0x28, 0, 8),
    data: { length: PAGE, read: linearBuffer(flat).read, write: linearBuffer(flat).write },
    dataLength: PAGE,
  });
  assertEquals(r.scsiStatus, 0);
  assertEquals(flat, backend.bytes.subarray(0, PAGE));
});

Deno.test("raw O_DIRECT: page lists straight, mid-sector buffers bounced, all byte-exact", async (t) => {
  using dir = diskTempDir();
  const path = `${dir.path}/direct.raw`;
  const size = 2200 * PAGE;
  const content = pattern(size, 41);
  Deno.writeFileSync(path, content);
  let b: RawFileBackend;
  try {
    b = RawFileBackend.open(path, { direct: true });
  } catch (e) {
    console.warn(`O_DIRECT unavailable in ${dir.path} (${(e as Error).message}); skipped`);
    return;
  }
  const model = content.slice();
  await t.step("page-aligned page lists of 1, 8, 9, 300, 1100, 2100 pages", async () => {
    for (const count of COUNTS) {
      const dst = scatteredPages(count);
      await b.readv(PAGE, dst);
      assertEquals(concat(dst), model.subarray(PAGE, PAGE + count * PAGE), `${count} pages`);
      const data = pattern(count * PAGE, 50 + count);
      fillParts(dst, data);
      await b.writev(2 * PAGE, dst);
      model.set(data, 2 * PAGE);
    }
  });
  await t.step("512-byte aligned sectors inside pages go straight too", async () => {
    const dst = scatteredPages(9, 512, 9 * PAGE - 1024);
    await b.readv(512 * 3, dst);
    assertEquals(concat(dst), model.subarray(1536, 1536 + 9 * PAGE - 1024));
  });
  await t.step(
    "buffers off 512-byte alignment are bounced, 1-sector transfers included",
    async () => {
      const arena = new Uint8Array(3 * PAGE);
      const parts = [arena.subarray(7, 7 + 512), arena.subarray(PAGE + 100, PAGE + 100 + 1536)];
      await b.readv(512 * 5, parts);
      assertEquals(concat(parts), model.subarray(2560, 2560 + 2048));
      const one = arena.subarray(2 * PAGE + 3, 2 * PAGE + 3 + 512);
      one.set(pattern(512, 77));
      await b.writev(512 * 9, [one]);
      model.set(one, 512 * 9);
    },
  );
  await b.flush();
  b.close();
  assertEquals(Deno.readFileSync(path), model);
});

Deno.test("raw O_DIRECT: a file system that refuses it (EINVAL at open) gives a clear error", async () => {
  // procfs has no direct I/O: open(O_DIRECT) fails with EINVAL, as tmpfs does before Linux 6.6.
  await assertRejects(
    () => RawFileBackend.open("/proc/version", { direct: true, readOnly: true }),
    UsageError,
    /cannot use O_DIRECT on disk image '\/proc\/version'.*EINVAL.*drop direct=on/,
  );
  // tmpfs: refused with the same message on old kernels, works on new ones.
  if (fsTypeOf("/dev/shm") === "tmpfs") {
    const path = `/dev/shm/hyperdeno-direct-${Deno.pid}.raw`;
    Deno.writeFileSync(path, pattern(8 * PAGE, 5));
    try {
      const b = RawFileBackend.open(path, { direct: true });
      const dst = scatteredPages(2);
      await b.readv(0, dst);
      assertEquals(concat(dst), pattern(8 * PAGE, 5).subarray(0, 2 * PAGE));
      b.close();
    } catch (e) {
      assert(e instanceof UsageError && /O_DIRECT.*EINVAL/.test(e.message), String(e));
    } finally {
      Deno.removeSync(path);
    }
  }
});
