/**
 * File copy IC (Windows "Guest Service Interface"): copies a host file into the guest through the
 * guest's `hv_fcopy_daemon` (Linux) or the in-box service (Windows).
 *
 * Protocol (Linux `drivers/hv/hv_fcopy.c`, `tools/hv/hv_fcopy_daemon.c`): START_FILE_COPY names
 * the target (directory and file name as UTF-16LE, flags, size), then WRITE_TO_FILE carries 6 KiB
 * fragments at increasing offsets, then COMPLETE_FCOPY closes the file. Each message is one
 * transaction the guest answers with a status: S_OK, ERROR_ALREADY_EXISTS (the file exists and
 * OVER_WRITE is not set), ERROR_DISK_FULL, or E_FAIL (anything else, including "no daemon
 * registered": Linux then answers every request E_FAIL itself). A failed copy is cancelled
 * (CANCEL_FCOPY), which makes the daemon delete the partial file. Linux handles one transaction
 * at a time, so one copy runs at a time.
 * @module
 */
import { IcDevice, IcError, type IcOptions } from "./framework.ts";
import {
  DoFcopyMessage,
  encodeUtf16z,
  FCOPY_DATA_FRAGMENT,
  FCOPY_MAX_PATH,
  FCOPY_VERSIONS,
  FcopyFlags,
  FcopyHeader,
  FcopyOperation,
  formatIcStatus,
  IcClassId,
  IcInstanceId,
  IcMessageType,
  IcStatus,
  StartFcopyMessage,
} from "./protocol.ts";

/** Options of `FcopyIc`. */
export interface FcopyIcOptions extends IcOptions {
  /** Wait per message in ms (default 35 000: past Linux's own 30 s wait for its daemon). */
  readonly requestTimeoutMs?: number;
}

/** Options of one copy. */
export interface CopyToGuestOptions {
  /** Replace an existing guest file (`OVER_WRITE`); default false. */
  readonly overwrite?: boolean;
  /** Create missing guest directories (`CREATE_PATH`); default false. */
  readonly createPath?: boolean;
}

/** The running (or last) copy, for `status`. */
export interface FcopyProgress {
  readonly src: string;
  readonly dst: string;
  /** Bytes the guest acknowledged. */
  readonly bytes: number;
  /** File size. */
  readonly total: number;
  readonly state: "copying" | "done" | "failed";
  /** Why it failed. */
  readonly error?: string;
  /** Seconds since the copy started (until it ended). */
  readonly seconds: number;
}

/** A file was copied. */
export interface CopyResult {
  readonly bytes: number;
  readonly seconds: number;
}

interface Progress {
  src: string;
  dst: string;
  bytes: number;
  total: number;
  state: "copying" | "done" | "failed";
  error?: string;
  started: number;
  ended?: number;
}

/** Splits an absolute guest path into directory and file name (Linux `path/file`). */
export function splitGuestPath(dst: string): { dir: string; file: string } | undefined {
  const slash = Math.max(dst.lastIndexOf("/"), dst.lastIndexOf("\\"));
  if (slash < 0) return undefined;
  const file = dst.slice(slash + 1);
  const dir = slash === 0 ? "/" : dst.slice(0, slash);
  if (file === "" || file === "." || file === "..") return undefined;
  return { dir, file };
}

/** The file copy IC device. */
export class FcopyIc extends IcDevice {
  readonly #timeoutMs: number;
  #progress: Progress | undefined;

  /** Creates the device; register it with `VmbusServer.addDevice`. */
  constructor(options: FcopyIcOptions = {}) {
    super({
      classId: IcClassId.FCOPY,
      instanceId: IcInstanceId.FCOPY,
      name: "fcopy",
      messageVersions: FCOPY_VERSIONS,
    }, options);
    this.#timeoutMs = options.requestTimeoutMs ?? 35_000;
  }

  /** The running copy, or the last one. */
  get progress(): FcopyProgress | undefined {
    const p = this.#progress;
    if (!p) return undefined;
    return {
      src: p.src,
      dst: p.dst,
      bytes: p.bytes,
      total: p.total,
      state: p.state,
      ...(p.error !== undefined ? { error: p.error } : {}),
      seconds: Math.round(((p.ended ?? this.scheduler.now()) - p.started) / 100) / 10,
    };
  }

