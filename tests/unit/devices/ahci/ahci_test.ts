import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { GuestMemory } from "../../../../src/kvm/guest_memory.ts";
import { AhciController, type AhciDrive } from "../../../../src/devices/ahci/ahci.ts";
import {
  COMMAND_HEADER,
  FIS_D2H,
  FIS_H2D,
  FIS_PIO,
  FIS_SDB,
  PRD_ENTRY,
} from "../../../../src/devices/ahci/protocol.ts";
import { type DiskBackend, DiskError } from "../../../../src/devices/storage/backend/mod.ts";
import { prng } from "../../prng.ts";

/** A disk in memory with the backend interface. */
class MemDisk implements DiskBackend {
  readonly format = "mem";
  readonly canDiscard = false;
  readonly discardGranularity = 512;
  flushes = 0;
  writes = 0;
  constructor(readonly bytes: Uint8Array, readonly sectorSize = 512, readonly readOnly = false) {}
  get size() {
    return this.bytes.length;
  }
  #check(offset: number, length: number) {
    if (offset < 0 || offset + length > this.bytes.length) {
      throw new DiskError("out-of-range", `${offset}+${length}`);
    }
  }
  read(offset: number, dst: Uint8Array) {
    return this.readv(offset, [dst]);
  }
  write(offset: number, src: Uint8Array) {
    return this.writev(offset, [src]);
  }
  async readv(offset: number, dst: readonly Uint8Array[]) {
    await Promise.resolve();
    for (const d of dst) {
      this.#check(offset, d.length);
      d.set(this.bytes.subarray(offset, offset + d.length));
      offset += d.length;
    }
  }
  async writev(offset: number, src: readonly Uint8Array[]) {
    await Promise.resolve();
    if (this.readOnly) throw new DiskError("read-only", "read-only");
    for (const s of src) {
      this.#check(offset, s.length);
      this.bytes.set(s, offset);
      offset += s.length;
      this.writes++;
    }
  }
  async flush() {
    await Promise.resolve();
    this.flushes++;
  }
  discard(): Promise<void> {
    return Promise.reject(new DiskError("unsupported", "no discard"));
  }
  close() {}
}

const RAM = 4 * 1024 * 1024;
const CLB = 0x10000; // port p: CLB + p * 0x1000
const FB = 0x20000; // port p: FB + p * 0x100
const CT = 0x30000; // command tables: CT + slot * 0x1000 (per port p: + p * 0x20000)
const DATA = 0x200000;

const u32 = (v: number) => Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24);

function setup(drives: (AhciDrive | undefined)[]) {
  const ram = new Uint8Array(RAM);
  const memory = new GuestMemory([{ gpa: 0, bytes: ram }]);
  const irq: boolean[] = [];
  const hba = new AhciController(drives, { memory, setInterrupt: (l) => irq.push(l) });
  const reg = (off: number) => {
    const d = new Uint8Array(4);
    hba.read(off, d);
    return new DataView(d.buffer).getUint32(0, true);
  };
  const w = (off: number, v: number) => hba.write(off, u32(v));
  const port = (p: number) => 0x100 + p * 0x80;
  /** What Linux's ahci does at init for port p. */
  const startPort = (p: number) => {
    w(0x04, 0x8000_0002); // AE | IE
    w(port(p) + 0x00, CLB + p * 0x1000);
    w(port(p) + 0x08, FB + p * 0x100);
    w(port(p) + 0x30, 0xffff_ffff); // clear SERR
    w(port(p) + 0x14, 0xfdc0_00ff); // all interrupts
    w(port(p) + 0x18, reg(port(p) + 0x18) | 0x10); // FRE
    w(port(p) + 0x18, reg(port(p) + 0x18) | 0x01); // ST
  };
  /** Builds slot `slot`'s header and table; returns the table address. */
  const command = (
    p: number,
    slot: number,
    fis: Partial<Parameters<typeof FIS_H2D.encode>[0]>,
    prds: [number, number][],
    o: { write?: boolean; atapi?: Uint8Array } = {},
  ) => {
    const ct = CT + p * 0x20000 + slot * 0x1000;
    COMMAND_HEADER.encode(
      {
        flags: 5 | (o.atapi ? 1 << 5 : 0) | (o.write ? 1 << 6 : 0),
        prdtl: prds.length,
        ctba: ct,
      },
      ram,
      CLB + p * 0x1000 + slot * 32,
    );
    FIS_H2D.encode({ type: 0x27, flags: 0x80, ...fis }, ram, ct);
    if (o.atapi) ram.set(o.atapi, ct + 0x40);
    prds.forEach(([addr, len], i) =>
      PRD_ENTRY.encode({ dba: addr, flags: (len - 1) | (1 << 31) }, ram, ct + 0x80 + i * 16)
    );
    return ct;
  };
  const issue = async (p: number, slot: number) => {
    w(port(p) + 0x38, 1 << slot);
    await hba.idle();
  };
  const ack = (p: number) => {
    const is = reg(port(p) + 0x10);
    w(port(p) + 0x10, is);
    w(0x08, 1 << p);
    return is;
  };
  const prdbc = (p: number, slot: number) =>
    COMMAND_HEADER.get(ram, CLB + p * 0x1000 + slot * 32, "prdbc");
  return { ram, hba, irq, reg, w, port, startPort, command, issue, ack, prdbc };
}

