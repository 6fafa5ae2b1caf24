/**
 * What every integration component shares, written once: the offer identity (message-mode pipe),
 * version negotiation, host-initiated requests matched to the guest's answers by VMBus
 * transaction id, timeouts through an injected `Scheduler`, a small outbox for a full ring, and
 * hostile-input handling.
 *
 * Protocol (Linux `drivers/hv/hv_util.c`, `vmbus_prep_negotiate_resp`): when the guest opens the
 * channel the host sends NEGOTIATE listing its framework and message versions; the guest answers
 * in the same buffer with one framework and one message version (the highest of its own lists
 * that the host offered) or with zero counts when nothing matches. Afterwards the host sends
 * requests; the guest echoes each buffer with `icflags = TRANSACTION | RESPONSE`, a status, and
 * the request's VMBus transaction id.
 *
 * Guest bytes are hostile: a short, unexpected or unmatched packet is counted in `stats`, logged
 * with a rate limit and dropped; an answer that cannot be parsed fails only the request it
 * answers (`IcError` code `protocol`). Nothing a guest sends throws out of `onPacket`.
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { getLogger, rateLimited } from "../../util/log.ts";
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import { OfferFlags, VmPacketType } from "../../vmbus/protocol.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import {
  formatIcVersion,
  FRAMEWORK_VERSIONS,
  hasIcVersion,
  IC_HEADER_OFFSET,
  IcHeaderFlags,
  IcMessageHeader,
  IcMessageType,
  ICMSG_HDR,
  type IcVersion,
  IcVersionLayout,
  NegotiateMessage,
  PIPE_PACKET_DATA,
  PipeHeader,
  VMBUS_PIPE_TYPE_MESSAGE,
} from "./protocol.ts";

/** Timers and a monotonic clock, injected so tests run deterministically. */
export interface Scheduler {
  /** Monotonic time in milliseconds. */
  now(): number;
  /**
   * Runs `fn` once after `ms` milliseconds and returns a handle for `clearTimeout`.
   * `background` timers (periodic heartbeats and time samples) must not keep the process alive.
   */
  setTimeout(fn: () => void, ms: number, background: boolean): unknown;
  /** Cancels a timer from `setTimeout` (a handle that already fired is ignored). */
  clearTimeout(handle: unknown): void;
}

/** The real clock: `performance.now()` and global timers (background ones unref'd). */
export const systemScheduler: Scheduler = {
  now: () => performance.now(),
  setTimeout(fn, ms, background) {
    const id = setTimeout(fn, ms);
    if (background) Deno.unrefTimer(id);
    return id;
  },
  clearTimeout(handle) {
    clearTimeout(handle as number);
  },
};

/** Why a host-side IC operation failed. */
export type IcErrorCode =
  /** The channel is not open or version negotiation has not finished (or failed). */
  | "not-ready"
  /** Another operation of a kind the guest handles one at a time is running, or the outbox is full. */
  | "busy"
  /** The guest did not answer in time. */
  | "timeout"
  /** The channel closed (or the device was disposed) before the answer came. */
  | "closed"
  /** The guest answered with a failure status (`IcError.status`). */
  | "status"
  /** The guest's answer was malformed. */
  | "protocol";

