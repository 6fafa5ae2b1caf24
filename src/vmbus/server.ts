/**
 * The VMBus host: a synchronous state machine driven by three guest-facing entry points
 * (`onPostMessage`, `onSignalEvent`, `onMessageSlotFree`) and the host's device registry. It
 * emits actions through a `SynicPort` (post a message, signal an event flag), so it runs and is
 * tested without a VM.
 *
 * Decisions (see also docs in `mod.ts`):
 * - Versions: every version from 0.13 to 6.0 is accepted as requested (6.0 with no feature flags);
 *   `options.maxVersion` caps it. Linux 6.1 asks 5.3 first.
 * - Messages: the guest may post on connection id 1 or 4; 5.0+ guests are told to use 1. Replies
 *   go to the VP named in INITIATE_CONTACT (from 3.0; VP 0 before) on SINT 2.
 * - Interrupts: offers never allocate a monitor (monitor id 0xff, monitor_allocated 0), so guests
 *   always signal with HvSignalEvent. From 1.1 each channel has a dedicated connection id
 *   (0x2000 + relid); 0.13 guests signal connection 2 with bits in the interrupt page. Host to
 *   guest: from 2.4 bit `relid` of SINT 2's event flags on the channel's target VP; before, bit
 *   `relid` in the interrupt page's receive half and event flag 0 on VP 0.
 * - Sub-channels (2.4+) are offered when the device asks; closing a primary rescinds them.
 * - Hostile input never throws out of an entry point: malformed messages are dropped (or answered
 *   with the protocol's failure status when the reply can be addressed), logged with a rate
 *   limit and counted in `stats`.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { Channel, type ChannelHost } from "./channel.ts";
import type { VmbusDevice } from "./device.ts";
import { type Gpadl, GpadlError, GpadlTable } from "./gpadl.ts";
import { formatGuid, guidEquals, parseGuid } from "./guid.ts";
import {
  CHANNEL_CONNECTION_ID_BASE,
  ChannelMessageType as Msg,
  CloseChannel,
  ConnectionState,
  formatVersion,
  GpadlBody,
  GpadlCreated,
  GpadlHeader,
  GpadlTeardown,
  GpadlTorndown,
  HV_PAGE_SIZE,
  HvStatus,
  InitiateContact,
  MAX_MESSAGE_SIZE,
  MAX_RELID,
  MAX_USER_DEFINED_BYTES,
  MessageHeader,
  messageTypeName,
  ModifyChannel,
  ModifyChannelResponse,
  MONITOR_ID_NONE,
  NtStatus,
  OfferChannel,
  OpenChannel,
  OpenResult,
  RelidReleased,
  RescindOffer,
  SUPPORTED_VERSIONS,
  TlConnectRequest,
  TlConnectRequest2,
  TlConnectResult,
  VersionResponse,
  VersionResponse2,
  VMBUS_EVENT_CONNECTION_ID,
  VMBUS_MESSAGE_CONNECTION_ID,
  VMBUS_MESSAGE_CONNECTION_ID_4,
  VMBUS_MESSAGE_SINT,
  VMBUS_MESSAGE_TYPE,
  VmbusVersion,
  VP_INDEX_DISABLE_INTERRUPT,
} from "./protocol.ts";
import { openRingPair, RingError } from "./ring.ts";

/**
 * What the VMBus host needs from the SynIC (implemented by `src/hyperv`, faked in tests).
 */
export interface SynicPort {
  /**
   * Delivers a message to SINT `sint` of VP `vp`. Returns false when that message slot is busy:
   * the server keeps the message and posts it again from `onMessageSlotFree`/`pump`.
   */
  postMessage(vp: number, sint: number, messageType: number, payload: Uint8Array): boolean;
  /** Sets bit `flag` in the SINT's event flags page of VP `vp` and raises the SINT. */
  signalEvent(vp: number, sint: number, flag: number): void;
}

/** An hv_sock connect request from the guest (TL_CONNECT_REQUEST). */
export interface HvsockConnectRequest {
  /** The guest's endpoint id. */
  readonly endpointId: string;
  /** The host service id the guest connects to. */
  readonly serviceId: string;
  /** Silo id (RS5+ Windows guests), or undefined. */
  readonly siloId: string | undefined;
}

/** Options of `VmbusServer`. */
export interface VmbusServerOptions {
  /** Number of VPs: target VPs at or above it are refused. */
  readonly vpCount: number;
  /** Highest protocol version to accept (default 6.0). */
  readonly maxVersion?: number;
  /**
   * Host-to-guest messages kept while the guest's slot is busy; beyond it, guest messages are
   * refused with HV_STATUS_INSUFFICIENT_BUFFERS (the guest retries). Default 256.
   */
  readonly maxQueuedMessages?: number;
  /** GPADLs the guest may hold (default 1024). */
  readonly maxGpadls?: number;
  /** Packets a channel reads per guest signal before yielding to the event loop (default 256). */
  readonly maxPacketsPerDrain?: number;
  /** Runs `fn` later on the event loop (default `setTimeout(fn, 0)`). */
  readonly defer?: (fn: () => void) => void;
  /**
   * Called for hv_sock connect requests. Without it every request is refused (TL_CONNECT_RESULT
   * with STATUS_CONNECTION_REFUSED from 4.1).
   */
  readonly onHvsockConnect?: (request: HvsockConnectRequest) => void;
}

/** Counters, for tests and diagnostics. */
export interface VmbusStats {
  /** Channel messages accepted from the guest. */
  messagesIn: number;
  /** Channel messages delivered to the guest. */
  messagesOut: number;
  /** Guest messages dropped as malformed, unknown or wrong for the state. */
  protocolErrors: number;
  /** Channels stopped because their ring was corrupt. */
  ringErrors: number;
  /** Exceptions thrown by device callbacks. */
  deviceErrors: number;
  /** Bugs: exceptions caught at an entry point. Must stay 0. */
  internalErrors: number;
  /** Guest-to-host signals accepted. */
  signalsIn: number;
  /** Host-to-guest signals raised. */
  signalsOut: number;
}

