/**
 * A channel as a device sees it: one offer (primary or sub-channel) for the lifetime of that
 * offer. While open it owns the ring pair, reads guest packets into the device, writes device
 * packets with flow control, and signals the guest by the ring rules.
 *
 * A `Channel` object is never reused: after the guest unloads VMBus or the offer is rescinded,
 * the next connection gets new objects (and possibly new relids). Devices must not keep a
 * channel past `onClose`.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import type { SendOptions, TransferPageRange, VmbusDevice } from "./device.ts";
import type { Gpadl, SgBuffer } from "./gpadl.ts";
import { VmPacketType } from "./protocol.ts";
import {
  EXTENSION_HEADER_SIZE,
  packetSize,
  RingError,
  type RingPacket,
  type RingPair,
  WriteResult,
} from "./ring.ts";

/** Life cycle of a channel offer. */
export type ChannelState = "offered" | "open" | "revoked" | "released";

/** Sentinel returned by `Channel.#call` when the device threw. */
const DEVICE_FAILED: unique symbol = Symbol("device failed");

/**
 * What a channel needs from its server. Internal to `src/vmbus`: devices never implement it.
 * @internal
 */
export interface ChannelHost {
  /** Guest RAM. */
  readonly memory: GuestMemory;
  /** Negotiated protocol version (0 when disconnected). */
  readonly version: number;
  /** Packets a channel reads per drain before yielding to the event loop. */
  readonly maxPacketsPerDrain: number;
  /** Runs `fn` later on the event loop. */
  defer(fn: () => void): void;
  /** Interrupts the guest for `channel`. */
  signalGuest(channel: Channel): void;
  /** A device callback threw (logging, stats). */
  deviceThrew(channel: Channel, what: string, error: unknown): void;
  /** Reports a corrupt ring (logging, stats). */
  ringFailed(channel: Channel, error: RingError): void;
  /** Takes a reference on a ready GPADL of this channel's device. */
  acquireGpadl(channel: Channel, id: number): Gpadl | undefined;
  /** Drops a reference taken by `acquireGpadl` or by an open ring. */
  releaseGpadl(gpadl: Gpadl): void;
  /** Runs `release` once `done` (a device's unfinished close) settles; tracked by the server. */
  afterClose(channel: Channel, done: Promise<void>, release: () => void): void;
  /** Offers sub-channels `1..count` of `primary`'s device. */
  enableSubChannels(primary: Channel, count: number): boolean;
}

/** Parameters of an open, from OPENCHANNEL. */
export interface OpenParams {
  /** The guest's open id (echoed in OPENCHANNEL_RESULT). */
  readonly openId: number;
  /** VP that receives this channel's interrupts (or `VP_INDEX_DISABLE_INTERRUPT`). */
  readonly targetVp: number;
  /** 120 bytes of user data from OPENCHANNEL. */
  readonly userData: Uint8Array;
}

const NO_TRANSFER_RANGES: readonly TransferPageRange[] = [];

/** One offered channel; the device's handle for sending and for GPADLs. */
export class Channel {
  /** The device behind the channel. */
  readonly device: VmbusDevice;
  /** Relative channel id (child_relid): the guest's name for the channel. */
  readonly relid: number;
  /** 0 for the primary channel, 1.. for sub-channels. */
  readonly subChannelIndex: number;
  /** Connection id the guest signals this channel with. */
  readonly connectionId: number;
  /** The primary channel of the device (itself for a primary). */
  readonly primary: Channel;
  readonly #host: ChannelHost;
  #state: ChannelState = "offered";
  #rings: RingPair | undefined;
  #ringGpadl: Gpadl | undefined;
  #params: OpenParams | undefined;
  #targetVp = 0;
  #deviceOpen = false;
  #broken = false;
  #paused = false;
  #draining = false;
  #drainAgain = false;
  #drainScheduled = false;
  #blockedNeed = 0;
  readonly #acquired = new Map<number, Gpadl>();
  /** The device's close while it still has I/O in flight (`onClose` returned a Promise). */
  #closing: Promise<void> | undefined;
  #tpExt = new Uint8Array(64);
  #tpView = new DataView(this.#tpExt.buffer);