/** A host-side IC operation failed; `code` says why. */
export class IcError extends Error {
  /** Always "IcError". */
  override name = "IcError";
  /** Failure class. */
  readonly code: IcErrorCode;
  /** The guest's status (HRESULT) for `code === "status"`. */
  readonly status: number | undefined;
  /** An error of class `code`; `status` for `code === "status"`. */
  constructor(code: IcErrorCode, message: string, status?: number) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

/** Channel state of an IC. */
export type IcState =
  /** No open channel (hv_utils not loaded, or the guest closed it). */
  | "closed"
  /** Open; NEGOTIATE sent, no answer yet (KVP stays here until the guest's daemon runs). */
  | "negotiating"
  /** Versions agreed; requests can flow. */
  | "ready"
  /** The guest supports none of the offered versions (until it reopens the channel). */
  | "failed";

/** Versions agreed in negotiation. */
export interface IcVersions {
  /** Framework version (`icverframe`). */
  readonly framework: IcVersion;
  /** Message version (`icvermsg`). */
  readonly message: IcVersion;
}

/** The guest's answer to a request. */
export interface IcResponse {
  /** `icmsg_hdr.status` (0 = S_OK). */
  readonly status: number;
  /** Message body (bytes after `icmsg_hdr`, at most `icmsgsize`), copied. */
  readonly body: Uint8Array;
}

/** Counters, for diagnostics and tests. */
export interface IcStats {
  /** Guest packets received. */
  packets: number;
  /** Answers matched to a request. */
  answers: number;
  /** Packets dropped as malformed or unexpected (each logged, rate-limited). */
  malformed: number;
  /** Answers to requests that had timed out or were never sent. */
  stale: number;
  /** Answers to fire-and-forget messages (time samples), dropped by design. */
  echoes: number;
  /** Requests that timed out. */
  timeouts: number;
  /** Bugs: exceptions caught in the packet handler. Must stay 0. */
  internalErrors: number;
}

/** Options every IC takes. */
export interface IcOptions {
  /** Instance GUID of the offer (default: the one Hyper-V uses for this IC). */
  readonly instanceId?: string;
  /** Clock and timers (default `systemScheduler`). */
  readonly scheduler?: Scheduler;
  /** Called on every state change (open, negotiated, failed, closed). */
  readonly onStateChange?: (state: IcState, versions: IcVersions | undefined) => void;
}

/** Identity and versions a concrete IC passes to `IcDevice`. */
export interface IcSpec {
  /** Interface GUID. */
  readonly classId: string;
  /** Default instance GUID. */
  readonly instanceId: string;
  /** Short name for logs (logger `hyperdeno.dev.<name>`). */
  readonly name: string;
  /** Message versions offered, newest first. */
  readonly messageVersions: readonly IcVersion[];
}

interface Pending {
  readonly type: number;
  readonly onAnswer: (r: IcResponse) => void;
  readonly onError: (e: IcError) => void;
  timer: unknown;
}

interface ReadyWaiter {
  resolve(v: IcVersions): void;
  reject(e: IcError): void;
  timer: unknown;
}

/** Messages kept while the ring is full. */
const MAX_OUTBOX = 32;

/** Pipe mode in the offer's user-defined data. */
function pipeUserDefined(): Uint8Array {
  const ud = new Uint8Array(4);
  new DataView(ud.buffer).setUint32(0, VMBUS_PIPE_TYPE_MESSAGE, true);
  return ud;
}

function suppressed(n: number): string {
  return n > 0 ? ` (${n} similar lines suppressed)` : "";
}

/**
 * Base of every IC device: implements `VmbusDevice`, negotiates on open, and gives subclasses
 * `transaction` (answer awaited, with timeout) and `post` (fire and forget). Subclasses react to
 * `negotiated`, `opened`, `closed` and `disposing`.
 */
export abstract class IcDevice implements VmbusDevice {
  /** Interface GUID of the offer. */
  readonly classId: string;
  /** Instance GUID of the offer. */
  readonly instanceId: string;
  /** Short name for logs. */
  readonly name: string;
  /** ICs are offered as message-mode pipes, like Hyper-V's (Linux ignores the mode). */
  readonly channelFlags: number = OfferFlags.NAMED_PIPE_MODE;
  /** Offer user-defined data: pipe mode `VMBUS_PIPE_TYPE_MESSAGE`. */
  readonly userDefined: Uint8Array = pipeUserDefined();
  /** Clock and timers. */
  protected readonly scheduler: Scheduler;
  /** Logger `hyperdeno.dev.<name>`. */
  protected readonly logger: Logger;
  readonly #messageVersions: readonly IcVersion[];
  readonly #onStateChange: IcOptions["onStateChange"];
  #channel: Channel | undefined;
  #state: IcState = "closed";
  #versions: IcVersions | undefined;
  #nextTid = 1n;
  readonly #pending = new Map<bigint, Pending>();
  readonly #outbox: { payload: Uint8Array; tid: bigint }[] = [];
  readonly #readyWaiters = new Set<ReadyWaiter>();
  #disposed = false;
  readonly #stats: IcStats = {
    packets: 0,
    answers: 0,
    malformed: 0,
    stale: 0,
    echoes: 0,
    timeouts: 0,
    internalErrors: 0,
  };
  readonly #warnGuest = rateLimited();
  readonly #noteState = rateLimited();

