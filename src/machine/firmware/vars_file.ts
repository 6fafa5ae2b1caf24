/**
 * The per-VM UEFI variable store file behind the flash (`--efi-vars FILE`): created from the
 * firmware's template (`OVMF_VARS_4M.fd`) on first use, checked to be an NV-data firmware volume
 * of the template's size, locked against a second VMM, written through as the guest programs
 * the flash, and synced before the VMM exits.
 *
 * The file is never truncated, recreated or overwritten: creation links a fully written copy
 * into place (which fails if the name appeared meanwhile), and a file that is not a variable
 * store is refused with a {@linkcode UsageError} that says what is wrong.
 * @module
 */
import { C, check, checkBig, close, libc, open, SysError } from "../../../ffi/libc.ts";
import { UsageError } from "../../util/errors.ts";
import type { FlashStore } from "./pflash.ts";
import { FV_HEADER, FV_SIGNATURE, SYSTEM_NV_DATA_FV_GUID } from "./pflash_protocol.ts";

/**
 * Why `bytes` is not an OVMF variable store of `expectedSize` bytes, or undefined when it is:
 * an `_FVH` volume header with a valid checksum, the NV-data file system GUID, and a volume
 * length equal to the file size.
 */
export function varsImageProblem(bytes: Uint8Array, expectedSize?: number): string | undefined {
  if (expectedSize !== undefined && bytes.length !== expectedSize) {
    return `it is ${bytes.length} bytes, the firmware's variable store is ${expectedSize}`;
  }
  if (bytes.length < FV_HEADER.size) return `it is ${bytes.length} bytes, too short`;
  const sig = FV_HEADER.get(bytes, 0, "signature");
  if (!sig.every((b, i) => b === FV_SIGNATURE[i])) {
    return "it has no firmware-volume header (_FVH)";
  }
  const guid = FV_HEADER.get(bytes, 0, "file_system_guid");
  if (!guid.every((b, i) => b === SYSTEM_NV_DATA_FV_GUID[i])) {
    return "its firmware volume is not an NV variable store";
  }
  const fvLength = FV_HEADER.get(bytes, 0, "fv_length");
  if (fvLength !== BigInt(bytes.length)) {
    return `its volume header says ${fvLength} bytes, the file has ${bytes.length}`;
  }
  const headerLength = FV_HEADER.get(bytes, 0, "header_length");
  if (headerLength < FV_HEADER.size || headerLength > bytes.length || headerLength % 2 !== 0) {
    return "its volume header length is invalid";
  }
  let sum = 0;
  for (let i = 0; i < headerLength; i += 2) sum = (sum + bytes[i]! + (bytes[i + 1]! << 8)) & 0xffff;
  if (sum !== 0) return "its volume header checksum is wrong (torn or damaged)";
  return undefined;
}

/** What a thread needs to write the file (structured-cloneable). */
export interface VarsFileHandle {
  /** Open descriptor (read-write), shared by every thread of the process. */
  readonly fd: number;
  /** For messages. */
  readonly path: string;
}

/**
 * A {@linkcode FlashStore} that writes changed ranges to the file with pwrite(2) on each flush.
 * One per thread; `bytes` is the flash contents every thread and the memslot share.
 */
export class VarsFileWriter implements FlashStore {
  readonly bytes: Uint8Array;
  readonly #fd: number;
  #dirtyStart = Infinity;
  #dirtyEnd = 0;
  /** The last write error, if any (the guest goes on; the VMM reports it at exit). */
  error: SysError | undefined;

  constructor(handle: VarsFileHandle, bytes: Uint8Array) {
    this.#fd = handle.fd;
    this.bytes = bytes;
  }

  changed(offset: number, length: number): void {
    this.#dirtyStart = Math.min(this.#dirtyStart, offset);
    this.#dirtyEnd = Math.max(this.#dirtyEnd, offset + length);
  }

