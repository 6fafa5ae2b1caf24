/**
 * The cpio "newc" format (`070701`), the one the Linux kernel unpacks as an initramfs: a writer
 * for building images and a strict reader for tests and for inspecting an image.
 *
 * Each record is a 110-byte ASCII header (magic + 13 eight-digit hex fields), the NUL-terminated
 * name padded so header+name is a multiple of 4, then the data padded to a multiple of 4. The
 * archive ends with a record named `TRAILER!!!`.
 * @module
 */

/** Magic of the newc format (no checksum). */
export const NEWC_MAGIC = "070701";
/** Size of a newc header in bytes. */
export const NEWC_HEADER_SIZE = 110;
/** Name of the record that ends an archive. */
export const TRAILER_NAME = "TRAILER!!!";

/** File type bits of `mode` (from `<sys/stat.h>`). */
export const S_IFMT = 0o170000;
/** Regular file. */
export const S_IFREG = 0o100000;
/** Directory. */
export const S_IFDIR = 0o040000;
/** Symbolic link; the data is the target. */
export const S_IFLNK = 0o120000;
/** Character device. */
export const S_IFCHR = 0o020000;

/** One archive member as written or read back. */
export interface CpioEntry {
  /** Path inside the archive, without a leading slash (e.g. `bin/sh`). */
  readonly name: string;
  /** File type and permission bits (`S_IFREG | 0o755`). */
  readonly mode: number;
  /** Contents (file), target (symlink), empty otherwise. */
  readonly data: Uint8Array;
  /** Device numbers for a character device. */
  readonly rdevMajor?: number;
  /** Device numbers for a character device. */
  readonly rdevMinor?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly mtime?: number;
}

/** A record as parsed back, with every header field. */
export interface ParsedCpioEntry extends CpioEntry {
  readonly ino: number;
  readonly nlink: number;
  readonly uid: number;
  readonly gid: number;
  readonly mtime: number;
  readonly devMajor: number;
  readonly devMinor: number;
  readonly rdevMajor: number;
  readonly rdevMinor: number;
  /** Byte offset of the header within the archive. */
  readonly offset: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function align4(n: number): number {
  return (n + 3) & ~3;
}

function hex8(value: number, field: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`cpio field ${field} out of range: ${value}`);
  }
  return value.toString(16).padStart(8, "0").toUpperCase();
}

/**
 * Builds a newc archive in memory. Entries keep insertion order (the kernel unpacks in order,
 * so a directory must come before what it holds); inode numbers are assigned 1, 2, 3…; the
 * trailer is added by `finish()`.
 */
export class CpioWriter {
  readonly #chunks: Uint8Array[] = [];
  readonly #names = new Set<string>();
  #size = 0;
  #ino = 1;
  #finished = false;

