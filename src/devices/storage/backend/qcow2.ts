/**
 * qcow2 images (version 2 and 3), read and write: L1/L2 cluster mapping, zero clusters, backing
 * files (raw or qcow2) read through for unallocated clusters, and allocation on write that keeps
 * refcounts exact (images written here pass `qemu-img check`). Compressed clusters, encryption,
 * external data files and subclusters are refused with a clear error; images with internal
 * snapshots open read-only only.
 *
 * Concurrency: reads and writes to allocated clusters run in parallel; anything that changes
 * metadata (allocation, discard) runs under one async lock and re-reads the mapping once it
 * holds it. Metadata is written through (no dirty cache), in the order data → refcounts → L2 →
 * L1, so a crash can leak clusters but never point at garbage. New clusters are appended at
 * the end of the file.
 * @module
 */
import { dirname, isAbsolute, join } from "node:path";
import { UsageError } from "../../../util/errors.ts";
import { AsyncFile, errnoOf } from "./aio.ts";
import { checkRange, type DiskBackend, DiskError } from "./backend.ts";
import {
  decodeL1,
  decodeL2,
  decodeRefTable,
  encodeEntry,
  getRefcount,
  HeaderField,
  type L2Entry,
  maxRefcount,
  parseHeader,
  peekHeader,
  QCOW2_MAGIC,
  Qcow2FormatError,
  type Qcow2Header,
  setRefcount,
} from "./qcow2_format.ts";
import { ioError, RawFileBackend } from "./raw.ts";
import { Segments } from "./segments.ts";

/** Options of `Qcow2Backend.open`. */
export interface Qcow2Options {
  /** Refuse writes (default false). */
  readonly readOnly?: boolean;
  /** Logical sector size the guest sees: 512 (default) or 4096. */
  readonly sectorSize?: number;
  /** Bytes of L2 tables kept in memory (default 32 MiB: 256 GiB of guest at 64 KiB clusters). */
  readonly l2CacheBytes?: number;
}

/** Backing chains longer than this are refused (also stops loops). */
const MAX_BACKING_DEPTH = 16;

/** A FIFO async lock. */
class Lock {
  #tail: Promise<void> = Promise.resolve();
  #held = false;
  get held(): boolean {
    return this.#held;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#tail;
    let release!: () => void;
    this.#tail = new Promise((r) => release = r);
    await prev;
    this.#held = true;
    try {
      return await fn();
    } finally {
      this.#held = false;
      release();
    }
  }
}

/** One piece of a request that falls in one guest cluster. */
interface Piece {
  /** Guest cluster index. */
  readonly gc: number;
  /** Offset in the cluster. */
  readonly inOff: number;
  /** Bytes in this cluster. */
  readonly n: number;
  /** Offset in the caller's buffer. */
  readonly bufOff: number;
}

/** Opens a backing file read-only, probing the format when the header does not name it. */
async function openBacking(
  path: string,
  format: string | undefined,
  sectorSize: number,
  depth: number,
): Promise<DiskBackend> {
  if (depth > MAX_BACKING_DEPTH) {
    throw new UsageError(`backing chain of '${path}' is deeper than ${MAX_BACKING_DEPTH} images`);
  }
  let fmt = format;
  if (fmt === undefined) {
    const head = new Uint8Array(4);
    try {
      using f = AsyncFile.open(path, { readOnly: true });
      await f.read(head, 0);
    } catch (e) {
      throw new UsageError(`cannot open backing file '${path}': ${(e as Error).message}`);
    }
    fmt = new DataView(head.buffer).getUint32(0, false) === QCOW2_MAGIC ? "qcow2" : "raw";
  }
  if (fmt === "raw") {
    try {
      return RawFileBackend.open(path, { readOnly: true, sectorSize });
    } catch (e) {
      if (e instanceof UsageError) {
        throw new UsageError(`backing file: ${e.message}`);
      }
      throw e;
    }
  }
  if (fmt === "qcow2") return await Qcow2Backend.open(path, { readOnly: true, sectorSize }, depth);
  throw new UsageError(`backing file '${path}' has format '${fmt}'; only raw and qcow2 work`);
}

