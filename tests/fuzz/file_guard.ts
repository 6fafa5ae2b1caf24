/**
 * The host-file invariant of the storage fuzz targets: no backend I/O touches a file offset
 * outside the image. Wraps `AsyncFile`'s positional calls (read, write, readv, writev,
 * punchHole, truncate) once; a guarded path gets a byte limit, and any call reaching past it is
 * recorded (the call itself still runs, so the backend's own error handling is exercised too).
 * Writes past the limit would grow or scribble on the host file; reads past it read nothing.
 * @module
 */
import { AsyncFile } from "../../src/devices/storage/backend/aio.ts";

const limits = new Map<string, { limit: number; reads: boolean }>();
const violations: string[] = [];
let installed = false;

function check(path: string, what: string, offset: number, length: number): void {
  const guard = limits.get(path);
  if (guard === undefined || (!guard.reads && what.startsWith("read"))) return;
  const limit = guard.limit;
  if (!(offset >= 0 && length >= 0 && offset + length <= limit)) {
    if (violations.length < 20) {
      const where = violations.length === 0
        ? `\n${new Error().stack?.split("\n").slice(2, 8).join("\n")}`
        : "";
      violations.push(`${what} ${offset}+${length} outside ${path} (limit ${limit})${where}`);
    }
  }
}

const total = (parts: readonly Uint8Array[]) => parts.reduce((n, p) => n + p.length, 0);

function install(): void {
  if (installed) return;
  installed = true;
  const p = AsyncFile.prototype;
  const { read, write, readv, writev, punchHole, truncate } = p;
  p.read = function (dst, offset) {
    check(this.path, "read", offset, dst.length);
    return read.call(this, dst, offset);
  };
  p.write = function (src, offset) {
    check(this.path, "write", offset, src.length);
    return write.call(this, src, offset);
  };
  p.readv = function (parts, offset) {
    check(this.path, "readv", offset, total(parts));
    return readv.call(this, parts, offset);
  };
  p.writev = function (parts, offset) {
    check(this.path, "writev", offset, total(parts));
    return writev.call(this, parts, offset);
  };
  p.punchHole = function (offset, length) {
    check(this.path, "punchHole", offset, length);
    return punchHole.call(this, offset, length);
  };
  p.truncate = function (size) {
    check(this.path, "truncate", size, 0);
    return truncate.call(this, size);
  };
}

/**
 * Guards `path`: backend writes (and reads, unless `reads` is false) must stay inside
 * `[0, limit)`. A qcow2 image's reads are left out: a hostile table may point past the end of
 * the file, and a read there returns nothing (pread stops at end of file) while the backend
 * rejects what it got; a write there would grow the file.
 */
export function guardFile(path: string, limit: number, options: { reads?: boolean } = {}): void {
  install();
  limits.set(path, { limit, reads: options.reads ?? true });
}

/** Stops guarding `path`. */
export function unguardFile(path: string): void {
  limits.delete(path);
}

/** The violations recorded so far, and forgets them. */
export function takeFileViolations(): string[] {
  return violations.splice(0);
}
