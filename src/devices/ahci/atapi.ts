/**
 * The CD-ROM behind an ATAPI port: the MMC/SPC commands that OVMF, Linux (`sr_mod`, `cdrom`) and
 * Windows (`cdrom.sys`) send to a read-only disc of 2048-byte blocks (an ISO image):
 * TEST UNIT READY, REQUEST SENSE, INQUIRY, READ CAPACITY, READ(10/12), READ TOC (formats 0
 * and 1), GET CONFIGURATION, GET EVENT STATUS NOTIFICATION, MODE SENSE(6/10), PREVENT ALLOW
 * MEDIUM REMOVAL, START STOP UNIT. Anything else is ILLEGAL REQUEST / INVALID COMMAND OPERATION
 * CODE. A failed command keeps its sense data for the next REQUEST SENSE.
 * @module
 */
import type { DiskBackend } from "../storage/backend/mod.ts";
import { DiskError } from "../storage/backend/mod.ts";
import { Asc, SenseKey } from "../storage/scsi/constants.ts";
import { fixedSense } from "../storage/scsi/sense.ts";
import type { ScatterGather } from "./sg.ts";

/** CD block size. */
export const CD_BLOCK = 2048;

/** MMC/SPC operation codes handled here. */
export const MmcOp = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  READ_TOC: 0x43,
  GET_CONFIGURATION: 0x46,
  GET_EVENT_STATUS_NOTIFICATION: 0x4a,
  MODE_SENSE_10: 0x5a,
  READ_12: 0xa8,
} as const;

/** Outcome of one packet command. */
export interface CdResult {
  /** Bytes moved into the guest's buffer. */
  readonly transferred: number;
  /** Sense key of a CHECK CONDITION (0: GOOD). */
  readonly senseKey: number;
}

const NOT_READY_NO_MEDIUM = 0x3a00;
const MEDIUM_ERROR_READ = 0x1100;

const be16 = (b: Uint8Array, at: number) => (b[at]! << 8) | b[at + 1]!;
const be32 = (b: Uint8Array, at: number) =>
  ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

function ascii(s: string, n: number): number[] {
  return Array.from(s.padEnd(n, " ").slice(0, n), (c) => c.charCodeAt(0));
}

/** An ATAPI CD-ROM drive, with or without a disc. */
export class CdTarget {
  readonly #backend: DiskBackend | undefined;
  #sense: Uint8Array = fixedSense(SenseKey.NO_SENSE, Asc.NONE);
  /** The first GET EVENT STATUS after power-on reports the disc as new media. */
  #mediaEventPending = true;

  constructor(backend: DiskBackend | undefined) {
    this.#backend = backend;
  }

  /** Blocks on the disc (0 without one). */
  get blocks(): number {
    return this.#backend ? Math.floor(this.#backend.size / CD_BLOCK) : 0;
  }

