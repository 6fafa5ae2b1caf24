/**
 * Heartbeat IC: the host sends a sequence number every `intervalMs`; a live guest answers with
 * the number plus one (Linux `heartbeat_onchannelcallback`, straight from the channel callback,
 * so an answer means the guest kernel is scheduling). The device turns answers into a health
 * status the CLI can show. Versions offered: 3.0, 1.0.
 *
 * Health: `offline` without a channel (or without a common version); `pending` from open until
 * the first answer; `healthy` while answers keep coming; `unresponsive` once nothing valid
 * arrived for `unresponsiveAfterMs` (since the last answer, or since open). Only one heartbeat is
 * outstanding at a time.
 * @module
 */
import { rateLimited } from "../../util/log.ts";
import { IcDevice, type IcError, type IcOptions, type IcResponse } from "./framework.ts";
import {
  HEARTBEAT_VERSIONS,
  HeartbeatMessage,
  IcClassId,
  IcInstanceId,
  IcMessageType,
  IcStatus,
} from "./protocol.ts";

/** Guest health as seen through heartbeats. */
export type HeartbeatStatus = "offline" | "pending" | "healthy" | "unresponsive";

/** A snapshot of the guest's heartbeat health. */
export interface HeartbeatHealth {
  /** Current status. */
  readonly status: HeartbeatStatus;
  /** Sequence number of the last valid answer. */
  readonly lastSequence: bigint | undefined;
  /** `Scheduler.now()` of the last valid answer. */
  readonly lastSeenMs: number | undefined;
  /** Valid answers since the channel opened. */
  readonly answered: number;
  /** Heartbeats that went unanswered (timed out) since the channel opened. */
  readonly missed: number;
}

/** Options of `HeartbeatIc`. */
export interface HeartbeatIcOptions extends IcOptions {
  /** Milliseconds between heartbeats (default 2000, as Hyper-V). */
  readonly intervalMs?: number;
  /** Silence after which the guest counts as unresponsive (default 3 intervals). */
  readonly unresponsiveAfterMs?: number;
  /** Called when `health.status` changes. */
  readonly onHealthChange?: (health: HeartbeatHealth) => void;
}

/** The heartbeat IC device. */
export class HeartbeatIc extends IcDevice {
  readonly #intervalMs: number;
  readonly #deadMs: number;
  readonly #onHealthChange: HeartbeatIcOptions["onHealthChange"];
  #timer: unknown;
  #status: HeartbeatStatus = "offline";
  #openedAt = 0;
  #lastSeen: number | undefined;
  #lastSeq: bigint | undefined;
  #nextSeq = 0n;
  #outstanding = false;
  #answered = 0;
  #missed = 0;
  #generation = 0;
  readonly #note = rateLimited();

  /** Creates the device; register it with `VmbusServer.addDevice`. */
  constructor(options: HeartbeatIcOptions = {}) {
    super({
      classId: IcClassId.HEARTBEAT,
      instanceId: IcInstanceId.HEARTBEAT,
      name: "heartbeat",
      messageVersions: HEARTBEAT_VERSIONS,
    }, options);
    const interval = options.intervalMs ?? 2000;
    if (!(interval > 0) || !Number.isFinite(interval)) {
      throw new RangeError(`heartbeat intervalMs ${interval} is invalid; pass a positive number`);
    }
    this.#intervalMs = interval;
    this.#deadMs = Math.max(options.unresponsiveAfterMs ?? 3 * interval, interval);
    this.#onHealthChange = options.onHealthChange;
  }

  /** The guest's health now. */
  get health(): HeartbeatHealth {
    return {
      status: this.#status,
      lastSequence: this.#lastSeq,
      lastSeenMs: this.#lastSeen,
      answered: this.#answered,
      missed: this.#missed,
    };
  }

  /** Heartbeat period in ms. */
  get intervalMs(): number {
    return this.#intervalMs;
  }

  /** Resets per-channel state. */
  protected override opened(): void {
    this.#generation++;
    this.#openedAt = this.scheduler.now();
    this.#lastSeen = undefined;
    this.#lastSeq = undefined;
    this.#outstanding = false;
    this.#answered = 0;
    this.#missed = 0;
    this.#setStatus("pending");
    this.#arm();
  }

  /** Starts this IC's traffic. */
  protected override negotiated(): void {
    this.#beat();
  }

  /** Stops this IC's traffic. */
  protected override closed(): void {
    this.#generation++;
    this.#disarm();
    this.#outstanding = false;
    this.#setStatus("offline");
  }

  /** Stops timers and fails what is queued. */
  protected override disposing(): void {
    this.#generation++;
    this.#disarm();
  }

  #arm(): void {
    this.#disarm();
    if (this.disposed) return;
    this.#timer = this.scheduler.setTimeout(() => this.#tick(), this.#intervalMs, true);
  }

  #disarm(): void {
    if (this.#timer !== undefined) this.scheduler.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    this.#timer = undefined;
    if (this.state === "closed" || this.disposed) return;
    this.#arm();
    this.#evaluate();
    if (this.isReady && !this.#outstanding) this.#beat();
  }

  #beat(): void {
    const seq = this.#nextSeq;
    const gen = this.#generation;
    this.#outstanding = true;
    const body = HeartbeatMessage.encode({ seqNum: seq });
    this.exchange(
      IcMessageType.HEARTBEAT,
      body,
      this.#deadMs,
      (r) => {
        if (gen === this.#generation) this.#answer(seq, r);
      },
      (e: IcError) => {
        if (gen !== this.#generation) return;
        this.#outstanding = false;
        if (e.code === "timeout") this.#missed++;
        this.#evaluate();
      },
    );
  }

  #answer(sent: bigint, r: IcResponse): void {
    this.#outstanding = false;
    if (r.status !== IcStatus.S_OK) {
      this.malformed(`heartbeat answered with status 0x${(r.status >>> 0).toString(16)}`);
      return;
    }
    if (r.body.length < 8) {
      this.malformed(`heartbeat answer body is ${r.body.length} bytes`);
      return;
    }
    const got = HeartbeatMessage.get(r.body, 0, "seqNum");
    const want = BigInt.asUintN(64, sent + 1n);
    if (got !== want) {
      this.malformed(`heartbeat ${sent} answered with sequence ${got} instead of ${want}`);
      return;
    }
    this.#lastSeq = got;
    this.#lastSeen = this.scheduler.now();
    this.#answered++;
    this.#nextSeq = got;
    this.#evaluate();
  }

  #evaluate(): void {
    if (this.state === "closed" || this.state === "failed") {
      // No channel, or no common version: nothing to monitor.
      this.#setStatus("offline");
      return;
    }
    const since = this.#lastSeen ?? this.#openedAt;
    if (this.scheduler.now() - since >= this.#deadMs) this.#setStatus("unresponsive");
    else this.#setStatus(this.#lastSeen === undefined ? "pending" : "healthy");
  }

  #setStatus(s: HeartbeatStatus): void {
    if (this.#status === s) return;
    const was = this.#status;
    this.#status = s;
    if (s === "unresponsive" || was === "unresponsive") {
      this.#note((n) => this.logger.info(`heartbeat: guest is ${s} (was ${was})${suppressed(n)}`));
    }
    const cb = this.#onHealthChange;
    if (!cb) return;
    try {
      cb(this.health);
    } catch (e) {
      this.#note((n) =>
        this.logger.error(
          `heartbeat: onHealthChange threw: ${e instanceof Error ? e.stack : e}${suppressed(n)}`,
        )
      );
    }
  }
}

function suppressed(n: number): string {
  return n > 0 ? ` (${n} similar lines suppressed)` : "";
}
