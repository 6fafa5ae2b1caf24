/**
 * A scripted fake guest that plays Linux's VMBus client sequence (drivers/hv/connection.c,
 * channel_mgmt.c, channel.c) against a real `VmbusServer` through its public entry points, with
 * rings laid out in a `GuestMemory` over a plain ArrayBuffer. Device tests use it to exercise a
 * device end to end without a VM:
 *
 * ```ts
 * const { guest } = LoopbackGuest.create({ devices: [myDevice] });
 * guest.connect();
 * const [offer] = guest.requestOffers();
 * const ch = guest.open(offer!);
 * ch.send(new Uint8Array([1, 2, 3]));
 * const replies = ch.receive();
 * ```
 * @module
 */
import { GuestMemory } from "../../kvm/guest_memory.ts";
import type { VmbusDevice } from "../device.ts";
import { formatGuid } from "../guid.ts";
import {
  ChannelMessageType as Msg,
  CloseChannel,
  GpadlBody,
  GpadlCreated,
  GpadlHeader,
  GpadlTeardown,
  GpadlTorndown,
  InitiateContact,
  MAX_MESSAGE_SIZE,
  MessageHeader,
  ModifyChannel,
  ModifyChannelResponse,
  OfferChannel,
  OpenChannel,
  OpenResult,
  RelidReleased,
  RescindOffer,
  VersionResponse,
  VMBUS_EVENT_CONNECTION_ID,
  VMBUS_MESSAGE_CONNECTION_ID,
  VMBUS_MESSAGE_CONNECTION_ID_4,
  VMBUS_MESSAGE_SINT,
  VMBUS_MESSAGE_TYPE,
  VmbusVersion,
} from "../protocol.ts";
import { VmbusServer, type VmbusServerOptions } from "../server.ts";
import { FakeSynic } from "./fake_synic.ts";
import {
  encodePacket,
  type GuestPacket,
  GuestRingReader,
  GuestRingView,
  GuestRingWriter,
} from "./guest_ring.ts";

const PAGE = 4096;

/** The versions Linux 6.1 tries, newest first. */
export const LINUX_VERSIONS: readonly number[] = [
  VmbusVersion.WIN10_V5_3,
  VmbusVersion.WIN10_V5_2,
  VmbusVersion.WIN10_V5_1,
  VmbusVersion.WIN10_V5,
  VmbusVersion.WIN10_V4_1,
  VmbusVersion.WIN10,
  VmbusVersion.WIN8_1,
  VmbusVersion.WIN8,
];

/** An offer as the guest decoded it. */
export interface GuestOffer {
  readonly relid: number;
  readonly classId: string;
  readonly instanceId: string;
  readonly subChannelIndex: number;
  readonly connectionId: number;
  readonly dedicatedInterrupt: boolean;
  readonly monitorAllocated: boolean;
  readonly monitorId: number;
  readonly channelFlags: number;
  readonly mmioMegabytes: number;
  readonly userDefined: Uint8Array;
}

/** A host message the guest received. */
export interface HostMessage {
  readonly type: number;
  readonly payload: Uint8Array;
}

/** Hands out guest pages from one RAM region. */
export class PageAllocator {
  #next: number;
  readonly #end: number;
  readonly #freed = new Map<string, number[][]>();

  constructor(base: number, size: number) {
    this.#next = base;
    this.#end = base + size;
  }

  /**
   * `n` pages: contiguous, or (`scattered`) non-adjacent and in descending order, like a
   * fragmented guest. Runs given back with `free` are reused for the same shape.
   */
  alloc(n: number, scattered = false): number[] {
    const reuse = this.#freed.get(`${n}/${scattered}`)?.pop();
    if (reuse) return reuse;
    const span = scattered ? 2 * n : n;
    if (this.#next + span * PAGE > this.#end) throw new Error("fake guest is out of memory");
    const base = this.#next;
    this.#next += span * PAGE;
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      out.push(scattered ? base + (span - 2 - 2 * i) * PAGE : base + i * PAGE);
    }
    this.#shape.set(out, `${n}/${scattered}`);
    return out;
  }