const lba = (n: number) => ({
  lba0: n & 0xff,
  lba1: (n >> 8) & 0xff,
  lba2: (n >> 16) & 0xff,
  lba3: (n >>> 24) & 0xff,
  device: 0x40,
});

Deno.test("AHCI wire structures have their sizes", () => {
  strictEqual(COMMAND_HEADER.size, 32);
  strictEqual(PRD_ENTRY.size, 16);
  strictEqual(FIS_H2D.size, 20);
  strictEqual(FIS_D2H.size, 20);
  strictEqual(FIS_PIO.size, 20);
  strictEqual(FIS_SDB.size, 8);
});

Deno.test("AHCI: capabilities, ports, signatures and the first D2H FIS", () => {
  const disk = new MemDisk(new Uint8Array(1 << 20));
  const t = setup([{ kind: "disk", backend: disk }, { kind: "cdrom", backend: undefined }]);
  const cap = t.reg(0x00);
  strictEqual(cap & 0x1f, 5, "six ports");
  strictEqual((cap >> 8) & 0x1f, 31, "32 slots");
  ok(cap & (1 << 30), "NCQ");
  strictEqual(t.reg(0x0c), 0x3f);
  strictEqual(t.reg(0x04) >>> 31, 1, "AHCI enabled");
  strictEqual(t.reg(t.port(0) + 0x24), 0x101);
  strictEqual(t.reg(t.port(1) + 0x24) >>> 0, 0xeb140101);
  strictEqual(t.reg(t.port(0) + 0x28), 0x113);
  strictEqual(t.reg(t.port(2) + 0x28), 0, "nothing on port 2");
  t.startPort(0);
  const d2h = FIS_D2H.decode(t.ram, FB + 0x40)!;
  strictEqual(d2h.type, 0x34);
  deepStrictEqual([d2h.count_lo, d2h.lba0, d2h.lba1, d2h.lba2], [1, 1, 0, 0]);
  ok(t.reg(t.port(0) + 0x18) & (1 << 15), "CR");
  ok(t.reg(t.port(0) + 0x18) & (1 << 14), "FR");
  // COMRESET as Linux's hardreset does it: link down while DET=1, then the signature again,
  // with FIS receive (software's PxCMD bits) left as they were.
  t.ram.fill(0, FB, FB + 0x100);
  t.w(t.port(0) + 0x2c, 1);
  strictEqual(t.reg(t.port(0) + 0x28), 0, "link down during COMRESET");
  t.w(t.port(0) + 0x2c, 0);
  strictEqual(t.reg(t.port(0) + 0x28), 0x113);
  strictEqual(FIS_D2H.get(t.ram, FB + 0x40, "type"), 0x34, "signature FIS posted again");
  ok(t.reg(t.port(0) + 0x18) & (1 << 4), "FRE kept");
  // HBA reset: self-clearing, ports back to spin-up/power-on with interrupts masked.
  t.w(0x04, 0x8000_0001);
  strictEqual(t.reg(0x04) >>> 0, 0x8000_0000);
  strictEqual(t.reg(t.port(0) + 0x18), 0x6);
  strictEqual(t.reg(t.port(0) + 0x14), 0);
});

