/**
 * The device registry: one map from guest port-I/O and MMIO ranges to devices, shared by every
 * thread that handles exits (rust-vmm `vm-device` shape, OpenVMM's chipset builder for the
 * "nothing claims address space behind the chipset's back" rule).
 *
 * - **Devices** are registered once, at build time, before any vCPU runs: each gets a numeric id,
 *   a name and the thread that answers it (`"vcpu"`: the exit's own thread, over state in
 *   SharedArrayBuffers; `"main"`: forwarded to the main thread, see `main_thread_slot.ts`;
 *   `"kernel"`: answered inside KVM, registered only so nobody else claims the range).
 * - **Ranges** (the topology) live in one SharedArrayBuffer with a version word. Any thread may
 *   add, move or remove a range while the guest runs (a BAR the guest relocates from vCPU 1 is
 *   moved for all vCPUs at once); an overlap or an empty range is refused with a
 *   {@linkcode RegistryConflictError} and the topology stays as it was.
 * - **Dispatch** ({@linkcode IoDispatch}) is per thread: a sorted copy of the mapped ranges,
 *   rebuilt when the version changes (one `Atomics.load` per exit), a binary search, and the
 *   device's `read(offset, data)` / `write(offset, data)` with the offset into its own range.
 *   Unclaimed reads return all-ones, unclaimed writes are dropped.
 *
 * Writers serialize on a spin lock and publish through a sequence counter (odd while a change is
 * being written), so a reader never sees half a move.
 * @module
 */
import type { BusDevice } from "./bus.ts";
import { lockAcquire, lockRelease } from "../util/shared_lock.ts";

/** The two address spaces a device range can sit in. */
export type AddressSpace = "pio" | "mmio";

/** Which thread answers a device's accesses. */
export type DeviceThread = "vcpu" | "main" | "kernel";

/** A device as registered: its id is its index in {@linkcode RegistryState.devices}. */
export interface DeviceInfo {
  readonly name: string;
  readonly thread: DeviceThread;
}

/** Everything a thread needs to build its view of the registry (structured-cloneable). */
export interface RegistryState {
  readonly sab: SharedArrayBuffer;
  readonly devices: DeviceInfo[];
}

/** One range, as reported by {@linkcode DeviceRegistry.ranges}. */
export interface RangeInfo {
  /** Handle for `move`/`remove`. */
  readonly handle: number;
  readonly space: AddressSpace;
  /** Device id. */
  readonly device: number;
  /** Device name. */
  readonly name: string;
  /** Base address, or undefined while the range is defined but not mapped (decode off). */
  readonly base: number | undefined;
  readonly length: number;
}

/** Thrown for an empty range, an overlap, or a bad handle or address; nothing was changed. */
export class RegistryConflictError extends Error {
  override name = "RegistryConflictError";
  /** The range that was refused. */
  readonly space: AddressSpace;
  readonly base: number;
  readonly length: number;
  /** The mapped range it overlaps, when that was the reason. */
  readonly existing: RangeInfo | undefined;

  constructor(
    message: string,
    what: { space: AddressSpace; base: number; length: number; existing?: RangeInfo },
  ) {
    super(message);
    this.space = what.space;
    this.base = what.base;
    this.length = what.length;
    this.existing = what.existing;
  }
}

// Shared layout (Int32 words).
const W_LOCK = 0;
const W_SEQ = 1; // odd while a writer is changing ranges
const W_COUNT = 2; // handles handed out so far
const HEADER = 4;
// Per range: space+1 (0 = free slot), device, base lo, base hi, length lo, length hi, mapped.
const R_SPACE = 0;
const R_DEVICE = 1;
const R_BASE_LO = 2;
const R_BASE_HI = 3;
const R_LEN_LO = 4;
const R_LEN_HI = 5;
const R_MAPPED = 6;
const R_WORDS = 8;

/** Ranges one registry holds at most (every BAR of every function included). */
export const MAX_RANGES = 512;

const SPACE_CODE: Record<AddressSpace, number> = { pio: 1, mmio: 2 };
const SPACE_LIMIT: Record<AddressSpace, number> = { pio: 0x1_0000, mmio: 2 ** 52 };
const TWO_32 = 0x1_0000_0000;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * The shared topology, usable from any thread: build it with {@linkcode DeviceRegistry.create}
 * on the main thread, hand `state` to each Worker, rebuild with `new DeviceRegistry(state)`.
 */