  /** Subclasses pass their identity and versions, and the caller's options. */
  protected constructor(spec: IcSpec, options: IcOptions) {
    this.classId = spec.classId;
    this.instanceId = options.instanceId ?? spec.instanceId;
    this.name = spec.name;
    this.#messageVersions = spec.messageVersions;
    this.scheduler = options.scheduler ?? systemScheduler;
    this.#onStateChange = options.onStateChange;
    this.logger = getLogger("dev", spec.name);
  }

  /** Channel state. */
  get state(): IcState {
    return this.#state;
  }

  /** True when negotiation finished and requests can be sent. */
  get isReady(): boolean {
    return this.#state === "ready";
  }

  /** Negotiated versions (while ready). */
  get versions(): IcVersions | undefined {
    return this.#versions;
  }

  /** A copy of the counters. */
  get stats(): IcStats {
    return { ...this.#stats };
  }

  /**
   * Resolves with the versions once the IC is ready (now, if it is; otherwise after the guest
   * opens or reopens the channel and negotiates). Rejects with `IcError` `timeout` after
   * `timeoutMs` (default: wait forever), `protocol` when a negotiation fails while waiting, or
   * `closed` when the device is disposed.
   */
  waitReady(timeoutMs?: number): Promise<IcVersions> {
    if (this.#state === "ready") return Promise.resolve(this.#versions!);
    if (this.#disposed) return Promise.reject(new IcError("closed", `${this.name} is disposed`));
    return new Promise((resolve, reject) => {
      const w: ReadyWaiter = { resolve, reject, timer: undefined };
      if (timeoutMs !== undefined && Number.isFinite(timeoutMs)) {
        w.timer = this.scheduler.setTimeout(
          () => {
            this.#readyWaiters.delete(w);
            reject(
              new IcError(
                "timeout",
                `${this.name}: the guest did not complete version negotiation within ${timeoutMs} ms`,
              ),
            );
          },
          Math.max(0, timeoutMs),
          false,
        );
      }
      this.#readyWaiters.add(w);
    });
  }

  /**
   * Stops timers and fails every outstanding operation with `closed`; later operations fail too.
   * The VMBus channel itself belongs to the server. Safe to call twice.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#failAll(new IcError("closed", `${this.name} is disposed`));
    for (const w of this.#readyWaiters) {
      this.scheduler.clearTimeout(w.timer);
      w.reject(new IcError("closed", `${this.name} is disposed`));
    }
    this.#readyWaiters.clear();
    this.#call("disposing", () => this.disposing());
  }

  /** Same as `dispose`. */
  [Symbol.dispose](): void {
    this.dispose();
  }

  // ---- VmbusDevice ------------------------------------------------------------------------------

  /** Starts negotiation on the new channel (refused after `dispose`). */
  onOpen(channel: Channel): boolean {
    if (this.#disposed) return false;
    this.#channel = channel;
    this.#outbox.length = 0;
    this.#versions = undefined;
    this.#setState("negotiating");
    this.#sendNegotiate();
    this.#call("opened", () => this.opened());
    return true;
  }

  /** Matches the guest's answer to its request; never throws, never pauses the ring. */
  onPacket(channel: Channel, packet: RingPacket): boolean {
    if (channel !== this.#channel) return true;
    try {
      this.#receive(channel, packet);
    } catch (e) {
      this.#stats.internalErrors++;
      this.#warnGuest((n) =>
        this.logger.error(
          `${this.name}: bug while handling a guest packet: ${e instanceof Error ? e.stack : e}${
            suppressed(n)
          }`,
        )
      );
    }
    return true;
  }

  /** Fails outstanding requests with `closed` and stops the IC's traffic. */
  onClose(channel: Channel): void {
    if (channel !== this.#channel) return;
    this.#channel = undefined;
    this.#outbox.length = 0;
    this.#versions = undefined;
    this.#setState("closed");
    this.#failAll(new IcError("closed", `${this.name}: the guest closed the channel`));
    this.#call("closed", () => this.closed());
  }

  /** Sends what waited for ring space. */
  onWritable(channel: Channel): void {
    if (channel !== this.#channel) return;
    while (this.#outbox.length > 0) {
      const m = this.#outbox[0]!;
      if (!this.#trySend(channel, m.payload, m.tid)) return;
      this.#outbox.shift();
    }
  }

  // ---- for subclasses ---------------------------------------------------------------------------

  /** The versions were agreed; the IC may start its traffic. */
  protected negotiated(_versions: IcVersions): void {}
  /** The guest opened the channel (NEGOTIATE is already on its way). */
  protected opened(): void {}
  /** The channel closed; outstanding requests have already failed with `closed`. */
  protected closed(): void {}
  /** `dispose()` was called: stop timers. */
  protected disposing(): void {}

  /** True when messages wait for ring space (a new one would be delivered late). */
  protected get backlogged(): boolean {
    return this.#outbox.length > 0 || (this.#channel?.isBlocked ?? false);
  }

  /** Why a request cannot be sent now (`closed` after dispose, else `not-ready`), if it cannot. */
  protected readinessError(): IcError | undefined {
    return this.#notReady();
  }

  /** True once `dispose()` ran. */
  protected get disposed(): boolean {
    return this.#disposed;
  }

  /**
   * Sends a request of `type` with `body` and resolves with the guest's answer; rejects with
   * `IcError` (`not-ready`, `busy`, `timeout` after `timeoutMs`, `closed`, `protocol`). The
   * status in the answer is not interpreted here.
   */
  protected transaction(type: number, body: Uint8Array, timeoutMs: number): Promise<IcResponse> {
    return new Promise((resolve, reject) => this.exchange(type, body, timeoutMs, resolve, reject));
  }

  /**
   * Callback form of `transaction`: exactly one of `onAnswer`/`onError` runs, synchronously from
   * the guest's packet, the timer, the close, or (for `not-ready`/`busy`) from this call.
   */
  protected exchange(
    type: number,
    body: Uint8Array,
    timeoutMs: number,
    onAnswer: (r: IcResponse) => void,
    onError: (e: IcError) => void,
  ): void {
    const err = this.#notReady();
    if (err) {
      onError(err);
      return;
    }
    const payload = this.#encode(type, body, IcHeaderFlags.TRANSACTION | IcHeaderFlags.REQUEST);
    this.#transact(type, payload, timeoutMs, onAnswer, onError);
  }

  /** Sends a message nobody waits for (transaction id 0). False when it could not be queued. */
  protected post(type: number, body: Uint8Array, flags = 0): boolean {
    const ch = this.#channel;
    if (!ch || this.#state !== "ready" || this.#disposed) return false;
    return this.#transmit(ch, this.#encode(type, body, flags), 0n);
  }

  /** Counts and logs (rate-limited) a guest misbehaviour. */
  protected malformed(what: string): void {
    this.#stats.malformed++;
    this.#warnGuest((n) => this.logger.warn(`${this.name}: ${what}; ignored${suppressed(n)}`));
  }

  // ---- internals --------------------------------------------------------------------------------

  #notReady(): IcError | undefined {
    if (this.#disposed) return new IcError("closed", `${this.name} is disposed`);
    switch (this.#state) {
      case "ready":
        return undefined;
      case "closed":
        return new IcError(
          "not-ready",
          `${this.name}: the guest has not opened the channel (is hv_utils loaded?)`,
        );
      case "negotiating":
        return new IcError(
          "not-ready",
          `${this.name}: the guest has not answered version negotiation yet`,
        );
      case "failed":
        return new IcError(
          "not-ready",
          `${this.name}: version negotiation failed; the guest supports none of the offered versions`,
        );
    }
  }

  #sendNegotiate(): void {
    const versions = this.#messageVersions;
    const n = FRAMEWORK_VERSIONS.length + versions.length;
    const body = new Uint8Array(NegotiateMessage.size + n * IcVersionLayout.size);
    NegotiateMessage.encode(
      { frameworkCount: FRAMEWORK_VERSIONS.length, messageCount: versions.length },
      body,
    );
    [...FRAMEWORK_VERSIONS, ...versions].forEach((v, i) =>
      IcVersionLayout.encode(v, body, NegotiateMessage.size + i * IcVersionLayout.size)
    );
    const payload = this.#encode(
      IcMessageType.NEGOTIATE,
      body,
      IcHeaderFlags.TRANSACTION | IcHeaderFlags.REQUEST,
    );
    // No timeout: Linux answers KVP negotiation only once its daemon registers.
    this.#transact(
      IcMessageType.NEGOTIATE,
      payload,
      Infinity,
      (r) => this.#onNegotiateAnswer(r),
      (e) => {
        if (e.code === "protocol") this.#negotiationFailed(e.message);
      },
    );
  }

  #onNegotiateAnswer(r: IcResponse): void {
    const b = r.body;
    const n = NegotiateMessage.decode(b);
    if (!n) {
      this.malformed(`negotiate answer body is ${b.length} bytes`);
      this.#negotiationFailed("the negotiate answer is truncated");
      return;
    }
    if (n.frameworkCount !== 1 || n.messageCount !== 1) {
      this.#negotiationFailed(
        n.frameworkCount === 0 || n.messageCount === 0
          ? "the guest supports none of the offered versions"
          : `the guest answered ${n.frameworkCount} framework and ${n.messageCount} message versions instead of one each`,
      );
      return;
    }
    const fw = IcVersionLayout.decode(b, NegotiateMessage.size);
    const msg = IcVersionLayout.decode(b, NegotiateMessage.size + IcVersionLayout.size);
    if (!fw || !msg) {
      this.malformed(`negotiate answer body is ${b.length} bytes`);
      this.#negotiationFailed("the negotiate answer is truncated");
      return;
    }
    if (!hasIcVersion(FRAMEWORK_VERSIONS, fw) || !hasIcVersion(this.#messageVersions, msg)) {
      this.#negotiationFailed(
        `the guest chose framework ${formatIcVersion(fw)} / message ${
          formatIcVersion(msg)
        }, which the host did not offer`,
      );
      return;
    }
    const versions: IcVersions = {
      framework: { major: fw.major, minor: fw.minor },
      message: { major: msg.major, minor: msg.minor },
    };
    this.#versions = versions;
    this.#noteState((s) =>
      this.logger.info(
        `${this.name} IC version ${formatIcVersion(msg)} (framework ${formatIcVersion(fw)})${
          suppressed(s)
        }`,
      )
    );
    this.#setState("ready");
    for (const w of this.#readyWaiters) {
      this.scheduler.clearTimeout(w.timer);
      w.resolve(versions);
    }
    this.#readyWaiters.clear();
    this.#call("negotiated", () => this.negotiated(versions));
  }

  #negotiationFailed(why: string): void {
    if (this.#state !== "negotiating") return;
    this.#warnGuest((s) =>
      this.logger.warn(`${this.name}: version negotiation failed: ${why}${suppressed(s)}`)
    );
    this.#setState("failed");
    for (const w of this.#readyWaiters) {
      this.scheduler.clearTimeout(w.timer);
      w.reject(new IcError("protocol", `${this.name}: version negotiation failed: ${why}`));
    }
    this.#readyWaiters.clear();
  }

  #encode(type: number, body: Uint8Array, flags: number): Uint8Array {
    const v = this.#versions;
    const out = new Uint8Array(ICMSG_HDR + body.length);
    PipeHeader.encode(
      { flags: PIPE_PACKET_DATA, msgsize: IcMessageHeader.size + body.length },
      out,
      0,
    );
    IcMessageHeader.encode(
      {
        frameworkMajor: v?.framework.major ?? 0,
        frameworkMinor: v?.framework.minor ?? 0,
        msgType: type,
        messageMajor: v?.message.major ?? 0,
        messageMinor: v?.message.minor ?? 0,
        msgSize: body.length,
        flags,
      },
      out,
      IC_HEADER_OFFSET,
    );
    out.set(body, ICMSG_HDR);
    return out;
  }

