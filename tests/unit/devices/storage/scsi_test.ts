/**
 * The SCSI target, command by command, against an in-memory backend: every CDB path, malformed
 * CDBs, transfer lengths that disagree with the buffer, backend failures, the controller.
 */
import { DiskError } from "../../../../src/devices/storage/backend/backend.ts";
import { SrbStatus } from "../../../../src/devices/storage/protocol.ts";
import { Asc, ScsiStatus, SenseKey } from "../../../../src/devices/storage/scsi/constants.ts";
import { ScsiController } from "../../../../src/devices/storage/scsi/controller.ts";
import { ScsiDisk } from "../../../../src/devices/storage/scsi/disk.ts";
import { decodeSense, type ScsiResult } from "../../../../src/devices/storage/scsi/sense.ts";
import { assert, assertEquals, be32, linearBuffer, MemoryBackend, pattern } from "./helpers.ts";

const BLOCKS = 2048; // 1 MiB of 512-byte blocks

function setup(opts: { readOnly?: boolean; thin?: boolean; sectorSize?: number } = {}) {
  const ss = opts.sectorSize ?? 512;
  const mem = new MemoryBackend(BLOCKS * ss, { ...opts, sectorSize: ss });
  mem.bytes.set(pattern(mem.size, 11));
  const disk = new ScsiDisk(mem, { serial: "SER123", maxTransferBytes: 256 << 10 });
  return { mem, disk };
}

async function run(
  disk: ScsiDisk,
  cdb: readonly number[],
  data: Uint8Array = new Uint8Array(0),
  dataLength = data.length,
  pieces = 1,
): Promise<ScsiResult> {
  return await disk.execute({
    cdb: Uint8Array.from(cdb),
    data: linearBuffer(data, pieces),
    dataLength,
  });
}

function sense(r: ScsiResult): { key: number; asc: number } {
  assertEquals(r.scsiStatus, ScsiStatus.CHECK_CONDITION, "expected CHECK CONDITION");
  assertEquals(r.srbStatus, SrbStatus.ERROR);
  return decodeSense(r.sense!);
}

function goodOf(r: ScsiResult, transferred: number): void {
  assertEquals(
    [r.scsiStatus, r.srbStatus, r.transferred],
    [0, SrbStatus.SUCCESS, transferred],
    r.sense ? `sense ${JSON.stringify(decodeSense(r.sense))}` : undefined,
  );
}

const be64 = (v: number) => [...be32(Math.floor(v / 2 ** 32)), ...be32(v >>> 0)];
const ILLEGAL = (asc: number) => ({ key: SenseKey.ILLEGAL_REQUEST, asc });

Deno.test("scsi: TEST UNIT READY, START STOP UNIT, PREVENT ALLOW are GOOD", async () => {
  const { disk } = setup();
  goodOf(await run(disk, [0x00, 0, 0, 0, 0, 0]), 0);
  goodOf(await run(disk, [0x1b, 0, 0, 0, 1, 0]), 0);
  goodOf(await run(disk, [0x1e, 0, 0, 0, 0, 0]), 0);
});

Deno.test("scsi: REQUEST SENSE returns no sense, fixed or descriptor format", async () => {
  const { disk } = setup();
  const buf = new Uint8Array(252);
  let r = await run(disk, [0x03, 0, 0, 0, 252, 0], buf);
  goodOf(r, 18);
  assertEquals([buf[0], buf[2], buf[7], buf[12]], [0x70, 0, 10, 0]);
  r = await run(disk, [0x03, 1, 0, 0, 252, 0], buf);
  goodOf(r, 8);
  assertEquals(buf[0], 0x72);
});

