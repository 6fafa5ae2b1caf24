/**
 * qcow2 metadata that points past the end of the file (found by `deno task fuzz`): the backend
 * refuses it instead of treating the missing table as zeros and later writing it back at the
 * offset the image chose, which grew the host file to 2^40 bytes and more.
 */
import {
  createDisk,
  DiskError,
  Qcow2Backend,
} from "../../../../src/devices/storage/backend/mod.ts";
import { HeaderField } from "../../../../src/devices/storage/backend/qcow2_format.ts";
import { UsageError } from "../../../../src/util/errors.ts";
import { assert, assertEquals, tempDir } from "./helpers.ts";

async function image(dir: string): Promise<string> {
  const path = `${dir}/h.qcow2`;
  await createDisk(path, 1 << 20, { format: "qcow2", clusterSize: 512 });
  const img = await Qcow2Backend.open(path);
  await img.write(0, new Uint8Array(4096).fill(7));
  img.close();
  return path;
}

Deno.test("qcow2: an L2 table past the end of the file is corrupt, never written", async () => {
  using dir = tempDir();
  const path = await image(dir.path);
  const bytes = Deno.readFileSync(path);
  const dv = new DataView(bytes.buffer);
  const l1 = Number(dv.getBigUint64(HeaderField.L1_TABLE_OFFSET));
  dv.setBigUint64(l1, (1n << 63n) | (1n << 40n)); // L1[0]: "copied", L2 table at 1 TiB
  Deno.writeFileSync(path, bytes);
  const img = await Qcow2Backend.open(path);
  for (const io of [img.read(0, new Uint8Array(512)), img.write(0, new Uint8Array(512))]) {
    const e = await io.then(() => undefined, (e) => e);
    assert(e instanceof DiskError && e.code === "corrupt", String(e));
  }
  img.close();
  assertEquals(Deno.statSync(path).size, bytes.length, "the file did not grow");
});

Deno.test("qcow2: L1 or refcount tables past the end of the file fail to open", async () => {
  using dir = tempDir();
  const path = await image(dir.path);
  const good = Deno.readFileSync(path);
  for (const field of [HeaderField.L1_TABLE_OFFSET, HeaderField.REFCOUNT_TABLE_OFFSET]) {
    const bytes = good.slice();
    new DataView(bytes.buffer).setBigUint64(field, 1n << 40n);
    Deno.writeFileSync(path, bytes);
    const e = await Qcow2Backend.open(path).then((i) => (i.close(), undefined), (e) => e);
    assert(e instanceof UsageError && /past the end of the file/.test(e.message), String(e));
    assertEquals(Deno.statSync(path).size, bytes.length);
  }
});

Deno.test("qcow2: a data cluster past the end of the image is corrupt, never written", async () => {
  using dir = tempDir();
  const path = await image(dir.path);
  const bytes = Deno.readFileSync(path);
  const dv = new DataView(bytes.buffer);
  const l1 = Number(dv.getBigUint64(HeaderField.L1_TABLE_OFFSET));
  const l2 = Number(dv.getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
  dv.setBigUint64(l2, (1n << 63n) | (1n << 50n)); // guest cluster 0: "copied", at 1 PiB
  Deno.writeFileSync(path, bytes);
  const img = await Qcow2Backend.open(path);
  const e = await img.write(0, new Uint8Array(512)).then(() => undefined, (e) => e);
  assert(e instanceof DiskError && e.code === "corrupt", String(e));
  img.close();
  assertEquals(Deno.statSync(path).size, bytes.length, "the file did not grow");
});

Deno.test("qcow2: refcounts past the end of the file refuse a writable open", async () => {
  using dir = tempDir();
  const path = await image(dir.path);
  const bytes = Deno.readFileSync(path);
  const dv = new DataView(bytes.buffer);
  const table = Number(dv.getBigUint64(HeaderField.REFCOUNT_TABLE_OFFSET));
  const block = Number(dv.getBigUint64(table));
  dv.setUint16(block + 510, 1); // the block's last cluster (255), far past this small file
  Deno.writeFileSync(path, bytes);
  const e = await Qcow2Backend.open(path).then((i) => (i.close(), undefined), (e) => e);
  assert(e instanceof UsageError && /past the end of the .*file/.test(e.message), String(e));
  (await Qcow2Backend.open(path, { readOnly: true })).close(); // reading it is fine
});
