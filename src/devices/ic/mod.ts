/**
 * Hyper-V integration components as VMBus devices: shutdown, heartbeat, time sync, KVP, file copy
 * and VSS, the services Linux's `hv_utils` driver binds to.
 *
 * - `protocol.ts`: wire formats and constants.
 * - `framework.ts`: the negotiation, request/answer matching, timeouts and hostile-input
 *   handling every IC shares (`IcDevice`), the injected `Scheduler`, `IcError`.
 * - `shutdown.ts`, `heartbeat.ts`, `timesync.ts`, `kvp.ts`, `fcopy.ts`, `vss.ts`: one IC each.
 *
 * ```ts
 * const ics = createIntegrationComponents({ timesync: { referenceTime } });
 * for (const d of ics.devices) server.addDevice(d);
 * await ics.shutdown.request("poweroff");
 * ```
 * @module
 */
import type { VmbusDevice } from "../../vmbus/device.ts";
import type { IcOptions, Scheduler } from "./framework.ts";
import { HeartbeatIc, type HeartbeatIcOptions } from "./heartbeat.ts";
import { KvpIc, type KvpIcOptions } from "./kvp.ts";
import { FcopyIc, type FcopyIcOptions } from "./fcopy.ts";
import { VssIc, type VssIcOptions } from "./vss.ts";
import { ShutdownIc, type ShutdownIcOptions } from "./shutdown.ts";
import { TimesyncIc, type TimesyncIcOptions } from "./timesync.ts";

export * from "./protocol.ts";
export {
  IcDevice,
  IcError,
  type IcErrorCode,
  type IcOptions,
  type IcResponse,
  type IcSpec,
  type IcState,
  type IcStats,
  type IcVersions,
  type Scheduler,
  systemScheduler,
} from "./framework.ts";
export {
  ShutdownIc,
  type ShutdownIcOptions,
  type ShutdownKind,
  type ShutdownRequestOptions,
  type ShutdownResult,
} from "./shutdown.ts";
export {
  type HeartbeatHealth,
  HeartbeatIc,
  type HeartbeatIcOptions,
  type HeartbeatStatus,
} from "./heartbeat.ts";
export { TimesyncIc, type TimesyncIcOptions, type TimesyncSample } from "./timesync.ts";
export {
  type KvpEntry,
  KvpIc,
  type KvpIcOptions,
  type KvpIpInfo,
  type KvpRequestOptions,
  type KvpValue,
} from "./kvp.ts";
export {
  type CopyResult,
  type CopyToGuestOptions,
  FcopyIc,
  type FcopyIcOptions,
  type FcopyProgress,
  splitGuestPath,
} from "./fcopy.ts";
export { VssIc, type VssIcOptions } from "./vss.ts";

/** Options of `createIntegrationComponents`: one block per IC, plus a shared scheduler. */
export interface IntegrationComponentsOptions {
  /** Scheduler for every IC that does not name its own (default `systemScheduler`). */
  readonly scheduler?: Scheduler;
  /** Shutdown IC options. */
  readonly shutdown?: ShutdownIcOptions;
  /** Heartbeat IC options. */
  readonly heartbeat?: HeartbeatIcOptions;
  /** Time sync IC options (pass `referenceTime` to offer version 4.0). */
  readonly timesync?: TimesyncIcOptions;
  /** KVP IC options. */
  readonly kvp?: KvpIcOptions;
  /** File copy IC options. */
  readonly fcopy?: FcopyIcOptions;
  /** VSS IC options. */
  readonly vss?: VssIcOptions;
}

/** The ICs and the list to register with the VMBus server. */
export interface IntegrationComponents {
  /** Shutdown IC. */
  readonly shutdown: ShutdownIc;
  /** Heartbeat IC. */
  readonly heartbeat: HeartbeatIc;
  /** Time sync IC. */
  readonly timesync: TimesyncIc;
  /** KVP IC. */
  readonly kvp: KvpIc;
  /** File copy IC. */
  readonly fcopy: FcopyIc;
  /** VSS IC. */
  readonly vss: VssIc;
  /** In offer order: shutdown, time sync, heartbeat, KVP (Hyper-V's order), file copy, VSS. */
  readonly devices: readonly VmbusDevice[];
  /** Disposes all of them (stops timers, fails outstanding requests). */
  dispose(): void;
}

function withScheduler<T extends IcOptions>(o: T | undefined, s: Scheduler | undefined): T {
  const base = (o ?? {}) as T;
  return s && !base.scheduler ? { ...base, scheduler: s } : base;
}

/**
 * Creates the shutdown, time sync, heartbeat, KVP, file copy and VSS ICs with Hyper-V's stable
 * instance GUIDs
 * (override per IC with `instanceId`). Register `devices` with `VmbusServer.addDevice`.
 */
export function createIntegrationComponents(
  options: IntegrationComponentsOptions = {},
): IntegrationComponents {
  const s = options.scheduler;
  const shutdown = new ShutdownIc(withScheduler(options.shutdown, s));
  const timesync = new TimesyncIc(withScheduler(options.timesync, s));
  const heartbeat = new HeartbeatIc(withScheduler(options.heartbeat, s));
  const kvp = new KvpIc(withScheduler(options.kvp, s));
  const fcopy = new FcopyIc(withScheduler(options.fcopy, s));
  const vss = new VssIc(withScheduler(options.vss, s));
  const devices = [shutdown, timesync, heartbeat, kvp, fcopy, vss];
  return {
    shutdown,
    heartbeat,
    timesync,
    kvp,
    fcopy,
    vss,
    devices,
    dispose() {
      for (const d of devices) d.dispose();
    },
  };
}