  flush(): void {
    if (this.#dirtyEnd <= this.#dirtyStart) return;
    const start = this.#dirtyStart, end = this.#dirtyEnd;
    this.#dirtyStart = Infinity;
    this.#dirtyEnd = 0;
    try {
      writeAll(this.#fd, this.bytes.subarray(start, end), start);
    } catch (e) {
      if (e instanceof SysError) this.error = e;
      else throw e;
    }
  }
}

function writeAll(fd: number, data: Uint8Array, at: number): void {
  let done = 0;
  while (done < data.length) {
    const chunk = data.subarray(done);
    // pwrite takes a buffer; a subarray of a larger (or shared) buffer is copied to be safe.
    const buf = chunk.buffer instanceof ArrayBuffer ? chunk : chunk.slice();
    done += checkBig(
      "pwrite(efi vars)",
      libc.pwrite(fd, buf, BigInt(buf.length), BigInt(at + done)),
    );
  }
}

/** Options for {@linkcode EfiVarsFile.open}. */
export interface EfiVarsOpenOptions {
  /** The firmware's empty variable store, copied when the file does not exist. */
  readonly template: string;
}

/** The variable store file of one VM, open and locked. */
export class EfiVarsFile {
  readonly path: string;
  /** The file's contents when it was opened. */
  readonly initial: Uint8Array;
  /** True when this run created the file from the template. */
  readonly created: boolean;
  #fd: number;

  private constructor(path: string, fd: number, initial: Uint8Array, created: boolean) {
    this.path = path;
    this.#fd = fd;
    this.initial = initial;
    this.created = created;
  }

  /** The descriptor for other threads. */
  get handle(): VarsFileHandle {
    return { fd: this.#fd, path: this.path };
  }

  /**
   * Opens `path` (creating it from the template if it does not exist), checks it, and takes an
   * exclusive lock. Throws {@linkcode UsageError} for a missing template, a foreign or torn
   * file, or a file another VMM holds.
   */
  static open(path: string, options: EfiVarsOpenOptions): EfiVarsFile {
    let template: Uint8Array | undefined;
    try {
      template = Deno.readFileSync(options.template);
    } catch {
      template = undefined;
    }
    if (template) {
      const why = varsImageProblem(template);
      if (why) {
        throw new UsageError(
          `The variable store template ${options.template} is not usable: ${why}. ` +
            `Reinstall Debian's 'ovmf' package.`,
        );
      }
    }
    let created = false;
    if (!exists(path)) {
      if (!template) {
        throw new UsageError(
          `Cannot create the EFI variable store ${path}: the template ${options.template} is ` +
            `missing. Install Debian's 'ovmf' package (apt-get install ovmf).`,
        );
      }
      created = createFrom(path, template);
    }
    let fd: number;
    try {
      fd = open(path, C.O_RDWR);
    } catch (e) {
      throw new UsageError(
        `Cannot open the EFI variable store ${path} for reading and writing: ${
          (e as Error).message
        }.`,
      );
    }
    try {
      if (libc.flock(fd, C.LOCK_EX | C.LOCK_NB) < 0) {
        throw new UsageError(
          `The EFI variable store ${path} is in use by another VM; give each VM its own file.`,
        );
      }
      const size = Deno.statSync(path).size;
      const initial = new Uint8Array(size);
      let got = 0;
      while (got < size) {
        const n = checkBig(
          "pread(efi vars)",
          libc.pread(fd, initial.subarray(got), BigInt(size - got), BigInt(got)),
        );
        if (n === 0) break;
        got += n;
      }
      const why = varsImageProblem(initial.subarray(0, got), template?.length);
      if (why) {
        throw new UsageError(
          `${path} is not an EFI variable store for this firmware: ${why}. It was left as it ` +
            `is; give --efi-vars a new file name to start from an empty store.`,
        );
      }
      return new EfiVarsFile(path, fd, initial, created);
    } catch (e) {
      close(fd);
      throw e;
    }
  }

  /** Writes `contents` (the whole flash) and syncs it to disk; then releases the file. */
  close(contents?: Uint8Array): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    try {
      if (contents) writeAll(fd, contents, 0);
      check("fdatasync(efi vars)", libc.fdatasync(fd));
    } finally {
      close(fd);
    }
  }

  /** Syncs what the writers have written so far (guest reset, periodic safety points). */
  sync(): void {
    if (this.#fd >= 0) check("fdatasync(efi vars)", libc.fdatasync(this.#fd));
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new UsageError(`Cannot check the EFI variable store ${path}: ${(e as Error).message}.`);
  }
}

/** Writes the template next to `path` and links it into place; false if `path` appeared. */
function createFrom(path: string, template: Uint8Array): boolean {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  const tmp = `${dir}/.${path.slice(path.lastIndexOf("/") + 1)}.${Deno.pid}.tmp`;
  try {
    const f = Deno.openSync(tmp, { write: true, createNew: true, mode: 0o600 });
    try {
      let done = 0;
      while (done < template.length) done += f.writeSync(template.subarray(done));
      f.syncDataSync();
    } finally {
      f.close();
    }
    try {
      Deno.linkSync(tmp, path);
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) return false; // someone else made it: use theirs
      throw e;
    }
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(
      `Cannot create the EFI variable store ${path}: ${(e as Error).message}.`,
    );
  } finally {
    try {
      Deno.removeSync(tmp);
    } catch { /* already gone */ }
  }
}