Deno.test("AHCI disk: IDENTIFY, DMA write then read across odd PRDs, FLUSH, NCQ", async () => {
  const disk = new MemDisk(new Uint8Array(8 << 20));
  const t = setup([{ kind: "disk", backend: disk, serial: "SER123" }]);
  t.startPort(0);
  t.command(0, 0, { command: 0xec }, [[DATA, 512]]);
  await t.issue(0, 0);
  const is = t.ack(0);
  ok(is & 1 && is & 2, `DHRS and PSS: ${is.toString(16)}`);
  deepStrictEqual(t.irq, [true, false], "one interrupt, cleared by the acks");
  strictEqual(t.prdbc(0, 0), 512);
  const id = t.ram.subarray(DATA, DATA + 512);
  const str = (w: number, n: number) =>
    String.fromCharCode(...Array.from({ length: n }, (_, i) => id[w * 2 + (i ^ 1)]!)).trim();
  strictEqual(str(27, 40), "hyperdeno SATA disk");
  strictEqual(str(10, 20), "SER123");
  strictEqual(new DataView(id.buffer, DATA).getUint32(200, true), (8 << 20) / 512, "LBA48 sectors");
  strictEqual(FIS_PIO.get(t.ram, FB + 0x20, "e_status"), 0x50);
  strictEqual(t.reg(t.port(0) + 0x20), 0x50);

  // WRITE DMA EXT of 3 sectors at LBA 100 from three PRDs of 600, 2 and 934 bytes.
  const src = Uint8Array.from({ length: 1536 }, (_, i) => (i * 7 + 3) & 0xff);
  t.ram.set(src.subarray(0, 600), DATA + 0x1000);
  t.ram.set(src.subarray(600, 602), DATA + 0x3000);
  t.ram.set(src.subarray(602), DATA + 0x5000);
  t.command(0, 3, { command: 0x35, ...lba(100), count_lo: 3 }, [
    [DATA + 0x1000, 600],
    [DATA + 0x3000, 2],
    [DATA + 0x5000, 934],
  ], { write: true });
  await t.issue(0, 3);
  strictEqual(t.ack(0) & (1 << 30), 0, "no task file error");
  deepStrictEqual(disk.bytes.subarray(100 * 512, 103 * 512), src);
  strictEqual(t.prdbc(0, 3), 1536);
  strictEqual(t.reg(t.port(0) + 0x38), 0, "CI cleared");

  t.command(0, 4, { command: 0x25, ...lba(100), count_lo: 3 }, [[DATA + 0x8000, 4096]]);
  await t.issue(0, 4);
  t.ack(0);
  deepStrictEqual(t.ram.subarray(DATA + 0x8000, DATA + 0x8000 + 1536), src);

  t.command(0, 5, { command: 0xea }, []);
  await t.issue(0, 5);
  strictEqual(disk.flushes, 1);
  t.ack(0);

  // NCQ: WRITE FPDMA QUEUED, tag 7, 1 sector at LBA 9 (count in FEATURES, tag in COUNT 7:3).
  t.ram.fill(0x5a, DATA + 0xa000, DATA + 0xa200);
  t.command(0, 7, { command: 0x61, ...lba(9), feature_lo: 1, count_lo: 7 << 3 }, [
    [DATA + 0xa000, 512],
  ], { write: true });
  t.w(t.port(0) + 0x34, 1 << 7); // SACT first, as Linux does
  await t.issue(0, 7);
  const nis = t.ack(0);
  ok(nis & (1 << 3), `SDBS: ${nis.toString(16)}`);
  strictEqual(t.reg(t.port(0) + 0x34), 0, "SACT cleared");
  strictEqual(FIS_SDB.get(t.ram, FB + 0x58, "sactive"), 1 << 7);
  ok(disk.bytes.subarray(9 * 512, 10 * 512).every((b) => b === 0x5a));
  strictEqual(t.hba.stats(0).commands, 5);
});

