/**
 * A SCSI direct-access logical unit over a `DiskBackend` (SBC-3 subset that Linux and Windows
 * use). It parses CDBs, checks LBAs and buffer sizes, moves data between the backend and the
 * request's data buffer, and answers with GOOD or CHECK CONDITION and fixed-format sense. It does
 * no I/O of its own.
 *
 * Buffers: the data buffer is the initiator's (guest memory). Data-in commands with an
 * allocation length transfer `min(data, allocation length, buffer)` and report what they moved
 * (the initiator sees the rest as residual); READ/WRITE/VERIFY need a buffer at least as large
 * as the transfer length and fail with INVALID FIELD IN CDB otherwise. READ and WRITE hand the
 * buffer's own views (a guest page list, however scattered) to the backend's `readv`/`writev`, so
 * data moves between the image and guest memory without a copy; only buffers whose pieces are not
 * known go through one.
 *
 * Durability: SYNCHRONIZE CACHE and FUA writes answer GOOD only after the backend's flush
 * (fdatasync) returned; `stats` counts what the backend completed, for the control socket.
 * @module
 */
import { getLogger, rateLimited } from "../../../util/log.ts";
import { type DiskBackend, DiskError } from "../backend/backend.ts";
import { SrbStatus } from "../protocol.ts";
import { Asc, cdbLengthOf, SAI_READ_CAPACITY_16, ScsiOp, SenseKey } from "./constants.ts";
import {
  type LunInfo,
  modePages,
  modeSenseData,
  type PageControl,
  readCapacity10,
  readCapacity16,
  standardInquiry,
  vpdPage,
} from "./pages.ts";
import {
  adapterError,
  checkCondition,
  good,
  invalidField,
  invalidOpcode,
  invalidParameter,
  lbaOutOfRange,
  type ScsiResult,
  writeProtected,
} from "./sense.ts";

/** The initiator's data buffer: linear bytes, possibly scattered over several host views. */
export interface ScsiBuffer {
  /** Total bytes. */
  readonly length: number;
  /** Copies bytes at `offset` into `dst`. */
  read(offset: number, dst: Uint8Array): void;
  /** Copies `src` into the buffer at `offset`. */
  write(offset: number, src: Uint8Array): void;
  /** The pieces in order (when known), for zero-copy I/O. */
  readonly segments?: readonly Uint8Array[];
}

/** One command for a logical unit. */
export interface ScsiRequest {
  /** The CDB (its length is the CDB length the initiator gave). */
  readonly cdb: Uint8Array;
  /** The data buffer; only its first `dataLength` bytes belong to the command. */
  readonly data: ScsiBuffer;
  /** Bytes of `data` the command may use (the initiator's data transfer length). */
  readonly dataLength: number;
}

/**
 * Per-unit I/O counters, for the control socket and tests. A command is counted once the
 * backend finished it successfully.
 */
export interface ScsiDiskStats {
  /** READ(6/10/12/16) commands completed. */
  reads: number;
  /** WRITE(6/10/12/16), WRITE AND VERIFY and WRITE SAME commands that wrote data. */
  writes: number;
  /** Backend flushes that returned success (SYNCHRONIZE CACHE, FUA writes): fdatasync ran. */
  flushes: number;
  /** Bytes those reads returned. */
  bytesRead: number;
  /** Bytes those writes stored. */
  bytesWritten: number;
}

/** Options of `ScsiDisk`. */
export interface ScsiDiskOptions {
  /** Serial number (VPD 80h); default derived from nothing: "hyperdeno". */
  readonly serial?: string;
  /** Present the unit write-protected even when the backend is writable. */
  readonly readOnly?: boolean;
  /** Largest single transfer, in bytes (default 1 MiB). */
  readonly maxTransferBytes?: number;
  /** Vendor id (default "Msft": Linux storvsc enables WRITE SAME only for it). */
  readonly vendor?: string;
  /** Product id (default "Virtual Disk"). */
  readonly product?: string;
}

const log = getLogger("dev", "scsi");
const backendErrorLimit = rateLimited();

/** Largest WRITE SAME / UNMAP descriptor, in bytes. */
const MAX_UNMAP_BYTES = 1 << 30;
const EMPTY = new Uint8Array(0);