  readonly #shape = new WeakMap<number[], string>();

  /** Gives back a run returned by `alloc`. */
  free(run: readonly number[]): void {
    const key = this.#shape.get(run as number[]);
    if (!key) return;
    let list = this.#freed.get(key);
    if (!list) this.#freed.set(key, list = []);
    list.push(run as number[]);
  }
}

/** Options of `LoopbackGuest.create`. */
export interface LoopbackOptions {
  /** Devices registered before the guest connects. */
  readonly devices?: readonly VmbusDevice[];
  /** Guest RAM bytes (default 16 MiB at GPA 0x100000). */
  readonly memoryBytes?: number;
  /** Server options (vpCount defaults to 4; defer to a manual queue, see `runDeferred`). */
  readonly server?: Partial<VmbusServerOptions>;
}

/** The fake guest. */
export class LoopbackGuest {
  /** Guest RAM. */
  readonly memory: GuestMemory;
  /** The server under test. */
  readonly server: VmbusServer;
  /** The fake SynIC between them. */
  readonly synic: FakeSynic;
  /** Guest page allocator. */
  readonly pages: PageAllocator;
  /** VP that receives VMBus messages. */
  vp = 0;
  /** Negotiated version (0 before `connect`). */
  version = 0;
  /** Connection id for messages (from VERSION_RESPONSE on 5.0+). */
  messageConnectionId = VMBUS_MESSAGE_CONNECTION_ID;
  /** Every host message received, in order. */
  readonly log: HostMessage[] = [];
  /** Offers by relid (removed when released). */
  readonly offers = new Map<number, GuestOffer>();
  /** Relids the host rescinded. */
  readonly rescinded: number[] = [];
  /** Interrupt page GPA for pre-2.4 versions. */
  interruptPage = 0;
  /** Callbacks deferred by the server (run them with `runDeferred`). */
  readonly deferred: (() => void)[];
  #nextGpadl = 0xe1e10;
  #monitorPages: number[] | undefined;

  /** `deferred` is the queue the server's `defer` option pushes to (see `create`). */
  constructor(
    server: VmbusServer,
    memory: GuestMemory,
    synic: FakeSynic,
    pages: PageAllocator,
    deferred: (() => void)[] = [],
  ) {
    this.server = server;
    this.memory = memory;
    this.synic = synic;
    this.pages = pages;
    this.deferred = deferred;
  }

  /** Builds guest RAM, a fake SynIC, a server with `devices` and the guest. */
  static create(options: LoopbackOptions = {}): { guest: LoopbackGuest; server: VmbusServer } {
    const size = options.memoryBytes ?? 16 << 20;
    const base = 0x100000;
    const memory = new GuestMemory([{ gpa: base, bytes: new Uint8Array(size) }]);
    const synic = new FakeSynic();
    const deferred: (() => void)[] = [];
    const server = new VmbusServer(memory, synic, {
      vpCount: 4,
      defer: (fn) => deferred.push(fn),
      ...options.server,
    });
    for (const d of options.devices ?? []) server.addDevice(d);
    const guest = new LoopbackGuest(server, memory, synic, new PageAllocator(base, size), deferred);
    return { guest, server };
  }

  /** Runs callbacks the server deferred; returns how many ran. */
  runDeferred(): number {
    let n = 0;
    while (this.deferred.length > 0) {
      this.deferred.shift()!();
      n++;
    }
    return n;
  }

  /** Posts raw message bytes (HvPostMessage). */
  post(msg: Uint8Array, connectionId = this.messageConnectionId): number {
    return this.server.onPostMessage(connectionId, VMBUS_MESSAGE_TYPE, msg);
  }

