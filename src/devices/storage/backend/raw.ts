/**
 * Raw image files: the disk is the file, byte for byte. Positional async I/O (`AsyncFile`):
 * scattered requests (guest page lists) go straight between the file and guest memory with one
 * `preadv`/`pwritev`; fdatasync on flush, PUNCH_HOLE|KEEP_SIZE on discard (the range then reads
 * as zeros and its blocks are freed).
 *
 * O_DIRECT (`direct=on`): requests whose buffers are all 512-byte aligned in address and length
 * go straight to the O_DIRECT descriptor; others (a guest buffer starting mid-sector) through
 * one aligned bounce buffer; an EINVAL from the device (stricter alignment) redoes the request
 * through a second, buffered descriptor of the same file. The kernel keeps the two coherent.
 * @module
 */
import { errno, libc } from "../../../../ffi/libc.ts";
import { UsageError } from "../../../util/errors.ts";
import { getLogger, rateLimited } from "../../../util/log.ts";
import { addressOf, AsyncFile, errnoOf } from "./aio.ts";
import { checkRange, type DiskBackend, DiskError } from "./backend.ts";
import { Segments, totalLength } from "./segments.ts";

const log = getLogger("dev", "disk");
const directFallbackLimit = rateLimited();

/** Options of `RawFileBackend.open`. */
export interface RawFileOptions {
  /** Refuse writes (default false). */
  readonly readOnly?: boolean;
  /** Bypass the host page cache with O_DIRECT (default false). */
  readonly direct?: boolean;
  /** Logical sector size the guest sees: 512 (default) or 4096. */
  readonly sectorSize?: number;
}

/** Memory alignment used for O_DIRECT bounce buffers. */
const DIRECT_MEMORY_ALIGN = 4096;
/**
 * Alignment asked of each buffer (address and length) sent to the O_DIRECT descriptor: the
 * common block-device DMA alignment. A device that wants more answers EINVAL and the request is
 * redone through the page cache.
 */
const DIRECT_IOV_ALIGN = 512;
const EINVAL = 22;
const EOPNOTSUPP = 95;

/** An aligned scratch buffer of at least `length` bytes. */
export function alignedBuffer(length: number, align = DIRECT_MEMORY_ALIGN): Uint8Array {
  const raw = new Uint8Array(length + align);
  const addr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(raw)) % BigInt(align));
  const skip = addr === 0 ? 0 : align - addr;
  return raw.subarray(skip, skip + length);
}

function isAligned(buf: Uint8Array, align: number): boolean {
  if (buf.length === 0) return true;
  return buf.length % align === 0 && addressOf(buf) % align === 0;
}

function noDirectIo(path: string): UsageError {
  return new UsageError(
    `cannot use O_DIRECT on disk image '${path}': its file system refuses direct I/O (EINVAL; ` +
      `tmpfs before Linux 6.6 and some FUSE file systems do); drop direct=on or move the image`,
  );
}

/**
 * Some file systems accept O_DIRECT at open and refuse it at the first I/O: read the first
 * sector (synchronously, once) to find out at open time. False only for EINVAL.
 */
function probeDirectRead(fd: number, size: number, sectorSize: number): boolean {
  // 4 KiB satisfies every logical block size up to 4 KiB; smaller images read one sector.
  const b = alignedBuffer(size >= DIRECT_MEMORY_ALIGN ? DIRECT_MEMORY_ALIGN : sectorSize);
  if (Number(libc.pread(fd, b, BigInt(b.length), 0n)) >= 0) return true;
  return errno() !== EINVAL;
}

/** Maps an I/O failure to a `DiskError`. */
export function ioError(what: string, e: unknown): DiskError {
  if (e instanceof DiskError) return e;
  const errno = errnoOf(e);
  const msg = e instanceof Error ? e.message : String(e);
  if (errno === 28 || errno === 122) return new DiskError("no-space", `${what}: ${msg}`);
  return new DiskError("io", `${what}: ${msg}`, { cause: e });
}

/** A raw image file. */
export class RawFileBackend implements DiskBackend {
  /** @inheritdoc */
  readonly format = "raw";
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
  readonly #file: AsyncFile;
  /** Buffered descriptor for unaligned requests when `#file` is O_DIRECT. */
  readonly #buffered: AsyncFile | undefined;
  #punchWorks = true;

  private constructor(path: string, file: AsyncFile, buffered: AsyncFile | undefined, opts: {
    size: number;
    sectorSize: number;
    readOnly: boolean;
  }) {
    this.path = path;
    this.#file = file;
    this.#buffered = buffered;
    this.size = opts.size;
    this.sectorSize = opts.sectorSize;
    this.readOnly = opts.readOnly;
    this.canDiscard = !opts.readOnly;
    this.discardGranularity = Math.max(opts.sectorSize, 4096);
  }