  /** @internal Created by the server when it offers the channel. */
  constructor(
    host: ChannelHost,
    device: VmbusDevice,
    relid: number,
    subChannelIndex: number,
    connectionId: number,
    primary: Channel | undefined,
  ) {
    this.#host = host;
    this.device = device;
    this.relid = relid;
    this.subChannelIndex = subChannelIndex;
    this.connectionId = connectionId;
    this.primary = primary ?? this;
  }

  /** Offer state (`open` stays until the guest closes, even when the ring broke). */
  get state(): ChannelState {
    return this.#state;
  }

  /** Packets read from the guest's ring (for status displays). */
  packetsReceived = 0;
  /** Packets written to the guest's ring. */
  packetsSent = 0;

  /** Ring fill levels in bytes (guest→host, host→guest), or undefined while closed. */
  get ringFill(): { incoming: number; outgoing: number } | undefined {
    const r = this.#rings;
    return r ? { incoming: r.incoming.bytesUsed, outgoing: r.outgoing.bytesUsed } : undefined;
  }

  /** True when packets can flow: open, device accepted, ring not corrupt. */
  get isOpen(): boolean {
    return this.#state === "open" && this.#deviceOpen && !this.#broken;
  }

  /** True when the ring turned out corrupt (the channel stopped; the guest must close it). */
  get isBroken(): boolean {
    return this.#broken;
  }

  /** Negotiated VMBus version. */
  get version(): number {
    return this.#host.version;
  }

  /** Guest RAM (for GPA-direct ranges). */
  get memory(): GuestMemory {
    return this.#host.memory;
  }

  /** VP receiving the channel's interrupts (valid while open). */
  get targetVp(): number {
    return this.#targetVp;
  }

  /** The OPENCHANNEL parameters (while open). */
  get openParams(): OpenParams | undefined {
    return this.#params;
  }

  /** Data bytes of the two rings (while open). */
  get ringSizes(): { incoming: number; outgoing: number } | undefined {
    const r = this.#rings;
    return r ? { incoming: r.incoming.size, outgoing: r.outgoing.size } : undefined;
  }

  /** True when a send is waiting for the guest to free ring space. */
  get isBlocked(): boolean {
    return this.#blockedNeed !== 0;
  }