  #fail(key: number, asc: number): CdResult {
    this.#sense = fixedSense(key, asc);
    return { transferred: 0, senseKey: key };
  }

  #invalidField(): CdResult {
    return this.#fail(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB);
  }

  #reply(sg: ScatterGather, bytes: Uint8Array, allocation: number): CdResult {
    this.#sense = fixedSense(SenseKey.NO_SENSE, Asc.NONE);
    return {
      transferred: sg.copyIn(bytes.subarray(0, Math.min(bytes.length, allocation))),
      senseKey: 0,
    };
  }

  /** Runs the packet command in `cdb` (12 or 16 bytes) with `sg` as the data-in buffer. */
  async execute(cdb: Uint8Array, sg: ScatterGather): Promise<CdResult> {
    const op = cdb[0]!;
    const needsMedium = op === MmcOp.TEST_UNIT_READY || op === MmcOp.READ_CAPACITY_10 ||
      op === MmcOp.READ_10 || op === MmcOp.READ_12 || op === MmcOp.READ_TOC;
    if (needsMedium && !this.#backend) return this.#fail(SenseKey.NOT_READY, NOT_READY_NO_MEDIUM);
    switch (op) {
      case MmcOp.TEST_UNIT_READY:
      case MmcOp.PREVENT_ALLOW_MEDIUM_REMOVAL:
      case MmcOp.START_STOP_UNIT:
        this.#sense = fixedSense(SenseKey.NO_SENSE, Asc.NONE);
        return { transferred: 0, senseKey: 0 };
      case MmcOp.REQUEST_SENSE: {
        const sense = this.#sense;
        this.#sense = fixedSense(SenseKey.NO_SENSE, Asc.NONE);
        return { transferred: sg.copyIn(sense.subarray(0, cdb[4]!)), senseKey: 0 };
      }
      case MmcOp.INQUIRY: {
        if (cdb[1]! & 1) return this.#invalidField(); // no VPD pages
        const b = Uint8Array.from([
          0x05, // CD/DVD device
          0x80, // removable
          0x05, // SPC-3
          0x32, // response format 2, HiSup
          31, // additional length
          0,
          0,
          0,
          ...ascii("HYPRDENO", 8),
          ...ascii("Virtual CD-ROM", 16),
          ...ascii("1.0", 4),
        ]);
        return this.#reply(sg, b, be16(cdb, 3));
      }
      case MmcOp.READ_CAPACITY_10: {
        const b = new Uint8Array(8);
        const dv = new DataView(b.buffer);
        dv.setUint32(0, Math.max(0, this.blocks - 1), false);
        dv.setUint32(4, CD_BLOCK, false);
        return this.#reply(sg, b, 8);
      }
      case MmcOp.READ_10:
      case MmcOp.READ_12:
        return await this.#read(
          be32(cdb, 2),
          op === MmcOp.READ_10 ? be16(cdb, 7) : be32(cdb, 6),
          sg,
        );
      case MmcOp.READ_TOC:
        return this.#readToc(cdb, sg);
      case MmcOp.GET_CONFIGURATION:
        return this.#getConfiguration(cdb, sg);
      case MmcOp.GET_EVENT_STATUS_NOTIFICATION:
        return this.#eventStatus(cdb, sg);
      case MmcOp.MODE_SENSE_6:
      case MmcOp.MODE_SENSE_10:
        return this.#modeSense(cdb, sg, op === MmcOp.MODE_SENSE_10);
      default:
        return this.#fail(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE);
    }
  }

  async #read(lba: number, count: number, sg: ScatterGather): Promise<CdResult> {
    if (lba + count > this.blocks) {
      return this.#fail(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE);
    }
    if (count === 0) return { transferred: 0, senseKey: 0 };
    const views = sg.cut(count * CD_BLOCK);
    if (!views) return this.#invalidField(); // the guest's buffer is shorter than the transfer
    try {
      await this.#backend!.readv(lba * CD_BLOCK, views);
    } catch (e) {
      if (e instanceof DiskError) return this.#fail(SenseKey.MEDIUM_ERROR, MEDIUM_ERROR_READ);
      throw e;
    }
    this.#sense = fixedSense(SenseKey.NO_SENSE, Asc.NONE);
    return { transferred: count * CD_BLOCK, senseKey: 0 };
  }

  #readToc(cdb: Uint8Array, sg: ScatterGather): CdResult {
    const msf = (cdb[1]! & 0x02) !== 0;
    const format = (cdb[2]! & 0x0f) || (cdb[9]! >> 6);
    const alloc = be16(cdb, 7);
    const addr = (lba: number) => {
      if (!msf) return [lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff];
      const f = lba + 150;
      return [0, Math.floor(f / 4500), Math.floor(f / 75) % 60, f % 75];
    };
    let body: number[];
    if (format === 0) {
      const track = cdb[6]!;
      if (track > 1 && track !== 0xaa) return this.#invalidField();
      body = [1, 1]; // first and last track
      if (track <= 1) body.push(0, 0x14, 1, 0, ...addr(0)); // data track 1
      body.push(0, 0x14, 0xaa, 0, ...addr(this.blocks)); // lead-out
    } else if (format === 1) {
      body = [1, 1, 0, 0x14, 1, 0, ...addr(0)]; // one session, starting at track 1
    } else return this.#invalidField();
    const b = Uint8Array.from([body.length >> 8, body.length & 0xff, ...body]);
    return this.#reply(sg, b, alloc);
  }

  #getConfiguration(cdb: Uint8Array, sg: ScatterGather): CdResult {
    const rt = cdb[1]! & 3;
    const start = be16(cdb, 2);
    const current = this.#backend ? 1 : 0;
    const features: [number, number[]][] = [
      [0x0000, [0x00, 0x08, current, 0]], // profile list: CD-ROM
      [0x0001, [0, 0, 0, 2]], // core: ATAPI
      [0x0002, [0]], // morphing
      [0x0003, [0x29, 0, 0, 0]], // removable medium: tray, eject, lock
      [0x0010, [0, 0, 8, 0, 0, 1, 0, 0]], // random readable: 2048-byte blocks
      [0x001e, [0, 0, 0, 0]], // CD read
    ];
    const out: number[] = [];
    for (const [code, data] of features) {
      if (code < start) continue;
      if (rt === 2 && code !== start) continue;
      const flags = code === 0x0000 || code === 0x0001 || code === 0x0002 || code === 0x0003 ||
          current
        ? 0x03 // persistent + current
        : 0x02;
      out.push(code >> 8, code & 0xff, (code === 0x0001 ? 0x04 : 0) | flags, data.length, ...data);
    }
    const length = 4 + out.length;
    const profile = current ? 0x0008 : 0;
    const b = Uint8Array.from([
      length >>> 24,
      (length >> 16) & 0xff,
      (length >> 8) & 0xff,
      length & 0xff,
      0,
      0,
      profile >> 8,
      profile & 0xff,
      ...out,
    ]);
    return this.#reply(sg, b, be16(cdb, 7));
  }

  #eventStatus(cdb: Uint8Array, sg: ScatterGather): CdResult {
    if ((cdb[1]! & 1) === 0) return this.#invalidField(); // asynchronous mode is not supported
    const MEDIA = 0x10;
    let b: Uint8Array;
    if (cdb[4]! & MEDIA) {
      const present = this.#backend !== undefined;
      const code = present && this.#mediaEventPending ? 2 : 0; // new media
      if (present) this.#mediaEventPending = false;
      b = Uint8Array.of(0, 6, 4, MEDIA, code, present ? 0x02 : 0, 0, 0);
    } else {
      b = Uint8Array.of(0, 2, 0x80, MEDIA); // no event available for the asked classes
    }
    return this.#reply(sg, b, be16(cdb, 7));
  }

  #modeSense(cdb: Uint8Array, sg: ScatterGather, ten: boolean): CdResult {
    const page = cdb[2]! & 0x3f;
    const pages: number[] = [];
    const errorRecovery = [0x01, 0x0a, 0, 5, 0, 0, 0, 0, 5, 0, 0, 0];
    const capabilities = [
      0x2a,
      0x14,
      0x3b, // reads CD-R/RW, DVD-ROM ...
      0x00,
      0x71, // audio play, ...
      0x60,
      0x29, // tray, eject, lock
      0x00,
      0x02,
      0xc2, // max speed (obsolete)
      0x00,
      0x02, // volume levels
      0x02,
      0x00, // buffer size
      0x02,
      0xc2,
      0,
      0,
      0,
      0,
      0,
      0,
    ];
    if (page === 0x01 || page === 0x3f) pages.push(...errorRecovery);
    if (page === 0x2a || page === 0x3f) pages.push(...capabilities);
    if (pages.length === 0) return this.#invalidField();
    const medium = this.#backend ? 0x01 : 0x70; // 120 mm data CD / no disc
    const header = ten
      ? [(pages.length + 6) >> 8, (pages.length + 6) & 0xff, medium, 0, 0, 0, 0, 0]
      : [pages.length + 3, medium, 0, 0];
    return this.#reply(sg, Uint8Array.from([...header, ...pages]), ten ? be16(cdb, 7) : cdb[4]!);
  }
}