Deno.test("scsi: standard INQUIRY says Msft Virtual Disk, SPC-4, CmdQue; allocation length limits", async () => {
  const { disk } = setup();
  const buf = new Uint8Array(96);
  goodOf(await run(disk, [0x12, 0, 0, 0, 96, 0], buf), 36);
  assertEquals([buf[0], buf[2], buf[3], buf[4], buf[7]], [0, 6, 0x12, 31, 2]);
  assertEquals(new TextDecoder().decode(buf.subarray(8, 32)), "Msft    Virtual Disk    ");
  goodOf(await run(disk, [0x12, 0, 0, 0, 5, 0], buf), 5);
  // Buffer shorter than the allocation length: residual.
  goodOf(await run(disk, [0x12, 0, 0, 0, 96, 0], buf, 20), 20);
  // Page code without EVPD, CMDDT: INVALID FIELD IN CDB.
  assertEquals(
    sense(await run(disk, [0x12, 0, 0x80, 0, 96, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(
    sense(await run(disk, [0x12, 2, 0, 0, 96, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
});

Deno.test("scsi: VPD pages 00, 80, 83, B0, B1, B2", async () => {
  const { disk } = setup();
  const buf = new Uint8Array(255);
  const vpd = async (page: number) => {
    buf.fill(0);
    const r = await run(disk, [0x12, 1, page, 0, 255, 0], buf);
    assertEquals(r.scsiStatus, 0);
    assertEquals(buf[1], page);
    return buf.slice(0, r.transferred);
  };
  assertEquals([...(await vpd(0x00)).subarray(4)], [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  assertEquals(new TextDecoder().decode((await vpd(0x80)).subarray(4)), "SER123");
  const id = await vpd(0x83);
  assertEquals([id[4], id[5]], [0x02, 0x01]); // T10 vendor id, ASCII
  const naaAt = 4 + 4 + id[7]!;
  assertEquals([id[naaAt], id[naaAt + 1], id[naaAt + 3]], [0x01, 0x03, 16]);
  assertEquals(id[naaAt + 4]! >> 4, 6);
  const bl = new DataView((await vpd(0xb0)).buffer);
  assertEquals(bl.getUint16(2, false), 0x3c);
  assertEquals(bl.getUint32(8, false), 512); // 256 KiB / 512
  assertEquals(bl.getUint32(24, false), 256); // max unmap descriptors
  assertEquals(bl.getUint32(28, false), 8); // 4 KiB granularity
  const bc = await vpd(0xb1);
  assertEquals([bc[4], bc[5]], [0, 1]);
  const lbp = await vpd(0xb2);
  assertEquals(lbp[5]! & 0xe4, 0xe4); // LBPU, LBPWS, LBPWS10, LBPRZ
  assertEquals(lbp[6]! & 7, 2);
  assertEquals(
    sense(await run(disk, [0x12, 1, 0x84, 0, 255, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  // Without thin provisioning B2 is gone.
  const thick = setup({ thin: false }).disk;
  const r = await run(thick, [0x12, 1, 0, 0, 255, 0], buf);
  assertEquals([...buf.subarray(4, r.transferred)], [0x00, 0x80, 0x83, 0xb0, 0xb1]);
});

Deno.test("scsi: READ CAPACITY(10) and (16) with LBPME/LBPRZ", async () => {
  const { disk } = setup();
  const buf = new Uint8Array(32);
  goodOf(await run(disk, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], buf), 8);
  const dv = new DataView(buf.buffer);
  assertEquals([dv.getUint32(0, false), dv.getUint32(4, false)], [BLOCKS - 1, 512]);
  buf.fill(0);
  goodOf(await run(disk, [0x9e, 0x10, ...be64(0), 0, 0, 0, 32, 0, 0], buf), 32);
  assertEquals(Number(dv.getBigUint64(0, false)), BLOCKS - 1);
  assertEquals(dv.getUint32(8, false), 512);
  assertEquals(buf[14]! & 0xc0, 0xc0);
  assertEquals(
    sense(await run(disk, [0x9e, 0x11, ...be64(0), 0, 0, 0, 32, 0, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  const big = setup({ sectorSize: 4096 }).disk;
  goodOf(await run(big, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], buf), 8);
  assertEquals(dv.getUint32(4, false), 4096);
});

Deno.test("scsi: READ and WRITE (6/10/12/16) move the right bytes, FUA flushes", async () => {
  const { mem, disk } = setup();
  const cases: [string, (lba: number, n: number) => number[], number[]][] = [
    ["6", (l, n) => [0x08, (l >> 16) & 0x1f, (l >> 8) & 0xff, l & 0xff, n & 0xff, 0], [0x0a]],
    ["10", (l, n) => [0x28, 0, ...be32(l), 0, n >> 8, n & 0xff, 0], [0x2a]],
    ["12", (l, n) => [0xa8, 0, ...be32(l), ...be32(n), 0, 0], [0xaa]],
    ["16", (l, n) => [0x88, 0, ...be64(l), ...be32(n), 0, 0], [0x8a]],
  ];
  for (const [name, cdbOf, [writeOp]] of cases) {
    const lba = 100 + Number(name);
    const n = 9;
    const buf = new Uint8Array(n * 512);
    goodOf(await run(disk, cdbOf(lba, n), buf, buf.length, 3), n * 512);
    assertEquals(buf, mem.bytes.slice(lba * 512, (lba + n) * 512), `READ(${name})`);
    const data = pattern(n * 512, lba);
    const w = cdbOf(lba + 500, n);
    w[0] = writeOp!;
    goodOf(await run(disk, w, data, data.length, 4), n * 512);
    assertEquals(mem.bytes.slice((lba + 500) * 512, (lba + 500 + n) * 512), data, `WRITE(${name})`);
  }
  // READ(6) transfer length 0 means 256 blocks.
  const b256 = new Uint8Array(256 * 512);
  goodOf(await run(disk, [0x08, 0, 0, 0, 0, 0], b256), 256 * 512);
  // Length 0 for (10) moves nothing.
  goodOf(await run(disk, [0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 0);
  const flushes = mem.flushes;
  goodOf(await run(disk, [0x2a, 0x08, 0, 0, 0, 1, 0, 0, 1, 0], new Uint8Array(512)), 512);
  assertEquals(mem.flushes, flushes + 1);
  // A buffer larger than the transfer is fine (residual); scattered in many pieces uses a bounce.
  const many = new Uint8Array(64 * 512 + 100);
  goodOf(await run(disk, [0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0], many, many.length, 40), 64 * 512);
  assertEquals(many.subarray(0, 64 * 512), mem.bytes.subarray(0, 64 * 512));
});

Deno.test("scsi: LBA out of range, transfer larger than buffer or limit, short CDB, NACA", async () => {
  const { disk } = setup();
  const buf = new Uint8Array(8192);
  assertEquals(
    sense(await run(disk, [0x28, 0, ...be32(BLOCKS - 1), 0, 0, 2, 0], buf)),
    ILLEGAL(Asc.LBA_OUT_OF_RANGE),
  );
  assertEquals(
    sense(await run(disk, [0x88, 0, ...be64(2 ** 60), 0, 0, 0, 1, 0, 0], buf)),
    ILLEGAL(Asc.LBA_OUT_OF_RANGE),
  );
  assertEquals(
    sense(await run(disk, [0x28, 0, ...be32(BLOCKS), 0, 0, 0, 0], buf)),
    ILLEGAL(Asc.LBA_OUT_OF_RANGE),
  );
  // The LBA is reported in the INFORMATION field.
  const r = await run(disk, [0x28, 0, ...be32(BLOCKS + 5), 0, 0, 1, 0], buf);
  assertEquals(r.sense![0]! & 0x80, 0x80);
  assertEquals(new DataView(r.sense!.buffer).getUint32(3, false), BLOCKS + 5);
  // 17 blocks into an 8 KiB buffer.
  assertEquals(
    sense(await run(disk, [0x28, 0, 0, 0, 0, 0, 0, 0, 17, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  // More than the maximum transfer (512 blocks).
  const huge = new Uint8Array(513 * 512);
  assertEquals(
    sense(await run(disk, [0x28, 0, 0, 0, 0, 0, 0, 2, 1, 0], huge)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  // CDB shorter than its group says; NACA in the control byte.
  assertEquals(
    sense(await run(disk, [0x28, 0, 0, 0, 0, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(sense(await run(disk, [0x00, 0, 0, 0, 0, 4])), ILLEGAL(Asc.INVALID_FIELD_IN_CDB));
  // Empty CDB: an adapter error, not sense.
  assertEquals((await run(disk, [])).srbStatus, SrbStatus.INVALID_REQUEST);
  // Unknown opcodes, including MODE SELECT and vendor ones.
  for (const op of [0x15, 0x55, 0xa3, 0xc0, 0xff, 0x7f]) {
    assertEquals(
      sense(await run(disk, [op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
      ILLEGAL(Asc.INVALID_COMMAND_OPERATION_CODE),
    );
  }
});

Deno.test("scsi: writes to a read-only unit fail with DATA PROTECT / WRITE PROTECTED", async () => {
  const { mem, disk } = setup({ readOnly: true });
  const buf = new Uint8Array(512);
  const dp = { key: SenseKey.DATA_PROTECT, asc: Asc.WRITE_PROTECTED };
  assertEquals(sense(await run(disk, [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], buf)), dp);
  assertEquals(sense(await run(disk, [0x0a, 0, 0, 0, 1, 0], buf)), dp);
  assertEquals(sense(await run(disk, [0x93, 8, ...be64(0), 0, 0, 0, 1, 0, 0], buf)), dp);
  assertEquals(sense(await run(disk, [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], new Uint8Array(24))), dp);
  // MODE SENSE shows WP; SYNCHRONIZE CACHE is fine.
  const ms = new Uint8Array(64);
  goodOf(await run(disk, [0x1a, 0, 0x08, 0, 64, 0], ms), 4 + 8 + 20);
  assertEquals(ms[2]! & 0x80, 0x80);
  goodOf(await run(disk, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 0);
  assertEquals(mem.flushes, 0);
  // An option can make a writable backend read-only.
  const ro = new ScsiDisk(new MemoryBackend(1 << 20), { readOnly: true });
  assertEquals(sense(await run(ro, [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], buf)), dp);
});

Deno.test("scsi: MODE SENSE(6/10): caching, control, all pages, DBD, LLBAA, page control", async () => {
  const { disk } = setup();
  const buf = new Uint8Array(255);
  let r = await run(disk, [0x1a, 0, 0x08, 0, 255, 0], buf);
  goodOf(r, 32);
  assertEquals([buf[0], buf[3], buf[12], buf[13], buf[14]! & 4], [31, 8, 0x08, 18, 4]);
  assertEquals(buf[2]! & 0x90, 0x10); // DPOFUA, not WP
  r = await run(disk, [0x1a, 8, 0x0a, 0, 255, 0], buf); // DBD
  goodOf(r, 4 + 12);
  assertEquals([buf[3], buf[4], buf[5]], [0, 0x0a, 10]);
  r = await run(disk, [0x1a, 0, 0x3f, 0, 255, 0], buf);
  goodOf(r, 4 + 8 + 20 + 12);
  r = await run(disk, [0x1a, 0, 0x3f, 0xff, 255, 0], buf);
  goodOf(r, 4 + 8 + 20 + 12);
  r = await run(disk, [0x5a, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0], buf); // LLBAA
  goodOf(r, 8 + 16 + 20);
  assertEquals([buf[4], buf[7]], [1, 16]);
  r = await run(disk, [0x5a, 0, 0x48, 0, 0, 0, 0, 0, 255, 0], buf); // changeable values
  goodOf(r, 8 + 8 + 20);
  assertEquals(buf[16 + 2], 0);
  r = await run(disk, [0x1a, 0, 0x08, 0, 10, 0], buf); // allocation length truncates
  goodOf(r, 10);
  assertEquals(
    sense(await run(disk, [0x1a, 0, 0xc8, 0, 255, 0], buf)),
    ILLEGAL(Asc.SAVING_PARAMETERS_NOT_SUPPORTED),
  );
  assertEquals(
    sense(await run(disk, [0x1a, 0, 0x19, 0, 255, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(
    sense(await run(disk, [0x1a, 0, 0x08, 1, 255, 0], buf)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
});

Deno.test("scsi: SYNCHRONIZE CACHE(10/16) flushes and checks the range", async () => {
  const { mem, disk } = setup();
  goodOf(await run(disk, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 0);
  goodOf(await run(disk, [0x91, 0, ...be64(10), 0, 0, 0, 10, 0, 0]), 0);
  assertEquals(mem.flushes, 2);
  assertEquals(
    sense(await run(disk, [0x35, 0, ...be32(BLOCKS + 1), 0, 0, 0, 0])),
    ILLEGAL(Asc.LBA_OUT_OF_RANGE),
  );
});

Deno.test("scsi: WRITE SAME(10/16): pattern, UNMAP bit discards, NDOB, WSNZ", async () => {
  const { mem, disk } = setup();
  const block = pattern(512, 42);
  goodOf(await run(disk, [0x41, 0, ...be32(10), 0, 0, 5, 0], block), 512);
  for (let i = 0; i < 5; i++) assertEquals(mem.bytes.slice((10 + i) * 512, (11 + i) * 512), block);
  // UNMAP with a zero block: a discard.
  goodOf(await run(disk, [0x93, 0x08, ...be64(64), 0, 0, 0, 64, 0, 0], new Uint8Array(512)), 512);
  assertEquals(mem.discards, [[64 * 512, 64 * 512]]);
  // UNMAP with a non-zero block writes the pattern instead.
  goodOf(await run(disk, [0x93, 0x08, ...be64(200), 0, 0, 0, 2, 0, 0], block), 512);
  assertEquals(mem.bytes.slice(201 * 512, 202 * 512), block);
  // NDOB: zeros without a data buffer.
  goodOf(await run(disk, [0x93, 0x09, ...be64(300), 0, 0, 0, 3, 0, 0]), 0);
  assertEquals(mem.discards.length, 2);
  assert(mem.bytes.subarray(300 * 512, 303 * 512).every((b) => b === 0));
  assertEquals(
    sense(await run(disk, [0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0], block)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(
    sense(await run(disk, [0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], block, 100)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(
    sense(await run(disk, [0x41, 0, ...be32(BLOCKS - 1), 0, 0, 2, 0], block)),
    ILLEGAL(Asc.LBA_OUT_OF_RANGE),
  );
});

Deno.test("scsi: UNMAP parameter lists: good, empty, short, inconsistent, out of range", async () => {
  const { mem, disk } = setup();
  const list = (descs: [number, number][], bdLenOverride?: number) => {
    const b = new Uint8Array(8 + descs.length * 16);
    const dv = new DataView(b.buffer);
    dv.setUint16(0, b.length - 2, false);
    dv.setUint16(2, bdLenOverride ?? descs.length * 16, false);
    descs.forEach(([lba, n], i) => {
      dv.setBigUint64(8 + i * 16, BigInt(lba), false);
      dv.setUint32(16 + i * 16, n, false);
    });
    return b;
  };
  const cdb = (len: number) => [0x42, 0, 0, 0, 0, 0, 0, len >> 8, len & 0xff, 0];
  let l = list([[8, 8], [100, 16], [0, 0]]);
  goodOf(await run(disk, cdb(l.length), l), l.length);
  assertEquals(mem.discards, [[4096, 4096], [51200, 8192]]);
  goodOf(await run(disk, cdb(0)), 0);
  assertEquals(
    sense(await run(disk, cdb(6), new Uint8Array(6))),
    ILLEGAL(Asc.PARAMETER_LIST_LENGTH_ERROR),
  );
  l = list([[8, 8]], 64);
  assertEquals(
    sense(await run(disk, cdb(l.length), l)),
    ILLEGAL(Asc.INVALID_FIELD_IN_PARAMETER_LIST),
  );
  l = list([[BLOCKS - 4, 8]]);
  assertEquals(sense(await run(disk, cdb(l.length), l)), ILLEGAL(Asc.LBA_OUT_OF_RANGE));
  // Nothing is discarded when one descriptor is bad.
  assertEquals(mem.discards.length, 2);
  const thick = setup({ thin: false }).disk;
  assertEquals(
    sense(await run(thick, cdb(l.length), l)),
    ILLEGAL(Asc.INVALID_COMMAND_OPERATION_CODE),
  );
});

Deno.test("scsi: VERIFY(10/16): range check, byte compare, MISCOMPARE", async () => {
  const { mem, disk } = setup();
  goodOf(await run(disk, [0x2f, 0, 0, 0, 0, 1, 0, 0, 4, 0]), 0);
  goodOf(await run(disk, [0x8f, 0, ...be64(1), 0, 0, 0, 4, 0, 0]), 0);
  const same = mem.bytes.slice(512, 512 * 3);
  goodOf(await run(disk, [0x2f, 2, 0, 0, 0, 1, 0, 0, 2, 0], same), 1024);
  same[700] = same[700]! ^ 1;
  const r = await run(disk, [0x2f, 2, 0, 0, 0, 1, 0, 0, 2, 0], same);
  assertEquals(sense(r), { key: SenseKey.MISCOMPARE, asc: Asc.MISCOMPARE_DURING_VERIFY });
  assertEquals(
    sense(await run(disk, [0x2f, 4, 0, 0, 0, 1, 0, 0, 2, 0], same)),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(
    sense(await run(disk, [0x2f, 0, ...be32(BLOCKS), 0, 0, 1, 0])),
    ILLEGAL(Asc.LBA_OUT_OF_RANGE),
  );
});

Deno.test("scsi: backend failures become sense: medium error, no space, read-only", async () => {
  const { mem, disk } = setup();
  const buf = new Uint8Array(512);
  mem.failNext = new DiskError("io", "boom");
  assertEquals(sense(await run(disk, [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], buf)), {
    key: SenseKey.MEDIUM_ERROR,
    asc: Asc.UNRECOVERED_READ_ERROR,
  });
  mem.failNext = new DiskError("unsupported", "compressed");
  assertEquals(sense(await run(disk, [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], buf)), {
    key: SenseKey.MEDIUM_ERROR,
    asc: Asc.WRITE_ERROR,
  });
  mem.failNext = new DiskError("no-space", "full");
  assertEquals(sense(await run(disk, [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], buf)), {
    key: SenseKey.DATA_PROTECT,
    asc: Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
  });
  assertEquals(disk.inflight, 0);
  await disk.drain();
});

Deno.test("scsi controller: REPORT LUNS, missing LUNs, other targets, attach errors", async () => {
  const c = new ScsiController();
  const d = new ScsiDisk(new MemoryBackend(1 << 20));
  c.attach(0, d);
  c.attach(7, new ScsiDisk(new MemoryBackend(1 << 20)));
  assertEquals(c.freeLun(), 1);
  let threw = false;
  try {
    c.attach(7, d);
  } catch {
    threw = true;
  }
  assert(threw);
  const buf = new Uint8Array(64);
  const req = (cdb: number[], len = 64) => ({
    cdb: Uint8Array.from(cdb),
    data: linearBuffer(buf),
    dataLength: len,
  });
  const home = { pathId: 0, targetId: 0, lun: 0 };
  let r = await c.execute(home, req([0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]));
  goodOf(r, 24);
  assertEquals([buf[3], buf[9], buf[17]], [16, 0, 7]);
  r = await c.execute(
    { pathId: 1, targetId: 0, lun: 0 },
    req([0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]),
  );
  goodOf(r, 8);
  assertEquals(buf[3], 0);
  assertEquals(
    sense(await c.execute(home, req([0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]))),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  assertEquals(
    sense(await c.execute(home, req([0xa0, 0, 5, 0, 0, 0, 0, 0, 0, 64, 0, 0]))),
    ILLEGAL(Asc.INVALID_FIELD_IN_CDB),
  );
  r = await c.execute({ ...home, lun: 3 }, req([0x12, 0, 0, 0, 36, 0]));
  goodOf(r, 36);
  assertEquals(buf[0], 0x7f);
  r = await c.execute({ ...home, lun: 3 }, req([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
  assertEquals(r.srbStatus, SrbStatus.INVALID_LUN);
  r = await c.execute({ pathId: 0, targetId: 1, lun: 0 }, req([0x00, 0, 0, 0, 0, 0]));
  assertEquals(r.srbStatus, SrbStatus.INVALID_LUN);
  assertEquals(c.detach(7) !== undefined, true);
  assertEquals(c.luns(), [0]);
});
