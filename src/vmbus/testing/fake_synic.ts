/**
 * A `SynicPort` for tests: one message slot per (VP, SINT) that stays busy until the test (the
 * fake guest) takes the message, and a record of event flags raised.
 * @module
 */
import type { SynicPort } from "../server.ts";

/** One host-to-guest event signal. */
export interface SignalRecord {
  readonly vp: number;
  readonly sint: number;
  readonly flag: number;
}

/** A fake SynIC: message slots and event flags in plain JS structures. */
export class FakeSynic implements SynicPort {
  readonly #slots = new Map<string, { type: number; payload: Uint8Array }>();
  readonly #flags = new Map<string, Set<number>>();
  /** Every `signalEvent`, in order. */
  readonly signals: SignalRecord[] = [];
  /** When true every `postMessage` reports a busy slot. */
  refuseAll = false;
  /** Number of `postMessage` calls refused because the slot was busy. */
  busyRefusals = 0;

  /** @inheritdoc */
  postMessage(vp: number, sint: number, messageType: number, payload: Uint8Array): boolean {
    const key = `${vp}/${sint}`;
    if (this.refuseAll || this.#slots.has(key)) {
      this.busyRefusals++;
      return false;
    }
    this.#slots.set(key, { type: messageType, payload: payload.slice() });
    return true;
  }

  /** @inheritdoc */
  signalEvent(vp: number, sint: number, flag: number): void {
    this.signals.push({ vp, sint, flag });
    const key = `${vp}/${sint}`;
    let set = this.#flags.get(key);
    if (!set) this.#flags.set(key, set = new Set());
    set.add(flag);
  }

  /** Takes (and frees) the message in slot `vp`/`sint`; the caller then tells the server. */
  take(vp: number, sint: number): { type: number; payload: Uint8Array } | undefined {
    const key = `${vp}/${sint}`;
    const m = this.#slots.get(key);
    this.#slots.delete(key);
    return m;
  }

  /** True when slot `vp`/`sint` holds a message. */
  hasMessage(vp: number, sint: number): boolean {
    return this.#slots.has(`${vp}/${sint}`);
  }

  /** Tests and clears event flag `flag` of `vp`/`sint`. */
  testAndClearFlag(vp: number, sint: number, flag: number): boolean {
    const set = this.#flags.get(`${vp}/${sint}`);
    if (!set?.has(flag)) return false;
    set.delete(flag);
    return true;
  }
}