  /** Opens a raw image. Throws `UsageError` for a missing, unreadable or too small file. */
  static open(path: string, options: RawFileOptions = {}): RawFileBackend {
    const sectorSize = options.sectorSize ?? 512;
    if (sectorSize !== 512 && sectorSize !== 4096) {
      throw new UsageError(`sector size ${sectorSize} is not supported; use 512 or 4096`);
    }
    let st: Deno.FileInfo;
    try {
      st = Deno.statSync(path);
    } catch {
      throw new UsageError(`disk image '${path}' does not exist`);
    }
    if (!st.isFile && !st.isBlockDevice) {
      throw new UsageError(`disk image '${path}' is not a regular file or block device`);
    }
    const readOnly = options.readOnly ?? false;
    let file: AsyncFile;
    let buffered: AsyncFile | undefined;
    try {
      file = AsyncFile.open(path, { readOnly, direct: options.direct ?? false });
      if (options.direct) buffered = AsyncFile.open(path, { readOnly });
    } catch (e) {
      if (options.direct && errnoOf(e) === EINVAL) throw noDirectIo(path);
      const why = e instanceof Error ? e.message : String(e);
      const hint = readOnly ? "" : " (add readonly=on for a read-only image)";
      throw new UsageError(`cannot open disk image '${path}': ${why}${hint}`);
    }
    const bytes = st.isFile ? st.size : file.size();
    const size = bytes - bytes % sectorSize;
    if (size === 0) {
      file.close();
      buffered?.close();
      throw new UsageError(
        `disk image '${path}' is ${bytes} bytes, smaller than one ${sectorSize}-byte sector`,
      );
    }
    if (options.direct && !probeDirectRead(file.fd, size, sectorSize)) {
      file.close();
      buffered?.close();
      throw noDirectIo(path);
    }
    return new RawFileBackend(path, file, buffered, { size, sectorSize, readOnly });
  }

  /** How an O_DIRECT backend moves `parts` at `offset`: straight, bounced or buffered. */
  #how(parts: readonly Uint8Array[], offset: number, length: number) {
    if (!this.#buffered) return "direct";
    if (offset % this.sectorSize !== 0 || length % this.sectorSize !== 0) return "buffered";
    for (const p of parts) if (!isAligned(p, DIRECT_IOV_ALIGN)) return "bounce";
    return "direct";
  }

  /** Whether an O_DIRECT failure should be retried through the page cache. */
  #fallBack(e: unknown): boolean {
    if (!this.#buffered || errnoOf(e) !== EINVAL) return false;
    directFallbackLimit((dropped) =>
      log.warn("O_DIRECT I/O on '{path}' was refused (EINVAL); using the page cache{more}", {
        path: this.path,
        more: dropped ? ` (${dropped} similar messages dropped)` : "",
      })
    );
    return true;
  }

  /** @inheritdoc */
  read(offset: number, dst: Uint8Array): Promise<void> {
    return this.readv(offset, [dst]);
  }

  /** @inheritdoc */
  async readv(offset: number, dst: readonly Uint8Array[]): Promise<void> {
    const length = totalLength(dst);
    checkRange(offset, length, this.size);
    if (length === 0) return;
    try {
      const how = this.#how(dst, offset, length);
      let n: number;
      if (how === "bounce") {
        const b = alignedBuffer(length);
        n = await this.#file.read(b, offset).catch((e) => {
          if (this.#fallBack(e)) return this.#buffered!.read(b, offset);
          throw e;
        });
        new Segments(dst).copyIn(0, b.subarray(0, n));
      } else if (how === "direct") {
        n = await this.#file.readv(dst, offset).catch((e) => {
          if (this.#fallBack(e)) return this.#buffered!.readv(dst, offset);
          throw e;
        });
      } else {
        n = await this.#buffered!.readv(dst, offset);
      }
      // The file shrank under us: what is past its end reads as zeros.
      if (n < length) new Segments(dst).fill(0, n);
    } catch (e) {
      throw ioError(`read of ${length} bytes at ${offset} from '${this.path}'`, e);
    }
  }

  /** @inheritdoc */
  write(offset: number, src: Uint8Array): Promise<void> {
    return this.writev(offset, [src]);
  }

  /** @inheritdoc */
  async writev(offset: number, src: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) throw new DiskError("read-only", `'${this.path}' is read-only`);
    const length = totalLength(src);
    checkRange(offset, length, this.size);
    if (length === 0) return;
    try {
      const how = this.#how(src, offset, length);
      if (how === "bounce") {
        const b = alignedBuffer(length);
        new Segments(src).copyOut(0, b);
        await this.#file.write(b, offset).catch((e) => {
          if (this.#fallBack(e)) return this.#buffered!.write(b, offset);
          throw e;
        });
      } else if (how === "direct") {
        await this.#file.writev(src, offset).catch((e) => {
          if (this.#fallBack(e)) return this.#buffered!.writev(src, offset);
          throw e;
        });
      } else {
        await this.#buffered!.writev(src, offset);
      }
    } catch (e) {
      throw ioError(`write of ${length} bytes at ${offset} to '${this.path}'`, e);
    }
  }

  /** @inheritdoc */
  async flush(): Promise<void> {
    if (this.readOnly) return;
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
    if (length === 0) return;
    if (this.#punchWorks) {
      try {
        await this.#file.punchHole(offset, length);
        return;
      } catch (e) {
        if (errnoOf(e) !== EOPNOTSUPP) throw ioError(`discard at ${offset} in '${this.path}'`, e);
        this.#punchWorks = false;
      }
    }
    // No hole punching here (some file systems, block devices): write zeros instead.
    const chunk = alignedBuffer(Math.min(length, 1 << 20));
    for (let at = 0; at < length; at += chunk.length) {
      await this.write(offset + at, chunk.subarray(0, Math.min(chunk.length, length - at)));
    }
  }

  /** @inheritdoc */
  close(): void {
    this.#file.close();
    this.#buffered?.close();
  }
}
