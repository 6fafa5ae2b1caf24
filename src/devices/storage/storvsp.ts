/**
 * storvsp: the synthetic SCSI controller on VMBus (`VmbusDevice`), for Linux `hv_storvsc` and
 * the Windows storage VSC. The primary channel runs the init sequence (BEGIN_INITIALIZATION,
 * QUERY_PROTOCOL_VERSION, QUERY_PROPERTIES, [CREATE_SUB_CHANNELS], END_INITIALIZATION); then
 * every channel (primary and one sub-channel per extra vCPU) carries EXECUTE_SRB requests whose
 * data is described by GPA-direct page lists. Data moves straight between the backend and guest
 * memory; commands run asynchronously, many in flight per channel, and each is answered with a
 * COMPLETE_IO completion as large as the request packet (48 bytes before Win8, 64 after).
 *
 * Flow control: a completion that does not fit the ring waits in a per-channel backlog until
 * `onWritable`; while a backlog exists or `queueDepth` commands are in flight, new packets stay
 * in the ring (`onPacket` returns false) and reading resumes when they drain.
 *
 * Guest errors: a request that breaks the protocol rules (bad state, unknown operation, buffer
 * outside RAM or smaller than its data transfer length) is answered with an error status and the
 * channel goes on; a packet that cannot be a vstor packet at all (too short, wrong packet type)
 * stops that channel only. All logging a guest can trigger is rate-limited.
 *
 * Close, unload, reset: completions of commands still in flight are dropped, and `onClose`
 * returns a Promise that settles once their backend I/O (which may be writing guest pages) did;
 * the VMBus server keeps the ring until then, so the guest's close, UNLOAD_RESPONSE and the
 * VMM's teardown of guest memory all wait for it.
 * @module
 */
import { getLogger, rateLimited } from "../../util/log.ts";
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import { GpadlError, SgBuffer } from "../../vmbus/gpadl.ts";
import { VmPacketType } from "../../vmbus/protocol.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import {
  ChannelProperties,
  formatVstorVersion,
  isSupportedVstorVersion,
  MAX_CDB_LENGTH,
  ProtocolVersion,
  SCSI_CLASS_ID,
  SRB_STATUS_AUTOSENSE_VALID,
  SrbStatus,
  srbToNtStatus,
  STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL,
  VMSCSI_CDB_OFFSET,
  VMSCSI_REQUEST_SIZE_V1,
  VMSCSI_REQUEST_SIZE_V2,
  VmscsiRequest,
  VSTOR_HEADER_SIZE,
  VstorOperation,
  vstorPacketSize,
  VstorStatus,
  VstorVersion,
} from "./protocol.ts";
import type { ScsiController } from "./scsi/controller.ts";
import type { ScsiBuffer } from "./scsi/disk.ts";
import { adapterError, type ScsiResult } from "./scsi/sense.ts";

/** Options of `StorvspDevice`. */
export interface StorvspOptions {
  /** Instance GUID (default `storvspInstanceId(0)`). */
  readonly instanceId?: string;
  /** Name for logs (default "storvsp"). */
  readonly name?: string;
  /** Sub-channels offered (default 0; one per extra vCPU gives one queue per vCPU). */
  readonly maxSubChannels?: number;
  /** Largest transfer per request told to the guest, bytes (default 1 MiB). */
  readonly maxTransferBytes?: number;
  /** Commands in flight per channel before reading pauses (default 256). */
  readonly queueDepth?: number;
}

/** A deterministic instance GUID for controller `index`. */
export function storvspInstanceId(index: number): string {
  return `5c1b6a48-d8e1-4e4a-9f07-${index.toString(16).padStart(12, "0")}`;
}

/** Where the init sequence is. */
export type StorvspState = "begin" | "query-version" | "query-properties" | "end-init" | "ready";

/** Counters. */
export interface StorvspStats {
  /** EXECUTE_SRB requests started. */
  srbs: number;
  /** Completions sent (all operations). */
  completions: number;
  /** Completions that had to wait for ring space. */
  backlogged: number;
  /** Requests answered with a protocol error. */
  protocolErrors: number;
  /** Channels stopped for a malformed packet. */
  malformed: number;
  /** ENUMERATE_BUS notifications sent. */
  rescans: number;
}

interface ChanState {
  readonly ch: Channel;
  inflight: number;
  /** Resolves `onClose`'s Promise once the last in-flight command settled after close. */
  drained: (() => void) | undefined;
  readonly backlog: { tid: bigint; payload: Uint8Array }[];
  paused: boolean;
  dead: boolean;
  closed: boolean;
  pendingRescan: boolean;
}