  #transact(
    type: number,
    payload: Uint8Array,
    timeoutMs: number,
    onAnswer: (r: IcResponse) => void,
    onError: (e: IcError) => void,
  ): void {
    const ch = this.#channel;
    if (!ch) {
      onError(new IcError("not-ready", `${this.name}: the channel is not open`));
      return;
    }
    const tid = this.#nextTid++;
    if (!this.#transmit(ch, payload, tid)) {
      onError(
        new IcError("busy", `${this.name}: the guest is not reading its ring; try again later`),
      );
      return;
    }
    const p: Pending = { type, onAnswer, onError, timer: undefined };
    if (Number.isFinite(timeoutMs)) {
      p.timer = this.scheduler.setTimeout(
        () => {
          if (this.#pending.get(tid) !== p) return;
          this.#pending.delete(tid);
          this.#stats.timeouts++;
          onError(
            new IcError("timeout", `${this.name}: the guest did not answer within ${timeoutMs} ms`),
          );
        },
        Math.max(0, timeoutMs),
        false,
      );
    }
    this.#pending.set(tid, p);
  }

  #transmit(ch: Channel, payload: Uint8Array, tid: bigint): boolean {
    if (!ch.isOpen) return false;
    if (this.#outbox.length === 0 && this.#trySend(ch, payload, tid)) return true;
    if (!ch.isOpen || this.#outbox.length >= MAX_OUTBOX) return false;
    this.#outbox.push({ payload, tid });
    return true;
  }

  #trySend(ch: Channel, payload: Uint8Array, tid: bigint): boolean {
    try {
      return ch.send(payload, { transactionId: tid });
    } catch (e) {
      // RangeError: larger than the ring can ever hold (a tiny ring the guest chose).
      this.#warnGuest((n) =>
        this.logger.warn(
          `${this.name}: cannot send a ${payload.length}-byte message: ${e}${suppressed(n)}`,
        )
      );
      return false;
    }
  }

  #receive(ch: Channel, packet: RingPacket): void {
    this.#stats.packets++;
    if (packet.type !== VmPacketType.DATA_INBAND) {
      this.malformed(`unexpected VMBus packet type ${packet.type}`);
      return;
    }
    if (packet.completionRequested) ch.complete(packet);
    const p = packet.payload;
    const tid = packet.transactionId;
    const pending = this.#pending.get(tid);
    if (p.length < ICMSG_HDR) {
      this.#reject(tid, pending, `${p.length}-byte packet is shorter than the IC header`);
      return;
    }
    const hdr = IcMessageHeader.decode(p, IC_HEADER_OFFSET)!;
    if ((hdr.flags & IcHeaderFlags.RESPONSE) === 0) {
      this.malformed(`guest sent an IC request (type ${hdr.msgType}); the host only takes answers`);
      return;
    }
    if (!pending) {
      if (tid === 0n) {
        this.#stats.echoes++;
      } else {
        this.#stats.stale++;
        this.logger.debug(`${this.name}: answer for unknown or expired transaction ${tid}`);
      }
      return;
    }
    if (hdr.msgType !== pending.type) {
      this.#reject(tid, pending, `answer of type ${hdr.msgType} to a type ${pending.type} request`);
      return;
    }
    const len = Math.min(hdr.msgSize, p.length - ICMSG_HDR);
    this.#settle(tid, pending);
    this.#stats.answers++;
    pending.onAnswer({ status: hdr.status, body: p.slice(ICMSG_HDR, ICMSG_HDR + len) });
  }

  #reject(tid: bigint, pending: Pending | undefined, what: string): void {
    this.malformed(what);
    if (!pending) return;
    this.#settle(tid, pending);
    pending.onError(new IcError("protocol", `${this.name}: malformed answer: ${what}`));
  }

  #settle(tid: bigint, p: Pending): void {
    this.#pending.delete(tid);
    if (p.timer !== undefined) this.scheduler.clearTimeout(p.timer);
  }

  #failAll(e: IcError): void {
    const all = [...this.#pending.values()];
    for (const p of all) if (p.timer !== undefined) this.scheduler.clearTimeout(p.timer);
    this.#pending.clear();
    for (const p of all) p.onError(e);
  }

  #setState(state: IcState): void {
    if (this.#state === state) return;
    this.#state = state;
    const cb = this.#onStateChange;
    if (cb) this.#call("onStateChange", () => cb(state, this.#versions));
  }

  #call(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#warnGuest((n) =>
        this.logger.error(
          `${this.name}: ${what} threw: ${e instanceof Error ? e.stack : e}${suppressed(n)}`,
        )
      );
    }
  }
}