/** The pieces of `buf` that cover `[0, length)`, or `undefined` when they are not known. */
function prefixSegments(buf: ScsiBuffer, length: number): Uint8Array[] | undefined {
  const segs = buf.segments;
  if (!segs) return undefined;
  const out: Uint8Array[] = [];
  let left = length;
  for (const s of segs) {
    if (left === 0) break;
    const n = Math.min(s.length, left);
    out.push(n === s.length ? s : s.subarray(0, n));
    left -= n;
  }
  return left === 0 ? out : undefined;
}

function be48(cdb: Uint8Array, at: number): number {
  // u64 big-endian; values past 2^53 are reported as Infinity (always out of range).
  const dv = new DataView(cdb.buffer, cdb.byteOffset, cdb.byteLength);
  const hi = dv.getUint32(at, false);
  const lo = dv.getUint32(at + 4, false);
  return hi >= 0x20_0000 ? Infinity : hi * 0x1_0000_0000 + lo;
}

function be32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) >>> 0) + (b[at + 1]! << 16) + (b[at + 2]! << 8) + b[at + 3]!;
}

function be16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

/** A disk logical unit. */
export class ScsiDisk {
  /** The backend. */
  readonly backend: DiskBackend;
  /** What INQUIRY and friends report. */
  readonly info: LunInfo;
  /** I/O counters (live object). */
  readonly stats: ScsiDiskStats = {
    reads: 0,
    writes: 0,
    flushes: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };
  #inflight = 0;
  #drained: (() => void)[] = [];

  /** A unit over `backend`. */
  constructor(backend: DiskBackend, options: ScsiDiskOptions = {}) {
    this.backend = backend;
    const bs = backend.sectorSize;
    const maxTransfer = Math.max(bs, options.maxTransferBytes ?? 1 << 20);
    this.info = {
      vendor: options.vendor ?? "Msft",
      product: options.product ?? "Virtual Disk",
      revision: "1.0",
      serial: options.serial ?? "hyperdeno",
      blocks: Math.floor(backend.size / bs),
      blockSize: bs,
      readOnly: backend.readOnly || (options.readOnly ?? false),
      thin: backend.canDiscard && !backend.readOnly && !(options.readOnly ?? false),
      unmapGranularity: Math.max(1, Math.floor(backend.discardGranularity / bs)),
      maxTransferBlocks: Math.floor(maxTransfer / bs),
      maxUnmapBlocks: Math.floor(MAX_UNMAP_BYTES / bs),
      maxUnmapDescriptors: 256,
    };
  }

  /** Commands in flight. */
  get inflight(): number {
    return this.#inflight;
  }

