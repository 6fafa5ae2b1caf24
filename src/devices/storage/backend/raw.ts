/**
 * Raw image files: the disk is the file, byte for byte. Positional async I/O (`AsyncFile`),
 * fdatasync on flush, PUNCH_HOLE|KEEP_SIZE on discard (the range then reads as zeros and its
 * blocks are freed), optional O_DIRECT with aligned bounce buffers for guest buffers that are
 * not page-aligned.
 * @module
 */
import { UsageError } from "../../../util/errors.ts";
import { AsyncFile, errnoOf } from "./aio.ts";
import { checkRange, type DiskBackend, DiskError } from "./backend.ts";

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
  const p = Deno.UnsafePointer.of(buf);
  return p !== null && Deno.UnsafePointer.value(p) % BigInt(align) === 0n;
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
      const why = e instanceof Error ? e.message : String(e);
      const hint = options.direct
        ? " (O_DIRECT needs a file system that supports it; tmpfs does not)"
        : readOnly
        ? ""
        : " (add readonly=on for a read-only image)";
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
    return new RawFileBackend(path, file, buffered, { size, sectorSize, readOnly });
  }

  #direct(buf: Uint8Array, offset: number): "direct" | "bounce" | "buffered" {
    if (!this.#buffered) return "direct";
    if (offset % this.sectorSize !== 0 || buf.length % this.sectorSize !== 0) return "buffered";
    return isAligned(buf, DIRECT_MEMORY_ALIGN) ? "direct" : "bounce";
  }

  /** @inheritdoc */
  async read(offset: number, dst: Uint8Array): Promise<void> {
    checkRange(offset, dst.length, this.size);
    if (dst.length === 0) return;
    try {
      const how = this.#direct(dst, offset);
      let n: number;
      if (how === "bounce") {
        const b = alignedBuffer(dst.length);
        n = await this.#file.read(b, offset);
        dst.set(b.subarray(0, n));
      } else {
        n = await (how === "buffered" ? this.#buffered! : this.#file).read(dst, offset);
      }
      if (n < dst.length) dst.fill(0, n); // the file shrank under us
    } catch (e) {
      throw ioError(`read of ${dst.length} bytes at ${offset} from '${this.path}'`, e);
    }
  }

  /** @inheritdoc */
  async write(offset: number, src: Uint8Array): Promise<void> {
    if (this.readOnly) throw new DiskError("read-only", `'${this.path}' is read-only`);
    checkRange(offset, src.length, this.size);
    if (src.length === 0) return;
    try {
      const how = this.#direct(src, offset);
      if (how === "bounce") {
        const b = alignedBuffer(src.length);
        b.set(src);
        await this.#file.write(b, offset);
      } else {
        await (how === "buffered" ? this.#buffered! : this.#file).write(src, offset);
      }
    } catch (e) {
      throw ioError(`write of ${src.length} bytes at ${offset} to '${this.path}'`, e);
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
