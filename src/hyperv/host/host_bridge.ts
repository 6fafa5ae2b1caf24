/**
 * HvPostMessage and HvSignalEvent from vCPU threads to the VMBus host on the main thread (the
 * long-mode hypercall page's doorbells mostly bypass this: KVM signals them through eventfds,
 * see `doorbells.ts`).
 * Messages go through one single-producer ring per vCPU in a SharedArrayBuffer (no lock, no
 * allocation on the vCPU side); signals set a bit per connection id. Either wakes the main
 * thread through an eventfd. The vCPU answers the hypercall at once: SUCCESS once queued,
 * INSUFFICIENT_BUFFERS when its ring is full (Linux retries), INVALID_CONNECTION_ID for ids the
 * VMBus host does not own.
 * @module
 */
import { eventfdSignal } from "../../../ffi/libc.ts";
import type { HvHostBridge } from "../mod.ts";

/** HV status codes used here (TLFS). */
const HV_STATUS_SUCCESS = 0;
const HV_STATUS_INVALID_PARAMETER = 5;
const HV_STATUS_INSUFFICIENT_BUFFERS = 0x13;
const HV_STATUS_INVALID_CONNECTION_ID = 0x12;

/** Largest HvPostMessage payload (TLFS). */
export const MAX_MESSAGE_PAYLOAD = 240;
/** Messages each vCPU can have in flight to the main thread. */
const SLOTS = 64;
/** Slot: connection id u32, message type u32, length u32, pad u32, payload 240 bytes. */
const SLOT_BYTES = 256;
const HEADER = 16;
/** Connection ids signals can name: VMBus uses 2 (interrupt page) and 0x2000 + relid. */
export const MAX_SIGNAL_CONNECTION_ID = 0x4000;

/** Which connection ids the VMBus host owns (from `VmbusServer.handlesConnectionId`). */
export type ConnectionFilter = (connectionId: number, kind: "message" | "event") => boolean;

/** Shared state: per-vCPU message rings plus the pending-signal bitmap. */
export interface HostBridgeState {
  rings: SharedArrayBuffer[];
  signals: SharedArrayBuffer;
  wakeFd: number;
}

/** Creates the shared state for `vpCount` vCPUs, waking the main thread through `wakeFd`. */
export function createHostBridgeState(vpCount: number, wakeFd: number): HostBridgeState {
  return {
    // Int32 head (written by the vCPU), Int32 tail (written by the main thread), then slots.
    rings: Array.from({ length: vpCount }, () => new SharedArrayBuffer(8 + SLOTS * SLOT_BYTES)),
    signals: new SharedArrayBuffer(MAX_SIGNAL_CONNECTION_ID / 8),
    wakeFd,
  };
}

/** The vCPU side: an `HvHostBridge` for vCPU `vp`. */
export class VcpuHostBridge implements HvHostBridge {
  readonly #idx: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #signals: Int32Array;
  readonly #wakeFd: number;
  readonly #owns: ConnectionFilter;

  constructor(state: HostBridgeState, vp: number, owns: ConnectionFilter) {
    const ring = state.rings[vp]!;
    this.#idx = new Int32Array(ring, 0, 2);
    this.#bytes = new Uint8Array(ring, 8);
    this.#view = new DataView(ring, 8);
    this.#signals = new Int32Array(state.signals);
    this.#wakeFd = state.wakeFd;
    this.#owns = owns;
  }

  postMessage(connectionId: number, messageType: number, payload: Uint8Array): number {
    if (!this.#owns(connectionId, "message")) return HV_STATUS_INVALID_CONNECTION_ID;
    if (payload.length > MAX_MESSAGE_PAYLOAD) return HV_STATUS_INVALID_PARAMETER;
    const head = Atomics.load(this.#idx, 0);
    if (head - Atomics.load(this.#idx, 1) >= SLOTS) return HV_STATUS_INSUFFICIENT_BUFFERS;
    const at = (head % SLOTS) * SLOT_BYTES;
    this.#view.setUint32(at, connectionId, true);
    this.#view.setUint32(at + 4, messageType, true);
    this.#view.setUint32(at + 8, payload.length, true);
    this.#bytes.set(payload, at + HEADER);
    Atomics.store(this.#idx, 0, head + 1);
    eventfdSignal(this.#wakeFd);
    return HV_STATUS_SUCCESS;
  }

  signalEvent(connectionId: number, _flagNumber: number): number {
    if (connectionId >= MAX_SIGNAL_CONNECTION_ID || !this.#owns(connectionId, "event")) {
      return HV_STATUS_INVALID_CONNECTION_ID;
    }
    const word = connectionId >>> 5;
    const bit = 1 << (connectionId & 31);
    // Only the first signal of a burst needs to wake the main thread.
    if ((Atomics.or(this.#signals, word, bit) & bit) === 0) eventfdSignal(this.#wakeFd);
    return HV_STATUS_SUCCESS;
  }
}

/** The main-thread side: drains messages and signals into the VMBus host. */
export class HostBridgeReceiver {
  readonly #rings: { idx: Int32Array; bytes: Uint8Array; view: DataView }[];
  readonly #signals: Int32Array;
  readonly #payload = new Uint8Array(MAX_MESSAGE_PAYLOAD);

  constructor(state: HostBridgeState) {
    this.#rings = state.rings.map((r) => ({
      idx: new Int32Array(r, 0, 2),
      bytes: new Uint8Array(r, 8),
      view: new DataView(r, 8),
    }));
    this.#signals = new Int32Array(state.signals);
  }

  /**
   * Delivers everything pending, in order per vCPU. `payload` views a reused buffer: valid only
   * during the call.
   */
  drain(
    onMessage: (connectionId: number, messageType: number, payload: Uint8Array) => void,
    onSignal: (connectionId: number) => void,
  ): void {
    for (let w = 0; w < this.#signals.length; w++) {
      if (Atomics.load(this.#signals, w) === 0) continue;
      let bits = Atomics.exchange(this.#signals, w, 0);
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        bits &= bits - 1;
        onSignal(w * 32 + b);
      }
    }
    for (const r of this.#rings) {
      const head = Atomics.load(r.idx, 0);
      let tail = Atomics.load(r.idx, 1);
      while (tail !== head) {
        const at = (tail % SLOTS) * SLOT_BYTES;
        const len = Math.min(r.view.getUint32(at + 8, true), MAX_MESSAGE_PAYLOAD);
        this.#payload.set(r.bytes.subarray(at + HEADER, at + HEADER + len));
        onMessage(
          r.view.getUint32(at, true),
          r.view.getUint32(at + 4, true),
          this.#payload.subarray(0, len),
        );
        tail++;
        Atomics.store(r.idx, 1, tail);
      }
    }
  }
}
