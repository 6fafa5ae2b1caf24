/**
 * Positional file I/O that does not block the event loop: `pread`/`pwrite`/`preadv`/`pwritev`/
 * `fdatasync`/`fallocate` declared `nonblocking`, so each call runs on Deno's blocking-task pool
 * and returns a Promise; many calls can be in flight at once. The buffers are written or read in
 * place (guest memory views are passed straight through, no copy); `readv`/`writev` take a list
 * of views (a guest page list) and move it with one `preadv`/`pwritev` per `IOV_MAX` views.
 *
 * errno is lost by a nonblocking call (it belongs to a pool thread), so a failed call is
 * repeated once synchronously through `ffi/libc.ts` to learn why; failures are rare and the
 * retry is on the error path only. fdatasync is the exception: its failure is final (see
 * `datasync`).
 * @module
 */
import { C, check, checkBig, close, errno, libc, open, SysError } from "../../../../ffi/libc.ts";

const EIO = 5;
/** `struct iovec` is { void *iov_base; size_t iov_len; }: 16 bytes, four u32 words. */
const IOVEC_WORDS = 4;
const TWO_32 = 0x1_0000_0000;

/**
 * iovec arrays (IOV_MAX entries each) not in use. A call takes one and gives it back once its
 * Promise settles: the pool thread reads the array while the call runs.
 */
const iovecPool: { words: Uint32Array; bytes: Uint8Array<ArrayBuffer> }[] = [];

function newIovecArray(): { words: Uint32Array; bytes: Uint8Array<ArrayBuffer> } {
  const bytes = new Uint8Array(C.IOV_MAX * IOVEC_WORDS * 4);
  return { words: new Uint32Array(bytes.buffer), bytes };
}

/** Host address of each ArrayBuffer's first byte: `UnsafePointer.of` costs ~270 ns per call. */
const bufferBase = new WeakMap<ArrayBufferLike, number>();

/**
 * The host address of `view`'s first byte (`view` not empty), from a per-ArrayBuffer cache: for
 * iovecs and O_DIRECT alignment checks on the I/O path.
 */
export function addressOf(view: Uint8Array): number {
  const buf = view.buffer;
  let base = bufferBase.get(buf);
  if (base === undefined) {
    // Off-heap backing stores do not move; `.buffer` above already moved a small on-heap one.
    const p = Deno.UnsafePointer.of(new Uint8Array(buf));
    if (p === null) throw new RangeError("I/O buffer has no backing store (detached?)");
    base = Number(Deno.UnsafePointer.value(p));
    bufferBase.set(buf, base);
  }
  return base + view.byteOffset;
}

/** Options of `AsyncFile.open`. */
export interface AsyncFileOptions {
  /** Open read-only (default false). */
  readonly readOnly?: boolean;
  /** O_DIRECT: buffers, offsets and lengths must be aligned (default false). */
  readonly direct?: boolean;
}

/**
 * Where a vectored transfer resumes after `n` more bytes moved from part `i`, byte `skip`:
 * the next part and the bytes of it already done. A short transfer (signal, device limit) can
 * stop inside a part; the next call starts there. Exported for tests.
 */
export function stepOver(
  parts: readonly Uint8Array[],
  i: number,
  skip: number,
  n: number,
): [number, number] {
  while (n > 0 && i < parts.length) {
    const left = parts[i]!.length - skip;
    if (n >= left) {
      n -= left;
      i++;
      skip = 0;
    } else {
      skip += n;
      n = 0;
    }
  }
  // Empty parts right after the stop point are skipped by the next iovec fill.
  return [i, skip];
}

/** An open file with async positional I/O. */
export class AsyncFile {
  /** Path it was opened from. */
  readonly path: string;
  /** True when opened read-only. */
  readonly readOnly: boolean;
  /** True when opened with O_DIRECT. */
  readonly direct: boolean;
  #fd: number;

  private constructor(path: string, fd: number, readOnly: boolean, direct: boolean) {
    this.path = path;
    this.#fd = fd;
    this.readOnly = readOnly;
    this.direct = direct;
  }

  /** Opens `path` (synchronously: open(2) is fast). Throws `SysError`. */
  static open(path: string, options: AsyncFileOptions = {}): AsyncFile {
    const ro = options.readOnly ?? false;
    const direct = options.direct ?? false;
    const flags = (ro ? C.O_RDONLY : C.O_RDWR) | (direct ? C.O_DIRECT : 0);
    const fd = open(path, flags);
    return new AsyncFile(path, fd, ro, direct);
  }

  /** The file descriptor (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  /** Current file size in bytes. */
  size(): number {
    return Deno.statSync(this.path).size;
  }

  #live(): number {
    if (this.#fd < 0) throw new SysError(`I/O on closed file ${this.path}`, 9);
    return this.#fd;
  }

