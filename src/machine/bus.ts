/**
 * Port-I/O and MMIO buses: an ordered map from address ranges to devices (Firecracker
 * `vstate/bus.rs` shape). A vCPU worker owns one `Bus` per address space and dispatches each
 * exit with one binary search; devices see an offset into their own range, never an absolute
 * address, so the same device can sit at any base.
 *
 * The dispatch path allocates nothing: sorted parallel arrays, a hand-written binary search,
 * and the caller's own `data` buffer passed straight through.
 * @module
 */

/**
 * A device on a bus. `data.length` is the access size (1, 2, 4 or 8 bytes); `read` fills `data`
 * (little-endian), `write` consumes it. Implementations must not throw on any guest access and
 * must not keep a reference to `data` (the caller reuses it for every exit).
 */
export interface BusDevice {
  /** Guest read of `data.length` bytes at `offset` into the device's range. */
  read(offset: number, data: Uint8Array): void;
  /** Guest write of `data` at `offset` into the device's range. */
  write(offset: number, data: Uint8Array): void;
}

/** One registered range, as reported by {@linkcode Bus.entries} and {@linkcode Bus.find}. */
export interface BusEntry {
  /** First address of the range. */
  readonly base: number;
  /** Number of addresses in the range (at least 1). */
  readonly length: number;
  /** The device that answers accesses to the range. */
  readonly device: BusDevice;
  /** Name for logs and error messages ("serial0", "pci-cfg"). */
  readonly name: string;
}

/** Thrown by {@linkcode Bus.insert} for an empty range or one that overlaps a registered one. */
export class BusConflictError extends Error {
  override name = "BusConflictError";
  /** Base of the range that was refused. */
  readonly base: number;
  /** Length of the range that was refused. */
  readonly length: number;
  /** The registered entry it overlaps, or `undefined` for an empty range. */
  readonly existing: BusEntry | undefined;

  constructor(bus: string, base: number, length: number, name: string, existing?: BusEntry) {
    const range = `${hex(base)}+${hex(length)}`;
    super(
      existing
        ? `Cannot map '${name}' at ${range} on the ${bus} bus: it overlaps '${existing.name}' at ` +
          `${hex(existing.base)}+${hex(existing.length)}. Choose a free range.`
        : `Cannot map '${name}' at ${range} on the ${bus} bus: the range is empty. ` +
          `Give it a length of at least 1.`,
    );
    this.base = base;
    this.length = length;
    this.existing = existing;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * An address space (port I/O or MMIO) mapping non-overlapping ranges to devices. Registration
 * happens at build time, before the vCPUs run; `read`/`write` are the per-exit hot path.
 *
 * An access is dispatched only when it lies wholly inside one range, so a device may rely on
 * `offset + data.length <= length`; an access straddling a range end is treated as unmapped.
 */
export class Bus {
  readonly #name: string;
  // Parallel arrays sorted by base: the search touches only numbers.
  readonly #bases: number[] = [];
  readonly #ends: number[] = []; // exclusive
  readonly #devices: BusDevice[] = [];
  readonly #entries: BusEntry[] = [];

  /** `name` ("pio", "mmio") appears in error messages. */
  constructor(name = "bus") {
    this.#name = name;
  }

  /**
   * Maps `[base, base + length)` to `device`. Throws {@linkcode BusConflictError} when the range
   * is empty or overlaps a registered range, and `RangeError` when `base`/`length` are not
   * non-negative safe integers.
   */
  insert(base: number, length: number, device: BusDevice, name: string): void {
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(
        `Cannot map '${name}' on the ${this.#name} bus: base ${base} and length ${length} must ` +
          `be non-negative integers.`,
      );
    }
    if (length === 0) throw new BusConflictError(this.#name, base, length, name);
    const end = base + length;
    if (!Number.isSafeInteger(end)) {
      throw new RangeError(`Cannot map '${name}' on the ${this.#name} bus: the range overflows.`);
    }
    // Registered ranges are disjoint and sorted: only the last one starting below `base` and
    // the first one starting at or above it can overlap the new range.
    const at = this.#lowerBound(base);
    const prev = at - 1;
    if (prev >= 0 && this.#ends[prev]! > base) {
      throw new BusConflictError(this.#name, base, length, name, this.#entries[prev]);
    }
    if (at < this.#bases.length && this.#bases[at]! < end) {
      throw new BusConflictError(this.#name, base, length, name, this.#entries[at]);
    }
    this.#bases.splice(at, 0, base);
    this.#ends.splice(at, 0, end);
    this.#devices.splice(at, 0, device);
    this.#entries.splice(at, 0, { base, length, device, name });
  }

  /**
   * Dispatches a guest read of `data.length` bytes at `addr`. Returns false when nothing is
   * mapped there; `data` is then filled with 0xFF (what an undecoded bus floats to), and the
   * caller only has to log (rate-limited).
   */
  read(addr: number, data: Uint8Array): boolean {
    const i = this.#index(addr, data.length);
    if (i < 0) {
      data.fill(0xff);
      return false;
    }
    this.#devices[i]!.read(addr - this.#bases[i]!, data);
    return true;
  }

  /** Dispatches a guest write at `addr`. Returns false (write dropped) when nothing is mapped. */
  write(addr: number, data: Uint8Array): boolean {
    const i = this.#index(addr, data.length);
    if (i < 0) return false;
    this.#devices[i]!.write(addr - this.#bases[i]!, data);
    return true;
  }

  /** The entry whose range contains `addr`, for diagnostics (not the hot path). */
  find(addr: number): BusEntry | undefined {
    const i = this.#index(addr, 1);
    return i < 0 ? undefined : this.#entries[i];
  }

  /** Registered ranges in address order. */
  entries(): readonly BusEntry[] {
    return this.#entries;
  }

  /** Number of registered ranges. */
  get size(): number {
    return this.#bases.length;
  }

  /** Index of the range holding `[addr, addr + len)`, or -1. */
  #index(addr: number, len: number): number {
    const bases = this.#bases;
    // Last index with base <= addr.
    let lo = 0;
    let hi = bases.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bases[mid]! <= addr) lo = mid + 1;
      else hi = mid;
    }
    const i = lo - 1;
    if (i < 0 || addr + len > this.#ends[i]!) return -1;
    return i;
  }

  /** First index whose base is >= `addr`. */
  #lowerBound(addr: number): number {
    const bases = this.#bases;
    let lo = 0;
    let hi = bases.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bases[mid]! < addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