  /** Takes every message the host delivered to `vp`/SINT 2 (each take frees the slot). */
  receive(): HostMessage[] {
    const out: HostMessage[] = [];
    for (;;) {
      const m = this.synic.take(this.vp, VMBUS_MESSAGE_SINT);
      if (!m) break;
      if (m.type !== VMBUS_MESSAGE_TYPE) throw new Error(`host posted message type ${m.type}`);
      if (m.payload.length > MAX_MESSAGE_SIZE) throw new Error("host posted an oversized message");
      const msg = { type: MessageHeader.get(m.payload, 0, "msgtype"), payload: m.payload };
      this.#track(msg);
      this.log.push(msg);
      out.push(msg);
      this.server.onMessageSlotFree(this.vp, VMBUS_MESSAGE_SINT);
    }
    return out;
  }

  #track(m: HostMessage): void {
    if (m.type === Msg.OFFERCHANNEL) {
      const o = OfferChannel.decode(m.payload);
      if (!o) throw new Error("short OFFERCHANNEL");
      this.offers.set(o.childRelid, {
        relid: o.childRelid,
        classId: formatGuid(o.ifType),
        instanceId: formatGuid(o.ifInstance),
        subChannelIndex: o.subChannelIndex,
        connectionId: o.connectionId,
        dedicatedInterrupt: (o.isDedicatedInterrupt & 1) !== 0,
        monitorAllocated: (o.monitorAllocated & 1) !== 0,
        monitorId: o.monitorId,
        channelFlags: o.chnFlags,
        mmioMegabytes: o.mmioMegabytes,
        userDefined: o.userDefined,
      });
    } else if (m.type === Msg.RESCIND_CHANNELOFFER) {
      const r = RescindOffer.decode(m.payload);
      if (r) this.rescinded.push(r.childRelid);
    }
  }

  /** Receives until a message of `type` arrives (returns it) or nothing is left (undefined). */
  expect(type: number): HostMessage | undefined {
    for (const m of this.receive()) if (m.type === type) return m;
    return undefined;
  }

  /**
   * vmbus_connect: tries each version until one is accepted. Returns the version, or 0.
   */
  connect(versions: readonly number[] = LINUX_VERSIONS): number {
    for (const v of versions) {
      const ok = this.initiateContact(v);
      if (ok) return this.version;
    }
    return 0;
  }

  /** One INITIATE_CONTACT at `version`; true when the host accepts it. */
  initiateContact(version: number): boolean {
    const monitor = this.#monitorPages ??= this.pages.alloc(2);
    let interruptPage = 0n;
    if (version < VmbusVersion.WIN10_V5) {
      this.interruptPage ||= this.pages.alloc(1)[0]!;
      this.memory.slice(this.interruptPage, PAGE).fill(0);
      interruptPage = BigInt(this.interruptPage);
    }
    const msg = InitiateContact.encode({
      msgtype: Msg.INITIATE_CONTACT,
      versionRequested: version,
      targetVcpu: this.vp,
      monitorPage1: BigInt(monitor[0]!),
      monitorPage2: BigInt(monitor[1]!),
    });
    if (version >= VmbusVersion.WIN10_V5) {
      InitiateContact.set(msg, 0, "msgSint", VMBUS_MESSAGE_SINT);
    } else InitiateContact.set(msg, 0, "interruptPage", interruptPage);
    const connId = version >= VmbusVersion.WIN10_V5
      ? VMBUS_MESSAGE_CONNECTION_ID_4
      : VMBUS_MESSAGE_CONNECTION_ID;
    const status = this.post(msg, connId);
    if (status !== 0) throw new Error(`INITIATE_CONTACT status ${status}`);
    const resp = this.expect(Msg.VERSION_RESPONSE);
    if (!resp) throw new Error("no VERSION_RESPONSE");
    const r = VersionResponse.decode(resp.payload)!;
    if (!r.versionSupported || r.connectionState !== 0) return false;
    this.version = version;
    this.messageConnectionId = version >= VmbusVersion.WIN10_V5
      ? r.msgConnId
      : VMBUS_MESSAGE_CONNECTION_ID;
    this.offers.clear();
    return true;
  }

  /** REQUESTOFFERS; returns the offers received up to ALLOFFERS_DELIVERED. */
  requestOffers(): GuestOffer[] {
    this.post(MessageHeader.encode({ msgtype: Msg.REQUESTOFFERS }));
    const out: GuestOffer[] = [];
    for (const m of this.receive()) {
      if (m.type === Msg.OFFERCHANNEL) {
        out.push(this.offers.get(OfferChannel.get(m.payload, 0, "childRelid"))!);
      }
      if (m.type === Msg.ALLOFFERS_DELIVERED) return out;
    }
    throw new Error("no ALLOFFERS_DELIVERED");
  }

  /** Offers received since the last call to this method that are sub-channels of `primary`. */
  subChannelOffers(primary: GuestOffer): GuestOffer[] {
    this.receive();
    return [...this.offers.values()].filter((o) =>
      o.classId === primary.classId && o.instanceId === primary.instanceId &&
      o.subChannelIndex !== 0
    ).sort((a, b) => a.subChannelIndex - b.subChannelIndex);
  }

  /** A fresh GPADL handle (Linux counts up from 0xE1E10). */
  nextGpadlHandle(): number {
    return this.#nextGpadl++;
  }

  /**
   * create_gpadl_header + __vmbus_establish_gpadl: one range of whole pages, up to 26 PFNs in the
   * header and 28 per body. Returns the creation status (undefined when no answer came).
   */
  establishGpadl(relid: number, pageGpas: readonly number[], handle = this.nextGpadlHandle()): {
    handle: number;
    status: number | undefined;
  } {
    const pfns = pageGpas.map((g) => BigInt(g / PAGE));
    const headerPfns = Math.min(pfns.length, 26);
    const msg = new Uint8Array(GpadlHeader.size + 8 + headerPfns * 8);
    GpadlHeader.encode({
      msgtype: Msg.GPADL_HEADER,
      childRelid: relid,
      gpadl: handle,
      rangeBufLen: 8 + pfns.length * 8,
      rangeCount: 1,
    }, msg);
    const dv = new DataView(msg.buffer);
    dv.setUint32(GpadlHeader.size, pfns.length * PAGE, true);
    dv.setUint32(GpadlHeader.size + 4, 0, true);
    for (let i = 0; i < headerPfns; i++) {
      dv.setBigUint64(GpadlHeader.size + 8 + i * 8, pfns[i]!, true);
    }
    this.post(msg);
    for (let at = headerPfns; at < pfns.length; at += 28) {
      const n = Math.min(28, pfns.length - at);
      const body = new Uint8Array(GpadlBody.size + n * 8);
      GpadlBody.encode({ msgtype: Msg.GPADL_BODY, gpadl: handle }, body);
      const bv = new DataView(body.buffer);
      for (let i = 0; i < n; i++) bv.setBigUint64(GpadlBody.size + i * 8, pfns[at + i]!, true);
      this.post(body);
    }
    return { handle, status: this.#gpadlStatus(relid, handle) };
  }

  #gpadlStatus(relid: number, handle: number): number | undefined {
    for (const m of this.receive()) {
      if (m.type !== Msg.GPADL_CREATED) continue;
      const c = GpadlCreated.decode(m.payload)!;
      if (c.childRelid === relid && c.gpadl === handle) return c.creationStatus;
    }
    return undefined;
  }

  /** GPADL_TEARDOWN; true when GPADL_TORNDOWN for it came back. */
  teardownGpadl(relid: number, handle: number): boolean {
    this.post(
      GpadlTeardown.encode({ msgtype: Msg.GPADL_TEARDOWN, childRelid: relid, gpadl: handle }),
    );
    return this.#torndown(handle);
  }

  #torndown(handle: number): boolean {
    for (const m of this.receive()) {
      if (m.type === Msg.GPADL_TORNDOWN && GpadlTorndown.decode(m.payload)!.gpadl === handle) {
        return true;
      }
    }
    return false;
  }

  /** Waits (receives) for GPADL_TORNDOWN of `handle`. */
  torndown(handle: number): boolean {
    return this.#torndown(handle);
  }

  /**
   * vmbus_open: allocates send/receive rings, establishes the ring GPADL, sends OPENCHANNEL.
   * Returns the channel, or the failing status.
   */
  open(offer: GuestOffer, options: {
    sendPages?: number;
    recvPages?: number;
    targetVp?: number;
    scattered?: boolean;
    userData?: Uint8Array;
  } = {}): GuestChannel {
    const r = this.tryOpen(offer, options);
    if (typeof r === "number") {
      throw new Error(`OPENCHANNEL failed with status 0x${r.toString(16)}`);
    }
    return r;
  }

  /** Like `open`, returning the failure status instead of throwing. */
  tryOpen(offer: GuestOffer, options: {
    sendPages?: number;
    recvPages?: number;
    targetVp?: number;
    scattered?: boolean;
    userData?: Uint8Array;
  } = {}): GuestChannel | number {
    const sendPages = options.sendPages ?? 4;
    const recvPages = options.recvPages ?? 4;
    const pages = this.pages.alloc(sendPages + recvPages, options.scattered ?? false);
    const out = new GuestRingView(this.memory, pages.slice(0, sendPages));
    const inn = new GuestRingView(this.memory, pages.slice(sendPages));
    out.init();
    inn.init();
    const { handle, status } = this.establishGpadl(offer.relid, pages);
    if (status !== 0) return status ?? -1;
    const targetVp = options.targetVp ?? 0;
    const openId = offer.relid;
    const msg = OpenChannel.encode({
      msgtype: Msg.OPENCHANNEL,
      childRelid: offer.relid,
      openId,
      ringbufferGpadlHandle: handle,
      targetVp,
      downstreamRingbufferPageOffset: sendPages,
      userData: options.userData ?? new Uint8Array(0),
    });
    this.post(msg);
    for (const m of this.receive()) {
      if (m.type !== Msg.OPENCHANNEL_RESULT) continue;
      const res = OpenResult.decode(m.payload)!;
      if (res.childRelid !== offer.relid || res.openId !== openId) continue;
      if (res.status !== 0) {
        this.teardownGpadl(offer.relid, handle);
        return res.status;
      }
      return new GuestChannel(this, offer, handle, pages, out, inn, targetVp);
    }
    return -1;
  }

  /**
   * vmbus_close_internal: CLOSECHANNEL, then tear down the ring GPADL; the ring pages are freed
   * once the host confirms (GPADL_TORNDOWN).
   */
  close(ch: GuestChannel): boolean {
    this.post(CloseChannel.encode({ msgtype: Msg.CLOSECHANNEL, childRelid: ch.relid }));
    const ok = this.teardownGpadl(ch.relid, ch.gpadl);
    if (ok) this.pages.free(ch.pages);
    return ok;
  }

  /** MODIFYCHANNEL; returns the response status on 5.3+, else undefined. */
  modify(relid: number, targetVp: number): number | undefined {
    this.post(ModifyChannel.encode({ msgtype: Msg.MODIFYCHANNEL, childRelid: relid, targetVp }));
    for (const m of this.receive()) {
      if (m.type === Msg.MODIFYCHANNEL_RESPONSE) {
        return ModifyChannelResponse.decode(m.payload)!.status;
      }
    }
    return undefined;
  }

  /** RELID_RELEASED (after a rescind). */
  release(relid: number): void {
    this.post(RelidReleased.encode({ msgtype: Msg.RELID_RELEASED, childRelid: relid }));
    this.offers.delete(relid);
  }

  /** UNLOAD; true when UNLOAD_RESPONSE came back. */
  unload(): boolean {
    this.post(MessageHeader.encode({ msgtype: Msg.UNLOAD }));
    const ok = this.expect(Msg.UNLOAD_RESPONSE) !== undefined;
    this.version = 0;
    this.messageConnectionId = VMBUS_MESSAGE_CONNECTION_ID;
    this.offers.clear();
    return ok;
  }
}