  /**
   * Sends an in-band packet. Returns false when the channel is not open or the ring is full; in
   * the latter case `onWritable` fires once the guest frees enough space. Throws `RangeError`
   * when the packet can never fit the ring. Mind the guest's limit too: Linux drivers copy each
   * packet into a buffer of their `max_pkt_size` (4 KiB unless the driver raised it) and
   * truncate longer ones.
   */
  send(payload: Uint8Array, options?: SendOptions): boolean {
    const flags = options?.completionRequested ? 1 : 0;
    const tid = options?.transactionId;
    if (tid === undefined) return this.#write(VmPacketType.DATA_INBAND, flags, 0, 0, null, payload);
    return this.#write(
      VmPacketType.DATA_INBAND,
      flags,
      Number(BigInt.asUintN(32, tid)),
      Number(BigInt.asUintN(32, tid >> 32n)),
      null,
      payload,
    );
  }

  /**
   * Sends a completion (VM_PKT_COMP) for `transaction` (a transaction id, or the packet being
   * completed, which avoids bigint work). Same return contract as `send`.
   */
  complete(transaction: bigint | RingPacket, payload?: Uint8Array): boolean {
    if (typeof transaction === "bigint") {
      return this.#write(
        VmPacketType.COMP,
        0,
        Number(BigInt.asUintN(32, transaction)),
        Number(BigInt.asUintN(32, transaction >> 32n)),
        null,
        payload ?? null,
      );
    }
    return this.#write(
      VmPacketType.COMP,
      0,
      transaction.tidLo,
      transaction.tidHi,
      null,
      payload ?? null,
    );
  }

  /**
   * Sends a transfer-page packet (VM_PKT_DATA_USING_XFER_PAGES): `ranges` index into transfer
   * page set `setId` (a GPADL the guest registered with the device). Completion is requested
   * unless `options.completionRequested` is false. Same return contract as `send`.
   */
  sendTransferPages(
    setId: number,
    ranges: readonly TransferPageRange[] = NO_TRANSFER_RANGES,
    payload?: Uint8Array,
    options?: SendOptions,
  ): boolean {
    const extLen = EXTENSION_HEADER_SIZE + ranges.length * 8;
    if (this.#tpExt.length < extLen) {
      this.#tpExt = new Uint8Array(Math.max(extLen, this.#tpExt.length * 2));
      this.#tpView = new DataView(this.#tpExt.buffer);
    }
    const dv = this.#tpView;
    dv.setUint16(0, setId, true);
    dv.setUint8(2, 0);
    dv.setUint8(3, 0);
    dv.setUint32(4, ranges.length, true);
    for (let i = 0; i < ranges.length; i++) {
      dv.setUint32(EXTENSION_HEADER_SIZE + i * 8, ranges[i]!.byteCount, true);
      dv.setUint32(EXTENSION_HEADER_SIZE + i * 8 + 4, ranges[i]!.byteOffset, true);
    }
    const flags = options?.completionRequested === false ? 0 : 1;
    const tid = options?.transactionId ?? 0n;
    return this.#write(
      VmPacketType.DATA_USING_XFER_PAGES,
      flags,
      Number(BigInt.asUintN(32, tid)),
      Number(BigInt.asUintN(32, tid >> 32n)),
      this.#tpExt.subarray(0, extLen),
      payload ?? null,
    );
  }

  /** True when an in-band packet with `payloadLength` bytes fits the ring right now. */
  canSend(payloadLength: number): boolean {
    const rings = this.#rings;
    if (!this.isOpen || !rings) return false;
    try {
      return rings.outgoing.hasSpace(packetSize(0, payloadLength));
    } catch (e) {
      this.#fail(e);
      return false;
    }
  }

  #write(
    type: number,
    flags: number,
    tidLo: number,
    tidHi: number,
    ext: Uint8Array | null,
    payload: Uint8Array | null,
  ): boolean {
    const rings = this.#rings;
    if (!this.isOpen || !rings) return false;
    let result: WriteResult;
    try {
      result = rings.outgoing.writePacket(type, flags, tidLo, tidHi, ext, payload);
    } catch (e) {
      if (e instanceof RingError) {
        this.#fail(e);
        return false;
      }
      throw e;
    }
    if (result === WriteResult.FULL) {
      this.#blockedNeed = packetSize(ext ? ext.length : 0, payload ? payload.length : 0);
      return false;
    }
    this.packetsSent++;
    if (result === WriteResult.WRITTEN_SIGNAL) this.#host.signalGuest(this);
    return true;
  }

  /**
   * Reads packets again after `onPacket` returned false (or to poll the ring). Safe to call
   * from inside a device callback: the read loop resumes when the current one returns.
   */
  resume(): void {
    this.#paused = false;
    this.#drain();
  }

  /**
   * Takes a reference on GPADL `id` created by the guest on any channel of this device and
   * returns its scatter/gather view, or `undefined` when there is no such ready GPADL. The
   * guest's teardown of it waits until `releaseGpadl` (or the channel closes).
   */
  acquireGpadl(id: number): SgBuffer | undefined {
    if (!this.isOpen) return undefined;
    const held = this.#acquired.get(id);
    if (held) return held.buffer(this.#host.memory);
    const g = this.#host.acquireGpadl(this, id);
    if (!g) return undefined;
    this.#acquired.set(id, g);
    return g.buffer(this.#host.memory);
  }

  /** Drops the reference `acquireGpadl(id)` took. */
  releaseGpadl(id: number): void {
    const g = this.#acquired.get(id);
    if (!g) return;
    this.#acquired.delete(id);
    this.#host.releaseGpadl(g);
  }

  /**
   * Offers sub-channels `1..count` of this (primary, open) channel's device, as the device's
   * protocol asks (NVSP subchannel request, VSTOR create sub-channels). Returns false when
   * `count` exceeds `device.maxSubChannels` or the protocol version (< 2.4) has none.
   */
  enableSubChannels(count: number): boolean {
    if (this.primary !== this || !this.isOpen) return false;
    return this.#host.enableSubChannels(this, count);
  }

  // ---- server side (internal) -----------------------------------------------------------------

  /**
   * Opens the channel over `rings` and asks the device. Returns false (and stays offered) when
   * the device refuses.
   * @internal
   */
  _open(rings: RingPair, ringGpadl: Gpadl, params: OpenParams): boolean {
    this.#rings = rings;
    this.#ringGpadl = ringGpadl;
    this.#params = params;
    this.#targetVp = params.targetVp;
    this.#state = "open";
    this.#broken = false;
    this.#paused = false;
    this.#blockedNeed = 0;
    rings.incoming.setInterruptMask(false);
    this.#deviceOpen = true;
    const ok = this.#call("onOpen", () => this.device.onOpen(this));
    if (ok === false || ok === DEVICE_FAILED) {
      this.#deviceOpen = false;
      this.#releaseAcquired();
      this.#rings = undefined;
      this.#ringGpadl = undefined;
      this.#params = undefined;
      this.#state = "offered";
      return false;
    }
    return true;
  }

  /**
   * Reads whatever the guest queued before or during the open.
   * @internal
   */
  _start(): void {
    this.#drain();
  }

  /**
   * Closes the channel (guest CLOSECHANNEL, unload, rescind): tells the device, releases
   * GPADLs. Returns the ring GPADL for the server to release.
   * @internal
   */
  _close(): Gpadl | undefined {
    if (this.#state !== "open") return undefined;
    this.#state = "offered";
    this.#notifyClosed();
    const g = this.#ringGpadl;
    this.#rings = undefined;
    this.#ringGpadl = undefined;
    this.#params = undefined;
    this.#broken = false;
    this.#blockedNeed = 0;
    if (g && this.#closing) {
      // The device may still write guest memory: the ring stays until it is done.
      this.#holdUntilClosed([g]);
      return undefined;
    }
    return g;
  }

  /** Marks the offer rescinded. @internal */
  _revoke(): void {
    this.#state = "revoked";
  }

  /** Marks the offer released by the guest (final). @internal */
  _release(): void {
    this.#state = "released";
  }

  /** The guest moved the interrupt target. @internal */
  _retarget(targetVp: number): void {
    this.#targetVp = targetVp;
    if (this.isOpen && this.device.onRetarget) {
      this.#call("onRetarget", () => this.device.onRetarget!(this, targetVp));
    }
  }

  /** True when this channel's device holds GPADL `id`. @internal */
  _holdsGpadl(id: number): boolean {
    return this.#acquired.has(id);
  }

  /** The guest asked to tear down a GPADL this channel's device holds. @internal */
  _gpadlTeardownRequested(id: number): void {
    if (this.device.onGpadlTeardown && this.#deviceOpen) {
      this.#call("onGpadlTeardown", () => this.device.onGpadlTeardown!(this, id));
    }
  }

  /**
   * The guest signalled the channel: it wrote packets, or it freed space we were waiting for.
   * @internal
   */
  _signal(): void {
    const rings = this.#rings;
    if (!this.isOpen || !rings) return;
    if (this.#blockedNeed !== 0) {
      let writable = false;
      try {
        writable = rings.outgoing.hasSpace(this.#blockedNeed);
      } catch (e) {
        this.#fail(e);
        return;
      }
      if (writable) {
        this.#blockedNeed = 0;
        rings.outgoing.clearPending();
        if (this.device.onWritable) {
          this.#call("onWritable", () => this.device.onWritable!(this));
        }
        if (!this.isOpen) return;
      }
    }
    this.#paused = false;
    this.#drain();
  }

  #drain(): void {
    if (this.#draining) {
      this.#drainAgain = true;
      return;
    }
    const rings = this.#rings;
    if (!rings || !this.isOpen || this.#paused) return;
    const ring = rings.incoming;
    const host = this.#host;
    let budget = host.maxPacketsPerDrain;
    this.#draining = true;
    try {
      for (;;) {
        this.#drainAgain = false;
        ring.setInterruptMask(true);
        while (budget > 0) {
          const pkt = ring.readPacket();
          if (!pkt) break;
          budget--;
          this.packetsReceived++;
          let r: boolean | void | typeof DEVICE_FAILED;
          try {
            r = this.device.onPacket(this, pkt);
          } catch (e) {
            host.deviceThrew(this, "onPacket", e);
            r = DEVICE_FAILED;
          }
          if (this.#rings !== rings || !this.isOpen) return;
          if (r === false) {
            ring.rewind();
            this.#paused = true;
            break;
          }
          // The read index is published once per pass, unless the guest waits for space.
          if (ring.commitIfGuestWaits()) host.signalGuest(this);
        }
        // Publish what was read and unmask (one fence), then re-check below.
        if (ring.endRead()) host.signalGuest(this);
        if (this.#paused) {
          if (!this.#drainAgain) return;
          this.#paused = false;
          continue;
        }
        if (budget === 0) {
          this.#scheduleDrain();
          return;
        }
        // Re-check after unmasking: the guest may have written without signalling.
        if (ring.isEmpty() && !this.#drainAgain) return;
      }
    } catch (e) {
      this.#fail(e);
    } finally {
      this.#draining = false;
    }
  }

  #call<T>(what: string, fn: () => T): T | typeof DEVICE_FAILED {
    try {
      return fn();
    } catch (e) {
      this.#host.deviceThrew(this, what, e);
      return DEVICE_FAILED;
    }
  }

  #scheduleDrain(): void {
    if (this.#drainScheduled) return;
    this.#drainScheduled = true;
    this.#host.defer(() => {
      this.#drainScheduled = false;
      this.#drain();
    });
  }

  #fail(e: unknown): void {
    if (!(e instanceof RingError)) throw e;
    if (this.#broken) return;
    this.#broken = true;
    this.#host.ringFailed(this, e);
    this.#notifyClosed();
  }

  #notifyClosed(): void {
    if (this.#deviceOpen) {
      this.#deviceOpen = false;
      const r = this.#call("onClose", () => this.device.onClose(this));
      if (r instanceof Promise) {
        const closing = r;
        this.#closing = closing;
        const done = () => {
          if (this.#closing === closing) this.#closing = undefined;
        };
        closing.then(done, done);
      }
    }
    if (!this.#closing) return this.#releaseAcquired();
    const held = [...this.#acquired.values()];
    this.#acquired.clear();
    this.#holdUntilClosed(held);
  }

  /** Releases `gpadls` once the device's pending close settled. */
  #holdUntilClosed(gpadls: readonly Gpadl[]): void {
    if (gpadls.length === 0) return;
    this.#host.afterClose(this, this.#closing!, () => {
      for (const g of gpadls) this.#host.releaseGpadl(g);
    });
  }

  #releaseAcquired(): void {
    for (const g of this.#acquired.values()) this.#host.releaseGpadl(g);
    this.#acquired.clear();
  }
}
