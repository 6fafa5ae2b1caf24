/**
 * Storage backend throughput beside plain Deno file I/O on the same file, in the same run:
 * sequential 1 MiB and random 4 KiB reads and writes (random ones 16 in flight) through
 * `RawFileBackend`, `Qcow2Backend` (fully allocated, so no allocation cost) and the SCSI target
 * (READ(10)/WRITE(10) into a scattered 4 KiB-page buffer, as from a guest), next to `Deno.FsFile`
 * seek+read/write. The `sg-*` groups put scattered guest page lists (9 pages, 16 in flight; 256
 * pages) through the SCSI target over raw and qcow2 beside the same bytes into one linear buffer.
 * Compare within a group; absolute numbers depend on the host.
 *
 * Run: `deno bench -A bench/storage_bench.ts`.
 */
import { Qcow2Backend } from "../src/devices/storage/backend/qcow2.ts";
import { RawFileBackend } from "../src/devices/storage/backend/raw.ts";
import { createDisk } from "../src/devices/storage/backend/create.ts";
import { type ScsiBuffer, ScsiDisk } from "../src/devices/storage/scsi/disk.ts";

const SIZE = 64 << 20;
const SEQ = 1 << 20;
const SEQ_COUNT = 16; // 16 MiB per iteration
const RAND = 4096;
const RAND_COUNT = 256; // 1 MiB per iteration
const QD = 16;

