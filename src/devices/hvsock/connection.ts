/**
 * One hv_sock connection as a VMBus device: its own offer, its own channel, a host byte stream
 * behind it. Bytes move both ways with backpressure on both sides: guest packets wait in the
 * ring (`onPacket` returns false) while the host stream is behind, and host reads wait while the
 * guest's ring is full (the channel's `pending_send_sz` brings `onWritable`).
 *
 * Close order (Linux waits forever for the rescind in `vmbus_hvsock_device_unregister`): a FIN
 * either way half-closes. The guest's FIN becomes `closeWrite()` on the host stream once every
 * byte before it was written; the host's end of stream becomes a FIN packet after every byte
 * before it. When both FINs went through, the connection asks its owner to rescind the offer.
 * A broken host stream or a malformed packet ends the connection at once (FIN if it fits, then
 * rescind).
 * @module
 */
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import { getLogger, rateLimited } from "../../util/log.ts";
import {
  framePipePacket,
  HVSOCK_CHANNEL_FLAGS,
  HVSOCK_MTU,
  LINUX_SEND_CHUNK,
  offerUserDefined,
  parsePipePacket,
  PipeDataHeader,
} from "./protocol.ts";

/** The host side of a connection: a byte stream (`Deno.UnixConn` fits). */
export interface HostStream {
  /** Reads into `into`; resolves the byte count, or null at end of stream. May reject. */
  read(into: Uint8Array): Promise<number | null>;
  /** Writes some of `data`; resolves how many bytes were written. May reject. */
  write(data: Uint8Array): Promise<number>;
  /** Shuts down the write side (the peer reads end of stream). */
  closeWrite(): Promise<void>;
  /** Closes both directions; safe to call twice. */
  close(): void;
}

/** What a connection needs from whoever registered it with the VMBus server. */
export interface ConnectionOwner {
  /** Rescind the connection's offer (remove the device); `onClose` follows if it was open. */
  rescind(connection: HvsockConnection): void;
  /** The guest opened the channel: the connection is established. */
  opened?(connection: HvsockConnection): void;
  /** The connection is over (rescinded, closed, or dropped with the guest's VMBus). */
  ended(connection: HvsockConnection): void;
}

/** Options of `HvsockConnection`. */
export interface HvsockConnectionOptions {
  /** Service id (`if_type`), canonical GUID text. */
  readonly serviceId: string;
  /** Endpoint id (`if_instance`), canonical GUID text. */
  readonly endpointId: string;
  /** True when the host connects to a guest listener (`is_for_guest_accept`). */
  readonly forGuestAccept: boolean;
  /** The host side. */
  readonly stream: HostStream;
  /** Registration callbacks. */
  readonly owner: ConnectionOwner;
  /** Short description for logs and status, e.g. `guest:1234->host:5000`. */
  readonly label: string;
  /** Bytes written to the host stream when the guest opens, before any guest byte. */
  readonly greeting?: Uint8Array;
}

/** Host-bound bytes buffered before the guest's packets are left in its ring. */
const TO_HOST_HIGH_WATER = 256 * 1024;
/** Host stream read size (one read, then packets to the guest until it is sent). */
const READ_SIZE = 64 * 1024;
/** Descriptor + pipe header + trailer + the ring's one reserved slot, per packet. */
const PACKET_OVERHEAD = 16 + PipeDataHeader.size + 8 + 8;

const logger = getLogger("dev", "hvsock");
const warnGuest = rateLimited();
const noteAbort = rateLimited();

/** Life of a connection. */
export type ConnectionState = "offered" | "open" | "ended";

/** One hv_sock connection (a connection-scoped VMBus device). */
export class HvsockConnection implements VmbusDevice {
  readonly classId: string;
  readonly instanceId: string;
  readonly name: string;
  readonly userDefined: Uint8Array;
  readonly channelFlags = HVSOCK_CHANNEL_FLAGS;
  readonly connectionScoped = true;
  /** Bytes moved host → guest (sent as packets) and guest → host (written to the stream). */
  bytesToGuest = 0;
  bytesToHost = 0;