Deno.test("AHCI refuses hostile commands with the protocol's errors and moves no data", async () => {
  const disk = new MemDisk(new Uint8Array(1 << 20));
  const t = setup([{ kind: "disk", backend: disk }]);
  t.startPort(0);
  // Past the end of the disk: IDNF.
  t.command(0, 0, { command: 0x25, ...lba(4096), count_lo: 1 }, [[DATA, 512]]);
  await t.issue(0, 0);
  ok(t.ack(0) & (1 << 30));
  strictEqual(t.reg(t.port(0) + 0x20), (0x10 << 8) | 0x51);
  // PRDs shorter than the transfer: ABRT, the disk untouched.
  t.command(0, 1, { command: 0x35, ...lba(0), count_lo: 2 }, [[DATA, 512]], { write: true });
  await t.issue(0, 1);
  ok(t.ack(0) & (1 << 30));
  strictEqual(disk.writes, 0);
  // A PRD outside RAM: host bus data error.
  t.command(0, 2, { command: 0x25, ...lba(0), count_lo: 1 }, [[0xfee0_0000, 512]]);
  await t.issue(0, 2);
  ok(t.ack(0) & (1 << 28));
  // A command table outside RAM: host bus fatal error.
  COMMAND_HEADER.encode({ flags: 5, prdtl: 1, ctba: 0xffff_ff80 }, t.ram, CLB + 3 * 32);
  await t.issue(0, 3);
  ok(t.ack(0) & (1 << 29));
  // 65535 PRDs, the first 100 of 2 MiB each: a valid list; one sector moves, no more.
  const ct = t.command(0, 4, { command: 0x25, ...lba(0), count_lo: 1 }, []);
  COMMAND_HEADER.set(t.ram, CLB + 4 * 32, "prdtl", 0xffff);
  for (let i = 0; i < 100; i++) {
    PRD_ENTRY.encode({ dba: 0x200000, flags: 0x1f_ffff }, t.ram, ct + 0x80 + i * 16);
  }
  t.ram.fill(0xee, 0x200000, 0x200400);
  await t.issue(0, 4);
  strictEqual(t.ack(0) & (1 << 30), 0);
  strictEqual(t.prdbc(0, 4), 512);
  ok(t.ram.subarray(0x200000, 0x200200).every((b) => b === 0) && t.ram[0x200200] === 0xee);
  // A 4 MiB region that runs past the end of RAM: host bus data error.
  t.command(0, 7, { command: 0x25, ...lba(0), count_lo: 1 }, [[RAM - 0x100, 0x40_0000]]);
  await t.issue(0, 7);
  ok(t.ack(0) & (1 << 28));
  // Not a register H2D FIS: aborted. The port still works afterwards.
  t.command(0, 5, { type: 0x34, command: 0xec }, [[DATA, 512]]);
  await t.issue(0, 5);
  ok(t.ack(0) & (1 << 30));
  t.command(0, 6, { command: 0xec }, [[DATA, 512]]);
  await t.issue(0, 6);
  strictEqual(t.ack(0) & (1 << 30), 0);
  strictEqual(t.hba.stats(0).errors, 6);
  strictEqual(disk.writes, 0);
});

