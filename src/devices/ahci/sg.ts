/**
 * A command's data buffer as the guest described it: the PRD table's regions, each a view of
 * guest memory. Built once per command with every region bounds-checked; copying never goes
 * past the regions the guest named, whatever counts the command carries.
 * @module
 */

/** The guest regions of one command, in order. */
export class ScatterGather {
  readonly views: readonly Uint8Array[];
  /** Sum of the regions' lengths. */
  readonly total: number;

  constructor(views: readonly Uint8Array[]) {
    this.views = views;
    this.total = views.reduce((n, v) => n + v.length, 0);
  }

  /** The first `length` bytes as views (for backend readv/writev), or undefined if too short. */
  cut(length: number): Uint8Array[] | undefined {
    if (length > this.total) return undefined;
    const out: Uint8Array[] = [];
    let left = length;
    for (const v of this.views) {
      if (left === 0) break;
      const n = Math.min(left, v.length);
      out.push(v.subarray(0, n));
      left -= n;
    }
    return out;
  }

  /** Copies `bytes` into the regions (as much as fits); returns the bytes copied. */
  copyIn(bytes: Uint8Array): number {
    let at = 0;
    for (const v of this.views) {
      if (at >= bytes.length) break;
      const n = Math.min(v.length, bytes.length - at);
      v.set(bytes.subarray(at, at + n));
      at += n;
    }
    return at;
  }
}