  /** Appends one record. Throws on a duplicate or malformed name. */
  add(entry: CpioEntry): this {
    if (this.#finished) throw new Error("cpio archive already finished");
    const name = entry.name;
    if (name === "" || name.startsWith("/") || name.includes("\0") || name === TRAILER_NAME) {
      throw new Error(`invalid cpio member name: ${JSON.stringify(name)}`);
    }
    if (this.#names.has(name)) throw new Error(`duplicate cpio member: ${name}`);
    this.#names.add(name);
    this.#push(name, entry, this.#ino++);
    return this;
  }

  /** Adds a directory record. */
  dir(name: string, mode = 0o755): this {
    return this.add({ name, mode: S_IFDIR | mode, data: new Uint8Array() });
  }

  /** Adds a regular file record. */
  file(name: string, data: Uint8Array | string, mode = 0o644): this {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    return this.add({ name, mode: S_IFREG | mode, data: bytes });
  }

  /** Adds a symbolic link record pointing at `target`. */
  symlink(name: string, target: string): this {
    return this.add({ name, mode: S_IFLNK | 0o777, data: encoder.encode(target) });
  }

  /** Adds a character device node. */
  charDevice(name: string, major: number, minor: number, mode = 0o600): this {
    return this.add({
      name,
      mode: S_IFCHR | mode,
      data: new Uint8Array(),
      rdevMajor: major,
      rdevMinor: minor,
    });
  }

  /** True when a member of that name was added. */
  has(name: string): boolean {
    return this.#names.has(name);
  }

  /** Appends the trailer and returns the whole archive. */
  finish(): Uint8Array {
    if (!this.#finished) {
      this.#push(TRAILER_NAME, { name: TRAILER_NAME, mode: 0, data: new Uint8Array() }, 0);
      this.#finished = true;
    }
    const out = new Uint8Array(this.#size);
    let at = 0;
    for (const c of this.#chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  #push(name: string, e: CpioEntry, ino: number): void {
    const nameBytes = encoder.encode(name);
    const namesize = nameBytes.length + 1;
    const isDir = (e.mode & S_IFMT) === S_IFDIR;
    const header = NEWC_MAGIC +
      hex8(ino, "ino") +
      hex8(e.mode, "mode") +
      hex8(e.uid ?? 0, "uid") +
      hex8(e.gid ?? 0, "gid") +
      hex8(name === TRAILER_NAME ? 1 : isDir ? 2 : 1, "nlink") +
      hex8(e.mtime ?? 0, "mtime") +
      hex8(e.data.length, "filesize") +
      hex8(0, "devmajor") +
      hex8(0, "devminor") +
      hex8(e.rdevMajor ?? 0, "rdevmajor") +
      hex8(e.rdevMinor ?? 0, "rdevminor") +
      hex8(namesize, "namesize") +
      hex8(0, "check");
    const headLen = align4(NEWC_HEADER_SIZE + namesize);
    const rec = new Uint8Array(headLen + align4(e.data.length));
    rec.set(encoder.encode(header), 0);
    rec.set(nameBytes, NEWC_HEADER_SIZE);
    rec.set(e.data, headLen);
    this.#chunks.push(rec);
    this.#size += rec.length;
  }
}

/** Thrown by `parseCpio` for a malformed archive. */
export class CpioFormatError extends Error {
  override name = "CpioFormatError";
}

function field(bytes: Uint8Array, at: number, index: number): number {
  const start = at + 6 + index * 8;
  const text = String.fromCharCode(...bytes.subarray(start, start + 8));
  if (!/^[0-9A-Fa-f]{8}$/.test(text)) {
    throw new CpioFormatError(`bad hex field ${index} in header at offset ${at}: ${text}`);
  }
  return parseInt(text, 16);
}

/**
 * Parses a newc archive strictly: magic, field syntax, 4-byte alignment of names and data,
 * NUL-terminated names, and a trailer are all required. Concatenated archives (as the kernel
 * accepts) are read one after another; zero padding between them is skipped.
 */
export function parseCpio(bytes: Uint8Array): ParsedCpioEntry[] {
  const entries: ParsedCpioEntry[] = [];
  let at = 0;
  let sawTrailer = false;
  while (at < bytes.length) {
    if (sawTrailer && bytes[at] === 0) {
      at++;
      continue;
    }
    if (at % 4 !== 0) throw new CpioFormatError(`header at offset ${at} is not 4-byte aligned`);
    if (at + NEWC_HEADER_SIZE > bytes.length) {
      throw new CpioFormatError(`truncated header at offset ${at}`);
    }
    const magic = String.fromCharCode(...bytes.subarray(at, at + 6));
    if (magic !== NEWC_MAGIC) throw new CpioFormatError(`bad magic ${magic} at offset ${at}`);
    const f = (i: number) => field(bytes, at, i);
    const namesize = f(11);
    const filesize = f(6);
    const nameEnd = at + NEWC_HEADER_SIZE + namesize;
    if (namesize < 1 || nameEnd > bytes.length || bytes[nameEnd - 1] !== 0) {
      throw new CpioFormatError(`bad name at offset ${at}`);
    }
    const name = decoder.decode(bytes.subarray(at + NEWC_HEADER_SIZE, nameEnd - 1));
    const dataStart = align4(nameEnd);
    const dataEnd = dataStart + filesize;
    if (dataEnd > bytes.length) throw new CpioFormatError(`truncated data of ${name}`);
    for (let i = nameEnd; i < dataStart; i++) {
      if (bytes[i] !== 0) throw new CpioFormatError(`non-zero name padding in ${name}`);
    }
    const next = align4(dataEnd);
    if (next > bytes.length) throw new CpioFormatError(`missing data padding after ${name}`);
    if (name === TRAILER_NAME) {
      sawTrailer = true;
    } else {
      sawTrailer = false;
      entries.push({
        name,
        ino: f(0),
        mode: f(1),
        uid: f(2),
        gid: f(3),
        nlink: f(4),
        mtime: f(5),
        devMajor: f(7),
        devMinor: f(8),
        rdevMajor: f(9),
        rdevMinor: f(10),
        data: bytes.slice(dataStart, dataEnd),
        offset: at,
      });
    }
    at = next;
  }
  if (!sawTrailer) throw new CpioFormatError("archive has no TRAILER!!! record");
  return entries;
}