/** A qcow2 image. */
export class Qcow2Backend implements DiskBackend {
  /** @inheritdoc */
  readonly format = "qcow2";
  /** @inheritdoc */
  readonly size: number;
  /** @inheritdoc */
  readonly sectorSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  /** @inheritdoc */
  readonly canDiscard: boolean;
  /** @inheritdoc */
  readonly discardGranularity: number;
  /** The image path. */
  readonly path: string;
  /** The decoded header (as opened). */
  readonly header: Qcow2Header;
  /** The backing image, if any. */
  readonly backing: DiskBackend | undefined;

  readonly #file: AsyncFile;
  readonly #cs: number;
  readonly #l2Entries: number;
  readonly #l1: Uint8Array;
  readonly #l1View: DataView;
  #refTable: Uint8Array;
  #refTableView: DataView;
  #refTableOffset: number;
  readonly #refBits: number;
  readonly #refBlockEntries: number;
  readonly #l2Cache = new Map<number, DataView>();
  readonly #l2Loading = new Map<number, Promise<DataView>>();
  readonly #l2CacheLimit: number;
  readonly #refBlocks = new Map<number, DataView>();
  readonly #lock = new Lock();
  #nextFree = 0;
  #closed = false;

  private constructor(
    path: string,
    file: AsyncFile,
    header: Qcow2Header,
    tables: { l1: Uint8Array; refTable: Uint8Array },
    opts: { readOnly: boolean; sectorSize: number; backing: DiskBackend | undefined; l2: number },
  ) {
    this.path = path;
    this.#file = file;
    this.header = header;
    this.backing = opts.backing;
    this.#cs = 2 ** header.clusterBits;
    this.#l2Entries = this.#cs / 8;
    this.#l1 = tables.l1;
    this.#l1View = new DataView(tables.l1.buffer, tables.l1.byteOffset, tables.l1.byteLength);
    this.#refTable = tables.refTable;
    this.#refTableView = new DataView(tables.refTable.buffer);
    this.#refTableOffset = header.refcountTableOffset;
    this.#refBits = 2 ** header.refcountOrder;
    this.#refBlockEntries = (this.#cs * 8) / this.#refBits;
    this.#l2CacheLimit = Math.max(1, Math.floor(opts.l2 / this.#cs));
    this.sectorSize = opts.sectorSize;
    this.size = header.size - header.size % opts.sectorSize;
    this.readOnly = opts.readOnly;
    this.canDiscard = !opts.readOnly;
    this.discardGranularity = Math.max(this.#cs, opts.sectorSize);
  }

  /**
   * Opens a qcow2 image. Throws `UsageError` for a missing file or a bad image (the message
   * names the file and the bad field).
   */
  static async open(path: string, options: Qcow2Options = {}, depth = 0): Promise<Qcow2Backend> {
    const sectorSize = options.sectorSize ?? 512;
    if (sectorSize !== 512 && sectorSize !== 4096) {
      throw new UsageError(`sector size ${sectorSize} is not supported; use 512 or 4096`);
    }
    const readOnly = options.readOnly ?? false;
    let file: AsyncFile;
    try {
      file = AsyncFile.open(path, { readOnly });
    } catch (e) {
      if (errnoOf(e) === 2) throw new UsageError(`disk image '${path}' does not exist`);
      throw new UsageError(`cannot open disk image '${path}': ${(e as Error).message}`);
    }
    let backing: DiskBackend | undefined;
    try {
      const fileSize = file.size();
      const head = new Uint8Array(Math.min(fileSize, 512));
      await file.read(head, 0);
      const { clusterBits } = peekHeader(head);
      const cluster0 = new Uint8Array(Math.min(fileSize, 2 ** clusterBits));
      await file.read(cluster0, 0);
      const h = parseHeader(cluster0);
      const cs = 2 ** h.clusterBits;
      if (!readOnly && h.nbSnapshots > 0) {
        throw new UsageError(
          `disk image '${path}' has ${h.nbSnapshots} internal snapshot(s); open it with ` +
            `readonly=on, or flatten it with qemu-img convert`,
        );
      }
      if (!readOnly && (h.incompatibleFeatures & 1n)) {
        throw new UsageError(
          `disk image '${path}' was not closed cleanly (dirty bit set); ` +
            `repair it with 'qemu-img check -r all ${path}'`,
        );
      }
      // Both tables must be in the file: zeros read past its end would later be written back
      // at the offsets the header chose, growing the host file to any size.
      const l1 = new Uint8Array(h.l1Size * 8);
      if (l1.length > 0 && await file.read(l1, h.l1TableOffset) < l1.length) {
        throw new Qcow2FormatError(`the L1 table lies past the end of the file`);
      }
      const refTable = new Uint8Array(h.refcountTableClusters * cs);
      if (await file.read(refTable, h.refcountTableOffset) < refTable.length) {
        throw new Qcow2FormatError(`the refcount table lies past the end of the file`);
      }
      if (h.backingFile !== undefined) {
        const bpath = isAbsolute(h.backingFile)
          ? h.backingFile
          : join(dirname(path), h.backingFile);
        backing = await openBacking(bpath, h.backingFormat, sectorSize, depth + 1);
      }
      const img = new Qcow2Backend(path, file, h, { l1, refTable }, {
        readOnly,
        sectorSize,
        backing,
        l2: options.l2CacheBytes ?? 32 << 20,
      });
      if (img.size === 0) {
        throw new UsageError(`disk image '${path}' is smaller than one ${sectorSize}-byte sector`);
      }
      if (!readOnly) await img.#prepareForWrites(fileSize);
      return img;
    } catch (e) {
      file.close();
      backing?.close();
      if (e instanceof Qcow2FormatError) {
        throw new UsageError(`disk image '${path}' is not a valid qcow2 image: ${e.message}`);
      }
      if (e instanceof DiskError && e.code === "corrupt") {
        throw new UsageError(`disk image '${path}' is corrupt: ${e.message}`);
      }
      if (e instanceof UsageError) throw e;
      throw new UsageError(`cannot read disk image '${path}': ${(e as Error).message}`);
    }
  }

  /** Finds the first free cluster and clears autoclear bits (we keep no bitmaps). */
  async #prepareForWrites(fileSize: number): Promise<void> {
    const cs = this.#cs;
    let next = Math.ceil(fileSize / cs);
    const entries = this.#refTable.length / 8;
    for (let i = 0; i < entries; i++) {
      const off = this.#refTableEntry(i);
      if (off === 0) continue;
      const block = await this.#refBlock(off);
      for (let j = this.#refBlockEntries - 1; j >= 0; j--) {
        if (getRefcount(block, j, this.#refBits) !== 0) {
          next = Math.max(next, i * this.#refBlockEntries + j + 1);
          break;
        }
      }
    }
    // Refcounts for clusters the file does not reach are hostile (or a truncated image): new
    // clusters would go after them, growing the host file to wherever they point.
    if (next > Math.ceil(fileSize / cs)) {
      throw this.#corrupt(
        `refcounts claim cluster ${next - 1}, past the end of the ${fileSize}-byte file ` +
          `(repair it with 'qemu-img check -r all ${this.path}')`,
      );
    }
    this.#nextFree = next;
    if (this.header.version === 3 && this.header.autoclearFeatures !== 0n) {
      const b = new Uint8Array(8);
      await this.#file.write(b, HeaderField.AUTOCLEAR_FEATURES);
    }
  }

  /**
   * `host` (a data cluster an L2 entry names, about to be written or freed) unless it lies past
   * the first free cluster, where nothing this image holds can be: then it is hostile metadata,
   * and writing or freeing it would grow the host file (or its refcounts) to the offset the
   * image chose. Only for writable images (`#nextFree` is known).
   */
  #checkHostCluster(host: number): number {
    if (host + this.#cs > this.#nextFree * this.#cs) {
      throw this.#corrupt(`data cluster 0x${host.toString(16)} lies past the end of the image`);
    }
    return host;
  }

