/**
 * Time sync IC: tells the guest the host's wall-clock time. Right after negotiation it sends a
 * SYNC message (Linux then sets its clock: `adj_guesttime` → `do_settimeofday64`), and every
 * `sampleIntervalMs` a SAMPLE (Linux records it for the `hyperv` PTP clock, used by chrony).
 *
 * Message versions 4.0, 3.0 and 1.0 are offered; 4.0 only when a `referenceTime` source is
 * given. Version 4 messages (`ictimesync_ref_data`) carry the guest's partition reference time at
 * the moment the host time was read, so the guest corrects for delivery delay
 * (`host_time + (now_ref - ref)`); older ones (`ictimesync_data`) carry the host time only.
 * Times are 100 ns units; host time counts from 1601-01-01 UTC. The guest echoes every message;
 * the echoes are dropped.
 * @module
 */
import { IcDevice, type IcOptions } from "./framework.ts";
import {
  filetimeFromUnixMs,
  IcClassId,
  IcInstanceId,
  IcMessageType,
  TIMESYNC_VERSIONS,
  TimesyncFlags,
  TimesyncMessage,
  TimesyncRefMessage,
} from "./protocol.ts";

/** Options of `TimesyncIc`. */
export interface TimesyncIcOptions extends IcOptions {
  /** Host wall-clock time in 100 ns units since 1601-01-01 UTC (default: the system clock). */
  readonly hostTime?: () => bigint;
  /**
   * The guest's partition reference time in 100 ns units, as the guest reads it right now
   * (reference TSC page / `HV_X64_MSR_TIME_REF_COUNT`). Without it only versions 3.0 and 1.0
   * are offered.
   */
  readonly referenceTime?: () => bigint;
  /** Milliseconds between samples (default 5000, as OpenVMM); 0 sends no samples. */
  readonly sampleIntervalMs?: number;
}

/** A message the host sent. */
export interface TimesyncSample {
  /** `TimesyncFlags.SYNC` or `TimesyncFlags.SAMPLE`. */
  readonly flags: number;
  /** Host time sent (100 ns since 1601). */
  readonly hostTime: bigint;
  /** Reference time sent (version 4 only). */
  readonly referenceTime: bigint | undefined;
}

function systemHostTime(): bigint {
  return filetimeFromUnixMs(performance.timeOrigin + performance.now());
}

/** The time sync IC device. */
export class TimesyncIc extends IcDevice {
  readonly #hostTime: () => bigint;
  readonly #referenceTime: (() => bigint) | undefined;
  readonly #intervalMs: number;
  #timer: unknown;
  #last: TimesyncSample | undefined;
  #sent = 0;

  /** Creates the device; register it with `VmbusServer.addDevice`. */
  constructor(options: TimesyncIcOptions = {}) {
    super({
      classId: IcClassId.TIMESYNC,
      instanceId: IcInstanceId.TIMESYNC,
      name: "timesync",
      messageVersions: options.referenceTime
        ? TIMESYNC_VERSIONS
        : TIMESYNC_VERSIONS.filter((v) => v.major < 4),
    }, options);
    const interval = options.sampleIntervalMs ?? 5000;
    if (!(interval >= 0) || !Number.isFinite(interval)) {
      throw new RangeError(`timesync sampleIntervalMs ${interval} is invalid; pass 0 or more`);
    }
    this.#intervalMs = interval;
    this.#hostTime = options.hostTime ?? systemHostTime;
    this.#referenceTime = options.referenceTime;
  }

  /** The last message sent since the channel opened. */
  get lastSent(): TimesyncSample | undefined {
    return this.#last;
  }

  /** Messages sent since the channel opened. */
  get sentCount(): number {
    return this.#sent;
  }

  /**
   * Sends a SYNC now, asking the guest to set its clock (after the host resumed from suspend, or
   * stepped its clock). False when the IC is not ready or the ring is full.
   */
  sync(): boolean {
    return this.#send(TimesyncFlags.SYNC);
  }

  /** Sends a SAMPLE now. False when not ready or when earlier messages still wait for space. */
  sample(): boolean {
    if (this.backlogged) return false;
    return this.#send(TimesyncFlags.SAMPLE);
  }

  /** Resets per-channel state. */
  protected override opened(): void {
    this.#last = undefined;
    this.#sent = 0;
  }

  /** Starts this IC's traffic. */
  protected override negotiated(): void {
    this.#send(TimesyncFlags.SYNC);
    this.#arm();
  }

  /** Stops this IC's traffic. */
  protected override closed(): void {
    this.#disarm();
  }

  /** Stops timers and fails what is queued. */
  protected override disposing(): void {
    this.#disarm();
  }

  #arm(): void {
    this.#disarm();
    if (this.#intervalMs === 0 || this.disposed) return;
    this.#timer = this.scheduler.setTimeout(
      () => {
        this.#timer = undefined;
        if (!this.isReady || this.disposed) return;
        this.sample();
        this.#arm();
      },
      this.#intervalMs,
      true,
    );
  }

  #disarm(): void {
    if (this.#timer !== undefined) this.scheduler.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #send(flags: number): boolean {
    const v = this.versions;
    if (!v) return false;
    let body: Uint8Array;
    let sample: TimesyncSample;
    if (v.message.major >= 4 && this.#referenceTime) {
      // Read the reference time right after the host time: the guest adds the time between the
      // reference reading and its own processing.
      const hostTime = this.#hostTime();
      const referenceTime = this.#referenceTime();
      body = TimesyncRefMessage.encode({
        parentTime: hostTime,
        vmReferenceTime: referenceTime,
        flags,
      });
      sample = { flags, hostTime, referenceTime };
    } else {
      const hostTime = this.#hostTime();
      body = TimesyncMessage.encode({ parentTime: hostTime, flags });
      sample = { flags, hostTime, referenceTime: undefined };
    }
    if (!this.post(IcMessageType.TIMESYNC, body)) return false;
    this.#last = sample;
    this.#sent++;
    return true;
  }
}
