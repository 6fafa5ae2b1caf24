/**
 * Test support for the IC devices: a manual clock, log capture, and `bringUp`, which registers
 * the four ICs with a real `VmbusServer`, connects a `LoopbackGuest` as Linux 6.1 does and binds
 * the ported hv_utils driver to them.
 */
import nodeAssert from "node:assert/strict";
import { configure, type LogRecord, reset } from "@logtape/logtape";
import type { Scheduler } from "../../../../src/devices/ic/framework.ts";
import {
  createIntegrationComponents,
  type IntegrationComponents,
  type IntegrationComponentsOptions,
} from "../../../../src/devices/ic/mod.ts";
import { type GuestOffer, LoopbackGuest } from "../../../../src/vmbus/testing/loopback_guest.ts";
import { LinuxHvUtils } from "./linux_hv_utils.ts";

export { nodeAssert as assert };

/** A scheduler whose clock only moves when the test says so. */
export class ManualScheduler implements Scheduler {
  #now = 0;
  #nextId = 1;
  readonly #timers = new Map<number, { at: number; fn: () => void; background: boolean }>();

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number, background: boolean): unknown {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), fn, background });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  /** Timers armed (foreground ones keep a process alive). */
  get pending(): { foreground: number; background: number } {
    let foreground = 0, background = 0;
    for (const t of this.#timers.values()) t.background ? background++ : foreground++;
    return { foreground, background };
  }

  /** Moves the clock by `ms`, firing due timers in order; `between` runs after each firing. */
  advance(ms: number, between?: () => void): void {
    const end = this.#now + ms;
    for (;;) {
      let id = -1;
      let at = Infinity;
      for (const [k, t] of this.#timers) {
        if (t.at <= end && t.at < at) {
          at = t.at;
          id = k;
        }
      }
      if (id < 0) break;
      const t = this.#timers.get(id)!;
      this.#timers.delete(id);
      this.#now = t.at;
      t.fn();
      between?.();
    }
    this.#now = end;
  }
}

/** Captures logtape records of the "hyperdeno" tree until `stop()`. */
export async function captureLogs(): Promise<{ records: LogRecord[]; stop(): Promise<void> }> {
  const records: LogRecord[] = [];
  await configure({
    reset: true,
    sinks: { mem: (r: LogRecord) => records.push(r) },
    loggers: [
      { category: ["hyperdeno"], lowestLevel: "debug", sinks: ["mem"] },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: [] },
    ],
  });
  return { records, stop: () => reset() };
}

/** The rendered message of a log record. */
export function text(r: LogRecord): string {
  return r.message.map(String).join("");
}

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}

/** What `bringUp` returns. */
export interface Rig {
  readonly sched: ManualScheduler;
  readonly ics: IntegrationComponents;
  readonly guest: LoopbackGuest;
  readonly linux: LinuxHvUtils;
  readonly offers: GuestOffer[];
  /** Advances the clock, letting the guest's callbacks run after each timer. */
  advance(ms: number): void;
}

/** Options of `bringUp`. */
export interface RigOptions {
  readonly ics?: IntegrationComponentsOptions;
  /** Do not open the channels (default: probe every IC). */
  readonly noProbe?: boolean;
  /** Guest reference counter. */
  readonly refCounter?: () => bigint;
}

/** Builds the ICs on a real server, connects a Linux-like guest and probes hv_utils. */
export function bringUp(options: RigOptions = {}): Rig {
  const sched = new ManualScheduler();
  const ics = createIntegrationComponents({ scheduler: sched, ...options.ics });
  const { guest } = LoopbackGuest.create({ devices: ics.devices });
  nodeAssert.ok(guest.connect() > 0, "VMBus connect");
  const offers = guest.requestOffers();
  const linux = new LinuxHvUtils(guest);
  if (options.refCounter) linux.refCounter = options.refCounter;
  if (!options.noProbe) {
    linux.probe(offers);
    linux.pump();
  }
  return {
    sched,
    ics,
    guest,
    linux,
    offers,
    advance: (ms) => sched.advance(ms, () => linux.pump()),
  };
}

/** Asserts no IC hit an internal error and the server caught no device exception. */
export function assertNoBugs(rig: Rig): void {
  for (const d of [rig.ics.shutdown, rig.ics.heartbeat, rig.ics.timesync, rig.ics.kvp]) {
    nodeAssert.equal(d.stats.internalErrors, 0, `${d.name} internal errors`);
  }
  nodeAssert.equal(rig.guest.server.stats.deviceErrors, 0, "device errors");
  nodeAssert.equal(rig.guest.server.stats.internalErrors, 0, "server internal errors");
}
