/**
 * Disk backends: raw files (positional I/O, concurrent requests, hole punching, O_DIRECT),
 * qcow2 images against qemu-img (created by it, written here, checked by it; backing files;
 * compressed clusters), `createDisk`, and bad qcow2 headers byte by byte.
 */
import { UsageError } from "../../../../src/util/errors.ts";
import { DiskError } from "../../../../src/devices/storage/backend/backend.ts";
import { createDisk, parseSize } from "../../../../src/devices/storage/backend/create.ts";
import { Qcow2Backend } from "../../../../src/devices/storage/backend/qcow2.ts";
import { RawFileBackend } from "../../../../src/devices/storage/backend/raw.ts";
import {
  assert,
  assertEquals,
  assertRejects,
  haveQemuImg,
  pattern,
  qemuImg,
  tempDir,
} from "./helpers.ts";

const QEMU = haveQemuImg();
const needQemu = { ignore: !QEMU };
if (!QEMU) console.warn("qemu-img is not installed: qcow2 interoperability tests are skipped");

Deno.test("raw: reads and writes at byte offsets, many in flight", async () => {
  using dir = tempDir();
  const path = `${dir.path}/a.raw`;
  const content = pattern(1 << 20, 1);
  Deno.writeFileSync(path, content);
  const b = RawFileBackend.open(path);
  assertEquals([b.size, b.sectorSize, b.readOnly, b.canDiscard], [1 << 20, 512, false, true]);
  const reads = Array.from({ length: 32 }, (_, i) => {
    const dst = new Uint8Array(4096);
    return b.read(i * 8192 + 512, dst).then(() => ({ i, dst }));
  });
  for (const { i, dst } of await Promise.all(reads)) {
    assertEquals(dst, content.subarray(i * 8192 + 512, i * 8192 + 512 + 4096));
  }
  const data = pattern(65536, 2);
  await Promise.all([b.write(4096, data.subarray(0, 32768)), b.write(36864, data.subarray(32768))]);
  await b.flush();
  assertEquals(Deno.readFileSync(path).subarray(4096, 4096 + 65536), data);
  await assertRejects(() => b.read(b.size - 100, new Uint8Array(512)), DiskError, /outside/);
  b.close();
  b.close();
  const ro = RawFileBackend.open(path, { readOnly: true });
  await assertRejects(() => ro.write(0, new Uint8Array(512)), DiskError, /read-only/);
  ro.close();
});

Deno.test("raw: discard punches holes (st_blocks drops) and reads back zeros", async () => {
  using dir = tempDir();
  const path = `${dir.path}/holes.raw`;
  Deno.writeFileSync(path, pattern(4 << 20, 3));
  const before = Deno.statSync(path).blocks!;
  const b = RawFileBackend.open(path);
  await b.discard(1 << 20, 2 << 20);
  await b.flush();
  const after = Deno.statSync(path).blocks!;
  assert(after < before - 3000, `st_blocks ${before} -> ${after}`);
  assertEquals(Deno.statSync(path).size, 4 << 20);
  const z = new Uint8Array(2 << 20);
  z.fill(1);
  await b.read(1 << 20, z);
  assert(z.every((x) => x === 0));
  b.close();
});

Deno.test("raw: O_DIRECT with aligned and unaligned guest buffers", async (t) => {
  using dir = tempDir();
  const path = `${dir.path}/direct.raw`;
  const content = pattern(1 << 20, 4);
  Deno.writeFileSync(path, content);
  let b: RawFileBackend;
  try {
    b = RawFileBackend.open(path, { direct: true });
  } catch (e) {
    console.warn(`O_DIRECT unavailable here (${(e as Error).message}); skipped`);
    return;
  }
  await t.step("unaligned memory goes through a bounce buffer", async () => {
    const raw = new Uint8Array(8192 + 3);
    const dst = raw.subarray(3, 3 + 8192);
    await b.read(4096, dst);
    assertEquals(dst, content.subarray(4096, 12288));
    const src = pattern(4096, 5);
    const un = new Uint8Array(4096 + 1);
    un.set(src, 1);
    await b.write(8192, un.subarray(1));
    const back = new Uint8Array(4096);
    await b.read(8192, back);
    assertEquals(back, src);
  });
  await t.step("unaligned offsets use the buffered descriptor", async () => {
    const dst = new Uint8Array(100);
    await b.read(1000, dst);
    assertEquals(dst, content.subarray(1000, 1100));
  });
  b.close();
});

