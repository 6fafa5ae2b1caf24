/**
 * Exits for main-thread devices (devices with async backends): the vCPU thread writes the access
 * into its own request slot (shared memory), wakes the main thread (an eventfd its event loop
 * watches) and sleeps in `Atomics.wait` until the main thread has answered. One slot per vCPU,
 * so vCPUs never contend; the main thread serves every slot whose state says "pending".
 *
 * Slot layout (Int32 words): state, device id, write flag, size, offset lo, offset hi, then 8
 * data bytes. States: IDLE → PENDING (vCPU) → IDLE (main, after the answer is in place). A closed
 * server marks every slot CLOSED: later requests read all-ones at once instead of waiting for a
 * main thread that is gone.
 * @module
 */
import type { BusDevice } from "./bus.ts";

const S_STATE = 0;
const S_DEVICE = 1;
const S_WRITE = 2;
const S_SIZE = 3;
const S_OFF_LO = 4;
const S_OFF_HI = 5;
const DATA_BYTE = 24;
const SLOT_BYTES = 32;

const IDLE = 0;
const PENDING = 1;
const CLOSED = 2;

/** A main-thread device: like a {@linkcode BusDevice}, but it may answer asynchronously. */
export interface MainThreadDevice {
  read(offset: number, data: Uint8Array): void | Promise<void>;
  write(offset: number, data: Uint8Array): void | Promise<void>;
}

/** Creates one vCPU's request slot. */
export function createRequestSlot(): SharedArrayBuffer {
  return new SharedArrayBuffer(SLOT_BYTES);
}

/**
 * The vCPU side: `proxy(id)` is the {@linkcode BusDevice} the vCPU's dispatcher calls for main
 * thread device `id`; each access blocks this thread until the main thread answered.
 */
export class RequestSlotClient {
  readonly #w: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #wake: () => void;

  constructor(slot: SharedArrayBuffer, wake: () => void) {
    this.#w = new Int32Array(slot);
    this.#bytes = new Uint8Array(slot);
    this.#wake = wake;
  }

  /** The forwarding device for main-thread device `id`. */
  proxy(id: number): BusDevice {
    return {
      read: (offset, data) => this.#forward(id, offset, false, data),
      write: (offset, data) => this.#forward(id, offset, true, data),
    };
  }

  #forward(id: number, offset: number, write: boolean, data: Uint8Array): void {
    const w = this.#w;
    if (Atomics.load(w, S_STATE) === CLOSED || data.length > 8) {
      if (!write) data.fill(0xff);
      return;
    }
    w[S_DEVICE] = id;
    w[S_WRITE] = write ? 1 : 0;
    w[S_SIZE] = data.length;
    w[S_OFF_LO] = offset % 0x1_0000_0000;
    w[S_OFF_HI] = Math.floor(offset / 0x1_0000_0000);
    if (write) this.#bytes.set(data, DATA_BYTE);
    // A server closed meanwhile keeps CLOSED: never overwrite it, or nobody would answer.
    if (Atomics.compareExchange(w, S_STATE, IDLE, PENDING) !== IDLE) {
      if (!write) data.fill(0xff);
      return;
    }
    this.#wake();
    while (Atomics.load(w, S_STATE) === PENDING) Atomics.wait(w, S_STATE, PENDING);
    if (!write) {
      if (Atomics.load(w, S_STATE) === CLOSED) data.fill(0xff);
      else data.set(this.#bytes.subarray(DATA_BYTE, DATA_BYTE + data.length));
    }
  }
}

/**
 * The main-thread side: `serve()` (on every wake-up of the eventfd) answers each pending slot
 * with `devices[id]`; `close()` releases every waiting vCPU with all-ones.
 */
export class RequestSlotServer {
  readonly #slots: { w: Int32Array; bytes: Uint8Array; busy: boolean }[];
  readonly #devices: (MainThreadDevice | undefined)[];
  #closed = false;

  constructor(slots: SharedArrayBuffer[], devices: (MainThreadDevice | undefined)[]) {
    this.#slots = slots.map((s) => ({
      w: new Int32Array(s),
      bytes: new Uint8Array(s),
      busy: false,
    }));
    this.#devices = devices;
  }

  /** Answers every pending request (async devices answer when their promise settles). */
  serve(): void {
    for (const slot of this.#slots) {
      if (slot.busy || Atomics.load(slot.w, S_STATE) !== PENDING) continue;
      const w = slot.w;
      const size = Math.min(w[S_SIZE]!, 8);
      const data = slot.bytes.subarray(DATA_BYTE, DATA_BYTE + size);
      const offset = (w[S_OFF_LO]! >>> 0) + (w[S_OFF_HI]! >>> 0) * 0x1_0000_0000;
      const write = w[S_WRITE] === 1;
      const device = this.#devices[w[S_DEVICE]!];
      const done = () => {
        slot.busy = false;
        if (this.#closed) return;
        Atomics.store(w, S_STATE, IDLE);
        Atomics.notify(w, S_STATE);
      };
      if (!device) {
        if (!write) data.fill(0xff);
        done();
        continue;
      }
      let pending: void | Promise<void>;
      try {
        pending = write ? device.write(offset, data) : device.read(offset, data);
      } catch {
        if (!write) data.fill(0xff);
        pending = undefined;
      }
      if (pending instanceof Promise) {
        slot.busy = true;
        pending.catch(() => {
          if (!write) data.fill(0xff);
        }).finally(done);
      } else done();
    }
  }

  /** Marks every slot closed and wakes every waiting vCPU (reads get all-ones); idempotent. */
  close(): void {
    this.#closed = true;
    for (const slot of this.#slots) {
      Atomics.store(slot.w, S_STATE, CLOSED);
      Atomics.notify(slot.w, S_STATE);
    }
  }
}