/** Sends a packet command; returns the data and the ATA status/error. */
async function packet(t: ReturnType<typeof setup>, slot: number, cdb: number[], len = 4096) {
  t.ram.fill(0, DATA, DATA + len);
  const c = new Uint8Array(16);
  c.set(cdb);
  t.command(0, slot, { command: 0xa0, feature_lo: 1 }, [[DATA, len]], { atapi: c });
  await t.issue(0, slot);
  t.ack(0);
  const tfd = t.reg(t.port(0) + 0x20);
  return { data: t.ram.slice(DATA, DATA + t.prdbc(0, slot)), status: tfd & 0xff, error: tfd >> 8 };
}

Deno.test("AHCI ATAPI CD: identify, inquiry, capacity, read, TOC, configuration, events, sense", async () => {
  const iso = new Uint8Array(100 * 2048);
  for (let b = 0; b < 100; b++) iso.fill(b, b * 2048, (b + 1) * 2048);
  const t = setup([{ kind: "cdrom", backend: new MemDisk(iso, 512, true) }]);
  t.startPort(0);
  t.command(0, 0, { command: 0xa1 }, [[DATA, 512]]);
  await t.issue(0, 0);
  t.ack(0);
  strictEqual(new DataView(t.ram.buffer).getUint16(DATA, true), 0x85c0);
  t.command(0, 1, { command: 0xec }, [[DATA, 512]]);
  await t.issue(0, 1);
  ok(t.ack(0) & (1 << 30), "IDENTIFY DEVICE aborts on a packet device");

  const inq = await packet(t, 2, [0x12, 0, 0, 0, 36, 0]);
  strictEqual(inq.data[0], 0x05);
  strictEqual(new TextDecoder().decode(inq.data.subarray(8, 16)), "HYPRDENO");
  const cap = await packet(t, 3, [0x25]);
  deepStrictEqual([...cap.data], [0, 0, 0, 99, 0, 0, 8, 0]);
  const rd = await packet(t, 4, [0x28, 0, 0, 0, 0, 7, 0, 0, 2, 0]);
  strictEqual(rd.data.length, 4096);
  ok(
    rd.data.subarray(0, 2048).every((b) => b === 7) && rd.data.subarray(2048).every((b) => b === 8),
  );
  const rd12 = await packet(t, 5, [0xa8, 0, 0, 0, 0, 99, 0, 0, 0, 1, 0, 0]);
  ok(rd12.data.length === 2048 && rd12.data.every((b) => b === 99));
  const toc = await packet(t, 6, [0x43, 0, 0, 0, 0, 0, 0, 0, 0xff, 0]);
  strictEqual(toc.data[3], 1, "last track");
  strictEqual(toc.data[14], 0xaa, "lead-out");
  strictEqual(new DataView(toc.data.buffer).getUint32(16, false), 100);
  const conf = await packet(t, 7, [0x46, 0, 0, 0, 0, 0, 0, 0x10, 0]);
  strictEqual((conf.data[6]! << 8) | conf.data[7]!, 0x0008, "current profile CD-ROM");
  const ev = await packet(t, 8, [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0]);
  deepStrictEqual([ev.data[4], ev.data[5]], [2, 2], "new media, present");
  const ms = await packet(t, 9, [0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 0xff, 0]);
  strictEqual(ms.data[8], 0x2a);
  // Past the end: CHECK CONDITION, then REQUEST SENSE says ILLEGAL REQUEST / LBA OUT OF RANGE.
  const bad = await packet(t, 10, [0x28, 0, 0, 0, 0, 100, 0, 0, 1, 0]);
  strictEqual(bad.status & 1, 1);
  strictEqual(bad.error >> 4, 5);
  const sense = await packet(t, 11, [0x03, 0, 0, 0, 18, 0]);
  deepStrictEqual([sense.data[2]! & 0xf, sense.data[12]], [5, 0x21]);
  const unknown = await packet(t, 12, [0xbd]);
  strictEqual(unknown.error >> 4, 5);
  const tur = await packet(t, 13, [0x00]);
  strictEqual(tur.status & 1, 0);
});