/**
 * A VMBus data buffer over guest memory, limited to the request's transfer length. Copies into
 * it stop once its channel closed: the guest may have reused the pages.
 */
class GuestBuffer implements ScsiBuffer {
  readonly length: number;
  readonly #sg: SgBuffer;
  readonly #cs: ChanState;
  constructor(sg: SgBuffer, length: number, cs: ChanState) {
    this.#sg = sg;
    this.length = length;
    this.#cs = cs;
  }
  get segments(): readonly Uint8Array[] {
    return this.#sg.segments;
  }
  read(offset: number, dst: Uint8Array): void {
    this.#sg.read(offset, dst);
  }
  write(offset: number, src: Uint8Array): void {
    if (!this.#cs.closed) this.#sg.write(offset, src);
  }
}

const NO_DATA: ScsiBuffer = {
  length: 0,
  read: (_o, dst) => {
    if (dst.length > 0) throw new RangeError("no data buffer");
  },
  write: (_o, src) => {
    if (src.length > 0) throw new RangeError("no data buffer");
  },
  segments: [],
};

/** The storvsp device. */
export class StorvspDevice implements VmbusDevice {
  /** @inheritdoc */
  readonly classId = SCSI_CLASS_ID;
  /** @inheritdoc */
  readonly instanceId: string;
  /** @inheritdoc */
  readonly name: string;
  /** @inheritdoc */
  readonly maxSubChannels: number;
  /** The controller whose units the guest sees. */
  readonly controller: ScsiController;
  /** Counters. */
  readonly stats: StorvspStats = {
    srbs: 0,
    completions: 0,
    backlogged: 0,
    protocolErrors: 0,
    malformed: 0,
    rescans: 0,
  };
  readonly #maxTransfer: number;
  readonly #queueDepth: number;
  readonly #chans = new Map<Channel, ChanState>();
  #primary: ChanState | undefined;
  #state: StorvspState = "begin";
  #version = 0;
  readonly #log;
  readonly #warn = rateLimited();
  readonly #unsubscribe: () => void;

  /** A controller device for `controller`'s units. */
  constructor(controller: ScsiController, options: StorvspOptions = {}) {
    this.controller = controller;
    this.instanceId = options.instanceId ?? storvspInstanceId(0);
    this.name = options.name ?? "storvsp";
    this.maxSubChannels = options.maxSubChannels ?? 0;
    this.#maxTransfer = options.maxTransferBytes ?? 1 << 20;
    this.#queueDepth = Math.max(1, options.queueDepth ?? 256);
    this.#log = getLogger("dev", this.name);
    this.#unsubscribe = controller.onChange(() => this.rescan());
  }

  /** Init-sequence state. */
  get state(): StorvspState {
    return this.#state;
  }

  /** Negotiated protocol version (0 before QUERY_PROTOCOL_VERSION succeeded). */
  get version(): number {
    return this.#version;
  }