Deno.test("raw: open errors are UsageErrors that name the file", async () => {
  using dir = tempDir();
  await assertRejects(
    () => RawFileBackend.open(`${dir.path}/missing.raw`),
    UsageError,
    /does not exist/,
  );
  Deno.writeFileSync(`${dir.path}/tiny.raw`, new Uint8Array(100));
  await assertRejects(
    () => RawFileBackend.open(`${dir.path}/tiny.raw`),
    UsageError,
    /smaller than one/,
  );
  await assertRejects(() => RawFileBackend.open(dir.path), UsageError, /not a regular file/);
});

Deno.test("createDisk: sparse raw, valid qcow2, refuses to overwrite, sizes", async () => {
  using dir = tempDir();
  assertEquals(parseSize("512"), 512);
  assertEquals(parseSize("64K"), 65536);
  assertEquals(parseSize("10G"), 10 * 2 ** 30);
  assertEquals(parseSize("1.5TiB"), 1.5 * 2 ** 40);
  for (const bad of ["", "x", "-1", "10Q", "0"]) {
    await assertRejects(() => parseSize(bad), UsageError);
  }
  const raw = `${dir.path}/r.img`;
  assertEquals(await createDisk(raw, "1G"), 2 ** 30);
  const st = Deno.statSync(raw);
  assertEquals(st.size, 2 ** 30);
  assert(st.blocks! < 64, "raw images are sparse");
  await assertRejects(() => createDisk(raw, "1G"), UsageError, /already exists/);
  assertEquals(await createDisk(raw, 1000, { overwrite: true }), 1024);
  const q = `${dir.path}/q.qcow2`;
  await createDisk(q, "20G", { format: "qcow2" });
  const img = await Qcow2Backend.open(q);
  assertEquals(img.size, 20 * 2 ** 30);
  const d = pattern(70000 * 2, 6).subarray(0, 131072);
  await img.write(5 * 2 ** 30, d);
  const back = new Uint8Array(d.length);
  await img.read(5 * 2 ** 30, back);
  assertEquals(back, d);
  img.close();
  if (QEMU) {
    const r = qemuImg("check", q);
    assertEquals(r.code, 0, r.out);
    assert(/virtual size: 20 GiB/.test(qemuImg("info", q).out));
  }
  await assertRejects(
    () => createDisk(`${dir.path}/x`, "1G", { format: "vmdk" as "raw" }),
    UsageError,
    /not supported/,
  );
});