export class DeviceRegistry {
  readonly #w: Int32Array;
  readonly #devices: DeviceInfo[];
  readonly state: RegistryState;

  /** A new, empty registry. */
  static create(): DeviceRegistry {
    const sab = new SharedArrayBuffer((HEADER + MAX_RANGES * R_WORDS) * 4);
    return new DeviceRegistry({ sab, devices: [] });
  }

  /** This thread's handle on a registry created elsewhere. */
  constructor(state: RegistryState) {
    this.state = state;
    this.#w = new Int32Array(state.sab);
    this.#devices = state.devices;
  }

  /** Registered devices, by id. */
  get devices(): readonly DeviceInfo[] {
    return this.#devices;
  }

  /** Current topology version (changes with every add, move and remove). */
  get version(): number {
    return Atomics.load(this.#w, W_SEQ);
  }

  /**
   * Registers a device and returns its id. Build time only (before the state is handed to other
   * threads): the device list itself is not shared memory.
   */
  addDevice(name: string, thread: DeviceThread = "vcpu"): number {
    if (this.#devices.some((d) => d.name === name)) {
      throw new Error(`A device named '${name}' is already registered; give each a unique name.`);
    }
    this.#devices.push({ name, thread });
    return this.#devices.length - 1;
  }

  /** Id of the device named `name`, or -1. */
  deviceId(name: string): number {
    return this.#devices.findIndex((d) => d.name === name);
  }

  /**
   * Defines a range of `length` addresses for `device` and maps it at `base` (or leaves it
   * unmapped when `base` is undefined, as a BAR with decode off). Returns its handle. Throws
   * {@linkcode RegistryConflictError} for an empty range, an overlap or a range beyond the
   * address space; nothing is added then.
   */
  add(space: AddressSpace, base: number | undefined, length: number, device: number): number {
    if (!(device >= 0 && device < this.#devices.length)) {
      throw new RangeError(`Device id ${device} is not registered.`);
    }
    this.#checkRange(space, base ?? 0, length, this.#devices[device]!.name);
    const w = this.#w;
    lockAcquire(w, W_LOCK);
    try {
      const handle = w[W_COUNT]!;
      if (handle >= MAX_RANGES) {
        throw new RegistryConflictError(
          `Cannot add a range for '${this.#devices[device]!.name}': the registry holds ` +
            `${MAX_RANGES} ranges at most.`,
          { space, base: base ?? 0, length },
        );
      }
      if (base !== undefined) this.#refuseOverlap(space, base, length, -1, device);
      this.#begin();
      const r = HEADER + handle * R_WORDS;
      w[r + R_SPACE] = SPACE_CODE[space];
      w[r + R_DEVICE] = device;
      w[r + R_LEN_LO] = length % TWO_32;
      w[r + R_LEN_HI] = Math.floor(length / TWO_32);
      this.#setBase(r, base);
      w[W_COUNT] = handle + 1;
      this.#end();
      return handle;
    } finally {
      lockRelease(w, W_LOCK);
    }
  }

  /**
   * Moves range `handle` to `base` (undefined: unmaps it, keeping its definition). Throws
   * {@linkcode RegistryConflictError} when the new place overlaps another mapped range or leaves
   * the address space; the range then stays where it was.
   */
  move(handle: number, base: number | undefined): void {
    const w = this.#w;
    const r = this.#slot(handle);
    lockAcquire(w, W_LOCK);
    try {
      const space = this.#space(r);
      const length = this.#length(r);
      if (base !== undefined) {
        if (base === this.#base(r)) return;
        this.#checkRange(space, base, length, this.#devices[w[r + R_DEVICE]!]!.name);
        this.#refuseOverlap(space, base, length, handle, w[r + R_DEVICE]!);
      } else if (w[r + R_MAPPED] === 0) return;
      this.#begin();
      this.#setBase(r, base);
      this.#end();
    } finally {
      lockRelease(w, W_LOCK);
    }
  }

  /** Removes range `handle` for good (its handle is not reused). */
  remove(handle: number): void {
    const w = this.#w;
    const r = this.#slot(handle);
    lockAcquire(w, W_LOCK);
    try {
      this.#begin();
      w[r + R_SPACE] = 0;
      w[r + R_MAPPED] = 0;
      this.#end();
    } finally {
      lockRelease(w, W_LOCK);
    }
  }

  /** Every defined range (mapped or not) in handle order: for the control socket and tests. */
  ranges(): RangeInfo[] {
    const out: RangeInfo[] = [];
    this.#snapshot((handle, space, device, base, length, mapped) =>
      out.push({
        handle,
        space,
        device,
        name: this.#devices[device]?.name ?? `#${device}`,
        base: mapped ? base : undefined,
        length,
      })
    );
    return out;
  }

  /** The mapped range holding `addr` in `space`, for diagnostics (not the hot path). */
  find(space: AddressSpace, addr: number): RangeInfo | undefined {
    return this.ranges().find((r) =>
      r.space === space && r.base !== undefined && addr >= r.base && addr < r.base + r.length
    );
  }

  /**
   * Calls `each` for every defined range, from a consistent snapshot (retried while a writer is
   * changing the topology).
   */
  #snapshot(
    each: (
      handle: number,
      space: AddressSpace,
      device: number,
      base: number,
      length: number,
      mapped: boolean,
    ) => void,
  ): number {
    const w = this.#w;
    for (;;) {
      const seq = Atomics.load(w, W_SEQ);
      if (seq & 1) continue;
      const rows: [number, AddressSpace, number, number, number, boolean][] = [];
      const count = Math.min(Atomics.load(w, W_COUNT), MAX_RANGES);
      for (let h = 0; h < count; h++) {
        const r = HEADER + h * R_WORDS;
        const code = Atomics.load(w, r + R_SPACE);
        if (code === 0) continue;
        rows.push([
          h,
          code === 1 ? "pio" : "mmio",
          Atomics.load(w, r + R_DEVICE),
          this.#base(r),
          this.#length(r),
          Atomics.load(w, r + R_MAPPED) !== 0,
        ]);
      }
      if (Atomics.load(w, W_SEQ) !== seq) continue;
      for (const row of rows) each(...row);
      return seq;
    }
  }

  /** @internal Snapshot for {@linkcode IoDispatch}: returns the version it reflects. */
  collect(
    each: (space: AddressSpace, device: number, base: number, length: number) => void,
  ): number {
    return this.#snapshot((_h, space, device, base, length, mapped) => {
      if (mapped) each(space, device, base, length);
    });
  }

  #slot(handle: number): number {
    if (!Number.isInteger(handle) || handle < 0 || handle >= Atomics.load(this.#w, W_COUNT)) {
      throw new RangeError(`Range handle ${handle} was never added.`);
    }
    const r = HEADER + handle * R_WORDS;
    if (Atomics.load(this.#w, r + R_SPACE) === 0) {
      throw new RangeError(`Range handle ${handle} was removed.`);
    }
    return r;
  }

  #space(r: number): AddressSpace {
    return this.#w[r + R_SPACE] === 1 ? "pio" : "mmio";
  }

  #base(r: number): number {
    return (this.#w[r + R_BASE_LO]! >>> 0) + (this.#w[r + R_BASE_HI]! >>> 0) * TWO_32;
  }

  #length(r: number): number {
    return (this.#w[r + R_LEN_LO]! >>> 0) + (this.#w[r + R_LEN_HI]! >>> 0) * TWO_32;
  }

  #setBase(r: number, base: number | undefined): void {
    const w = this.#w;
    if (base === undefined) {
      Atomics.store(w, r + R_MAPPED, 0);
      return;
    }
    Atomics.store(w, r + R_BASE_LO, base % TWO_32);
    Atomics.store(w, r + R_BASE_HI, Math.floor(base / TWO_32));
    Atomics.store(w, r + R_MAPPED, 1);
  }

  #begin(): void {
    Atomics.add(this.#w, W_SEQ, 1);
  }

  #end(): void {
    Atomics.add(this.#w, W_SEQ, 1);
  }

  #checkRange(space: AddressSpace, base: number, length: number, name: string): void {
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new RegistryConflictError(
        `Cannot map '${name}' at ${hex(base)} in ${space}: the range is empty. ` +
          `Give it a length of at least 1.`,
        { space, base, length },
      );
    }
    if (!Number.isSafeInteger(base) || base < 0 || base + length > SPACE_LIMIT[space]) {
      throw new RegistryConflictError(
        `Cannot map '${name}' at ${hex(base)}+${hex(length)} in ${space}: the range leaves ` +
          `the address space (${hex(SPACE_LIMIT[space])}).`,
        { space, base, length },
      );
    }
  }

  /** Throws when `[base, base+length)` overlaps a mapped range other than `self`. Lock held. */
  #refuseOverlap(
    space: AddressSpace,
    base: number,
    length: number,
    self: number,
    device: number,
  ): void {
    const w = this.#w;
    const code = SPACE_CODE[space];
    const count = w[W_COUNT]!;
    for (let h = 0; h < count; h++) {
      if (h === self) continue;
      const r = HEADER + h * R_WORDS;
      if (w[r + R_SPACE] !== code || w[r + R_MAPPED] === 0) continue;
      const b = this.#base(r);
      const l = this.#length(r);
      if (b < base + length && base < b + l) {
        const other = this.#devices[w[r + R_DEVICE]!]?.name ?? "?";
        throw new RegistryConflictError(
          `Cannot map '${this.#devices[device]?.name}' at ${hex(base)}+${hex(length)} in ` +
            `${space}: it overlaps '${other}' at ${hex(b)}+${hex(l)}. Choose a free range.`,
          {
            space,
            base,
            length,
            existing: {
              handle: h,
              space,
              device: w[r + R_DEVICE]!,
              name: other,
              base: b,
              length: l,
            },
          },
        );
      }
    }
  }
}

