/**
 * Errors that callers catch by type. Everything else is a plain `Error`.
 * @module
 */

/** A user-facing input problem (bad flag, bad image file): the CLI prints the message and exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Guest physical memory access outside guest RAM. */
export class GuestMemoryError extends Error {
  override name = "GuestMemoryError";
  /** The guest physical address that was asked for. */
  readonly gpa: number;
  /** The length that was asked for. */
  readonly length: number;
  constructor(gpa: number, length: number) {
    super(`guest physical range 0x${gpa.toString(16)}+0x${length.toString(16)} is not guest RAM`);
    this.gpa = gpa;
    this.length = length;
  }
}