/** The connection after a successful INITIATE_CONTACT. */
export interface ConnectionInfo {
  /** Negotiated version. */
  readonly version: number;
  /** VP that receives channel messages. */
  readonly targetVp: number;
  /** True once the guest sent REQUESTOFFERS. */
  readonly offersSent: boolean;
  /** Interrupt page GPA (pre-2.4 guests), or undefined. */
  readonly interruptPage: number | undefined;
}

/** One channel, for inspection. */
export interface ChannelInfo {
  /** Relative channel id. */
  readonly relid: number;
  /** Device name. */
  readonly device: string;
  /** 0 for a primary channel. */
  readonly subChannelIndex: number;
  /** `ChannelState`. */
  readonly state: string;
  /** True when the ring turned out corrupt. */
  readonly broken: boolean;
  /** VP receiving the channel's interrupts. */
  readonly targetVp: number;
  /** Ring fill levels in bytes, when open. */
  readonly ringFill: { incoming: number; outgoing: number } | undefined;
  readonly packetsReceived: number;
  readonly packetsSent: number;
}

interface Connection {
  version: number;
  targetVp: number;
  offersSent: boolean;
  interruptPageGpa: number | undefined;
  interruptWords: Uint32Array | undefined;
}

interface DeviceEntry {
  readonly device: VmbusDevice;
  readonly name: string;
  readonly classId: Uint8Array;
  readonly instanceId: Uint8Array;
  readonly userDefined: Uint8Array;
  /** Offered channels: [primary, sub 1, sub 2, ...]; empty while not offered. */
  channels: Channel[];
  /** Offer postponed until the guest releases a rescinded channel with the same identity. */
  waitingForRelease: boolean;
}

interface Outgoing {
  readonly vp: number;
  readonly sint: number;
  readonly payload: Uint8Array;
}

const logger = getLogger("vmbus");

/**
 * Whether a connection id belongs to the VMBus host: HvPostMessage on the message connection
 * ids (1, and 4 from protocol 5.0), HvSignalEvent on the interrupt-page id (2) or a channel's id
 * (0x2000 + relid). Stateless, so vCPU threads can answer hypercalls without asking the host.
 */
export function vmbusOwnsConnection(connectionId: number, kind: "message" | "event"): boolean {
  if (kind === "message") {
    return connectionId === VMBUS_MESSAGE_CONNECTION_ID ||
      connectionId === VMBUS_MESSAGE_CONNECTION_ID_4;
  }
  return connectionId === VMBUS_EVENT_CONNECTION_ID ||
    (connectionId > CHANNEL_CONNECTION_ID_BASE &&
      connectionId <= CHANNEL_CONNECTION_ID_BASE + MAX_RELID);
}