/** Writes a mix of request shapes through `img` and mirrors them in `expect`. */
async function scribble(img: Qcow2Backend, expect: Uint8Array, seed: number): Promise<void> {
  let x = seed;
  const rnd = (n: number) => {
    x = (x * 1103515245 + 12345) >>> 0;
    return x % n;
  };
  const jobs: Promise<void>[] = [];
  // Requests in flight together never overlap (their order would be undefined).
  const region = img.size / 8;
  for (let i = 0; i < 150; i++) {
    const sectors = 1 + rnd(300);
    const off = (i % 8) * region + rnd(region / 512 - sectors) * 512;
    const data = pattern(sectors * 512, seed + i);
    expect.set(data, off);
    jobs.push(img.write(off, data));
    if (jobs.length === 8) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
}

Deno.test(
  "qcow2: qemu-img created images are read and written here, then pass qemu-img check",
  needQemu,
  async () => {
    using dir = tempDir();
    for (const cluster of ["65536", "4096", "512"]) {
      const path = `${dir.path}/img-${cluster}.qcow2`;
      assertEquals(
        qemuImg("create", "-f", "qcow2", "-o", `cluster_size=${cluster}`, path, "32M").code,
        0,
      );
      const img = await Qcow2Backend.open(path);
      const expect = new Uint8Array(img.size);
      await scribble(img, expect, Number(cluster));
      // Discard whole and partial clusters.
      await img.discard(1 << 20, (2 << 20) + 4096 + 512);
      expect.fill(0, 1 << 20, (3 << 20) + 4096 + 512);
      const got = new Uint8Array(img.size);
      await img.read(0, got);
      assert(got.every((b, i) => b === expect[i]), `contents differ (cluster ${cluster})`);
      await img.flush();
      img.close();
      const chk = qemuImg("check", path);
      assertEquals(chk.code, 0, chk.out);
      assert(/No errors were found/.test(chk.out), chk.out);
      assertEquals(qemuImg("convert", "-O", "raw", path, `${path}.raw`).code, 0);
      assert(
        Deno.readFileSync(`${path}.raw`).every((b, i) => b === expect[i]),
        "qemu reads the same",
      );
    }
  },
);

Deno.test(
  "qcow2: the refcount table grows past its first cluster and stays consistent",
  needQemu,
  async () => {
    using dir = tempDir();
    const path = `${dir.path}/grow.qcow2`;
    assertEquals(qemuImg("create", "-f", "qcow2", "-o", "cluster_size=512", path, "64M").code, 0);
    const img = await Qcow2Backend.open(path);
    const chunk = new Uint8Array(1 << 20);
    for (let i = 0; i < 12; i++) {
      chunk.fill(i + 1);
      await img.write(i << 20, chunk);
    }
    img.close();
    const chk = qemuImg("check", path);
    assertEquals(chk.code, 0, chk.out);
    // The header's refcount_table_clusters (u32 big-endian at 56): 12 MiB in 512-byte clusters
    // needs ~100 refcount blocks, 8 bytes each in the table, more than one 512-byte cluster.
    const header = Deno.readFileSync(path).subarray(0, 64);
    const tableClusters = new DataView(header.buffer, header.byteOffset).getUint32(56);
    assert(tableClusters > 1, `refcount table still ${tableClusters} cluster(s)`);
    const again = await Qcow2Backend.open(path, { readOnly: true });
    const back = new Uint8Array(1 << 20);
    await again.read(11 << 20, back);
    assert(back.every((b) => b === 12));
    again.close();
  },
);

Deno.test(
  "qcow2: backing files (raw and qcow2) are read through; writes stay in the overlay",
  needQemu,
  async () => {
    using dir = tempDir();
    const base = `${dir.path}/base.raw`;
    const content = pattern(8 << 20, 8);
    Deno.writeFileSync(base, content);
    const mid = `${dir.path}/mid.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    assertEquals(qemuImg("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid).code, 0);
    const m = await Qcow2Backend.open(mid);
    const midData = pattern(3000, 9);
    await m.write(65536 * 3 + 100, midData);
    m.close();
    // Top names no backing format: probed.
    assertEquals(qemuImg("create", "-f", "qcow2", "-b", mid, "-F", "qcow2", top, "16M").code, 0);
    const t = await Qcow2Backend.open(top);
    assertEquals(t.size, 16 << 20);
    const expect = new Uint8Array(16 << 20);
    expect.set(content);
    expect.set(midData, 65536 * 3 + 100);
    const partial = pattern(700, 10);
    await t.write(65536 * 3 + 50, partial); // partial cluster: merged over the backing data
    expect.set(partial, 65536 * 3 + 50);
    await t.write((8 << 20) + 512, partial.subarray(0, 512)); // past the backing file's end
    expect.set(partial.subarray(0, 512), (8 << 20) + 512);
    await t.discard(65536 * 10, 65536 * 2); // zero clusters hide the backing data
    expect.fill(0, 65536 * 10, 65536 * 12);
    const got = new Uint8Array(16 << 20);
    await t.read(0, got);
    assert(got.every((b, i) => b === expect[i]), "chain contents");
    t.close();
    assertEquals(Deno.readFileSync(base), content, "the base is untouched");
    assertEquals(qemuImg("check", top).code, 0);
    assertEquals(qemuImg("check", mid).code, 0);
    assertEquals(qemuImg("convert", "-O", "raw", top, `${top}.raw`).code, 0);
    assert(Deno.readFileSync(`${top}.raw`).every((b, i) => b === expect[i]), "qemu agrees");
  },
);

Deno.test(
  "qcow2: compressed clusters fail with a clear error; snapshots open read-only only",
  needQemu,
  async () => {
    using dir = tempDir();
    const raw = `${dir.path}/src.raw`;
    Deno.writeFileSync(raw, new Uint8Array(1 << 20).fill(0x41));
    const c = `${dir.path}/c.qcow2`;
    assertEquals(qemuImg("convert", "-c", "-O", "qcow2", raw, c).code, 0);
    const img = await Qcow2Backend.open(c);
    await assertRejects(
      () => img.read(0, new Uint8Array(512)),
      DiskError,
      /compressed clusters are not supported/,
    );
    await assertRejects(() => img.write(0, new Uint8Array(512)), DiskError, /compressed/);
    img.close();
    const s = `${dir.path}/s.qcow2`;
    assertEquals(qemuImg("create", "-f", "qcow2", s, "1M").code, 0);
    assertEquals(qemuImg("snapshot", "-c", "snap1", s).code, 0);
    await assertRejects(() => Qcow2Backend.open(s), UsageError, /internal snapshot/);
    (await Qcow2Backend.open(s, { readOnly: true })).close();
  },
);

Deno.test("qcow2: every corrupted header byte gives a clear error or a working image, never a crash", async () => {
  using dir = tempDir();
  const good = `${dir.path}/good.qcow2`;
  await createDisk(good, "4M", { format: "qcow2", clusterSize: 4096 });
  {
    const img = await Qcow2Backend.open(good);
    await img.write(8192, pattern(16384, 12));
    img.close();
  }
  const bytes = Deno.readFileSync(good);
  const bad = `${dir.path}/bad.qcow2`;
  let refused = 0;
  let opened = 0;
  const tryImage = async (image: Uint8Array) => {
    Deno.writeFileSync(bad, image);
    let img: Qcow2Backend;
    try {
      img = await Qcow2Backend.open(bad);
    } catch (e) {
      assert(e instanceof UsageError, `open threw ${String(e)}`);
      assert(/bad\.qcow2/.test(e.message), e.message);
      refused++;
      return;
    }
    opened++;
    try {
      for (const off of [0, 8192, 12288, img.size - 512]) {
        const buf = new Uint8Array(512);
        try {
          await img.read(off, buf);
          await img.write(off, buf);
        } catch (e) {
          assert(e instanceof DiskError, `I/O threw ${String(e)}`);
        }
      }
    } finally {
      img.close();
    }
  };
  // Every byte of the header and extension area, three ways; then the metadata clusters.
  for (let i = 0; i < 120; i++) {
    for (const v of [0x00, 0xff, bytes[i]! ^ 0x41]) {
      const m = bytes.slice();
      m[i] = v;
      await tryImage(m);
    }
  }
  for (const at of [4096, 4096 + 7, 8192, 8192 + 1, 3 * 4096, 3 * 4096 + 6, 4 * 4096 + 5]) {
    for (const v of [0xff, 0x01, 0x80]) {
      const m = bytes.slice();
      m[at] = v;
      await tryImage(m);
    }
  }
  // Truncations.
  for (const len of [0, 3, 4, 71, 72, 103, 104, 4095, 4096, 8200]) {
    await tryImage(bytes.slice(0, len));
  }
  assert(refused > 100 && opened > 10, `refused ${refused}, opened ${opened}`);
});
