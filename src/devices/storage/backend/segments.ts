/**
 * Scatter/gather lists for backends: a request's buffer as host views in order (a guest page
 * list), addressed as one linear byte range. Backends cut it at cluster boundaries (`slice`) and
 * hand the pieces to `preadv`/`pwritev`, so the data goes straight between the file and guest
 * memory; `fill`/`copyIn`/`copyOut` cover the parts that are not plain file data (zero clusters,
 * partial-cluster merges, O_DIRECT bounce buffers).
 * @module
 */

const EMPTY: readonly Uint8Array[] = [];

/** A list of views read and written as one linear buffer. */
export class Segments {
  /** The views, in order (empty ones dropped). */
  readonly parts: readonly Uint8Array[];
  /** Total bytes. */
  readonly length: number;
  readonly #starts: number[];

  /** Joins `parts` (in order) into one linear buffer; the views are used, never copied. */
  constructor(parts: readonly Uint8Array[]) {
    const kept: Uint8Array[] = [];
    const starts: number[] = [];
    let n = 0;
    for (const p of parts) {
      if (p.length === 0) continue;
      kept.push(p);
      starts.push(n);
      n += p.length;
    }
    this.parts = kept;
    this.length = n;
    this.#starts = starts;
  }

  /** Index of the part holding byte `at` (`at` < length). */
  #find(at: number): number {
    let lo = 0;
    let hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= at) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  #check(start: number, length: number): void {
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(length) || start < 0 || length < 0 ||
      start + length > this.length
    ) {
      throw new RangeError(`range ${start}+${length} is outside the ${this.length}-byte buffer`);
    }
  }

  /** Calls `fn(view)` for the views covering `[start, start+length)`, in order. */
  #each(start: number, length: number, fn: (view: Uint8Array, done: number) => void): void {
    this.#check(start, length);
    if (length === 0) return;
    let i = this.#find(start);
    let off = start - this.#starts[i]!;
    let done = 0;
    while (done < length) {
      const p = this.parts[i]!;
      const n = Math.min(p.length - off, length - done);
      fn(off === 0 && n === p.length ? p : p.subarray(off, off + n), done);
      done += n;
      i++;
      off = 0;
    }
  }

  /** The views covering `[start, start+length)` (zero-copy sub-views of the parts). */
  slice(start: number, length: number): Uint8Array[] {
    if (length === 0) return [...EMPTY];
    const out: Uint8Array[] = [];
    this.#each(start, length, (v) => out.push(v));
    return out;
  }

  /** Sets `[start, start+length)` to `value`. */
  fill(value: number, start = 0, length = this.length - start): void {
    this.#each(start, length, (v) => v.fill(value));
  }

  /** Copies `dst.length` bytes from `start` into `dst` (gather). */
  copyOut(start: number, dst: Uint8Array): void {
    this.#each(start, dst.length, (v, done) => dst.set(v, done));
  }

  /** Copies `src` into the buffer at `start` (scatter). */
  copyIn(start: number, src: Uint8Array): void {
    this.#each(start, src.length, (v, done) => v.set(src.subarray(done, done + v.length)));
  }
}

/** Total bytes of `parts`. */
export function totalLength(parts: readonly Uint8Array[]): number {
  let n = 0;
  for (const p of parts) n += p.length;
  return n;
}