/** The VMBus host: control plane plus the channels of registered devices. */
export class VmbusServer {
  readonly #memory: GuestMemory;
  readonly #synic: SynicPort;
  readonly #vpCount: number;
  readonly #maxVersion: number;
  readonly #maxQueued: number;
  readonly #defer: (fn: () => void) => void;
  readonly #onHvsock: ((request: HvsockConnectRequest) => void) | undefined;
  readonly #gpadls: GpadlTable;
  readonly #entries: DeviceEntry[] = [];
  readonly #channels = new Map<number, Channel>();
  readonly #relidUsed = new Uint8Array(MAX_RELID + 1);
  readonly #identityOf = new WeakMap<Channel, { classId: Uint8Array; instanceId: Uint8Array }>();
  readonly #host: ChannelHost;
  #conn: Connection | undefined;
  #queue: Outgoing[] = [];
  #queueHead = 0;
  #pumping = false;
  /** Device closes still finishing I/O (see `VmbusDevice.onClose`). */
  readonly #closing = new Set<Promise<void>>();
  /** Bumped by every disconnect (unload, reset, new contact). */
  #epoch = 0;
  readonly #msg = new Uint8Array(MAX_MESSAGE_SIZE);
  readonly #stats: VmbusStats = {
    messagesIn: 0,
    messagesOut: 0,
    protocolErrors: 0,
    ringErrors: 0,
    deviceErrors: 0,
    internalErrors: 0,
    signalsIn: 0,
    signalsOut: 0,
  };
  readonly #warnProtocol = rateLimited();
  readonly #warnRing = rateLimited();
  readonly #warnDevice = rateLimited();
  readonly #warnInternal = rateLimited();
  readonly #noteConnection = rateLimited();

  /**
   * Creates the server over guest RAM and the SynIC. Register devices with `addDevice`, then
   * route the guest's HvPostMessage/HvSignalEvent to `onPostMessage`/`onSignalEvent` and SynIC
   * end-of-message to `onMessageSlotFree`.
   */
  constructor(memory: GuestMemory, synic: SynicPort, options: VmbusServerOptions) {
    if (!Number.isInteger(options.vpCount) || options.vpCount < 1) {
      throw new RangeError(`vpCount ${options.vpCount} is invalid; pass the number of vCPUs`);
    }
    this.#memory = memory;
    this.#synic = synic;
    this.#vpCount = options.vpCount;
    this.#maxVersion = options.maxVersion ?? VmbusVersion.V6_0;
    this.#maxQueued = options.maxQueuedMessages ?? 256;
    this.#defer = options.defer ?? ((fn) => void setTimeout(fn, 0));
    this.#onHvsock = options.onHvsockConnect;
    this.#gpadls = new GpadlTable(options.maxGpadls ?? 1024);
    const maxPacketsPerDrain = options.maxPacketsPerDrain ?? 256;
    // deno-lint-ignore no-this-alias
    const server = this;
    this.#host = {
      memory,
      get version() {
        return server.#conn?.version ?? 0;
      },
      maxPacketsPerDrain,
      defer: (fn) =>
        this.#defer(() => {
          this.#guard("deferred drain", fn);
          this.pump();
        }),
      signalGuest: (ch) => this.#signalGuest(ch),
      deviceThrew: (ch, what, e) => this.#deviceThrew(ch, what, e),
      ringFailed: (ch, err) => this.#ringFailed(ch, err),
      acquireGpadl: (ch, id) => this.#acquireGpadl(ch, id),
      releaseGpadl: (g) => this.#releaseGpadl(g),
      afterClose: (ch, done, release) => this.#afterClose(ch, done, release),
      enableSubChannels: (primary, count) => this.#enableSubChannels(primary, count),
    };
  }

  // ---- inspection -------------------------------------------------------------------------------

  /** Counters (live object; do not modify). */
  get stats(): Readonly<VmbusStats> {
    return this.#stats;
  }

  /** The connection, or undefined while the guest has not (successfully) initiated contact. */
  get connection(): ConnectionInfo | undefined {
    const c = this.#conn;
    return c
      ? {
        version: c.version,
        targetVp: c.targetVp,
        offersSent: c.offersSent,
        interruptPage: c.interruptPageGpa,
      }
      : undefined;
  }

  /** Every channel that has a relid (offered, open, or rescinded and not yet released). */
  channels(): ChannelInfo[] {
    return [...this.#channels.values()].map((c) => ({
      relid: c.relid,
      device: this.#entryOf(c)?.name ?? c.device.name ?? "?",
      subChannelIndex: c.subChannelIndex,
      state: c.state,
      broken: c.isBroken,
      targetVp: c.targetVp,
      ringFill: c.ringFill,
      packetsReceived: c.packetsReceived,
      packetsSent: c.packetsSent,
    }));
  }

  /** The channel with relid `relid`, if any. */
  channel(relid: number): Channel | undefined {
    return this.#channels.get(relid);
  }

  /** Number of GPADLs the guest holds (any state). */
  get gpadlCount(): number {
    return this.#gpadls.size;
  }

  /** Messages waiting for a free SynIC slot. */
  get queuedMessages(): number {
    return this.#queue.length - this.#queueHead;
  }

  /** True for connection ids this server answers: route those HvPostMessage/HvSignalEvent here. */
  handlesConnectionId(connectionId: number): boolean {
    return vmbusOwnsConnection(connectionId, "message") ||
      vmbusOwnsConnection(connectionId, "event");
  }

  // ---- host API ---------------------------------------------------------------------------------

  /**
   * Registers a device. Before the guest asks for offers it is simply remembered; afterwards it
   * is offered at once (hot-add). Throws `TypeError` for a malformed GUID, `RangeError` for more
   * than 120 bytes of user-defined data, `Error` when the class/instance pair is taken.
   */
  addDevice(device: VmbusDevice): void {
    const classId = parseGuid(device.classId);
    const instanceId = parseGuid(device.instanceId);
    const ud = device.userDefined ?? new Uint8Array(0);
    if (ud.length > MAX_USER_DEFINED_BYTES) {
      throw new RangeError(`device user-defined data is ${ud.length} bytes; the limit is 120`);
    }
    for (const e of this.#entries) {
      if (e.device === device) throw new Error("device is already registered");
      if (guidEquals(e.classId, classId) && guidEquals(e.instanceId, instanceId)) {
        throw new Error(
          `a device with class ${device.classId} and instance ${device.instanceId} is already registered; give each instance its own GUID`,
        );
      }
    }
    const userDefined = new Uint8Array(MAX_USER_DEFINED_BYTES);
    userDefined.set(ud);
    const entry: DeviceEntry = {
      device,
      name: device.name ?? formatGuid(classId),
      classId,
      instanceId,
      userDefined,
      channels: [],
      waitingForRelease: false,
    };
    this.#entries.push(entry);
    if (this.#conn?.offersSent) {
      this.#guard("addDevice", () => this.#offerPrimary(entry));
      this.pump();
    }
  }

  /**
   * Removes a device (hot-remove). Open channels close (the device sees `onClose`) and offered
   * ones are rescinded; their relids are freed when the guest releases them. Returns false when
   * the device was not registered.
   */
  removeDevice(device: VmbusDevice): boolean {
    const i = this.#entries.findIndex((e) => e.device === device);
    if (i < 0) return false;
    const entry = this.#entries[i]!;
    this.#entries.splice(i, 1);
    this.#guard("removeDevice", () => {
      for (const ch of [...entry.channels].reverse()) this.#rescind(ch);
      entry.channels = [];
    });
    this.pump();
    return true;
  }

  /**
   * Resets to the power-on state (VM reset): closes every channel and forgets the connection and
   * all GPADLs, without telling the guest. Devices may still finish I/O into guest memory
   * afterwards: await `settled()` before the memory is reused or unmapped.
   */
  reset(): void {
    this.#guard("reset", () => this.#disconnect());
  }

  /**
   * Resolves once every device whose channels closed has finished the work it still had in
   * flight (its `onClose` Promise settled) and the GPADLs it held were released. Never rejects.
   */
  async settled(): Promise<void> {
    while (this.#closing.size > 0) await Promise.all(this.#closing);
  }

  /**
   * Retries channels that wait for ring space and reads pending packets, for guests that do not
   * signal on ring space (no `feat_pending_send_sz`). Call it from a timer if such guests matter.
   */
  poll(): void {
    this.#guard("poll", () => {
      for (const ch of [...this.#channels.values()]) if (ch.isOpen) ch._signal();
    });
    this.pump();
  }

  /** Answers a refused hv_sock connect (TL_CONNECT_RESULT, 4.1+). */
  refuseHvsockConnect(request: HvsockConnectRequest): void {
    this.#guard("refuseHvsockConnect", () => this.#sendTlConnectRefused(request));
    this.pump();
  }

  // ---- guest entry points ----------------------------------------------------------------------

  /**
   * HvPostMessage from the guest. Returns an HV status: the transport's verdict only (bad
   * connection id, message type or size, or INSUFFICIENT_BUFFERS while replies are backed up);
   * a delivered message that the protocol rejects still returns success.
   */
  onPostMessage(connectionId: number, messageType: number, payload: Uint8Array): number {
    try {
      if (
        connectionId !== VMBUS_MESSAGE_CONNECTION_ID &&
        connectionId !== VMBUS_MESSAGE_CONNECTION_ID_4
      ) {
        return HvStatus.INVALID_CONNECTION_ID;
      }
      if (messageType !== VMBUS_MESSAGE_TYPE || payload.length > MAX_MESSAGE_SIZE) {
        return HvStatus.INVALID_PARAMETER;
      }
      // Snapshot: the payload may be guest memory that another vCPU is changing.
      const msg = this.#msg.subarray(0, payload.length);
      msg.set(payload);
      if (msg.length < MessageHeader.size) {
        this.#protocolError(`a ${msg.length}-byte message has no header`);
        return HvStatus.SUCCESS;
      }
      const type = MessageHeader.get(msg, 0, "msgtype");
      if (
        this.queuedMessages >= this.#maxQueued && type !== Msg.INITIATE_CONTACT &&
        type !== Msg.UNLOAD
      ) {
        return HvStatus.INSUFFICIENT_BUFFERS;
      }
      this.#stats.messagesIn++;
      this.#dispatch(type, msg);
    } catch (e) {
      this.#internalError("onPostMessage", e);
    }
    this.pump();
    return HvStatus.SUCCESS;
  }

  /**
   * HvSignalEvent from the guest: a channel's connection id (1.1+) or the shared event
   * connection with the interrupt page (0.13). Unknown ids get INVALID_CONNECTION_ID.
   */
  onSignalEvent(connectionId: number, _flagNumber: number): number {
    let status: number = HvStatus.SUCCESS;
    try {
      if (
        connectionId > CHANNEL_CONNECTION_ID_BASE &&
        connectionId <= CHANNEL_CONNECTION_ID_BASE + MAX_RELID
      ) {
        const ch = this.#channels.get(connectionId - CHANNEL_CONNECTION_ID_BASE);
        if (!ch) {
          status = HvStatus.INVALID_CONNECTION_ID;
        } else {
          this.#stats.signalsIn++;
          ch._signal();
        }
      } else if (connectionId === VMBUS_EVENT_CONNECTION_ID) {
        this.#stats.signalsIn++;
        this.#scanInterruptPage();
      } else {
        status = HvStatus.INVALID_CONNECTION_ID;
      }
    } catch (e) {
      this.#internalError("onSignalEvent", e);
    }
    this.pump();
    return status;
  }

  /** The guest freed its message slot (EOM) on `vp`/`sint`: post what is queued. */
  onMessageSlotFree(_vp: number, _sint: number): void {
    this.pump();
  }

  /** Posts queued messages until the guest's slot is busy. */
  pump(): void {
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      const q = this.#queue;
      while (this.#queueHead < q.length) {
        const m = q[this.#queueHead]!;
        let ok: boolean;
        try {
          ok = this.#synic.postMessage(m.vp, m.sint, VMBUS_MESSAGE_TYPE, m.payload);
        } catch (e) {
          this.#internalError("SynicPort.postMessage", e);
          ok = true; // drop it: retrying a throwing port would loop forever
        }
        if (!ok) break;
        this.#queueHead++;
        this.#stats.messagesOut++;
      }
      if (this.#queueHead === q.length) {
        // Every signal pumps: reset only a queue that was used, so the usual call allocates nothing.
        if (q.length !== 0) {
          this.#queue = [];
          this.#queueHead = 0;
        }
      } else if (this.#queueHead > 64) {
        this.#queue = q.slice(this.#queueHead);
        this.#queueHead = 0;
      }
    } finally {
      this.#pumping = false;
    }
  }

  // ---- dispatch ----------------------------------------------------------------------------------

  #dispatch(type: number, msg: Uint8Array): void {
    switch (type) {
      case Msg.INITIATE_CONTACT:
        return this.#onInitiateContact(msg);
      case Msg.UNLOAD:
        return this.#onUnload();
    }
    const conn = this.#conn;
    if (!conn) {
      this.#protocolError(`${messageTypeName(type)} before INITIATE_CONTACT`);
      return;
    }
    switch (type) {
      case Msg.REQUESTOFFERS:
        return this.#onRequestOffers(conn);
      case Msg.GPADL_HEADER:
        return this.#onGpadlHeader(msg);
      case Msg.GPADL_BODY:
        return this.#onGpadlBody(msg);
      case Msg.GPADL_TEARDOWN:
        return this.#onGpadlTeardown(msg);
      case Msg.OPENCHANNEL:
        return this.#onOpenChannel(conn, msg);
      case Msg.CLOSECHANNEL:
        return this.#onCloseChannel(msg);
      case Msg.RELID_RELEASED:
        return this.#onRelidReleased(msg);
      case Msg.MODIFYCHANNEL:
        return this.#onModifyChannel(conn, msg);
      case Msg.TL_CONNECT_REQUEST:
        return this.#onTlConnectRequest(conn, msg);
      default:
        this.#protocolError(`unexpected message ${messageTypeName(type)}`);
    }
  }

  // ---- connection --------------------------------------------------------------------------------

  #onInitiateContact(msg: Uint8Array): void {
    const ic = InitiateContact.decode(msg);
    if (!ic) {
      this.#protocolError(`INITIATE_CONTACT is ${msg.length} bytes`);
      return;
    }
    // A new contact (kexec, a firmware hand-over, a retry with a lower version) resets everything.
    this.#disconnect();
    const version = ic.versionRequested;
    const knownVp = version >= VmbusVersion.WIN8_1 ? ic.targetVcpu : 0;
    const vpOk = knownVp < this.#vpCount;
    const vp = vpOk ? knownVp : 0;
    const sint = version >= VmbusVersion.WIN10_V5 ? ic.msgSint : VMBUS_MESSAGE_SINT;
    const refuse = (why: string) => {
      this.#protocolError(`INITIATE_CONTACT ${formatVersion(version)} refused: ${why}`);
      this.#sendVersionResponse(vp, sint < 16 ? sint : VMBUS_MESSAGE_SINT, version, false);
    };
    const fail = (why: string) => {
      // From 2.4 a supported version can report a failed connection; before, only "unsupported".
      if (version < VmbusVersion.WIN8) return refuse(why);
      this.#protocolError(`INITIATE_CONTACT ${formatVersion(version)} failed: ${why}`);
      this.#sendVersionResponse(
        vp,
        VMBUS_MESSAGE_SINT,
        version,
        true,
        ConnectionState.FAILED_UNKNOWN_FAILURE,
      );
    };
    if (!SUPPORTED_VERSIONS.includes(version) || version > this.#maxVersion) {
      // Not an error: guests probe from their newest version down.
      this.#noteConnection((n) =>
        logger.debug(
          `guest asked for VMBus ${formatVersion(version)}; not supported${suppressed(n)}`,
        )
      );
      this.#sendVersionResponse(vp, sint < 16 ? sint : VMBUS_MESSAGE_SINT, version, false);
      return;
    }
    if (sint !== VMBUS_MESSAGE_SINT) return refuse(`message SINT ${sint} (only 2 is served)`);
    if (version >= VmbusVersion.WIN10_V5_1 && ic.msgVtl !== 0) {
      return refuse(`VTL ${ic.msgVtl} (only VTL 0 is served)`);
    }
    if (!vpOk) return fail(`target VP ${knownVp} does not exist`);
    if ((ic.monitorPage1 === 0n) !== (ic.monitorPage2 === 0n)) {
      return fail("only one monitor page given");
    }
    let interruptPageGpa: number | undefined;
    let interruptWords: Uint32Array | undefined;
    if (version < VmbusVersion.WIN8 && ic.interruptPage !== 0n) {
      const gpa = ic.interruptPage;
      const view = gpa % BigInt(HV_PAGE_SIZE) === 0n && gpa <= BigInt(Number.MAX_SAFE_INTEGER)
        ? this.#memory.trySlice(Number(gpa), HV_PAGE_SIZE)
        : undefined;
      if (!view || (view.byteOffset & 3) !== 0) {
        return fail(`interrupt page 0x${gpa.toString(16)} is not guest RAM`);
      }
      interruptPageGpa = Number(gpa);
      interruptWords = new Uint32Array(view.buffer, view.byteOffset, HV_PAGE_SIZE / 4);
    }
    this.#conn = { version, targetVp: vp, offersSent: false, interruptPageGpa, interruptWords };
    this.#noteConnection((n) =>
      logger.info(
        `guest connected: VMBus ${formatVersion(version)}, messages to VP ${vp}${suppressed(n)}`,
      )
    );
    this.#sendVersionResponse(vp, VMBUS_MESSAGE_SINT, version, true, ConnectionState.SUCCESSFUL);
  }

  #sendVersionResponse(
    vp: number,
    sint: number,
    version: number,
    supported: boolean,
    state: number = ConnectionState.SUCCESSFUL,
  ): void {
    const v2 = supported && version >= VmbusVersion.V6_0;
    const layout = v2 ? VersionResponse2 : VersionResponse;
    const out = new Uint8Array(layout.size);
    VersionResponse.encode({
      msgtype: Msg.VERSION_RESPONSE,
      versionSupported: supported ? 1 : 0,
      connectionState: supported ? state : 0,
      msgConnId: supported
        ? (version >= VmbusVersion.WIN10_V5 ? VMBUS_MESSAGE_CONNECTION_ID : version)
        : 0,
    }, out);
    // v2: supportedFeatures stays 0; no feature flags are granted.
    this.#queueMessage(out, vp, sint);
  }

  #onUnload(): void {
    const vp = this.#conn?.targetVp ?? 0;
    this.#disconnect();
    this.#noteConnection((n) => logger.info(`guest unloaded VMBus${suppressed(n)}`));
    const respond = () =>
      this.#queueMessage(
        MessageHeader.encode({ msgtype: Msg.UNLOAD_RESPONSE }),
        vp,
        VMBUS_MESSAGE_SINT,
      );
    if (this.#closing.size === 0) return respond();
    // A device still writes guest memory, which the guest reuses once it has the response.
    const epoch = this.#epoch;
    void this.settled().then(() => {
      if (this.#epoch !== epoch) return; // reset or new contact meanwhile: nobody waits
      this.#guard("unload response", respond);
      this.pump();
    });
  }

  /** Closes every channel, forgets GPADLs, offers and queued messages. */
  #disconnect(): void {
    this.#conn = undefined;
    this.#epoch++;
    for (const ch of [...this.#channels.values()]) {
      const g = ch._close();
      if (g) this.#releaseGpadl(g);
      ch._release();
    }
    this.#channels.clear();
    this.#relidUsed.fill(0);
    const dropped: VmbusDevice[] = [];
    for (let i = this.#entries.length - 1; i >= 0; i--) {
      const e = this.#entries[i]!;
      e.channels = [];
      e.waitingForRelease = false;
      if (e.device.connectionScoped) {
        this.#entries.splice(i, 1);
        dropped.push(e.device);
      }
    }
    this.#gpadls.clear();
    this.#queue = [];
    this.#queueHead = 0;
    for (const d of dropped) {
      if (!d.onDisconnect) continue;
      try {
        d.onDisconnect();
      } catch (e) {
        this.#stats.deviceErrors++;
        this.#warnDevice((n) =>
          logger.error(`${d.name ?? "device"} onDisconnect threw: ${e}${suppressed(n)}`)
        );
      }
    }
  }

  // ---- offers ------------------------------------------------------------------------------------

  #onRequestOffers(conn: Connection): void {
    if (conn.offersSent) {
      this.#protocolError("REQUESTOFFERS sent twice");
      return;
    }
    conn.offersSent = true;
    for (const e of this.#entries) this.#offerPrimary(e);
    this.#queueMessage(MessageHeader.encode({ msgtype: Msg.ALLOFFERS_DELIVERED }));
  }

  #offerPrimary(entry: DeviceEntry): void {
    if (entry.channels.length > 0) return;
    // The guest still knows a rescinded channel with this identity: offering now would make it
    // look like a sub-channel. Offer once it is released.
    for (const ch of this.#channels.values()) {
      if (ch.state === "revoked" && this.#sameIdentity(ch, entry)) {
        entry.waitingForRelease = true;
        return;
      }
    }
    entry.waitingForRelease = false;
    this.#offer(entry, 0);
  }

  #sameIdentity(ch: Channel, entry: DeviceEntry): boolean {
    const other = this.#identityOf.get(ch);
    return other !== undefined && guidEquals(other.classId, entry.classId) &&
      guidEquals(other.instanceId, entry.instanceId);
  }

  #allocRelid(): number {
    for (let r = 1; r <= MAX_RELID; r++) {
      if (!this.#relidUsed[r]) {
        this.#relidUsed[r] = 1;
        return r;
      }
    }
    return 0;
  }

  #offer(entry: DeviceEntry, subIndex: number): Channel | undefined {
    const conn = this.#conn;
    if (!conn) return undefined;
    const relid = this.#allocRelid();
    if (relid === 0) {
      logger.error(`no relid left for ${entry.name}; the offer is skipped`);
      return undefined;
    }
    const dedicated = conn.version >= VmbusVersion.WIN7;
    // 0.13 guests signal every channel on the shared event connection (with the interrupt page).
    const connectionId = dedicated ? CHANNEL_CONNECTION_ID_BASE + relid : VMBUS_EVENT_CONNECTION_ID;
    const ch = new Channel(
      this.#host,
      entry.device,
      relid,
      subIndex,
      connectionId,
      entry.channels[0],
    );
    this.#identityOf.set(ch, { classId: entry.classId, instanceId: entry.instanceId });
    this.#channels.set(relid, ch);
    entry.channels[subIndex] = ch;
    const d = entry.device;
    this.#queueMessage(OfferChannel.encode({
      msgtype: Msg.OFFERCHANNEL,
      ifType: entry.classId,
      ifInstance: entry.instanceId,
      chnFlags: (d.channelFlags ?? 0) & 0xffff,
      mmioMegabytes: (d.mmioMegabytes ?? 0) & 0xffff,
      mmioMegabytesOptional: (d.mmioMegabytesOptional ?? 0) & 0xffff,
      userDefined: entry.userDefined,
      subChannelIndex: subIndex,
      childRelid: relid,
      monitorId: MONITOR_ID_NONE,
      monitorAllocated: 0,
      isDedicatedInterrupt: dedicated ? 1 : 0,
      connectionId,
    }));
    return ch;
  }

  /** Closes (if open) and rescinds a channel; the relid stays taken until RELID_RELEASED. */
  #rescind(ch: Channel): void {
    if (ch.state === "revoked" || ch.state === "released") return;
    const g = ch._close();
    if (g) this.#releaseGpadl(g);
    ch._revoke();
    if (this.#conn) {
      this.#queueMessage(
        RescindOffer.encode({ msgtype: Msg.RESCIND_CHANNELOFFER, childRelid: ch.relid }),
      );
    }
  }

  #enableSubChannels(primary: Channel, count: number): boolean {
    const conn = this.#conn;
    const entry = this.#entryOf(primary);
    if (!conn || !entry || entry.channels[0] !== primary || conn.version < VmbusVersion.WIN8) {
      return false;
    }
    if (!Number.isInteger(count) || count < 0 || count > (entry.device.maxSubChannels ?? 0)) {
      return false;
    }
    for (let i = entry.channels.length; i <= count; i++) {
      if (!this.#offer(entry, i)) return false;
    }
    this.pump();
    return true;
  }

  #entryOf(ch: Channel): DeviceEntry | undefined {
    return this.#entries.find((e) => e.device === ch.device && e.channels.includes(ch));
  }

  #onRelidReleased(msg: Uint8Array): void {
    const m = RelidReleased.decode(msg);
    if (!m) return this.#protocolError(`RELID_RELEASED is ${msg.length} bytes`);
    const ch = this.#channels.get(m.childRelid);
    if (!ch || ch.state !== "revoked") {
      return this.#protocolError(
        `RELID_RELEASED for relid ${m.childRelid}, which is not rescinded`,
      );
    }
    this.#channels.delete(ch.relid);
    this.#relidUsed[ch.relid] = 0;
    this.#gpadls.deleteForChannel(ch.relid);
    ch._release();
    for (const e of this.#entries) {
      if (e.waitingForRelease && this.#sameIdentity(ch, e)) this.#offerPrimary(e);
    }
  }

  // ---- GPADLs ------------------------------------------------------------------------------------

  #sendGpadlCreated(relid: number, gpadl: number, status: number): void {
    this.#queueMessage(GpadlCreated.encode({
      msgtype: Msg.GPADL_CREATED,
      childRelid: relid,
      gpadl,
      creationStatus: status,
    }));
  }

  #onGpadlHeader(msg: Uint8Array): void {
    const h = GpadlHeader.decode(msg);
    if (!h) return this.#protocolError(`GPADL_HEADER is ${msg.length} bytes`);
    const ch = this.#channels.get(h.childRelid);
    if (!ch || ch.state === "revoked" || ch.state === "released") {
      this.#protocolError(
        `GPADL_HEADER ${h.gpadl} for relid ${h.childRelid}, which is not offered`,
      );
      return this.#sendGpadlCreated(h.childRelid, h.gpadl, NtStatus.UNSUCCESSFUL);
    }
    let g: Gpadl;
    try {
      g = this.#gpadls.begin(h.gpadl, h.childRelid, h.rangeCount, h.rangeBufLen);
    } catch (e) {
      if (!(e instanceof GpadlError)) throw e;
      this.#protocolError(`GPADL_HEADER refused: ${e.message}`);
      return this.#sendGpadlCreated(h.childRelid, h.gpadl, NtStatus.UNSUCCESSFUL);
    }
    const data = msg.subarray(GpadlHeader.size);
    if (g.append(data.subarray(0, data.length & ~7))) this.#finishGpadl(g);
  }

  #onGpadlBody(msg: Uint8Array): void {
    const b = GpadlBody.decode(msg);
    if (!b) return this.#protocolError(`GPADL_BODY is ${msg.length} bytes`);
    const g = this.#gpadls.get(b.gpadl);
    if (!g || g.state !== "building") {
      return this.#protocolError(`GPADL_BODY for GPADL ${b.gpadl}, which is not being built`);
    }
    const data = msg.subarray(GpadlBody.size);
    if (g.append(data.subarray(0, data.length & ~7))) this.#finishGpadl(g);
  }

  #finishGpadl(g: Gpadl): void {
    const ch = this.#channels.get(g.relid);
    try {
      if (!ch || ch.state === "revoked" || ch.state === "released") {
        throw new GpadlError("unknown-handle", `channel ${g.relid} was rescinded`);
      }
      g.finish(this.#memory);
    } catch (e) {
      if (!(e instanceof GpadlError)) throw e;
      this.#gpadls.delete(g.id);
      this.#protocolError(`GPADL ${g.id} refused: ${e.message}`);
      return this.#sendGpadlCreated(g.relid, g.id, NtStatus.UNSUCCESSFUL);
    }
    this.#sendGpadlCreated(g.relid, g.id, NtStatus.SUCCESS);
  }

  #onGpadlTeardown(msg: Uint8Array): void {
    const t = GpadlTeardown.decode(msg);
    if (!t) return this.#protocolError(`GPADL_TEARDOWN is ${msg.length} bytes`);
    const g = this.#gpadls.get(t.gpadl);
    if (!g || g.relid !== t.childRelid || g.state !== "ready") {
      return this.#protocolError(
        `GPADL_TEARDOWN of GPADL ${t.gpadl} (relid ${t.childRelid}) refused`,
      );
    }
    if (g.users === 0) {
      this.#gpadls.delete(g.id);
      this.#queueMessage(GpadlTorndown.encode({ msgtype: Msg.GPADL_TORNDOWN, gpadl: g.id }));
      return;
    }
    // In use (an open ring or a device buffer): answer when the last user lets go.
    g.state = "tearing-down";
    for (const ch of [...this.#channels.values()]) {
      if (ch._holdsGpadl(g.id)) ch._gpadlTeardownRequested(g.id);
    }
  }

  #acquireGpadl(ch: Channel, id: number): Gpadl | undefined {
    const g = this.#gpadls.get(id);
    if (!g || g.state !== "ready") return undefined;
    const owner = this.#channels.get(g.relid);
    if (!owner || owner.device !== ch.device) return undefined;
    try {
      g.buffer(this.#memory);
    } catch (e) {
      if (!(e instanceof GpadlError)) throw e;
      return undefined;
    }
    g.users++;
    return g;
  }

  #afterClose(ch: Channel, done: Promise<void>, release: () => void): void {
    const settled = done.then(
      () => {},
      (e) => this.#deviceThrew(ch, "onClose (async)", e),
    ).then(() => {
      this.#guard("release after close", release);
      this.#guard("pump", () => this.pump());
    });
    this.#closing.add(settled);
    settled.then(() => this.#closing.delete(settled));
  }

  #releaseGpadl(g: Gpadl): void {
    if (g.users > 0) g.users--;
    if (g.users === 0 && g.state === "tearing-down" && this.#gpadls.get(g.id) === g) {
      this.#gpadls.delete(g.id);
      if (this.#conn) {
        this.#queueMessage(GpadlTorndown.encode({ msgtype: Msg.GPADL_TORNDOWN, gpadl: g.id }));
      }
    }
  }

  // ---- open / close / modify ---------------------------------------------------------------------

  #onOpenChannel(conn: Connection, msg: Uint8Array): void {
    const o = OpenChannel.decode(msg);
    if (!o) return this.#protocolError(`OPENCHANNEL is ${msg.length} bytes`);
    const ch = this.#channels.get(o.childRelid);
    if (!ch || ch.state === "revoked" || ch.state === "released") {
      // Hyper-V ignores opens of rescinded channels; the guest learns from the rescind.
      return this.#protocolError(`OPENCHANNEL for relid ${o.childRelid}, which is not offered`);
    }
    const reply = (status: number) =>
      this.#queueMessage(OpenResult.encode({
        msgtype: Msg.OPENCHANNEL_RESULT,
        childRelid: o.childRelid,
        openId: o.openId,
        status,
      }));
    const fail = (why: string) => {
      this.#protocolError(`OPENCHANNEL of relid ${o.childRelid} refused: ${why}`);
      reply(NtStatus.UNSUCCESSFUL);
    };
    if (ch.state === "open") return fail("already open");
    const g = this.#gpadls.get(o.ringbufferGpadlHandle);
    if (!g || g.state !== "ready" || g.relid !== ch.relid) {
      return fail(`ring GPADL ${o.ringbufferGpadlHandle} is not a ready GPADL of this channel`);
    }
    // Before 2.4 channel interrupts always go to VP 0.
    const targetVp = conn.version >= VmbusVersion.WIN8 ? o.targetVp : 0;
    if (targetVp !== VP_INDEX_DISABLE_INTERRUPT && targetVp >= this.#vpCount) {
      return fail(`target VP ${targetVp} does not exist`);
    }
    let rings;
    try {
      rings = openRingPair(this.#memory, g, o.downstreamRingbufferPageOffset);
    } catch (e) {
      if (!(e instanceof RingError)) throw e;
      return fail(e.message);
    }
    g.users++;
    if (!ch._open(rings, g, { openId: o.openId, targetVp, userData: o.userData })) {
      this.#releaseGpadl(g);
      return fail(`device ${ch.device.name ?? ""} refused`);
    }
    reply(NtStatus.SUCCESS);
    ch._start();
  }

  #onCloseChannel(msg: Uint8Array): void {
    const c = CloseChannel.decode(msg);
    if (!c) return this.#protocolError(`CLOSECHANNEL is ${msg.length} bytes`);
    const ch = this.#channels.get(c.childRelid);
    if (!ch || ch.state !== "open") {
      // Normal after a rescind (Linux still closes); otherwise a guest bug.
      if (ch?.state !== "revoked") {
        this.#protocolError(`CLOSECHANNEL for relid ${c.childRelid}, which is not open`);
      }
      return;
    }
    const g = ch._close();
    if (g) this.#releaseGpadl(g);
    const entry = this.#entryOf(ch);
    if (entry && entry.channels[0] === ch && entry.channels.length > 1) {
      // Closing the primary takes the sub-channels away; the guest re-requests them on reopen.
      const subs = entry.channels.slice(1).reverse();
      entry.channels.length = 1;
      for (const sub of subs) this.#rescind(sub);
    }
  }

  #onModifyChannel(conn: Connection, msg: Uint8Array): void {
    if (conn.version < VmbusVersion.WIN10_V4_1) {
      return this.#protocolError(
        `MODIFYCHANNEL needs VMBus 4.1, not ${formatVersion(conn.version)}`,
      );
    }
    const m = ModifyChannel.decode(msg);
    if (!m) return this.#protocolError(`MODIFYCHANNEL is ${msg.length} bytes`);
    const ch = this.#channels.get(m.childRelid);
    let status: number = NtStatus.SUCCESS;
    if (!ch || ch.state !== "open") {
      this.#protocolError(`MODIFYCHANNEL for relid ${m.childRelid}, which is not open`);
      status = NtStatus.UNSUCCESSFUL;
    } else if (m.targetVp !== VP_INDEX_DISABLE_INTERRUPT && m.targetVp >= this.#vpCount) {
      this.#protocolError(`MODIFYCHANNEL to VP ${m.targetVp}, which does not exist`);
      status = NtStatus.UNSUCCESSFUL;
    } else {
      ch._retarget(m.targetVp);
    }
    if (conn.version >= VmbusVersion.WIN10_V5_3) {
      this.#queueMessage(ModifyChannelResponse.encode({
        msgtype: Msg.MODIFYCHANNEL_RESPONSE,
        childRelid: m.childRelid,
        status,
      }));
    }
  }

  // ---- hv_sock -----------------------------------------------------------------------------------

  #onTlConnectRequest(conn: Connection, msg: Uint8Array): void {
    if (conn.version < VmbusVersion.WIN10) {
      return this.#protocolError(`TL_CONNECT_REQUEST needs VMBus 4.0`);
    }
    const r = TlConnectRequest.decode(msg);
    if (!r) return this.#protocolError(`TL_CONNECT_REQUEST is ${msg.length} bytes`);
    const r2 = TlConnectRequest2.decode(msg);
    const request: HvsockConnectRequest = {
      endpointId: formatGuid(r.guestEndpointId),
      serviceId: formatGuid(r.hostServiceId),
      siloId: r2 ? formatGuid(r2.siloId) : undefined,
    };
    const onHvsock = this.#onHvsock;
    if (onHvsock) {
      try {
        onHvsock(request);
      } catch (e) {
        this.#stats.deviceErrors++;
        this.#warnDevice((n) =>
          logger.error(`hv_sock connect handler threw: ${e}${suppressed(n)}`)
        );
        this.#sendTlConnectRefused(request);
      }
    } else {
      this.#sendTlConnectRefused(request);
    }
  }

  #sendTlConnectRefused(request: HvsockConnectRequest): void {
    const conn = this.#conn;
    if (!conn || conn.version < VmbusVersion.WIN10_V4_1) return;
    this.#queueMessage(TlConnectResult.encode({
      msgtype: Msg.TL_CONNECT_RESULT,
      guestEndpointId: parseGuid(request.endpointId),
      hostServiceId: parseGuid(request.serviceId),
      status: NtStatus.CONNECTION_REFUSED,
    }));
  }

  // ---- signals -----------------------------------------------------------------------------------

  #signalGuest(ch: Channel): void {
    const conn = this.#conn;
    if (!conn) return;
    if (conn.version < VmbusVersion.WIN8) {
      const words = conn.interruptWords;
      if (!words) return;
      // Receive half (first 2 KiB): bit `relid`, then event flag 0 on VP 0.
      Atomics.or(words, ch.relid >>> 5, 1 << (ch.relid & 31));
      this.#stats.signalsOut++;
      this.#synic.signalEvent(0, VMBUS_MESSAGE_SINT, 0);
      return;
    }
    if (ch.targetVp === VP_INDEX_DISABLE_INTERRUPT) return;
    this.#stats.signalsOut++;
    this.#synic.signalEvent(ch.targetVp, VMBUS_MESSAGE_SINT, ch.relid);
  }

  /** 0.13 guests: bits of the interrupt page's send half (second 2 KiB) name signalled relids. */
  #scanInterruptPage(): void {
    const words = this.#conn?.interruptWords;
    if (!words) return;
    const base = HV_PAGE_SIZE / 2 / 4;
    const firstWord = base;
    const lastWord = base + (MAX_RELID >>> 5);
    for (let i = firstWord; i <= lastWord; i++) {
      if (words[i] === 0) continue;
      let bits = Atomics.exchange(words, i, 0) >>> 0;
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits);
        bits = (bits & ~(1 << b)) >>> 0;
        const relid = (i - base) * 32 + b;
        this.#channels.get(relid)?._signal();
      }
    }
  }

  // ---- plumbing ----------------------------------------------------------------------------------

  #queueMessage(payload: Uint8Array, vp?: number, sint?: number): void {
    this.#queue.push({
      vp: vp ?? this.#conn?.targetVp ?? 0,
      sint: sint ?? VMBUS_MESSAGE_SINT,
      payload,
    });
  }

  #deviceThrew(ch: Channel, what: string, e: unknown): void {
    this.#stats.deviceErrors++;
    const name = ch.device.name ?? "device";
    this.#warnDevice((n) =>
      logger.error(`${name} ${what} on relid ${ch.relid} threw: ${e}${suppressed(n)}`)
    );
  }

  #ringFailed(ch: Channel, err: RingError): void {
    this.#stats.ringErrors++;
    const name = ch.device.name ?? "device";
    this.#warnRing((n) =>
      logger.warn(`${name} channel ${ch.relid} stopped: ${err.message}${suppressed(n)}`)
    );
  }

  #protocolError(what: string): void {
    this.#stats.protocolErrors++;
    this.#warnProtocol((n) => logger.warn(`guest VMBus message ignored: ${what}${suppressed(n)}`));
  }

  #internalError(where: string, e: unknown): void {
    this.#stats.internalErrors++;
    this.#warnInternal((n) =>
      logger.error(
        `VMBus server bug in ${where}: ${e instanceof Error ? e.stack : e}${suppressed(n)}`,
      )
    );
  }

  #guard(where: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#internalError(where, e);
    }
  }
}

function suppressed(n: number): string {
  return n > 0 ? ` (${n} similar lines suppressed)` : "";
}