/** What {@linkcode IoDispatch} calls for each mapped range of a device (one per device id). */
export type DeviceHandler = BusDevice;

/**
 * One thread's dispatcher over a {@linkcode DeviceRegistry}: `handlers[id]` answers device `id`
 * on this thread (absent for `"kernel"` devices, whose ranges never exit; an exit that reaches
 * one anyway reads all-ones). The exit path allocates nothing while the topology is unchanged.
 */
export class IoDispatch {
  readonly #registry: DeviceRegistry;
  readonly #handlers: (DeviceHandler | undefined)[];
  #version = -1;
  // Per space: parallel arrays sorted by base.
  #pio = { bases: [] as number[], ends: [] as number[], devices: [] as number[] };
  #mmio = { bases: [] as number[], ends: [] as number[], devices: [] as number[] };

  constructor(registry: DeviceRegistry, handlers: (DeviceHandler | undefined)[]) {
    this.#registry = registry;
    this.#handlers = handlers;
  }

  /** Topology version this thread dispatches with (after the last access). */
  get version(): number {
    return this.#version;
  }

  /**
   * A guest access of `data.length` bytes at `addr`. Returns false when no device claims the
   * whole access (reads then return all-ones, writes are dropped). Exceptions from a device are
   * not caught here: the exit loop logs them (rate-limited) and answers all-ones.
   */
  access(space: AddressSpace, addr: number, write: boolean, data: Uint8Array): boolean {
    if (Atomics.load(this.#registryWords(), W_SEQ) !== this.#version) this.#reload();
    const t = space === "pio" ? this.#pio : this.#mmio;
    const bases = t.bases;
    let lo = 0;
    let hi = bases.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bases[mid]! <= addr) lo = mid + 1;
      else hi = mid;
    }
    const i = lo - 1;
    const handler = i >= 0 && addr + data.length <= t.ends[i]!
      ? this.#handlers[t.devices[i]!]
      : undefined;
    if (!handler) {
      if (!write) data.fill(0xff);
      return false;
    }
    if (write) handler.write(addr - bases[i]!, data);
    else handler.read(addr - bases[i]!, data);
    return true;
  }

  #words: Int32Array | undefined;
  #registryWords(): Int32Array {
    return this.#words ??= new Int32Array(this.#registry.state.sab, 0, HEADER);
  }

  #reload(): void {
    const rows: [AddressSpace, number, number, number][] = [];
    this.#version = this.#registry.collect((space, device, base, length) =>
      rows.push([space, device, base, length])
    );
    rows.sort((a, b) => a[2] - b[2]);
    const pio = { bases: [] as number[], ends: [] as number[], devices: [] as number[] };
    const mmio = { bases: [] as number[], ends: [] as number[], devices: [] as number[] };
    for (const [space, device, base, length] of rows) {
      const t = space === "pio" ? pio : mmio;
      t.bases.push(base);
      t.ends.push(base + length);
      t.devices.push(device);
    }
    this.#pio = pio;
    this.#mmio = mmio;
  }
}