/** A channel the fake guest opened. */
export class GuestChannel {
  /** The guest. */
  readonly guest: LoopbackGuest;
  /** The offer. */
  readonly offer: GuestOffer;
  /** Ring GPADL handle. */
  readonly gpadl: number;
  /** Ring pages (send ring first). */
  readonly pages: readonly number[];
  /** Guest-to-host ring writer. */
  readonly out: GuestRingWriter;
  /** Host-to-guest ring reader. */
  readonly in: GuestRingReader;
  /** Target VP of host interrupts. */
  targetVp: number;
  #tid = 1n;

  constructor(
    guest: LoopbackGuest,
    offer: GuestOffer,
    gpadl: number,
    pages: readonly number[],
    out: GuestRingView,
    inn: GuestRingView,
    targetVp: number,
  ) {
    this.guest = guest;
    this.offer = offer;
    this.gpadl = gpadl;
    this.pages = pages;
    this.out = new GuestRingWriter(out);
    this.in = new GuestRingReader(inn);
    this.targetVp = targetVp;
  }

  /** Relid. */
  get relid(): number {
    return this.offer.relid;
  }

  /** vmbus_set_event: HvSignalEvent on the channel's connection id (or the interrupt page). */
  signalHost(): number {
    const g = this.guest;
    if (this.offer.dedicatedInterrupt) return g.server.onSignalEvent(this.offer.connectionId, 0);
    // 0.13: bit relid in the interrupt page's send half, then the shared event connection.
    const byte = g.interruptPage + 2048 + (this.relid >> 3);
    g.memory.writeU8(byte, g.memory.readU8(byte) | (1 << (this.relid & 7)));
    return g.server.onSignalEvent(VMBUS_EVENT_CONNECTION_ID, 0);
  }