  /**
   * Reads into `dst` from `offset` until full or end of file; returns the bytes read (short
   * only at end of file). Rejects with `SysError`.
   */
  async read(dst: Uint8Array, offset: number): Promise<number> {
    const fd = this.#live();
    let done = 0;
    while (done < dst.length) {
      const part = done === 0 ? dst : dst.subarray(done);
      const n = Number(
        await libc.pread_async(fd, part, BigInt(part.length), BigInt(offset + done)),
      );
      if (n < 0) {
        // Learn errno by repeating the call synchronously (error path only).
        const again = Number(libc.pread(fd, part, BigInt(part.length), BigInt(offset + done)));
        if (again < 0) throw new SysError(`pread(${this.path})`, errno());
        if (again === 0) break;
        done += again;
        continue;
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  /** Writes all of `src` at `offset`. Rejects with `SysError`. */
  async write(src: Uint8Array, offset: number): Promise<void> {
    const fd = this.#live();
    let done = 0;
    while (done < src.length) {
      const part = done === 0 ? src : src.subarray(done);
      const n = Number(
        await libc.pwrite_async(fd, part, BigInt(part.length), BigInt(offset + done)),
      );
      if (n < 0) {
        // Learn errno by repeating the call synchronously (error path only).
        const again = Number(libc.pwrite(fd, part, BigInt(part.length), BigInt(offset + done)));
        done += checkBig(`pwrite(${this.path})`, again);
        continue;
      }
      if (n === 0) throw new SysError(`pwrite(${this.path}) wrote nothing`, 5);
      done += n;
    }
  }

  /**
   * Reads from `offset` into `parts` in order (scatter), until they are full or the file ends;
   * returns the bytes read (short only at end of file). One `preadv` per `IOV_MAX` parts, more
   * after a short transfer. The parts must stay referenced until the Promise settles (they do:
   * the caller holds them). Rejects with `SysError`.
   */
  readv(parts: readonly Uint8Array[], offset: number): Promise<number> {
    // One view (a linear buffer, a host-contiguous guest range): plain pread, no iovec.
    if (parts.length === 1) return this.read(parts[0]!, offset);
    return this.#vectored(false, parts, offset);
  }

  /** Writes `parts` in order (gather) at `offset`. Rejects with `SysError`. */
  async writev(parts: readonly Uint8Array[], offset: number): Promise<void> {
    if (parts.length === 1) return await this.write(parts[0]!, offset);
    await this.#vectored(true, parts, offset);
  }

  async #vectored(write: boolean, parts: readonly Uint8Array[], offset: number): Promise<number> {
    const fd = this.#live();
    const entry = iovecPool.pop() ?? newIovecArray();
    const iov = entry.words;
    const iovBytes = entry.bytes;
    const call = write ? "pwritev" : "preadv";
    try {
      let done = 0;
      let i = 0; // first part not fully transferred
      let skip = 0; // bytes of parts[i] already transferred
      while (i < parts.length) {
        let count = 0;
        for (let j = i; j < parts.length && count < C.IOV_MAX; j++) {
          const p = parts[j]!;
          const from = j === i ? skip : 0;
          const len = p.length - from;
          if (len === 0) continue;
          const addr = addressOf(p) + from;
          const w = count * IOVEC_WORDS;
          iov[w] = addr >>> 0;
          iov[w + 1] = Math.floor(addr / TWO_32);
          iov[w + 2] = len >>> 0;
          iov[w + 3] = Math.floor(len / TWO_32);
          count++;
        }
        if (count === 0) break; // only empty parts left
        const at = BigInt(offset + done);
        let n = Number(
          await (write
            ? libc.pwritev_async(fd, iovBytes, count, at)
            : libc.preadv_async(fd, iovBytes, count, at)),
        );
        if (n < 0) {
          // Learn errno by repeating the call synchronously (error path only).
          n = Number(
            write ? libc.pwritev(fd, iovBytes, count, at) : libc.preadv(fd, iovBytes, count, at),
          );
          if (n < 0) throw new SysError(`${call}(${this.path})`, errno());
        }
        if (n === 0) {
          if (write) throw new SysError(`${call}(${this.path}) wrote nothing`, EIO);
          break; // end of file: the caller zero-fills the rest
        }
        done += n;
        [i, skip] = stepOver(parts, i, skip, n);
      }
      return done;
    } finally {
      iovecPool.push(entry);
    }
  }

  /**
   * fdatasync(2). A failure is final: Linux reports a writeback error to fdatasync once and then
   * marks the pages clean, so a retry can succeed although the data never reached the disk. The
   * synchronous repeat only learns errno; the call fails whatever it returns.
   */
  async datasync(): Promise<void> {
    const fd = this.#live();
    if (await libc.fdatasync_async(fd) < 0) {
      const again = libc.fdatasync(fd);
      throw new SysError(`fdatasync(${this.path})`, again < 0 ? errno() : EIO);
    }
  }

  /** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros and frees its blocks. */
  async punchHole(offset: number, length: number): Promise<void> {
    const fd = this.#live();
    const mode = C.FALLOC_FL_PUNCH_HOLE | C.FALLOC_FL_KEEP_SIZE;
    const r = await libc.fallocate_async(fd, mode, BigInt(offset), BigInt(length));
    if (r < 0) {
      check(
        `fallocate(${this.path}, PUNCH_HOLE)`,
        libc.fallocate(fd, mode, BigInt(offset), BigInt(length)),
      );
    }
  }

  /** Sets the file size (synchronous; used when creating images). */
  truncate(size: number): void {
    this.#live();
    Deno.truncateSync(this.path, size);
  }

  /** Closes the descriptor; safe to call twice. Callers drain in-flight I/O first. */
  close(): void {
    if (this.#fd >= 0) close(this.#fd);
    this.#fd = -1;
  }

  /** Same as `close`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** errno of a `SysError`, or 0. */
export function errnoOf(e: unknown): number {
  return e instanceof SysError ? e.errno : 0;
}