Deno.test("AHCI ATAPI without a disc: NOT READY / MEDIUM NOT PRESENT", async () => {
  const t = setup([{ kind: "cdrom", backend: undefined }]);
  t.startPort(0);
  const tur = await packet(t, 0, [0x00]);
  strictEqual(tur.error >> 4, 2);
  const sense = await packet(t, 1, [0x03, 0, 0, 0, 18, 0]);
  deepStrictEqual([sense.data[2]! & 0xf, sense.data[12]], [2, 0x3a]);
});

Deno.test("AHCI fuzz: random registers and command tables never throw or write outside PRDs", async () => {
  const rng = prng(0xa4c1);
  const disk = new MemDisk(new Uint8Array(256 * 1024));
  const iso = new MemDisk(new Uint8Array(64 * 2048), 512, true);
  const t = setup([{ kind: "disk", backend: disk }, { kind: "cdrom", backend: iso }]);
  const CANARY = 0x300000; // nothing points here
  t.ram.fill(0xc3, CANARY, CANARY + 0x10000);
  const cmds = [
    0xec,
    0xa1,
    0x25,
    0x35,
    0xc8,
    0xca,
    0x20,
    0x24,
    0x60,
    0x61,
    0xea,
    0xe7,
    0xa0,
    0xef,
    0x2f,
    0x40,
    0x42,
    0x00,
    0xff,
  ];
  const cdbs = [0x00, 0x03, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x43, 0x46, 0x4a, 0x5a, 0xa8, 0xbd];
  for (let p = 0; p < 2; p++) t.startPort(p);
  for (let iter = 0; iter < 1500; iter++) {
    const p = rng.int(2);
    if (rng.chance(0.15)) {
      // Register noise: any port register, any width.
      const off = rng.pick([0x04, 0x08, 0x0c, t.port(p) + rng.int(0x80)]);
      const bytes = new Uint8Array(rng.pick([1, 2, 4, 8]));
      for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
      if (off === 0x04) bytes[0] = bytes[0]! & ~1; // an HBA reset is exercised below, rarely
      rng.chance(0.5) ? t.hba.write(off & ~(bytes.length - 1), bytes) : t.hba.read(off, bytes);
      if (rng.chance(0.02)) t.w(0x04, 1);
      for (let q = 0; q < 2; q++) t.startPort(q);
      continue;
    }
    const slot = rng.int(32);
    const prds: [number, number][] = [];
    const n = rng.chance(0.05) ? rng.int(300) : rng.int(5);
    for (let i = 0; i < n; i++) {
      const addr = rng.chance(0.1) ? rng.int(0x1_0000_0000) : DATA + rng.int(0x80000);
      const len = rng.chance(0.1) ? 0x40_0000 : 2 * (1 + rng.int(4096));
      prds.push([addr, Math.min(len, 0x40_0000)]);
    }
    const cdb = new Uint8Array(16);
    for (let i = 0; i < 16; i++) cdb[i] = rng.chance(0.5) ? rng.int(256) : 0;
    cdb[0] = rng.pick(cdbs);
    t.command(
      p,
      slot,
      {
        type: rng.chance(0.95) ? 0x27 : rng.int(256),
        flags: rng.chance(0.95) ? 0x80 : rng.int(256),
        command: rng.pick(cmds),
        feature_lo: rng.int(256),
        lba0: rng.int(256),
        lba1: rng.int(256),
        lba2: rng.chance(0.8) ? 0 : rng.int(256),
        count_lo: rng.int(256),
        count_hi: rng.chance(0.8) ? 0 : rng.int(256),
      },
      prds,
      { write: rng.chance(0.5), atapi: cdb },
    );
    if (rng.chance(0.2)) t.w(t.port(p) + 0x34, 1 << slot);
    await t.issue(p, slot);
    t.ack(p);
  }
  ok(t.ram.subarray(CANARY, CANARY + 0x10000).every((b) => b === 0xc3), "canary intact");
  ok(t.hba.stats(0).commands + t.hba.stats(1).commands > 500);
});