  /**
   * Copies host file `src` to absolute guest path `dst`. Rejects with `IcError` (`status`: the
   * guest refused, with a message naming the reason; `busy`: another copy runs; `not-ready`,
   * `timeout`, `closed`) or `Error` for a host file that cannot be read.
   */
  async copyToGuest(
    src: string,
    dst: string,
    options: CopyToGuestOptions = {},
  ): Promise<CopyResult> {
    if (this.#progress?.state === "copying") {
      throw new IcError("busy", `fcopy: a copy to ${this.#progress.dst} is running`);
    }
    const names = splitGuestPath(dst);
    const dirName = names && encodeUtf16z(names.dir, FCOPY_MAX_PATH * 2);
    const fileName = names && encodeUtf16z(names.file, FCOPY_MAX_PATH * 2);
    if (!names || !dirName || !fileName) {
      throw new RangeError(
        `guest path '${dst}' must be a directory and a file name, each under ${FCOPY_MAX_PATH} characters`,
      );
    }
    const notReady = this.readinessError();
    if (notReady) throw notReady;
    let file: Deno.FsFile;
    try {
      file = await Deno.open(src, { read: true });
    } catch (e) {
      throw new Error(`cannot read ${src}: ${(e as Error).message}`);
    }
    const p: Progress = {
      src,
      dst,
      bytes: 0,
      total: 0,
      state: "copying",
      started: this.scheduler.now(),
    };
    this.#progress = p;
    let started = false;
    try {
      const info = await file.stat();
      if (!info.isFile) throw new Error(`${src} is not a regular file`);
      p.total = info.size;
      const start = StartFcopyMessage.encode({
        operation: FcopyOperation.START_FILE_COPY,
        fileName: padTo(fileName, FCOPY_MAX_PATH * 2),
        pathName: padTo(dirName, FCOPY_MAX_PATH * 2),
        copyFlags: (options.overwrite ? FcopyFlags.OVER_WRITE : 0) |
          (options.createPath ? FcopyFlags.CREATE_PATH : 0),
        fileSize: BigInt(info.size),
      });
      await this.#send(start, `start the copy to ${dst}`, dst);
      started = true;
      const body = new Uint8Array(DoFcopyMessage.size);
      const data = body.subarray(
        DoFcopyMessage.fields.data.offset,
        DoFcopyMessage.fields.data.offset + FCOPY_DATA_FRAGMENT,
      );
      for (;;) {
        const n = await readFull(file, data);
        if (n === 0) break;
        data.fill(0, n);
        DoFcopyMessage.set(body, 0, "operation", FcopyOperation.WRITE_TO_FILE);
        DoFcopyMessage.set(body, 0, "offset", BigInt(p.bytes));
        DoFcopyMessage.set(body, 0, "size", n);
        await this.#send(body, `write ${dst} at offset ${p.bytes}`, dst);
        p.bytes += n;
        if (n < data.length) break;
      }
      await this.#send(
        FcopyHeader.encode({ operation: FcopyOperation.COMPLETE_FCOPY }),
        `finish ${dst}`,
        dst,
      );
      started = false;
      p.state = "done";
      p.ended = this.scheduler.now();
      return { bytes: p.bytes, seconds: (p.ended - p.started) / 1000 };
    } catch (e) {
      p.state = "failed";
      p.error = (e as Error).message;
      p.ended = this.scheduler.now();
      if (started) {
        // The daemon deletes the partial file.
        await this.transaction(
          IcMessageType.FCOPY,
          FcopyHeader.encode({ operation: FcopyOperation.CANCEL_FCOPY }),
          this.#timeoutMs,
        ).catch(() => {});
      }
      throw e;
    } finally {
      file.close();
    }
  }

  async #send(body: Uint8Array, what: string, dst: string): Promise<void> {
    const r = await this.transaction(IcMessageType.FCOPY, body, this.#timeoutMs);
    if (r.status === IcStatus.S_OK) return;
    throw new IcError(
      "status",
      `fcopy: the guest could not ${what}: ${explain(r.status, dst)}`,
      r.status,
    );
  }
}

/** The guest's status in words. */
function explain(status: number, dst: string): string {
  switch (status >>> 0) {
    case IcStatus.ERROR_ALREADY_EXISTS:
      return `${dst} already exists (pass "overwrite": true to replace it) [${
        formatIcStatus(status)
      }]`;
    case IcStatus.ERROR_DISK_FULL:
      return `its file system is full [${formatIcStatus(status)}]`;
    case IcStatus.E_FAIL:
      return `${
        formatIcStatus(status)
      }: no file copy daemon runs in the guest (hv_fcopy_daemon), ` +
        `the directory is missing, or the write failed (see the guest's syslog)`;
    default:
      return formatIcStatus(status);
  }
}

function padTo(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(bytes);
  return out;
}

/** Reads until `buf` is full or the file ends; returns the bytes read. */
async function readFull(file: Deno.FsFile, buf: Uint8Array): Promise<number> {
  let have = 0;
  while (have < buf.length) {
    const n = await file.read(buf.subarray(have));
    if (n === null) break;
    have += n;
  }
  return have;
}
