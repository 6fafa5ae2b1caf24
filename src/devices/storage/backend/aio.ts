/**
 * Positional file I/O that does not block the event loop: `pread`/`pwrite`/`fdatasync`/
 * `fallocate` declared `nonblocking`, so each call runs on Deno's blocking-task pool and returns a
 * Promise; many calls can be in flight at once. The buffers are written or read in place (guest
 * memory views are passed straight through, no copy).
 *
 * errno is lost by a nonblocking call (it belongs to a pool thread), so a failed call is
 * repeated once synchronously through `ffi/libc.ts` to learn why; failures are rare and the
 * retry is on the error path only.

 * @module
 */
import { C, check, checkBig, close, errno, libc, open, SysError } from "../../../../ffi/libc.ts";

/** Options of `AsyncFile.open`. */
export interface AsyncFileOptions {
  /** Open read-only (default false). */
  readonly readOnly?: boolean;
  /** O_DIRECT: buffers, offsets and lengths must be aligned (default false). */
  readonly direct?: boolean;
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

  /** fdatasync(2). */
  async datasync(): Promise<void> {
    const fd = this.#live();
    if (await libc.fdatasync_async(fd) < 0) check(`fdatasync(${this.path})`, libc.fdatasync(fd));
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
