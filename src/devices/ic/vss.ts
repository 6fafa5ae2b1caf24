/**
 * VSS IC (Volume Shadow copy Service): asks the guest to freeze and thaw its file systems around
 * a host-side backup, through the guest's `hv_vss_daemon` (Linux) or the in-box VSS (Windows).
 *
 * Protocol (Linux `drivers/hv/hv_snapshot.c`, `tools/hv/hv_vss_daemon.c`): each request is a
 * 12-byte `hv_vss_msg` {operation, reserved[7], flags}; the guest answers with a status. Linux
 * forwards FREEZE, THAW and HOT_BACKUP to the daemon (E_FAIL when none is registered; the daemon
 * gets 15 minutes for FREEZE and 30 s otherwise) and answers the rest itself. The daemon freezes
 * (FIFREEZE) every read-write mount whose source starts with `/dev/` and thaws them on THAW. A
 * Hyper-V backup sends HOT_BACKUP, FREEZE, (snapshot), THAW.
 * @module
 */
import { IcDevice, IcError, type IcOptions } from "./framework.ts";
import {
  formatIcStatus,
  IcClassId,
  IcInstanceId,
  IcMessageType,
  IcStatus,
  VSS_VERSIONS,
  VssMessage,
  VssOperation,
} from "./protocol.ts";

/** Options of `VssIc`. */
export interface VssIcOptions extends IcOptions {
  /** Wait for FREEZE in ms (default 16 minutes: past Linux's 15-minute wait for its daemon). */
  readonly freezeTimeoutMs?: number;
  /** Wait for other requests in ms (default 35 000: past Linux's 30 s). */
  readonly requestTimeoutMs?: number;
}

/** The VSS IC device. */
export class VssIc extends IcDevice {
  readonly #freezeTimeoutMs: number;
  readonly #timeoutMs: number;
  #busy = false;
  #frozenSince: number | undefined;

  /** Creates the device; register it with `VmbusServer.addDevice`. */
  constructor(options: VssIcOptions = {}) {
    super({
      classId: IcClassId.VSS,
      instanceId: IcInstanceId.VSS,
      name: "vss",
      messageVersions: VSS_VERSIONS,
    }, options);
    this.#freezeTimeoutMs = options.freezeTimeoutMs ?? 16 * 60_000;
    this.#timeoutMs = options.requestTimeoutMs ?? 35_000;
  }

  /** True between a successful `freeze` and the next `thaw` (or channel close). */
  get frozen(): boolean {
    return this.#frozenSince !== undefined;
  }

  /** Milliseconds the guest has been frozen, or undefined. */
  get frozenMs(): number | undefined {
    return this.#frozenSince === undefined ? undefined : this.scheduler.now() - this.#frozenSince;
  }

  /** Freezes the guest's file systems (HOT_BACKUP, then FREEZE). Rejects with `IcError`. */
  async freeze(): Promise<void> {
    await this.#request(VssOperation.HOT_BACKUP, "prepare a backup", this.#timeoutMs);
    await this.#request(VssOperation.FREEZE, "freeze its file systems", this.#freezeTimeoutMs);
    this.#frozenSince = this.scheduler.now();
  }

  /** Thaws the guest's file systems; resolves how long they were frozen (ms, when known). */
  async thaw(): Promise<number | undefined> {
    const since = this.#frozenSince;
    await this.#request(VssOperation.THAW, "thaw its file systems", this.#timeoutMs);
    this.#frozenSince = undefined;
    return since === undefined ? undefined : this.scheduler.now() - since;
  }

  protected override closed(): void {
    this.#frozenSince = undefined;
  }

  async #request(operation: number, what: string, timeoutMs: number): Promise<void> {
    if (this.#busy) throw new IcError("busy", "vss: another freeze or thaw is running");
    this.#busy = true;
    try {
      const r = await this.transaction(
        IcMessageType.VSS,
        VssMessage.encode({ operation }),
        timeoutMs,
      );
      if (r.status !== IcStatus.S_OK) {
        const hint = r.status >>> 0 === IcStatus.E_FAIL
          ? ": no hv_vss_daemon runs in the guest, or a file system refused (see the guest's syslog)"
          : "";
        throw new IcError(
          "status",
          `vss: the guest could not ${what}: ${formatIcStatus(r.status)}${hint}`,
          r.status,
        );
      }
    } finally {
      this.#busy = false;
    }
  }
}
