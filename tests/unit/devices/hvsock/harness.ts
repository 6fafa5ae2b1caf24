/**
 * Test rig for hv_sock: the real VMBus server with a scripted Linux-like guest (`LoopbackGuest`),
 * an `HvsockHost` and in-memory host streams.
 */
import {
  type HostStream,
  HvsockHost,
  type HvsockHostOptions,
  PipeDataHeader,
} from "../../../../src/devices/hvsock/mod.ts";
import { ChannelMessageType as Msg, TlConnectRequest } from "../../../../src/vmbus/protocol.ts";
import { parseGuid } from "../../../../src/vmbus/guid.ts";
import type { VmbusServer } from "../../../../src/vmbus/server.ts";
import {
  type GuestChannel,
  type GuestOffer,
  LoopbackGuest,
} from "../../../../src/vmbus/testing/loopback_guest.ts";

/** An in-memory host stream: the test feeds reads and inspects writes. */
export class FakeStream implements HostStream {
  /** Everything written, in order. */
  readonly written: number[] = [];
  writes = 0;
  writeClosed = false;
  closed = false;
  /** Bytes (or null = end of stream, or an Error) handed to the next reads. */
  readonly #reads: (Uint8Array | null | Error)[] = [];
  #waiting:
    | { into: Uint8Array; resolve: (n: number | null) => void; reject: (e: Error) => void }
    | undefined;
  /** Largest write accepted at once (partial writes). */
  maxWrite = Infinity;
  /** Writes stall (never settle) while true; `releaseWrites` settles them. */
  stallWrites = false;
  readonly #stalled: (() => void)[] = [];
  /** Make writes fail. */
  failWrites = false;

  feed(item: Uint8Array | null | Error): void {
    this.#reads.push(item);
    this.#serve();
  }

  read(into: Uint8Array): Promise<number | null> {
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => {
      this.#waiting = { into, resolve, reject };
      this.#serve();
    });
  }

  #serve(): void {
    const w = this.#waiting;
    if (!w || this.#reads.length === 0) return;
    const item = this.#reads[0]!;
    this.#waiting = undefined;
    if (item === null) {
      this.#reads.shift();
      return w.resolve(null);
    }
    if (item instanceof Error) {
      this.#reads.shift();
      return w.reject(item);
    }
    const n = Math.min(item.length, w.into.length);
    w.into.set(item.subarray(0, n));
    if (n === item.length) this.#reads.shift();
    else this.#reads[0] = item.subarray(n);
    w.resolve(n);
  }

  write(data: Uint8Array): Promise<number> {
    if (this.closed) return Promise.reject(new Error("closed"));
    if (this.failWrites) return Promise.reject(new Error("broken pipe"));
    const n = Math.min(data.length, this.maxWrite);
    const done = () => {
      for (let i = 0; i < n; i++) this.written.push(data[i]!);
      this.writes++;
    };
    if (this.stallWrites) {
      return new Promise((resolve) => this.#stalled.push(() => (done(), resolve(n))));
    }
    done();
    return Promise.resolve(n);
  }

  releaseWrites(): void {
    this.stallWrites = false;
    for (const f of this.#stalled.splice(0)) f();
  }

  closeWrite(): Promise<void> {
    this.writeClosed = true;
    return Promise.resolve();
  }

  close(): void {
    this.closed = true;
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.resolve(null);
  }
}

/** Lets promise callbacks and zero-delay timers run. */
export async function settle(guest?: LoopbackGuest, rounds = 4): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    await new Promise((r) => setTimeout(r, 0));
    guest?.runDeferred();
  }
}

/** A guest with VMBus up and hv_sock served by an `HvsockHost` over fake streams. */
export interface Rig {
  guest: LoopbackGuest;
  server: VmbusServer;
  host: HvsockHost;
  /** Streams handed out for guest connects, by host port. */
  streams: Map<number, FakeStream>;
  /** Ports the guest connected to that the backend refused. */
  refusedPorts: Set<number>;
  detach: () => void;
}

/** Builds the rig; `refuse` lists host ports nobody serves. */
export function rig(options: HvsockHostOptions & { refuse?: number[] } = {}): Rig {
  const streams = new Map<number, FakeStream>();
  const refusedPorts = new Set(options.refuse ?? []);
  const host = new HvsockHost({
    connectToHost: (port) => {
      if (refusedPorts.has(port)) return Promise.resolve(undefined);
      const s = new FakeStream();
      streams.set(port, s);
      return Promise.resolve(s);
    },
  }, options);
  const { guest, server } = LoopbackGuest.create({ server: host.serverOptions });
  const detach = host.attach(server);
  guest.connect();
  guest.requestOffers();
  return { guest, server, host, streams, refusedPorts, detach };
}

/** The Linux hv_sock id of `port`, as bytes. */
export function portGuid(port: number): Uint8Array {
  return parseGuid((port >>> 0).toString(16).padStart(8, "0") + "-facb-11e6-bd58-64006a7986d3");
}

/** hvs_connect: TL_CONNECT_REQUEST from guest port `local` to host port `remote`. */
export function guestConnect(guest: LoopbackGuest, local: number, remote: number): void {
  guest.post(TlConnectRequest.encode({
    msgtype: Msg.TL_CONNECT_REQUEST,
    guestEndpointId: portGuid(local),
    hostServiceId: portGuid(remote),
  }));
}

/** The newest offer whose class is the service id of `port`, if any. */
export function offerFor(guest: LoopbackGuest, port: number): GuestOffer | undefined {
  guest.receive();
  const id = (port >>> 0).toString(16).padStart(8, "0") + "-facb-11e6-bd58-64006a7986d3";
  let found: GuestOffer | undefined;
  for (const o of guest.offers.values()) if (o.classId === id) found = o;
  return found;
}

/** A pipe data packet payload (header + data). */
export function pipePacket(data: Uint8Array): Uint8Array {
  const p = new Uint8Array(PipeDataHeader.size + data.length);
  PipeDataHeader.encode({ pktType: 1, dataSize: data.length }, p);
  p.set(data, PipeDataHeader.size);
  return p;
}

/** Reads the host's packets on `ch`: concatenated data, and whether a FIN came. */
export function drainGuest(ch: GuestChannel): { data: number[]; fin: boolean } {
  const data: number[] = [];
  let fin = false;
  for (const p of ch.receive()) {
    const size = PipeDataHeader.get(p.payload, 0, "dataSize");
    if (size === 0) fin = true;
    for (let i = 0; i < size; i++) data.push(p.payload[PipeDataHeader.size + i]!);
  }
  return { data, fin };
}

/** Deterministic bytes. */
export function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