const dir = Deno.makeTempDirSync({ prefix: "hyperdeno-bench-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const rawPath = `${dir}/disk.raw`;
const qPath = `${dir}/disk.qcow2`;
{
  const data = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i += 4096) data[i] = i & 0xff;
  Deno.writeFileSync(rawPath, data);
  await createDisk(qPath, SIZE, { format: "qcow2" });
  const q = await Qcow2Backend.open(qPath);
  for (let at = 0; at < SIZE; at += 4 << 20) await q.write(at, data.subarray(at, at + (4 << 20)));
  q.close();
}
const raw = RawFileBackend.open(rawPath);
const qcow2 = await Qcow2Backend.open(qPath);
const file = await Deno.open(rawPath, { read: true, write: true });
const scsi = new ScsiDisk(RawFileBackend.open(rawPath), { maxTransferBytes: 1 << 20 });

const buf = new Uint8Array(SEQ);
const bufs = Array.from({ length: QD }, () => new Uint8Array(RAND));
let seed = 1;
function rndOffset(): number {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return (seed % (SIZE / RAND)) * RAND;
}

/** A scattered guest-like buffer: 4 KiB pages out of order in a larger arena. */
function scattered(bytes: number): ScsiBuffer {
  const pages = bytes / 4096;
  const arena = new Uint8Array(pages * 2 * 4096);
  const segments = Array.from({ length: pages }, (_, i) => {
    const p = (pages * 2 - 2 - 2 * i) * 4096;
    return arena.subarray(p, p + 4096);
  });
  const at = (o: number) => [Math.floor(o / 4096), o % 4096] as const;
  return {
    length: bytes,
    segments,
    read(o, dst) {
      for (let d = 0; d < dst.length;) {
        const [i, off] = at(o + d);
        const n = Math.min(4096 - off, dst.length - d);
        dst.set(segments[i]!.subarray(off, off + n), d);
        d += n;
      }
    },
    write(o, src) {
      for (let d = 0; d < src.length;) {
        const [i, off] = at(o + d);
        const n = Math.min(4096 - off, src.length - d);
        segments[i]!.set(src.subarray(d, d + n), off);
        d += n;
      }
    },
  };
}
const sgSeq = scattered(SEQ);
const sgRand = Array.from({ length: QD }, () => scattered(RAND));

function cdb(op: number, lba: number, blocks: number): Uint8Array {
  return new Uint8Array([
    op,
    0,
    (lba >>> 24) & 0xff,
    (lba >>> 16) & 0xff,
    (lba >>> 8) & 0xff,
    lba & 0xff,
    0,
    (blocks >> 8) & 0xff,
    blocks & 0xff,
    0,
  ]);
}

async function fsRead(off: number, dst: Uint8Array): Promise<void> {
  await file.seek(off, Deno.SeekMode.Start);
  let done = 0;
  while (done < dst.length) {
    const n = await file.read(dst.subarray(done));
    if (n === null) break;
    done += n;
  }
}

async function fsWrite(off: number, src: Uint8Array): Promise<void> {
  await file.seek(off, Deno.SeekMode.Start);
  let done = 0;
  while (done < src.length) done += await file.write(src.subarray(done));
}

type Io = (off: number, b: Uint8Array, slot: number) => Promise<unknown>;

const targets: [string, Io, Io][] = [
  ["Deno.FsFile seek+read/write", (o, b) => fsRead(o, b), (o, b) => fsWrite(o, b)],
  ["RawFileBackend", (o, b) => raw.read(o, b), (o, b) => raw.write(o, b)],
  ["Qcow2Backend", (o, b) => qcow2.read(o, b), (o, b) => qcow2.write(o, b)],
  [
    "ScsiDisk READ/WRITE(10) over raw",
    (o, b, s) =>
      scsi.execute({
        cdb: cdb(0x28, o / 512, b.length / 512),
        data: b.length === SEQ ? sgSeq : sgRand[s]!,
        dataLength: b.length,
      }),
    (o, b, s) =>
      scsi.execute({
        cdb: cdb(0x2a, o / 512, b.length / 512),
        data: b.length === SEQ ? sgSeq : sgRand[s]!,
        dataLength: b.length,
      }),
  ],
];

for (const [name, read, write] of targets) {
  const baseline = name.startsWith("Deno.");
  Deno.bench(
    `seq read 16 MiB (1 MiB requests): ${name}`,
    { group: "seq-read", baseline },
    async () => {
      for (let i = 0; i < SEQ_COUNT; i++) await read(i * SEQ, buf, 0);
    },
  );
  Deno.bench(
    `seq write 16 MiB (1 MiB requests): ${name}`,
    { group: "seq-write", baseline },
    async () => {
      for (let i = 0; i < SEQ_COUNT; i++) await write(i * SEQ, buf, 0);
    },
  );
  // Deno.FsFile has one file position: its random I/O runs one request at a time.
  const qd = baseline ? 1 : QD;
  Deno.bench(
    `rand read 1 MiB (4 KiB, ${qd} in flight): ${name}`,
    { group: "rand-read", baseline },
    async () => {
      for (let i = 0; i < RAND_COUNT; i += qd) {
        await Promise.all(bufs.slice(0, qd).map((b, s) => read(rndOffset(), b, s)));
      }
    },
  );
  Deno.bench(`rand write 1 MiB (4 KiB, ${qd} in flight): ${name}`, {
    group: "rand-write",
    baseline,
  }, async () => {
    for (let i = 0; i < RAND_COUNT; i += qd) {
      await Promise.all(bufs.slice(0, qd).map((b, s) => write(rndOffset(), b, s)));
    }
  });
}

// Scattered page lists through the SCSI target beside one linear buffer of the same size.
const SG9 = 9 * 4096;
const lin9 = Array.from({ length: QD }, () => new Uint8Array(SG9));
const sg9 = Array.from({ length: QD }, () => scattered(SG9));
const scsiQ = new ScsiDisk(await Qcow2Backend.open(qPath), { maxTransferBytes: 1 << 20 });
function sgOffset(len: number): number {
  return Math.floor(rndOffset() / len) * len % (SIZE - len);
}
for (const [dir, op] of [["read", 0x28], ["write", 0x2a]] as const) {
  Deno.bench(`sg ${dir} 9 pages x16 in flight: RawFileBackend, linear buffer`, {
    group: `sg-${dir}-9`,
    baseline: true,
  }, async () => {
    for (let i = 0; i < 64; i += QD) {
      await Promise.all(lin9.map((b) => {
        const o = sgOffset(SG9);
        return dir === "read" ? raw.read(o, b) : raw.write(o, b);
      }));
    }
  });
  for (const [name, disk] of [["raw", scsi], ["qcow2", scsiQ]] as const) {
    Deno.bench(`sg ${dir} 9 pages x16 in flight: ScsiDisk over ${name}, scattered pages`, {
      group: `sg-${dir}-9`,
    }, async () => {
      for (let i = 0; i < 64; i += QD) {
        await Promise.all(
          sg9.map((b) =>
            disk.execute({ cdb: cdb(op, sgOffset(SG9) / 512, SG9 / 512), data: b, dataLength: SG9 })
          ),
        );
      }
    });
    Deno.bench(`sg ${dir} 256 pages: ScsiDisk over ${name}, scattered pages`, {
      group: `sg-${dir}-256`,
    }, async () => {
      for (let i = 0; i < SEQ_COUNT; i++) {
        await disk.execute({
          cdb: cdb(op, (i * SEQ) / 512, SEQ / 512),
          data: sgSeq,
          dataLength: SEQ,
        });
      }
    });
  }
  Deno.bench(`sg ${dir} 256 pages: RawFileBackend, linear buffer`, {
    group: `sg-${dir}-256`,
    baseline: true,
  }, async () => {
    for (let i = 0; i < SEQ_COUNT; i++) {
      await (dir === "read" ? raw.read(i * SEQ, buf) : raw.write(i * SEQ, buf));
    }
  });
}