  /** The backend's flush, counted once it succeeded (fdatasync returned). */
  async #flush(): Promise<void> {
    await this.backend.flush();
    this.stats.flushes++;
  }

  /** Resolves when no command is in flight. */
  drain(): Promise<void> {
    if (this.#inflight === 0) return Promise.resolve();
    return new Promise((r) => this.#drained.push(r));
  }

  /** Runs one command. Never rejects: every failure is a `ScsiResult`. */
  async execute(req: ScsiRequest): Promise<ScsiResult> {
    this.#inflight++;
    try {
      return await this.#execute(req);
    } catch (e) {
      return this.#backendFailure(req.cdb[0] ?? 0, e);
    } finally {
      if (--this.#inflight === 0) {
        const waiters = this.#drained;
        this.#drained = [];
        for (const w of waiters) w();
      }
    }
  }

  #backendFailure(op: number, e: unknown): ScsiResult {
    backendErrorLimit((dropped) =>
      log.warn("SCSI command {op} failed in the backend: {error}{more}", {
        op: `0x${op.toString(16)}`,
        error: e instanceof Error ? e.message : String(e),
        more: dropped ? ` (${dropped} similar messages dropped)` : "",
      })
    );
    if (e instanceof DiskError) {
      switch (e.code) {
        case "read-only":
          return writeProtected();
        case "no-space":
          return checkCondition(SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED_WRITE_PROTECT);
        case "out-of-range":
          return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE);
        case "closed":
          return checkCondition(SenseKey.NOT_READY, Asc.NONE);
      }
    }
    const isWrite = op === ScsiOp.WRITE_6 || op === ScsiOp.WRITE_10 || op === ScsiOp.WRITE_12 ||
      op === ScsiOp.WRITE_16 || op === ScsiOp.WRITE_SAME_10 || op === ScsiOp.WRITE_SAME_16 ||
      op === ScsiOp.UNMAP || op === ScsiOp.SYNCHRONIZE_CACHE_10 ||
      op === ScsiOp.SYNCHRONIZE_CACHE_16;
    return checkCondition(
      SenseKey.MEDIUM_ERROR,
      isWrite ? Asc.WRITE_ERROR : Asc.UNRECOVERED_READ_ERROR,
    );
  }

  /** Data-in reply: moves `min(bytes, allocation, buffer)` bytes. */
  #dataIn(req: ScsiRequest, bytes: Uint8Array, allocation: number): ScsiResult {
    const n = Math.min(bytes.length, allocation, req.dataLength);
    if (n > 0) req.data.write(0, n === bytes.length ? bytes : bytes.subarray(0, n));
    return good(n);
  }

  async #execute(req: ScsiRequest): Promise<ScsiResult> {
    const cdb = req.cdb;
    if (cdb.length === 0) return adapterError(SrbStatus.INVALID_REQUEST);
    const op = cdb[0]!;
    const need = cdbLengthOf(op);
    if (need > 0) {
      if (cdb.length < need) return invalidField(0);
      // NACA (control byte bit 2) is not supported.
      if (cdb[need - 1]! & 0x04) return invalidField(need - 1, 2);
    }
    const info = this.info;
    switch (op) {
      case ScsiOp.TEST_UNIT_READY:
      case ScsiOp.START_STOP_UNIT:
      case ScsiOp.PREVENT_ALLOW_MEDIUM_REMOVAL:
        return good();
      case ScsiOp.REQUEST_SENSE: {
        // Sense is always returned with the failing command (autosense): nothing is pending.
        const desc = (cdb[1]! & 1) !== 0;
        const d = desc ? new Uint8Array([0x72, 0, 0, 0, 0, 0, 0, 0]) : new Uint8Array(18);
        if (!desc) {
          d[0] = 0x70;
          d[7] = 10;
        }
        return this.#dataIn(req, d, cdb[4]!);
      }
      case ScsiOp.INQUIRY:
        return this.#inquiry(req);
      case ScsiOp.MODE_SENSE_6:
      case ScsiOp.MODE_SENSE_10:
        return this.#modeSense(req, op === ScsiOp.MODE_SENSE_10);
      case ScsiOp.READ_CAPACITY_10:
        return this.#dataIn(req, readCapacity10(info), 8);
      case ScsiOp.SERVICE_ACTION_IN_16:
        if ((cdb[1]! & 0x1f) !== SAI_READ_CAPACITY_16) return invalidField(1, 4);
        return this.#dataIn(req, readCapacity16(info), be32(cdb, 10));
      case ScsiOp.READ_6:
      case ScsiOp.WRITE_6: {
        const lba = ((cdb[1]! & 0x1f) << 16) | (cdb[2]! << 8) | cdb[3]!;
        const blocks = cdb[4]! === 0 ? 256 : cdb[4]!;
        return op === ScsiOp.READ_6
          ? await this.#read(req, lba, blocks, 4)
          : await this.#write(req, lba, blocks, 4, false);
      }
      case ScsiOp.READ_10:
      case ScsiOp.WRITE_10:
      case ScsiOp.WRITE_VERIFY_10: {
        const lba = be32(cdb, 2);
        const blocks = be16(cdb, 7);
        return op === ScsiOp.READ_10
          ? await this.#read(req, lba, blocks, 7)
          : await this.#write(req, lba, blocks, 7, (cdb[1]! & 0x08) !== 0);
      }
      case ScsiOp.READ_12:
      case ScsiOp.WRITE_12: {
        const lba = be32(cdb, 2);
        const blocks = be32(cdb, 6);
        return op === ScsiOp.READ_12
          ? await this.#read(req, lba, blocks, 6)
          : await this.#write(req, lba, blocks, 6, (cdb[1]! & 0x08) !== 0);
      }
      case ScsiOp.READ_16:
      case ScsiOp.WRITE_16: {
        const lba = be48(cdb, 2);
        const blocks = be32(cdb, 10);
        return op === ScsiOp.READ_16
          ? await this.#read(req, lba, blocks, 10)
          : await this.#write(req, lba, blocks, 10, (cdb[1]! & 0x08) !== 0);
      }
      case ScsiOp.VERIFY_10:
        return await this.#verify(req, be32(cdb, 2), be16(cdb, 7), 7);
      case ScsiOp.VERIFY_12:
        return await this.#verify(req, be32(cdb, 2), be32(cdb, 6), 6);
      case ScsiOp.VERIFY_16:
        return await this.#verify(req, be48(cdb, 2), be32(cdb, 10), 10);
      case ScsiOp.SYNCHRONIZE_CACHE_10:
      case ScsiOp.SYNCHRONIZE_CACHE_16: {
        const ten = op === ScsiOp.SYNCHRONIZE_CACHE_10;
        const lba = ten ? be32(cdb, 2) : be48(cdb, 2);
        const blocks = ten ? be16(cdb, 7) : be32(cdb, 10);
        if (lba >= info.blocks || lba + blocks > info.blocks) return lbaOutOfRange(lba);
        // GOOD goes back only after the backend's fdatasync returned (a failure is a sense).
        if (!info.readOnly) await this.#flush();
        return good();
      }
      case ScsiOp.WRITE_SAME_10:
        return await this.#writeSame(req, be32(cdb, 2), be16(cdb, 7), false);
      case ScsiOp.WRITE_SAME_16:
        return await this.#writeSame(req, be48(cdb, 2), be32(cdb, 10), (cdb[1]! & 1) !== 0);
      case ScsiOp.UNMAP:
        return await this.#unmap(req);
      default:
        return invalidOpcode();
    }
  }

  #inquiry(req: ScsiRequest): ScsiResult {
    const cdb = req.cdb;
    const alloc = be16(cdb, 3);
    if (cdb[1]! & 0x02) return invalidField(1, 1); // CMDDT (obsolete)
    if (!(cdb[1]! & 0x01)) {
      if (cdb[2] !== 0) return invalidField(2);
      return this.#dataIn(req, standardInquiry(this.info), alloc);
    }
    const page = vpdPage(this.info, cdb[2]!);
    if (!page) return invalidField(2);
    return this.#dataIn(req, page, alloc);
  }

  #modeSense(req: ScsiRequest, ten: boolean): ScsiResult {
    const cdb = req.cdb;
    const dbd = (cdb[1]! & 0x08) !== 0;
    const longLba = ten && (cdb[1]! & 0x10) !== 0;
    const pc = (cdb[2]! >> 6) as PageControl;
    const code = cdb[2]! & 0x3f;
    const subpage = cdb[3]!;
    const alloc = ten ? be16(cdb, 7) : cdb[4]!;
    if (pc === 3) {
      return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.SAVING_PARAMETERS_NOT_SUPPORTED, {
        field: { inCdb: true, byte: 2, bit: 7 },
      });
    }
    if (subpage !== 0 && !(code === 0x3f && subpage === 0xff)) return invalidField(3);
    const pages = modePages(code, pc);
    if (!pages) return invalidField(2, 5);
    return this.#dataIn(req, modeSenseData(this.info, pages, { ten, dbd, longLba }), alloc);
  }

  /** Checks an LBA range; `lenByte` is where the transfer length sits in the CDB. */
  #checkTransfer(req: ScsiRequest, lba: number, blocks: number, lenByte: number) {
    const info = this.info;
    if (lba >= info.blocks || lba + blocks > info.blocks) return lbaOutOfRange(lba);
    if (blocks > info.maxTransferBlocks) return invalidField(lenByte);
    if (blocks * info.blockSize > req.dataLength) return invalidField(lenByte);
    return undefined;
  }

  async #read(req: ScsiRequest, lba: number, blocks: number, lenByte: number) {
    const bad = this.#checkTransfer(req, lba, blocks, lenByte);
    if (bad) return bad;
    const len = blocks * this.info.blockSize;
    if (len > 0) await this.#readInto(lba * this.info.blockSize, req.data, len);
    this.stats.reads++;
    this.stats.bytesRead += len;
    return good(len);
  }

  /** Reads into the buffer's own views (scatter, no copy) when known, else through a copy. */
  async #readInto(offset: number, buf: ScsiBuffer, len: number): Promise<void> {
    const segs = prefixSegments(buf, len);
    if (segs) return await this.backend.readv(offset, segs);
    const bounce = new Uint8Array(len);
    await this.backend.read(offset, bounce);
    buf.write(0, bounce);
  }

  /** Writes from the buffer's own views (gather, no copy) when known, else through a copy. */
  async #writeFrom(offset: number, buf: ScsiBuffer, len: number): Promise<void> {
    const segs = prefixSegments(buf, len);
    if (segs) return await this.backend.writev(offset, segs);
    const bounce = new Uint8Array(len);
    buf.read(0, bounce);
    await this.backend.write(offset, bounce);
  }

  async #write(req: ScsiRequest, lba: number, blocks: number, lenByte: number, fua: boolean) {
    if (this.info.readOnly) return writeProtected();
    const bad = this.#checkTransfer(req, lba, blocks, lenByte);
    if (bad) return bad;
    const len = blocks * this.info.blockSize;
    if (len > 0) await this.#writeFrom(lba * this.info.blockSize, req.data, len);
    this.stats.writes++;
    this.stats.bytesWritten += len;
    if (fua) await this.#flush();
    return good(len);
  }

  async #verify(req: ScsiRequest, lba: number, blocks: number, lenByte: number) {
    const info = this.info;
    const bytchk = (req.cdb[1]! >> 1) & 3;
    if (lba >= info.blocks || lba + blocks > info.blocks) return lbaOutOfRange(lba);
    if (bytchk === 0 || blocks === 0) return good();
    if (bytchk === 2) return invalidField(1, 2);
    if (blocks > info.maxTransferBlocks) return invalidField(lenByte);
    const bs = info.blockSize;
    const sent = bytchk === 1 ? blocks * bs : bs;
    if (sent > req.dataLength) return invalidField(lenByte);
    const expect = new Uint8Array(sent);
    req.data.read(0, expect);
    const medium = new Uint8Array(blocks * bs);
    await this.backend.read(lba * bs, medium);
    for (let i = 0; i < medium.length; i++) {
      if (medium[i] !== expect[bytchk === 1 ? i : i % bs]) {
        return checkCondition(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, {
          info: i,
          transferred: sent,
        });
      }
    }
    return good(sent);
  }

  async #writeSame(req: ScsiRequest, lba: number, blocks: number, ndob: boolean) {
    const info = this.info;
    const cdb = req.cdb;
    const unmap = (cdb[1]! & 0x08) !== 0;
    const lenByte = cdb[0] === ScsiOp.WRITE_SAME_10 ? 7 : 10;
    if (info.readOnly) return writeProtected();
    if (blocks === 0) return invalidField(lenByte); // WSNZ
    if (lba >= info.blocks || lba + blocks > info.blocks) return lbaOutOfRange(lba);
    if (blocks > info.maxUnmapBlocks) return invalidField(lenByte);
    const bs = info.blockSize;
    const pattern = new Uint8Array(bs);
    if (!ndob) {
      if (req.dataLength < bs) return invalidField(lenByte);
      req.data.read(0, pattern);
    }
    const zero = pattern.every((b) => b === 0);
    if (unmap && zero && info.thin) {
      await this.backend.discard(lba * bs, blocks * bs);
      return good(ndob ? 0 : bs);
    }
    const chunkBlocks = Math.min(blocks, Math.max(1, Math.floor((1 << 20) / bs)));
    const chunk = new Uint8Array(chunkBlocks * bs);
    if (!zero) { for (let i = 0; i < chunkBlocks; i++) chunk.set(pattern, i * bs); }
    for (let done = 0; done < blocks; done += chunkBlocks) {
      const n = Math.min(chunkBlocks, blocks - done);
      await this.backend.write(
        (lba + done) * bs,
        n === chunkBlocks ? chunk : chunk.subarray(0, n * bs),
      );
    }
    this.stats.writes++;
    this.stats.bytesWritten += blocks * bs;
    return good(ndob ? 0 : bs);
  }

  async #unmap(req: ScsiRequest): Promise<ScsiResult> {
    const info = this.info;
    if (!info.thin) return info.readOnly ? writeProtected() : invalidOpcode();
    const paramLen = be16(req.cdb, 7);
    if (paramLen === 0) return good();
    const listLen = Math.min(paramLen, req.dataLength);
    if (listLen < 8) {
      return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR);
    }
    const list = listLen > 0 ? new Uint8Array(listLen) : EMPTY;
    req.data.read(0, list);
    const bdLen = be16(list, 2);
    if (8 + bdLen > listLen) return invalidParameter(2);
    const count = Math.floor(bdLen / 16);
    if (count > info.maxUnmapDescriptors) return invalidParameter(2);
    const ranges: [number, number][] = [];
    for (let i = 0; i < count; i++) {
      const at = 8 + i * 16;
      const lba = be48(list, at);
      const n = be32(list, at + 8);
      if (lba > info.blocks || lba + n > info.blocks) return lbaOutOfRange(lba);
      if (n > info.maxUnmapBlocks) return invalidParameter(at + 8);
      if (n > 0) ranges.push([lba, n]);
    }
    const bs = info.blockSize;
    for (const [lba, n] of ranges) await this.backend.discard(lba * bs, n * bs);
    return good(listLen);
  }
}
