/**
 * Fuzz target (`tests/fuzz/mod.ts`): qcow2 images with hostile metadata. A small image with
 * 512-byte clusters (so its L1, L2 and refcount structures sit in a few dozen clusters) is made
 * and written through `Qcow2Backend`; each input is a copy with header fields, table entries and
 * metadata bytes mutated (offsets past the end of the file or the 2^56 limit, unaligned
 * offsets, compressed/zero/copied flags, sizes, refcount orders, feature bits), written to a
 * file, opened and, when it opens, read, written, discarded and flushed at random. Invariants:
 * opening fails only with a usage error (one clear line), I/O fails only with a `DiskError`,
 * nothing else escapes, and no backend write reaches a file offset past `WRITE_LIMIT`
 * (`file_guard.ts`; reads past the end of the file read
 * nothing, and the backend must reject what it got).
 * @module
 */
import { createDisk, DiskError, Qcow2Backend } from "../../../src/devices/storage/backend/mod.ts";
import { HeaderField } from "../../../src/devices/storage/backend/qcow2_format.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { prng, type Rng } from "../../unit/prng.ts";
import { guardFile, takeFileViolations, unguardFile } from "../file_guard.ts";
import type { FuzzTarget } from "../target.ts";

const VIRTUAL = 1 << 20;
const CLUSTER = 512;
/**
 * How far past the image a write may go. Hostile refcounts can legitimately push allocation
 * past the end of the file (every cluster they cover reads as used), but never beyond what a
 * refcount table can cover for an image this size; 1 GiB is far above that and far below the
 * 2^40 or 2^56 offsets a hostile table entry names.
 */
const WRITE_LIMIT = 1 << 30;

const U64S = [
  0n,
  1n,
  0x200n,
  0x201n,
  0x10000n,
  0xfff_ffffn,
  1n << 40n,
  (1n << 56n) - 0x200n,
  1n << 56n,
  1n << 62n,
  1n << 63n,
  (1n << 63n) | 0x400n,
  (1n << 64n) - 1n,
];
const U32S = [0, 1, 2, 3, 4, 6, 7, 9, 16, 21, 22, 63, 64, 0x8000, 0xffff, 0x7fff_ffff, 0xffff_ffff];

/** The template image: written through the backend so every kind of metadata exists. */
async function template(dir: string): Promise<Uint8Array> {
  const path = `${dir}/template.qcow2`;
  await createDisk(path, VIRTUAL, { format: "qcow2", clusterSize: CLUSTER });
  const img = await Qcow2Backend.open(path);
  const chunk = new Uint8Array(4096).fill(0x33);
  for (const at of [0, 65536, 300_000, VIRTUAL - 4096]) await img.write(at, chunk);
  await img.discard(65536, 4096);
  await img.flush();
  img.close();
  return await Deno.readFile(path);
}

function mutate(rng: Rng, image: Uint8Array): Uint8Array {
  const b = image.slice();
  const dv = new DataView(b.buffer);
  const fields = Object.values(HeaderField);
  for (let k = 1 + rng.int(4); k > 0; k--) {
    switch (rng.int(5)) {
      case 0: { // a header field
        const at = rng.pick(fields);
        if (at === HeaderField.VERSION || at === HeaderField.CLUSTER_BITS) {
          dv.setUint32(at, rng.pick(U32S));
        } else if ([8, 24, 40, 48, 64, 72, 80, 88].includes(at)) {
          dv.setBigUint64(at, rng.pick(U64S));
        } else dv.setUint32(at, rng.pick(U32S));
        break;
      }
      case 1:
      case 2: { // a table entry in the metadata clusters
        const at = CLUSTER + rng.int((Math.min(b.length, 64 * CLUSTER) - CLUSTER) >> 3) * 8;
        const r = rng.int(4);
        const v = r === 0
          ? rng.pick(U64S)
          : r === 1
          ? dv.getBigUint64(at) ^ (1n << BigInt(rng.int(64)))
          : r === 2
          ? (1n << 63n) | BigInt(rng.int(b.length * 2))
          : BigInt(rng.int(b.length + 4096));
        dv.setBigUint64(at, v);
        break;
      }
      case 3: // refcount bytes
        dv.setUint16(
          CLUSTER + rng.int(Math.min(b.length, 64 * CLUSTER) - CLUSTER - 2),
          rng.int(0x10000),
        );
        break;
      default: // any byte
        b[rng.int(b.length)] = rng.int(256);
    }
  }
  return b;
}

async function expectDiskError(p: Promise<unknown>, what: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof DiskError)) {
      throw new Error(`${what} failed with ${(e as Error).stack ?? e}, not a DiskError`);
    }
  }
}

async function fuzzQcow2(seed: number, inputs: number): Promise<number> {
  const rng = prng(seed);
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-fuzz-qcow2-" });
  try {
    const base = await template(dir);
    const path = `${dir}/hostile.qcow2`;
    let opened = 0;
    for (let i = 0; i < inputs; i++) {
      const image = mutate(rng, base);
      await Deno.writeFile(path, image);
      guardFile(path, WRITE_LIMIT, { reads: false });
      let img: Qcow2Backend | undefined;
      try {
        img = await Qcow2Backend.open(path, { readOnly: rng.chance(0.2) });
      } catch (e) {
        if (!(e instanceof UsageError)) {
          throw new Error(`input ${i}: open failed with ${(e as Error).stack ?? e}`);
        }
        if (e.message.includes("\n")) throw new Error(`input ${i}: two-line error ${e.message}`);
      }
      if (img) {
        opened++;
        const size = Math.min(img.size, 4 * VIRTUAL);
        for (let k = 1 + rng.int(6); k > 0; k--) {
          const len = rng.pick([512, 4096, 65536, 512 * rng.int(9)]);
          const at = rng.chance(0.9)
            ? rng.int(Math.max(1, size / 512)) * 512
            : rng.pick([img.size - 512, img.size, -512, 2 ** 53]);
          const buf = new Uint8Array(len).fill(rng.int(256));
          switch (rng.int(6)) {
            case 0:
            case 1:
              await expectDiskError(img.read(at, buf), `input ${i}: read ${at}+${len}`);
              break;
            case 2:
              await expectDiskError(img.write(at, buf), `input ${i}: write ${at}+${len}`);
              break;
            case 3:
              await expectDiskError(
                img.writev(at, [buf.subarray(0, len >> 1), buf.subarray(len >> 1)]),
                `input ${i}: writev ${at}+${len}`,
              );
              break;
            case 4:
              await expectDiskError(img.discard(at, len), `input ${i}: discard ${at}+${len}`);
              break;
            default:
              await expectDiskError(img.flush(), `input ${i}: flush`);
          }
        }
        img.close();
      }
      unguardFile(path);
      const violations = takeFileViolations();
      if (violations.length > 0) {
        throw new Error(`input ${i}: backend I/O outside the image: ${violations.join("; ")}`);
      }
    }
    if (inputs >= 200 && opened === 0) throw new Error("no mutated image ever opened");
    return inputs;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** qcow2 images with hostile metadata. */
export const QCOW2_METADATA: FuzzTarget = {
  name: "qcow2-metadata",
  what: "qcow2 images with hostile metadata: opened, then read, written, discarded, flushed",
  unitInputs: 2_000,
  batch: 1_000,
  run: fuzzQcow2,
};
