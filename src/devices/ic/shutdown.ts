/**
 * Shutdown IC: the host asks the guest to power off, reboot or hibernate, and learns whether
 * the guest accepted.
 *
 * Linux (`shutdown_onchannelcallback`): flags 0/1 power off, 2/3 reboot, 4/5 hibernate (bit 0,
 * force, is always implied); it answers S_OK and then starts `orderly_poweroff` /
 * `orderly_reboot` / a hibernate uevent, or E_FAIL for hibernation without support or an unknown
 * flag value. It needs the whole 2060-byte `shutdown_msg_data` in the packet. Versions offered:
 * 3.2, 3.1, 3.0, 1.0 (Linux 6.1 picks 3.2).
 * @module
 */
import { IcDevice, IcError, type IcOptions } from "./framework.ts";
import {
  encodeUtf16z,
  IcClassId,
  IcInstanceId,
  IcMessageType,
  IcStatus,
  SHTDN_REASON_FLAG_PLANNED,
  SHUTDOWN_DISPLAY_MESSAGE_SIZE,
  SHUTDOWN_VERSIONS,
  ShutdownFlags,
  ShutdownMessage,
} from "./protocol.ts";

/** What the host asks for. */
export type ShutdownKind = "poweroff" | "reboot" | "hibernate";

/** Per-request options of `ShutdownIc.request`. */
export interface ShutdownRequestOptions {
  /** Set the force bit (Linux forces every request anyway). Default false. */
  readonly force?: boolean;
  /** Text for the guest to display (at most 1023 UTF-16 units). */
  readonly message?: string;
  /** `reason_code` (default `SHTDN_REASON_FLAG_PLANNED`). */
  readonly reasonCode?: number;
  /** `timeout_seconds` the guest is given (default 0; Linux ignores it). */
  readonly timeoutSeconds?: number;
  /** How long to wait for the guest's answer (default the IC's `requestTimeoutMs`). */
  readonly timeoutMs?: number;
}

/** The guest's answer. */
export interface ShutdownResult {
  /** `icmsg_hdr.status` of the answer (0 = S_OK). */
  readonly status: number;
  /** True when the guest accepted (status S_OK) and is now shutting down / rebooting. */
  readonly accepted: boolean;
}

/** Options of `ShutdownIc`. */
export interface ShutdownIcOptions extends IcOptions {
  /** Default wait for the guest's answer, in ms (default 10 000). */
  readonly requestTimeoutMs?: number;
}

const FLAGS: Record<ShutdownKind, number> = {
  poweroff: 0,
  reboot: ShutdownFlags.RESTART,
  hibernate: ShutdownFlags.HIBERNATE,
};

/** The shutdown IC device. */
export class ShutdownIc extends IcDevice {
  readonly #timeoutMs: number;
  #inProgress = false;

  /** Creates the device; register it with `VmbusServer.addDevice`. */
  constructor(options: ShutdownIcOptions = {}) {
    super({
      classId: IcClassId.SHUTDOWN,
      instanceId: IcInstanceId.SHUTDOWN,
      name: "shutdown",
      messageVersions: SHUTDOWN_VERSIONS,
    }, options);
    this.#timeoutMs = options.requestTimeoutMs ?? 10_000;
  }

  /** True while a request waits for the guest's answer. */
  get inProgress(): boolean {
    return this.#inProgress;
  }

  /**
   * Asks the guest to `kind`. Resolves with the guest's status answer (`accepted` false for a
   * refusal, e.g. hibernation unsupported). Rejects with `IcError`: `not-ready` (no channel or
   * not negotiated: fall back to ACPI), `busy` (a request is already waiting), `timeout`,
   * `closed`, `protocol`; with `TypeError`/`RangeError` for bad arguments.
   */
  request(kind: ShutdownKind, options: ShutdownRequestOptions = {}): Promise<ShutdownResult> {
    const flags = FLAGS[kind];
    if (flags === undefined) {
      return Promise.reject(
        new TypeError(`shutdown kind "${kind}" is unknown; use poweroff, reboot or hibernate`),
      );
    }
    const text = options.message ?? "";
    const display = encodeUtf16z(text, SHUTDOWN_DISPLAY_MESSAGE_SIZE);
    if (!display) {
      return Promise.reject(
        new RangeError(`shutdown message is ${text.length} characters; the limit is 1023`),
      );
    }
    if (this.#inProgress) {
      return Promise.reject(
        new IcError("busy", "shutdown: a request is already waiting for the guest's answer"),
      );
    }
    const body = ShutdownMessage.encode({
      reasonCode: options.reasonCode ?? SHTDN_REASON_FLAG_PLANNED,
      timeoutSeconds: options.timeoutSeconds ?? 0,
      flags: flags | (options.force ? ShutdownFlags.FORCE : 0),
      displayMessage: display,
    });
    this.#inProgress = true;
    return this.transaction(IcMessageType.SHUTDOWN, body, options.timeoutMs ?? this.#timeoutMs)
      .then((r) => ({ status: r.status, accepted: r.status === IcStatus.S_OK }))
      .finally(() => {
        this.#inProgress = false;
      });
  }
}