  readonly #stream: HostStream;
  readonly #owner: ConnectionOwner;
  readonly #greeting: Uint8Array | undefined;
  #state: ConnectionState = "offered";
  #channel: Channel | undefined;
  // host → guest
  readonly #readBuf = new Uint8Array(READ_SIZE);
  #readOff = 0;
  #readLen = 0;
  #reading = false;
  #hostEof = false;
  #finSent = false;
  readonly #packet = new Uint8Array(PipeDataHeader.size + HVSOCK_MTU);
  // guest → host
  #toHost: Uint8Array[] = [];
  #toHostBytes = 0;
  #writing = false;
  #guestPaused = false;
  #guestFin = false;
  #hostWriteClosed = false;

  constructor(options: HvsockConnectionOptions) {
    this.classId = options.serviceId;
    this.instanceId = options.endpointId;
    this.name = `hv_sock ${options.label}`;
    this.userDefined = offerUserDefined(options.forGuestAccept);
    this.#stream = options.stream;
    this.#owner = options.owner;
    this.#greeting = options.greeting;
  }

  /** `offered` until the guest opens the channel, `open`, then `ended`. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** True once the guest sent its FIN / once the host side ended its stream. */
  get halfClosed(): { guest: boolean; host: boolean } {
    return { guest: this.#guestFin, host: this.#hostEof };
  }

  /** Ends the connection from the host side (VMM shutdown, host-side timeout): rescinds. */
  abort(why: string): void {
    if (this.#state === "ended") return;
    noteAbort((n) =>
      logger.info("{name} ends early: {why}{more}", {
        name: this.name,
        why,
        more: n > 0 ? ` (${n} similar lines suppressed)` : "",
      })
    );
    if (this.#channel?.isOpen && !this.#finSent) {
      this.#finSent = this.#channel.send(framePipePacket(this.#packet, 0));
    }
    this.#end();
    this.#owner.rescind(this);
  }

  // ---- VmbusDevice ------------------------------------------------------------------------------

  onOpen(channel: Channel): boolean {
    if (this.#state !== "offered") return false;
    this.#channel = channel;
    this.#state = "open";
    if (this.#greeting) {
      this.#toHost.push(this.#greeting);
      this.#toHostBytes += this.#greeting.length;
      this.bytesToHost -= this.#greeting.length; // counted as written below; not guest data
      this.#pumpToHost();
    }
    this.#owner.opened?.(this);
    this.#pumpToGuest();
    return true;
  }

  onPacket(channel: Channel, packet: RingPacket): boolean {
    if (channel !== this.#channel || this.#state !== "open") return true;
    if (this.#toHostBytes >= TO_HOST_HIGH_WATER) {
      this.#guestPaused = true;
      return false;
    }
    const p = parsePipePacket(packet.payload);
    if (p.kind === "bad") {
      warnGuest((n) =>
        logger.warn("{name}: malformed guest packet ({why}); connection closed{more}", {
          name: this.name,
          why: p.why,
          more: n > 0 ? ` (${n} similar lines suppressed)` : "",
        })
      );
      this.abort("malformed packet");
      return true;
    }
    if (this.#guestFin) return true; // data after FIN: nothing may follow it
    if (p.kind === "fin") {
      this.#guestFin = true;
    } else {
      this.#toHost.push(p.data.slice());
      this.#toHostBytes += p.data.length;
    }
    this.#pumpToHost();
    return true;
  }

  onWritable(): void {
    this.#pumpToGuest();
  }

  onClose(): void {
    this.#channel = undefined;
    if (this.#state === "ended") return;
    // The guest closed the channel without a rescind from us: the connection is over.
    this.#end();
    queueMicrotask(() => this.#owner.rescind(this));
  }

  onDisconnect(): void {
    this.#channel = undefined;
    this.#end();
  }

  // ---- host → guest -----------------------------------------------------------------------------

  #pumpToGuest(): void {
    const ch = this.#channel;
    while (this.#state === "open" && ch?.isOpen) {
      if (this.#readOff < this.#readLen) {
        if (!this.#sendData(ch)) return; // onWritable resumes
        continue;
      }
      if (this.#hostEof) {
        if (!this.#finSent) {
          if (!ch.send(framePipePacket(this.#packet, 0))) return;
          this.#finSent = true;
        }
        this.#maybeFinish();
        return;
      }
      if (!this.#reading) this.#readHost();
      return;
    }
  }

  #sendData(ch: Channel): boolean {
    const sizes = ch.ringSizes;
    const fill = ch.ringFill;
    if (!sizes || !fill) return false;
    const remaining = this.#readLen - this.#readOff;
    // What fits now, so the guest gets data while it drains; never more than the ring can hold.
    const largest = Math.min(HVSOCK_MTU, (sizes.outgoing - PACKET_OVERHEAD - 8) & ~7);
    const free = (sizes.outgoing - fill.outgoing - PACKET_OVERHEAD) & ~7;
    let chunk = Math.min(remaining, largest, free);
    // Too little room: wait (pending_send_sz) until a Linux-sized chunk fits.
    const minimum = Math.min(remaining, LINUX_SEND_CHUNK, largest);
    if (chunk < minimum) chunk = minimum;
    if (chunk <= 0) {
      this.abort(`the guest's ring (${sizes.outgoing} bytes) holds no data packet`);
      return false;
    }
    this.#packet.set(
      this.#readBuf.subarray(this.#readOff, this.#readOff + chunk),
      PipeDataHeader.size,
    );
    if (!ch.send(framePipePacket(this.#packet, chunk))) return false;
    this.#readOff += chunk;
    this.bytesToGuest += chunk;
    return true;
  }

  #readHost(): void {
    this.#reading = true;
    this.#stream.read(this.#readBuf).then(
      (n) => {
        this.#reading = false;
        if (this.#state === "ended") return;
        if (n === null) {
          this.#hostEof = true;
        } else {
          this.#readOff = 0;
          this.#readLen = n;
        }
        this.#pumpToGuest();
      },
      (e) => {
        this.#reading = false;
        if (this.#state === "ended") return;
        // A reset host peer: deliver what is already in the ring, then FIN and rescind.
        this.abort(`host read failed: ${(e as Error).message}`);
      },
    );
  }

  // ---- guest → host -----------------------------------------------------------------------------

  #pumpToHost(): void {
    if (this.#writing || this.#state === "ended") return;
    if (this.#toHostBytes === 0) {
      if (this.#guestFin && !this.#hostWriteClosed) {
        this.#hostWriteClosed = true;
        this.#stream.closeWrite().catch(() => {}).finally(() => this.#maybeFinish());
      }
      return;
    }
    const parts = this.#toHost;
    const bytes = this.#toHostBytes;
    let buf: Uint8Array;
    if (parts.length === 1) {
      buf = parts[0]!;
    } else {
      buf = new Uint8Array(bytes);
      let at = 0;
      for (const p of parts) {
        buf.set(p, at);
        at += p.length;
      }
    }
    this.#toHost = [];
    this.#writing = true;
    this.#writeAll(buf).then(
      () => {
        this.#writing = false;
        if (this.#state === "ended") return;
        this.#toHostBytes -= bytes;
        this.bytesToHost += bytes;
        if (this.#guestPaused) {
          this.#guestPaused = false;
          this.#channel?.resume();
        }
        this.#pumpToHost();
      },
      (e) => {
        this.#writing = false;
        if (this.#state === "ended") return;
        this.abort(`host write failed: ${(e as Error).message}`);
      },
    );
  }

  async #writeAll(buf: Uint8Array): Promise<void> {
    let at = 0;
    while (at < buf.length) at += await this.#stream.write(buf.subarray(at));
  }

  // ---- end --------------------------------------------------------------------------------------

  #maybeFinish(): void {
    if (this.#state !== "open" || !this.#finSent || !this.#hostWriteClosed || this.#writing) {
      return;
    }
    // Both FINs went through: the guest now waits for the rescind (§8.6).
    this.#end();
    this.#owner.rescind(this);
  }

  #end(): void {
    if (this.#state === "ended") return;
    this.#state = "ended";
    this.#toHost = [];
    this.#toHostBytes = 0;
    try {
      this.#stream.close();
    } catch { /* already closed */ }
    this.#owner.ended(this);
  }
}