  #corrupt(why: string): DiskError {
    return new DiskError("corrupt", `qcow2 image '${this.path}' is corrupt: ${why}`);
  }

  #refTableEntry(i: number): number {
    const r = decodeRefTable(this.#refTableView, i * 8, this.#cs);
    if (typeof r === "string") throw this.#corrupt(r);
    return r;
  }

  async #loadTable(offset: number): Promise<DataView> {
    const buf = new Uint8Array(this.#cs);
    const n = await this.#file.read(buf, offset);
    // Every table this backend links is written before it is linked, so a table the file does
    // not hold is hostile metadata: treating it as zeros would later write it, at an offset
    // the image chose, growing the host file to any size.
    if (n < buf.length) {
      throw this.#corrupt(`the table at 0x${offset.toString(16)} lies past the end of the file`);
    }
    return new DataView(buf.buffer);
  }

  async #refBlock(offset: number): Promise<DataView> {
    let b = this.#refBlocks.get(offset);
    if (!b) {
      b = await this.#loadTable(offset);
      // A concurrent loader may have won; keep the first copy (it may already be modified).
      const again = this.#refBlocks.get(offset);
      if (again) return again;
      this.#refBlocks.set(offset, b);
    }
    return b;
  }

  /** The L2 table at `offset` (cached; concurrent loads share one read). */
  #l2Table(offset: number): Promise<DataView> | DataView {
    const hit = this.#l2Cache.get(offset);
    if (hit) {
      this.#l2Cache.delete(offset);
      this.#l2Cache.set(offset, hit);
      return hit;
    }
    let p = this.#l2Loading.get(offset);
    if (!p) {
      p = this.#loadTable(offset).then((t) => {
        this.#l2Loading.delete(offset);
        const raced = this.#l2Cache.get(offset);
        if (raced) return raced;
        this.#l2Cache.set(offset, t);
        this.#evict();
        return t;
      }, (e) => {
        this.#l2Loading.delete(offset);
        throw e;
      });
      this.#l2Loading.set(offset, p);
    }
    return p;
  }

  /** Drops least recently used L2 tables, never while a metadata update holds references. */
  #evict(): void {
    if (this.#lock.held) return;
    while (this.#l2Cache.size > this.#l2CacheLimit) {
      const oldest = this.#l2Cache.keys().next().value as number;
      this.#l2Cache.delete(oldest);
    }
  }

  /** L2 table offset for guest cluster `gc` (0 when none). */
  #l2OffsetOf(gc: number): number {
    const l1Index = Math.floor(gc / this.#l2Entries);
    if (l1Index >= this.header.l1Size) return 0;
    const r = decodeL1(this.#l1View, l1Index * 8, this.#cs);
    if (typeof r === "string") throw this.#corrupt(r);
    return r;
  }

  /** The mapping of guest cluster `gc`. */
  async #lookup(gc: number): Promise<L2Entry> {
    const l2 = this.#l2OffsetOf(gc);
    if (l2 === 0) return { kind: "unallocated" };
    const table = await this.#l2Table(l2);
    const e = decodeL2(table, (gc % this.#l2Entries) * 8, this.header.version, this.#cs);
    if (e.kind === "corrupt") throw this.#corrupt(e.why);
    return e;
  }

  #pieces(offset: number, length: number): Piece[] {
    const cs = this.#cs;
    const out: Piece[] = [];
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const inOff = pos - gc * cs;
      const n = Math.min(cs - inOff, end - pos);
      out.push({ gc, inOff, n, bufOff: pos - offset });
      pos += n;
    }
    return out;
  }

  /**
   * Reads guest bytes `[pos, pos+n)` of the backing image into `dst` at `at` (zeros past its
   * end).
   */
  async #readBacking(pos: number, dst: Segments, at: number, n: number): Promise<void> {
    const b = this.backing;
    const avail = b ? Math.max(0, Math.min(n, b.size - pos)) : 0;
    if (avail > 0) await b!.readv(pos, dst.slice(at, avail));
    if (avail < n) dst.fill(0, at + avail, n - avail);
  }

  #live(): void {
    if (this.#closed) throw new DiskError("closed", `qcow2 image '${this.path}' is closed`);
  }

  /** @inheritdoc */
  read(offset: number, dst: Uint8Array): Promise<void> {
    return this.readv(offset, [dst]);
  }

  /**
   * Reads cluster by cluster: each run of host-contiguous data clusters is one `preadv` straight
   * into the caller's views (cut at the run's edges), zero clusters are zero-filled in place,
   * unallocated ones read through from the backing image.
   */
  async readv(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    const dst = new Segments(parts);
    checkRange(offset, dst.length, this.size);
    this.#live();
    const cs = this.#cs;
    const jobs: Promise<void>[] = [];
    // A run of host-contiguous data clusters: [hostStart, hostEnd) -> dst[bufStart..].
    let runHost = -1;
    let runEnd = -1;
    let runBuf = 0;
    const flush = () => {
      if (runHost < 0) return;
      const host = runHost;
      const at = runBuf;
      const len = runEnd - runHost;
      jobs.push(
        this.#file.readv(dst.slice(at, len), host).then((n) => {
          if (n < len) dst.fill(0, at + n, len - n);
        }),
      );
      runHost = -1;
    };
    try {
      for (const p of this.#pieces(offset, dst.length)) {
        const m = await this.#lookup(p.gc);
        if (m.kind === "data") {
          const host = m.host + p.inOff;
          if (runHost >= 0 && runEnd === host && runBuf + (runEnd - runHost) === p.bufOff) {
            runEnd += p.n;
          } else {
            flush();
            runHost = host;
            runEnd = host + p.n;
            runBuf = p.bufOff;
          }
          continue;
        }
        flush();
        if (m.kind === "zero") dst.fill(0, p.bufOff, p.n);
        else if (m.kind === "unallocated") {
          jobs.push(this.#readBacking(p.gc * cs + p.inOff, dst, p.bufOff, p.n));
        } else throw this.#compressed(p.gc);
      }
      flush();
      await Promise.all(jobs);
    } catch (e) {
      await Promise.allSettled(jobs);
      throw ioError(`read of ${dst.length} bytes at ${offset} from '${this.path}'`, e);
    }
  }

  #compressed(gc: number): DiskError {
    return new DiskError(
      "unsupported",
      `qcow2 image '${this.path}' has a compressed cluster at guest offset ${gc * this.#cs}; ` +
        `compressed clusters are not supported (decompress with qemu-img convert -O qcow2)`,
    );
  }

  /** @inheritdoc */
  write(offset: number, src: Uint8Array): Promise<void> {
    return this.writev(offset, [src]);
  }

  /**
   * Writes cluster by cluster: runs of allocated, host-contiguous clusters are one `pwritev`
   * straight from the caller's views; clusters that need allocation are written under the
   * metadata lock (whole clusters from the views, partial ones merged over their old contents).
   */
  async writev(offset: number, parts: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) throw new DiskError("read-only", `'${this.path}' is read-only`);
    const src = new Segments(parts);
    checkRange(offset, src.length, this.size);
    this.#live();
    const jobs: Promise<void>[] = [];
    const needAlloc: Piece[] = [];
    try {
      let runHost = -1;
      let runEnd = -1;
      let runBuf = 0;
      const flush = () => {
        if (runHost < 0) return;
        jobs.push(this.#file.writev(src.slice(runBuf, runEnd - runHost), runHost));
        runHost = -1;
      };
      for (const p of this.#pieces(offset, src.length)) {
        const m = await this.#lookup(p.gc);
        if (m.kind === "data") {
          this.#checkHostCluster(m.host);
          const host = m.host + p.inOff;
          if (runHost >= 0 && runEnd === host && runBuf + (runEnd - runHost) === p.bufOff) {
            runEnd += p.n;
          } else {
            flush();
            runHost = host;
            runEnd = host + p.n;
            runBuf = p.bufOff;
          }
        } else if (m.kind === "compressed") {
          throw this.#compressed(p.gc);
        } else {
          flush();
          needAlloc.push(p);
        }
      }
      flush();
      if (needAlloc.length > 0) {
        jobs.push(this.#lock.run(() => this.#allocateAndWrite(needAlloc, src)));
      }
      await Promise.all(jobs);
    } catch (e) {
      await Promise.allSettled(jobs);
      throw ioError(`write of ${src.length} bytes at ${offset} to '${this.path}'`, e);
    }
  }

  /** Under the lock: gives the clusters of `pieces` host clusters and writes their data. */
  async #allocateAndWrite(pieces: readonly Piece[], src: Segments): Promise<void> {
    const cs = this.#cs;
    // Re-check: another writer may have allocated some of these while we waited.
    const todo: { p: Piece; m: L2Entry; host: number }[] = [];
    const inPlace: Promise<void>[] = [];
    for (const p of pieces) {
      const m = await this.#lookup(p.gc);
      if (m.kind === "data") {
        this.#checkHostCluster(m.host);
        inPlace.push(this.#file.writev(src.slice(p.bufOff, p.n), m.host + p.inOff));
      } else if (m.kind === "compressed") {
        throw this.#compressed(p.gc);
      } else {
        const host = m.kind === "zero" && m.host !== 0 ? this.#checkHostCluster(m.host) : 0;
        todo.push({ p, m, host });
      }
    }
    await Promise.all(inPlace);
    if (todo.length === 0) return;
    // L2 tables first, then a contiguous run of new data clusters.
    for (const t of todo) await this.#ensureL2(Math.floor(t.p.gc / this.#l2Entries));
    const fresh = todo.filter((t) => t.host === 0);
    const base = this.#nextFree;
    this.#nextFree += fresh.length;
    fresh.forEach((t, i) => t.host = (base + i) * cs);

    // Data: full clusters straight from `src`, partial ones merged over their old contents.
    const writes: Promise<void>[] = [];
    let i = 0;
    while (i < todo.length) {
      let j = i + 1;
      while (
        j < todo.length && todo[j]!.host === todo[j - 1]!.host + cs &&
        todo[j]!.p.gc === todo[j - 1]!.p.gc + 1 && todo[j]!.p.n === cs && todo[j - 1]!.p.n === cs
      ) j++;
      const first = todo[i]!;
      if (j - i > 1 || first.p.n === cs) {
        const start = first.p.bufOff;
        writes.push(this.#file.writev(src.slice(start, (j - i) * cs), first.host));
      } else {
        const buf = new Uint8Array(Math.min(cs, this.header.size - first.p.gc * cs));
        if (first.m.kind === "unallocated") {
          await this.#readBacking(first.p.gc * cs, new Segments([buf]), 0, buf.length);
        }
        src.copyOut(first.p.bufOff, buf.subarray(first.p.inOff, first.p.inOff + first.p.n));
        const whole = new Uint8Array(cs);
        whole.set(buf);
        writes.push(this.#file.write(whole, first.host));
      }
      i = j;
    }
    await Promise.all(writes);
    if (fresh.length > 0) await this.#setRefcounts(base, fresh.length, 1);
    await this.#setL2(todo.map((t) => ({ gc: t.p.gc, host: t.host, zero: false })));
  }

  /** Makes sure L1 entry `l1Index` points at an L2 table (under the lock). */
  async #ensureL2(l1Index: number): Promise<void> {
    const cur = decodeL1(this.#l1View, l1Index * 8, this.#cs);
    if (typeof cur === "string") throw this.#corrupt(cur);
    if (cur !== 0) return;
    const c = this.#nextFree++;
    const table = new Uint8Array(this.#cs);
    await this.#file.write(table, c * this.#cs);
    await this.#setRefcounts(c, 1, 1);
    this.#l2Cache.set(c * this.#cs, new DataView(table.buffer));
    encodeEntry(this.#l1View, l1Index * 8, c * this.#cs, { copied: true });
    await this.#file.write(
      this.#l1.subarray(l1Index * 8, l1Index * 8 + 8),
      this.header.l1TableOffset + l1Index * 8,
    );
  }

  /** Rewrites L2 entries (under the lock; their tables exist). */
  async #setL2(entries: readonly { gc: number; host: number; zero: boolean }[]): Promise<void> {
    const writes: Promise<void>[] = [];
    let k = 0;
    while (k < entries.length) {
      const l2Off = this.#l2OffsetOf(entries[k]!.gc);
      const table = await this.#l2Table(l2Off);
      let lo = Infinity;
      let hi = -1;
      while (k < entries.length && this.#l2OffsetOf(entries[k]!.gc) === l2Off) {
        const e = entries[k]!;
        const idx = e.gc % this.#l2Entries;
        encodeEntry(table, idx * 8, e.host, { copied: e.host !== 0, zero: e.zero });
        lo = Math.min(lo, idx);
        hi = Math.max(hi, idx);
        k++;
      }
      const bytes = new Uint8Array(table.buffer, lo * 8, (hi - lo + 1) * 8);
      writes.push(this.#file.write(bytes, l2Off + lo * 8));
    }
    await Promise.all(writes);
  }

  /** Sets the refcount of clusters `[first, first+count)` to `value` (under the lock). */
  async #setRefcounts(first: number, count: number, value: number): Promise<void> {
    if (value > maxRefcount(this.#refBits)) throw this.#corrupt("refcount overflow");
    const dirty = new Map<number, [number, number]>();
    for (let c = first; c < first + count; c++) {
      const bi = Math.floor(c / this.#refBlockEntries);
      if (bi >= this.#refTable.length / 8) await this.#growRefTable(bi + 1);
      let off = this.#refTableEntry(bi);
      if (off === 0) off = await this.#newRefBlock(bi);
      const block = await this.#refBlock(off);
      const [s, e] = setRefcount(block, c % this.#refBlockEntries, this.#refBits, value);
      const d = dirty.get(off);
      if (d) {
        d[0] = Math.min(d[0], s);
        d[1] = Math.max(d[1], e);
      } else dirty.set(off, [s, e]);
    }
    const writes: Promise<void>[] = [];
    for (const [off, [s, e]] of dirty) {
      const block = this.#refBlocks.get(off)!;
      writes.push(this.#file.write(new Uint8Array(block.buffer, s, e - s), off + s));
    }
    await Promise.all(writes);
  }

  async #getRefcount(c: number): Promise<number> {
    const bi = Math.floor(c / this.#refBlockEntries);
    if (bi >= this.#refTable.length / 8) return 0;
    const off = this.#refTableEntry(bi);
    if (off === 0) return 0;
    return getRefcount(await this.#refBlock(off), c % this.#refBlockEntries, this.#refBits);
  }

  /** Allocates refcount block `bi`; returns its offset. */
  async #newRefBlock(bi: number): Promise<number> {
    const c = this.#nextFree++;
    const off = c * this.#cs;
    const block = new Uint8Array(this.#cs);
    await this.#file.write(block, off);
    this.#refBlocks.set(off, new DataView(block.buffer));
    encodeEntry(this.#refTableView, bi * 8, off);
    await this.#file.write(
      this.#refTable.subarray(bi * 8, bi * 8 + 8),
      this.#refTableOffset + bi * 8,
    );
    await this.#setRefcounts(c, 1, 1);
    return off;
  }

  /** Moves the refcount table to a larger one at the end of the file. */
  async #growRefTable(minEntries: number): Promise<void> {
    const cs = this.#cs;
    const oldOffset = this.#refTableOffset;
    const oldClusters = this.#refTable.length / cs;
    const want = Math.max(minEntries, (this.#refTable.length / 8) * 2);
    const clusters = Math.ceil((want * 8) / cs);
    if (clusters * cs > 8 << 20) throw new DiskError("no-space", "the refcount table is full");
    const start = this.#nextFree;
    this.#nextFree += clusters;
    const table = new Uint8Array(clusters * cs);
    table.set(this.#refTable);
    this.#refTable = table;
    this.#refTableView = new DataView(table.buffer);
    this.#refTableOffset = start * cs;
    await this.#setRefcounts(start, clusters, 1);
    await this.#file.write(this.#refTable, this.#refTableOffset);
    const hdr = new Uint8Array(12);
    const dv = new DataView(hdr.buffer);
    encodeEntry(dv, 0, this.#refTableOffset);
    dv.setUint32(8, clusters, false);
    await this.#file.write(hdr, HeaderField.REFCOUNT_TABLE_OFFSET);
    await this.#setRefcounts(oldOffset / cs, oldClusters, 0);
  }

  /** @inheritdoc */
  async flush(): Promise<void> {
    if (this.readOnly) return;
    this.#live();
    try {
      await this.#file.datasync();
    } catch (e) {
      throw ioError(`flush of '${this.path}'`, e);
    }
  }

  /** @inheritdoc */
  async discard(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw new DiskError("read-only", `'${this.path}' is read-only`);
    checkRange(offset, length, this.size);
    this.#live();
    if (length === 0) return;
    const cs = this.#cs;
    const partial: Piece[] = [];
    const whole: Piece[] = [];
    for (const p of this.#pieces(offset, length)) {
      // The last cluster of a disk whose size is not a cluster multiple counts as whole.
      const clusterEnd = Math.min(cs, this.header.size - p.gc * cs);
      if (p.inOff === 0 && p.n >= clusterEnd) whole.push(p);
      else partial.push(p);
    }
    const v3 = this.header.version === 3;
    const zeroWrites: Piece[] = [...partial];
    try {
      await this.#lock.run(async () => {
        const updates: { gc: number; host: number; zero: boolean }[] = [];
        const freed: number[] = [];
        for (const p of whole) {
          const m = await this.#lookup(p.gc);
          if (m.kind === "compressed") throw this.#compressed(p.gc);
          if (m.kind === "zero" && m.host === 0) continue;
          if (m.kind === "unallocated" && !this.backing) continue;
          if (!v3) {
            // Version 2 has no zero flag: unallocated reads as zeros only without a backing file.
            if (this.backing) {
              zeroWrites.push(p);
              continue;
            }
            if (m.kind === "data") freed.push(this.#checkHostCluster(m.host));
            updates.push({ gc: p.gc, host: 0, zero: false });
            continue;
          }
          if (m.kind === "data" || m.kind === "zero") freed.push(this.#checkHostCluster(m.host));
          if (this.#l2OffsetOf(p.gc) === 0) {
            await this.#ensureL2(Math.floor(p.gc / this.#l2Entries));
          }
          updates.push({ gc: p.gc, host: 0, zero: true });
        }
        await this.#setL2(updates);
        for (const host of freed) {
          const c = host / cs;
          const rc = await this.#getRefcount(c);
          if (rc === 0) throw this.#corrupt(`cluster 0x${host.toString(16)} has refcount 0`);
          await this.#setRefcounts(c, 1, rc - 1);
          if (rc === 1) {
            await this.#file.punchHole(host, cs).catch(() => {});
          }
        }
      });
    } catch (e) {
      throw ioError(`discard at ${offset} in '${this.path}'`, e);
    }
    for (const p of zeroWrites) await this.write(p.gc * cs + p.inOff, new Uint8Array(p.n));
  }

  /** @inheritdoc */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#file.close();
    this.backing?.close();
  }
}