  /** Writes a raw packet (descriptor..padding) and signals when Linux would. */
  sendRaw(packet: Uint8Array): "full" | "signal" | "no-signal" {
    const r = this.out.write(packet);
    if (r === "signal") this.signalHost();
    return r;
  }

  /** Sends an in-band packet; returns false when the ring is full. */
  send(
    payload: Uint8Array,
    options: { completionRequested?: boolean; transactionId?: bigint } = {},
  ): boolean {
    const tid = options.transactionId ?? this.#tid++;
    const pkt = encodePacket(
      6,
      options.completionRequested ? 1 : 0,
      tid,
      new Uint8Array(0),
      payload,
    );
    return this.sendRaw(pkt) !== "full";
  }

  /** Sends a completion for `transactionId`. */
  complete(transactionId: bigint, payload: Uint8Array = new Uint8Array(0)): boolean {
    return this.sendRaw(encodePacket(11, 0, transactionId, new Uint8Array(0), payload)) !== "full";
  }

  /** Reads every packet the host wrote, signalling the host when Linux would. */
  receive(): GuestPacket[] {
    const out: GuestPacket[] = [];
    for (;;) {
      const { packet, signal } = this.in.read();
      if (signal) this.signalHost();
      if (!packet) break;
      out.push(packet);
    }
    return out;
  }

  /** True (and clears it) when the host raised this channel's interrupt. */
  takeInterrupt(): boolean {
    const g = this.guest;
    if (g.version >= VmbusVersion.WIN8) {
      return g.synic.testAndClearFlag(this.targetVp, VMBUS_MESSAGE_SINT, this.relid);
    }
    const byte = g.interruptPage + (this.relid >> 3);
    const v = g.memory.readU8(byte);
    const bit = 1 << (this.relid & 7);
    g.synic.testAndClearFlag(0, VMBUS_MESSAGE_SINT, 0);
    if (!(v & bit)) return false;
    g.memory.writeU8(byte, v & ~bit);
    return true;
  }
}