  /** Commands in flight on all channels. */
  get inflight(): number {
    let n = 0;
    for (const cs of this.#chans.values()) n += cs.inflight;
    return n;
  }

  /** Stops following controller changes. */
  close(): void {
    this.#unsubscribe();
  }

  #warnLimited(msg: string, props: Record<string, unknown>): void {
    this.#warn((dropped) =>
      this.#log.warn(`${msg}{more}`, {
        ...props,
        more: dropped ? ` (${dropped} similar messages dropped)` : "",
      })
    );
  }

  /**
   * Tells the guest to rescan the bus (ENUMERATE_BUS), e.g. after a hot add or remove. Called
   * by the controller's change notification; does nothing before the guest finished init.
   */
  rescan(): void {
    const cs = this.#primary;
    if (!cs || cs.closed || cs.dead || this.#state !== "ready") return;
    if (this.#version < VstorVersion.WIN7) return;
    cs.pendingRescan = true;
    this.#flush(cs);
  }

  /** @inheritdoc */
  onOpen(channel: Channel): boolean {
    const cs: ChanState = {
      ch: channel,
      inflight: 0,
      drained: undefined,
      backlog: [],
      paused: false,
      dead: false,
      closed: false,
      pendingRescan: false,
    };
    this.#chans.set(channel, cs);
    if (channel.subChannelIndex === 0) {
      this.#primary = cs;
      this.#state = "begin";
      this.#version = 0;
    }
    return true;
  }

  /**
   * Forgets the channel: nothing more goes to its ring, and completions of commands still in
   * flight are dropped. Those commands' backend I/O may still be moving data straight into
   * guest pages, so the returned Promise settles only once the last of them did; the VMBus
   * server holds the ring GPADL (the guest's close) and its `settled()` until then.
   */
  onClose(channel: Channel): Promise<void> | undefined {
    const cs = this.#chans.get(channel);
    if (!cs) return undefined;
    cs.closed = true;
    cs.backlog.length = 0;
    this.#chans.delete(channel);
    if (cs === this.#primary) {
      this.#primary = undefined;
      this.#state = "begin";
      this.#version = 0;
    }
    if (cs.inflight === 0) return undefined;
    return new Promise((resolve) => cs.drained = resolve);
  }

  /** @inheritdoc */
  onWritable(channel: Channel): void {
    const cs = this.#chans.get(channel);
    if (cs) this.#flush(cs);
  }

  /** Sends what waits for ring space, then resumes reading if it can. */
  #flush(cs: ChanState): void {
    while (cs.backlog.length > 0) {
      const head = cs.backlog[0]!;
      if (!cs.ch.complete(head.tid, head.payload)) return;
      cs.backlog.shift();
      this.stats.completions++;
    }
    if (cs.pendingRescan) {
      const pkt = new Uint8Array(vstorPacketSize(this.#version));
      new DataView(pkt.buffer).setUint32(0, VstorOperation.ENUMERATE_BUS, true);
      if (!cs.ch.send(pkt)) return;
      cs.pendingRescan = false;
      this.stats.rescans++;
    }
    this.#maybeResume(cs);
  }

  #maybeResume(cs: ChanState): void {
    if (!cs.paused || cs.closed || cs.dead) return;
    if (cs.backlog.length > 0 || cs.inflight >= this.#queueDepth) return;
    if (cs.ch.subChannelIndex !== 0 && this.#state !== "ready") return;
    cs.paused = false;
    cs.ch.resume();
  }

  /** Sends a completion now, or queues it behind earlier ones. */
  #complete(cs: ChanState, tid: bigint | RingPacket, payload: Uint8Array): void {
    if (cs.closed) return;
    if (cs.backlog.length === 0 && cs.ch.complete(tid, payload)) {
      this.stats.completions++;
      return;
    }
    this.stats.backlogged++;
    cs.backlog.push({
      tid: typeof tid === "bigint" ? tid : tid.transactionId,
      payload: payload.slice(),
    });
  }

  /** A completion packet of `size` bytes: header with `status`, then `body`. */
  #reply(
    cs: ChanState,
    pkt: RingPacket,
    size: number,
    status: number,
    body?: Uint8Array,
  ): void {
    if (!pkt.completionRequested) return;
    const out = new Uint8Array(size);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, VstorOperation.COMPLETE_IO, true);
    dv.setUint32(8, status, true);
    if (body) out.set(body.subarray(0, size - VSTOR_HEADER_SIZE), VSTOR_HEADER_SIZE);
    this.#complete(cs, pkt, out);
  }

  #malformed(cs: ChanState, why: string): void {
    cs.dead = true;
    this.stats.malformed++;
    this.#warnLimited("{name}: channel {relid} stopped: {why}", {
      name: this.name,
      relid: cs.ch.relid,
      why,
    });
  }

  /** @inheritdoc */
  onPacket(channel: Channel, pkt: RingPacket): boolean {
    const cs = this.#chans.get(channel);
    if (!cs || cs.dead || cs.closed) return true;
    if (cs.backlog.length > 0 || cs.inflight >= this.#queueDepth) {
      cs.paused = true;
      return false;
    }
    if (pkt.type === VmPacketType.COMP) return true; // we never ask for completions
    if (pkt.type !== VmPacketType.DATA_INBAND && pkt.type !== VmPacketType.DATA_USING_GPA_DIRECT) {
      this.#malformed(cs, `packet type ${pkt.type} is not a vstor request`);
      return true;
    }
    const len = pkt.payloadLength;
    if (len < VSTOR_HEADER_SIZE) {
      this.#malformed(cs, `${len}-byte packet is shorter than a vstor header`);
      return true;
    }
    const data = pkt.data;
    const base = pkt.payloadOffset;
    const op = data[base]! | (data[base + 1]! << 8) | (data[base + 2]! << 16) |
      (data[base + 3]! << 24);
    // Replies are as large as the request (capped at the largest vstor packet).
    const bodyLen = Math.min(len - VSTOR_HEADER_SIZE, VMSCSI_REQUEST_SIZE_V2);
    const size = VSTOR_HEADER_SIZE + bodyLen;
    const body = data.subarray(base + VSTOR_HEADER_SIZE, base + VSTOR_HEADER_SIZE + bodyLen);
    if (cs.ch.subChannelIndex !== 0 && this.#state !== "ready") {
      // Sub-channels wait until the primary finished init.
      cs.paused = true;
      return false;
    }
    switch (this.#state) {
      case "ready":
        return this.#onReady(cs, pkt, op, body, size);
      case "begin":
        if (op === VstorOperation.BEGIN_INITIALIZATION) {
          this.#state = "query-version";
          this.#reply(cs, pkt, size, VstorStatus.SUCCESS);
          return true;
        }
        break;
      case "query-version":
        if (op === VstorOperation.QUERY_PROTOCOL_VERSION) {
          if (body.length < ProtocolVersion.size) {
            this.#malformed(cs, "QUERY_PROTOCOL_VERSION is truncated");
            return true;
          }
          const v = body[0]! | (body[1]! << 8);
          if (!isSupportedVstorVersion(v)) {
            this.#reply(cs, pkt, size, VstorStatus.REVISION_MISMATCH, body);
            return true;
          }
          this.#version = v;
          this.#state = "query-properties";
          this.#log.debug("{name}: protocol {v}", { name: this.name, v: formatVstorVersion(v) });
          this.#reply(
            cs,
            pkt,
            size,
            VstorStatus.SUCCESS,
            ProtocolVersion.encode({ majorMinor: v }),
          );
          return true;
        }
        break;
      case "query-properties":
        if (op === VstorOperation.QUERY_PROPERTIES) {
          const multi = this.#version >= VstorVersion.WIN8 && this.maxSubChannels > 0;
          this.#state = "end-init";
          this.#reply(
            cs,
            pkt,
            size,
            VstorStatus.SUCCESS,
            ChannelProperties.encode({
              maxChannelCount: multi ? this.maxSubChannels : 0,
              flags: multi ? STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL : 0,
              maxTransferBytes: this.#maxTransfer,
            }),
          );
          return true;
        }
        break;
      case "end-init":
        if (op === VstorOperation.END_INITIALIZATION) {
          this.#state = "ready";
          this.#reply(cs, pkt, size, VstorStatus.SUCCESS);
          for (const other of this.#chans.values()) this.#maybeResume(other);
          return true;
        }
        if (op === VstorOperation.CREATE_SUB_CHANNELS) {
          return this.#createSubChannels(cs, pkt, body, size);
        }
        break;
    }
    this.#protocolError(cs, pkt, size, `operation ${op} in state ${this.#state}`);
    return true;
  }

  #protocolError(cs: ChanState, pkt: RingPacket, size: number, why: string): void {
    this.stats.protocolErrors++;
    this.#warnLimited("{name}: refused {why}", { name: this.name, why });
    this.#reply(cs, pkt, size, VstorStatus.INVALID_DEVICE_STATE);
  }

  #createSubChannels(cs: ChanState, pkt: RingPacket, body: Uint8Array, size: number): boolean {
    if (cs !== this.#primary) {
      this.#protocolError(cs, pkt, size, "CREATE_SUB_CHANNELS on a sub-channel");
      return true;
    }
    if (body.length < 2) {
      this.#malformed(cs, "CREATE_SUB_CHANNELS is truncated");
      return true;
    }
    const count = body[0]! | (body[1]! << 8);
    const ok = this.#version >= VstorVersion.WIN8 && cs.ch.enableSubChannels(count);
    if (!ok) {
      this.stats.protocolErrors++;
      this.#warnLimited("{name}: refused {count} sub-channels (offered {max})", {
        name: this.name,
        count,
        max: this.maxSubChannels,
      });
    }
    this.#reply(cs, pkt, size, ok ? VstorStatus.SUCCESS : VstorStatus.INVALID_PARAMETER);
    return true;
  }

  #onReady(cs: ChanState, pkt: RingPacket, op: number, body: Uint8Array, size: number): boolean {
    switch (op) {
      case VstorOperation.EXECUTE_SRB:
        return this.#executeSrb(cs, pkt, body, size);
      case VstorOperation.RESET_LUN:
      case VstorOperation.RESET_ADAPTER:
      case VstorOperation.RESET_BUS:
        // In-flight commands complete on their own; nothing is queued in the host.
        this.#reply(cs, pkt, size, VstorStatus.SUCCESS);
        return true;
      case VstorOperation.CREATE_SUB_CHANNELS:
        return this.#createSubChannels(cs, pkt, body, size);
    }
    this.#protocolError(cs, pkt, size, `operation ${op} after init`);
    return true;
  }

  #executeSrb(cs: ChanState, pkt: RingPacket, body: Uint8Array, size: number): boolean {
    if (body.length < VMSCSI_REQUEST_SIZE_V1) {
      this.#malformed(cs, `${body.length}-byte SRB is shorter than a vmscsi_request`);
      return true;
    }
    // Copy the SRB once: the guest may change the ring bytes while the command runs.
    const srb = new Uint8Array(VMSCSI_REQUEST_SIZE_V2);
    srb.set(body);
    const bodyLen = body.length;
    const tid = pkt.completionRequested ? pkt.transactionId : undefined;
    this.stats.srbs++;
    const finish = (r: ScsiResult) => this.#completeSrb(cs, tid, srb, bodyLen, size, r);

    const cdbLength = srb[8]!;
    const dtl = VmscsiRequest.get(srb, 0, "dataTransferLength");
    if (cdbLength === 0 || cdbLength > MAX_CDB_LENGTH) {
      finish(adapterError(SrbStatus.INVALID_REQUEST));
      return true;
    }
    let data: ScsiBuffer = NO_DATA;
    if (pkt.type === VmPacketType.DATA_USING_GPA_DIRECT) {
      let sg: SgBuffer;
      try {
        sg = SgBuffer.fromRanges(cs.ch.memory, pkt.gpaRanges());
      } catch (e) {
        if (!(e instanceof GpadlError)) throw e;
        this.#warnLimited("{name}: SRB data buffer refused: {why}", {
          name: this.name,
          why: e.message,
        });
        finish(adapterError(SrbStatus.INVALID_REQUEST));
        return true;
      }
      if (dtl > sg.length) {
        this.#warnLimited("{name}: SRB wants {dtl} bytes, its page list has {n}", {
          name: this.name,
          dtl,
          n: sg.length,
        });
        finish(adapterError(SrbStatus.INVALID_REQUEST));
        return true;
      }
      data = new GuestBuffer(sg, dtl, cs);
    } else if (dtl !== 0) {
      finish(adapterError(SrbStatus.INVALID_REQUEST));
      return true;
    }
    const cdb = srb.slice(VMSCSI_CDB_OFFSET, VMSCSI_CDB_OFFSET + cdbLength);
    const addr = { pathId: srb[5]!, targetId: srb[6]!, lun: srb[7]! };
    let r: Promise<ScsiResult> | ScsiResult;
    try {
      r = this.controller.execute(addr, { cdb, data, dataLength: dtl });
    } catch (e) {
      this.#warnLimited("{name}: SCSI command failed: {error}", {
        name: this.name,
        error: String(e),
      });
      r = adapterError(SrbStatus.ERROR);
    }
    if (!(r instanceof Promise)) {
      finish(r);
      return true;
    }
    cs.inflight++;
    const failed = (e: unknown) => {
      this.#warnLimited("{name}: SCSI command failed: {error}", {
        name: this.name,
        error: String(e),
      });
    };
    r.then(finish, (e) => {
      failed(e);
      finish(adapterError(SrbStatus.ERROR));
    }).catch(failed).then(() => {
      // Settles with the backend I/O: nothing touches guest memory for this command after.
      if (--cs.inflight === 0 && cs.drained) cs.drained();
      else this.#maybeResume(cs);
    });
    return true;
  }

  #completeSrb(
    cs: ChanState,
    tid: bigint | undefined,
    srb: Uint8Array,
    bodyLen: number,
    size: number,
    r: ScsiResult,
  ): void {
    if (tid === undefined || cs.closed) return;
    const out = new Uint8Array(size);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, VstorOperation.COMPLETE_IO, true);
    dv.setUint32(8, srbToNtStatus(r.srbStatus), true);
    const b = VSTOR_HEADER_SIZE;
    out.set(srb.subarray(0, bodyLen), b);
    out.fill(0, b + VMSCSI_CDB_OFFSET, b + Math.min(bodyLen, VMSCSI_CDB_OFFSET + 20));
    dv.setUint16(
      b,
      bodyLen >= VMSCSI_REQUEST_SIZE_V2 ? VMSCSI_REQUEST_SIZE_V2 : VMSCSI_REQUEST_SIZE_V1,
      true,
    );
    out[b + 2] = (r.srbStatus & 0x3f) | (r.sense ? SRB_STATUS_AUTOSENSE_VALID : 0);
    out[b + 3] = r.scsiStatus;
    out[b + 9] = r.sense ? Math.min(r.sense.length, 20) : 0;
    dv.setUint32(b + 12, r.transferred, true);
    if (r.sense) out.set(r.sense.subarray(0, 20), b + VMSCSI_CDB_OFFSET);
    this.#complete(cs, tid, out);
  }
}
