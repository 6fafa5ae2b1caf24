/**
 * What a disk backend is to the SCSI target: a byte-addressed block of storage with async
 * positional I/O into caller buffers. Backends do their own I/O off the main thread (the
 * device runs on the event loop); several requests may be in flight at once, in any order.
 * @module
 */

/** Why a backend operation failed. */
export type DiskErrorCode =
  | "io"
  | "no-space"
  | "read-only"
  | "out-of-range"
  | "unsupported"
  | "corrupt"
  | "closed";

/** A failed backend operation. The SCSI target maps `code` to sense data. */
export class DiskError extends Error {
  /** Error class name. */
  override name = "DiskError";
  /** Machine-readable reason. */
  readonly code: DiskErrorCode;
  /** `message` says what failed and why. */
  constructor(code: DiskErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** A disk image behind a SCSI logical unit. */
export interface DiskBackend {
  /** Image format, for logs and the control socket (`raw`, `qcow2`). */
  readonly format: string;
  /** The image file, when there is one (for logs and the control socket). */
  readonly path?: string;
  /** Virtual size in bytes (a multiple of `sectorSize`). */
  readonly size: number;
  /** Logical sector size the guest sees (512 or 4096). */
  readonly sectorSize: number;
  /** True when writes and discards are refused. */
  readonly readOnly: boolean;
  /**
   * True when `discard` is implemented and a discarded range reads back as zeros (thin
   * provisioning: UNMAP, WRITE SAME with UNMAP).
   */
  readonly canDiscard: boolean;
  /** Discard granularity in bytes (the backend's allocation unit), a multiple of `sectorSize`. */
  readonly discardGranularity: number;

  /** Reads `dst.length` bytes at byte `offset`. Rejects with `DiskError`. */
  read(offset: number, dst: Uint8Array): Promise<void>;
  /** Writes `src` at byte `offset`. Rejects with `DiskError`. */
  write(offset: number, src: Uint8Array): Promise<void>;
  /**
   * Reads the bytes at `offset` into `dst`'s views in order (scatter: a guest page list), as
   * one transfer of their total length, without an intermediate copy where the format allows.
   * Rejects with `DiskError`.
   */
  readv(offset: number, dst: readonly Uint8Array[]): Promise<void>;
  /** Writes `src`'s views in order (gather) at `offset`. Rejects with `DiskError`. */
  writev(offset: number, src: readonly Uint8Array[]): Promise<void>;
  /**
   * Makes completed writes durable: resolves only after the host's fdatasync (data and the
   * metadata needed to read it back, qcow2 tables and refcounts included) returned success.
   */
  flush(): Promise<void>;
  /** Deallocates `[offset, offset+length)`; afterwards the range reads as zeros. */
  discard(offset: number, length: number): Promise<void>;
  /** Releases the backend (waits for nothing; callers drain I/O first). Safe to call twice. */
  close(): void;
}

/** Throws `DiskError("out-of-range")` unless `[offset, offset+length)` lies in `[0, size)`. */
export function checkRange(offset: number, length: number, size: number): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new DiskError(
      "out-of-range",
      `byte range ${offset}+${length} is outside the ${size}-byte disk`,
    );
  }
}
