/**
 * Test support for the network unit tests: `MemoryBackend` (frames in and out of the device
 * without a host NIC) and `NetvscGuest`, which plays Linux hv_netvsc's side of NVSP and RNDIS
 * over `LoopbackGuest` (netvsc.c, rndis_filter.c): version tries, receive and send buffers as
 * scattered GPADLs, RNDIS control messages as GPA-direct packets, data in send-buffer sections
 * or page ranges, and receive batches completed like `enq_receive_complete`.
 * @module
 */
import { hostCalls } from "../../../../ffi/libc.ts";
import type {
  NetBackend,
  NetQueue,
  RxInfo,
  TxOffload,
} from "../../../../src/devices/net/backend.ts";
import { hostAddress } from "../../../../src/devices/net/buffers.ts";
import { NetvspDevice, type NetvspOptions } from "../../../../src/devices/net/netvsp.ts";
import {
  NO_SECTION,
  NVSP_MESSAGE_SIZE,
  NvspType,
  Oid,
  RndisType,
} from "../../../../src/devices/net/protocol.ts";
import { encodePacket, type GuestPacket } from "../../../../src/vmbus/testing/guest_ring.ts";
import {
  type GuestChannel,
  type GuestOffer,
  LoopbackGuest,
} from "../../../../src/vmbus/testing/loopback_guest.ts";

/** A frame the device wrote to the backend. */
export interface SentFrame {
  readonly queue: number;
  readonly frame: Uint8Array;
  readonly offload: TxOffload;
}

/** One queue of `MemoryBackend`. */
export class MemoryQueue implements NetQueue {
  readonly index: number;
  readonly #owner: MemoryBackend;
  /** Frames waiting to be read by the device. */
  readonly inbox: { frame: Uint8Array; csumValid: boolean }[] = [];
  onReadable: (() => void) | undefined;
  constructor(owner: MemoryBackend, index: number) {
    this.#owner = owner;
    this.index = index;
  }
  read(dst: number, max: number, info: RxInfo): number {
    const f = this.inbox.shift();
    if (!f) return 0;
    const n = Math.min(max, f.frame.length);
    hostCalls.memcpy(dst, hostAddress(f.frame), n);
    info.csumValid = f.csumValid;
    return n;
  }
  write(frame: number, length: number, _headroom: number, offload: TxOffload): boolean {
    const copy = new Uint8Array(length);
    if (length > 0) hostCalls.memcpy(hostAddress(copy), frame, length);
    this.#owner.sent.push({ queue: this.index, frame: copy, offload: { ...offload } });
    return true;
  }
  watch(onReadable: (() => void) | undefined): void {
    this.onReadable = onReadable;
  }
}

/** An in-memory backend: `deliver` frames to the guest, read `sent` ones. */
export class MemoryBackend implements NetBackend {
  readonly queues: MemoryQueue[];
  readonly description = "memory";
  readonly headroom = 0;
  readonly sent: SentFrame[] = [];
  constructor(queues = 1) {
    this.queues = Array.from({ length: queues }, (_, i) => new MemoryQueue(this, i));
  }
  /** Queues `frame` on queue `q` and runs the device's reader while it watches. */
  deliver(frame: Uint8Array, q = 0, csumValid = false): void {
    const queue = this.queues[q]!;
    queue.inbox.push({ frame, csumValid });
    this.pump();
  }
  /** Lets the device read while it watches and frames wait. */
  pump(): void {
    for (let progress = true; progress;) {
      progress = false;
      for (const q of this.queues) {
        if (q.inbox.length > 0 && q.onReadable) {
          const before = q.inbox.length;
          q.onReadable();
          if (q.inbox.length < before) progress = true;
        }
      }
    }
  }
  close(): void {}
}

/** Little-endian u32 helpers. */
export function u32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true);
}
function put32(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v >>> 0, true);
}

/** An NVSP message of 40 bytes with u32 `fields` from offset 0. */
export function nvsp(...fields: number[]): Uint8Array {
  const out = new Uint8Array(NVSP_MESSAGE_SIZE);
  fields.forEach((v, i) => put32(out, i * 4, v));
  return out;
}

/** An RNDIS message: header + u32 body words + trailing bytes. */
export function rndisMessage(
  type: number,
  words: number[],
  tail: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const len = 8 + words.length * 4 + tail.length;
  const out = new Uint8Array(len);
  put32(out, 0, type);
  put32(out, 4, len);
  words.forEach((v, i) => put32(out, 8 + i * 4, v));
  out.set(tail, 8 + words.length * 4);
  return out;
}

/** An RNDIS data packet around `frame` with PPIs `[type, value]`, padded to 8 bytes. */
export function rndisPacket(frame: Uint8Array, ppis: [number, number][] = []): Uint8Array {
  const ppiLen = ppis.length * 16;
  const dataOffset = 36 + ppiLen;
  const len = (8 + dataOffset + frame.length + 7) & ~7;
  const out = new Uint8Array(len);
  put32(out, 0, RndisType.PACKET);
  put32(out, 4, len);
  put32(out, 8, dataOffset);
  put32(out, 12, frame.length);
  put32(out, 28, 36);
  put32(out, 32, ppiLen);
  ppis.forEach(([type, value], i) => {
    const at = 8 + 36 + i * 16;
    put32(out, at, 16);
    put32(out, at + 4, type);
    put32(out, at + 8, 12);
    put32(out, at + 12, value);
  });
  out.set(frame, 8 + dataOffset);
  return out;
}

/** A received RNDIS message (from a transfer-page range). */
export interface RxMessage {
  readonly type: number;
  readonly bytes: Uint8Array;
  readonly channelType: number;
}

/** Linux hv_netvsc's side, scripted. */
export class NetvscGuest {
  readonly guest: LoopbackGuest;
  readonly device: NetvspDevice;
  readonly backend: MemoryBackend;
  readonly offer: GuestOffer;
  ch!: GuestChannel;
  /** Sub-channels opened. */
  readonly subs: GuestChannel[] = [];
  recvPages: number[] = [];
  sendPages: number[] = [];
  recvGpadl = 0;
  sendGpadl = 0;
  sectionSize = 0;
  subAllocSize = 0;
  subAllocs = 0;
  version = 0;
  #tid = 100n;
  #req = 1;
  /** Messages received (control answers, indications, data) in order. */
  readonly received: RxMessage[] = [];
  /** In-band packets received (indirection table). */
  readonly inband: Uint8Array[] = [];
  /** Completions received, by tid. */
  readonly completions = new Map<bigint, Uint8Array>();
  /** Complete receive batches automatically. */
  autoComplete = true;
  /** Receive batches not completed yet (autoComplete off). */
  readonly heldBatches: { ch: GuestChannel; tid: bigint }[] = [];

  constructor(options: Partial<NetvspOptions> & { queues?: number; memoryBytes?: number } = {}) {
    this.backend = new MemoryBackend(options.queues ?? 1);
    this.device = new NetvspDevice(this.backend, {
      mac: options.mac ?? new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
      ...(options.mtu ? { mtu: options.mtu } : {}),
    });
    const { guest } = LoopbackGuest.create({
      devices: [this.device],
      memoryBytes: options.memoryBytes ?? 16 << 20,
    });
    this.guest = guest;
    guest.connect();
    const offers = guest.requestOffers();
    this.offer = offers.find((o) => o.classId === this.device.classId)!;
  }

  nextTid(): bigint {
    return this.#tid++;
  }

  /** Opens the primary channel with rings of `pages` pages each way. */
  open(pages = 32): void {
    this.ch = this.guest.open(this.offer, { sendPages: pages, recvPages: pages, scattered: true });
  }

  /** Sends an in-band NVSP message; returns its tid. */
  send(msg: Uint8Array, completion = true, ch: GuestChannel = this.ch): bigint {
    const tid = completion ? this.nextTid() : 0xffff_ffff_ffff_fff0n;
    if (!ch.send(msg, { completionRequested: completion, transactionId: tid })) {
      throw new Error("guest ring full");
    }
    return tid;
  }

  /** Sends a GPA-direct packet: NVSP `msg` with `data` in fresh guest pages. */
  sendDirect(msg: Uint8Array, data: Uint8Array, ch: GuestChannel = this.ch, startOffset = 0) {
    const pages = this.guest.pages.alloc(Math.ceil((startOffset + data.length) / 4096) || 1, true);
    const mem = this.guest.memory;
    // Write across the (scattered) pages, one range per page like Linux's page buffers.
    const ranges: { count: number; offset: number; pfn: number }[] = [];
    let at = 0;
    let off = startOffset;
    for (const p of pages) {
      const n = Math.min(4096 - off, data.length - at);
      if (n <= 0) break;
      mem.write(p + off, data.subarray(at, at + n));
      ranges.push({ count: n, offset: off, pfn: p / 4096 });
      at += n;
      off = 0;
    }
    const ext = new Uint8Array(8 + ranges.length * 16);
    put32(ext, 4, ranges.length);
    ranges.forEach((r, i) => {
      put32(ext, 8 + i * 16, r.count);
      put32(ext, 12 + i * 16, r.offset);
      put32(ext, 16 + i * 16, r.pfn);
    });
    const tid = this.nextTid();
    const r = ch.sendRaw(encodePacket(9, 1, tid, ext, msg));
    if (r === "full") throw new Error("guest ring full");
    return tid;
  }

  /** Reads every host packet on all channels and handles it like netvsc_poll. */
  poll(): void {
    this.guest.runDeferred();
    for (const ch of [this.ch, ...this.subs]) {
      for (const p of ch.receive()) this.#handle(ch, p);
    }
    this.guest.runDeferred();
  }

  #handle(ch: GuestChannel, p: GuestPacket): void {
    if (p.type === 11) {
      this.completions.set(p.transactionId, p.payload);
      return;
    }
    if (p.type === 6) {
      this.inband.push(p.payload);
      return;
    }
    if (p.type !== 7) throw new Error(`host sent packet type ${p.type}`);
    const setId = p.ext[0]! | (p.ext[1]! << 8);
    if (setId !== 0xcafe) throw new Error(`transfer page set ${setId}`);
    if (u32(p.payload, 0) !== NvspType.SEND_RNDIS_PKT) throw new Error("xfer without RNDIS");
    const channelType = u32(p.payload, 4);
    const count = u32(p.ext, 4);
    for (let i = 0; i < count; i++) {
      const len = u32(p.ext, 8 + i * 8);
      const off = u32(p.ext, 12 + i * 8);
      if (off + len > this.subAllocs * this.subAllocSize || len > this.subAllocSize) {
        throw new Error(`range ${off}+${len} outside the receive buffer`);
      }
      const bytes = this.readRecv(off, len);
      this.received.push({ type: u32(bytes, 0), bytes, channelType });
    }
    if (this.autoComplete) {
      ch.complete(p.transactionId, nvsp(NvspType.SEND_RNDIS_PKT_COMPLETE, 1).subarray(0, 8));
    } else this.heldBatches.push({ ch, tid: p.transactionId });
  }

  /** Reads `len` bytes at `off` of the (scattered) receive buffer. */
  readRecv(off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    for (let i = 0; i < len;) {
      const page = this.recvPages[Math.floor((off + i) / 4096)]!;
      const po = (off + i) % 4096;
      const n = Math.min(4096 - po, len - i);
      out.set(this.guest.memory.slice(page + po, n), i);
      i += n;
    }
    return out;
  }

  /** Waits (polls) for the completion of `tid`. */
  completion(tid: bigint): Uint8Array {
    this.poll();
    const c = this.completions.get(tid);
    if (!c) throw new Error(`no completion for tid ${tid}`);
    this.completions.delete(tid);
    return c;
  }

  /** netvsc_connect_vsp: versions 6.1 … 2, NDIS config and version, both buffers. */
  connectVsp(options: { recvPages?: number; sendPages?: number } = {}): void {
    for (const v of [0x60001, 0x60000, 0x50000, 0x40000, 0x30002, 0x2]) {
      const c = this.completion(this.send(nvsp(NvspType.INIT, v, v)));
      if (u32(c, 12) === 1) {
        this.version = v;
        break;
      }
    }
    if (!this.version) throw new Error("no NVSP version accepted");
    this.send(nvsp(NvspType.SEND_NDIS_CONFIG, 1514, 0, 0x8, 0), false);
    this.send(nvsp(NvspType.SEND_NDIS_VER, 6, 30), false);
    this.recvPages = this.guest.pages.alloc(options.recvPages ?? 128, true);
    this.recvGpadl = this.guest.establishGpadl(this.ch.relid, this.recvPages).handle;
    const rb = this.completion(this.send(nvsp(NvspType.SEND_RECV_BUF, this.recvGpadl, 0xcafe)));
    if (u32(rb, 4) !== 1) throw new Error("receive buffer refused");
    this.subAllocSize = u32(rb, 16);
    this.subAllocs = u32(rb, 20);
    this.sendPages = this.guest.pages.alloc(options.sendPages ?? 32, true);
    this.sendGpadl = this.guest.establishGpadl(this.ch.relid, this.sendPages).handle;
    const sb = this.completion(this.send(nvsp(NvspType.SEND_SEND_BUF, this.sendGpadl, 0)));
    if (u32(sb, 4) !== 1) throw new Error("send buffer refused");
    this.sectionSize = u32(sb, 8);
  }

  /** Sends RNDIS control `msg` (GPA-direct) and returns the answer (or undefined). */
  control(msg: Uint8Array, ch: GuestChannel = this.ch): RxMessage | undefined {
    const before = this.received.length;
    const tid = this.sendDirect(nvsp(NvspType.SEND_RNDIS_PKT, 1, NO_SECTION, 0), msg, ch, 4000);
    const c = this.completion(tid);
    if (u32(c, 0) !== NvspType.SEND_RNDIS_PKT_COMPLETE) throw new Error("bad completion");
    return this.received.slice(before).find((m) => m.channelType === 1);
  }

  /** RNDIS QUERY of `oid`; returns the answer's info bytes and status. */
  query(oid: number): { status: number; info: Uint8Array } {
    const req = this.#req++;
    const a = this.control(rndisMessage(RndisType.QUERY, [req, oid, 0, 20, 0]));
    if (!a || a.type !== RndisType.QUERY_C || u32(a.bytes, 8) !== req) {
      throw new Error("no QUERY_C");
    }
    const len = u32(a.bytes, 16);
    const off = u32(a.bytes, 20);
    return { status: u32(a.bytes, 12), info: a.bytes.slice(8 + off, 8 + off + len) };
  }

  /** RNDIS SET of `oid` with `value` bytes; returns the status. */
  set(oid: number, value: Uint8Array): number {
    const req = this.#req++;
    const a = this.control(rndisMessage(RndisType.SET, [req, oid, value.length, 20, 0], value));
    if (!a || a.type !== RndisType.SET_C) throw new Error("no SET_C");
    return u32(a.bytes, 12);
  }

  /** The whole Linux probe: open, NVSP, RNDIS init and queries, packet filter 0x0D. */
  probe(options: { filter?: number; pages?: number } = {}): void {
    this.open(options.pages);
    this.connectVsp();
    const init = this.control(rndisMessage(RndisType.INIT, [this.#req++, 1, 0, 0x4000]));
    if (!init || init.type !== RndisType.INIT_C || u32(init.bytes, 12) !== 0) {
      throw new Error("RNDIS INIT failed");
    }
    this.query(Oid.GEN_MAXIMUM_FRAME_SIZE);
    this.query(Oid.P802_3_PERMANENT_ADDRESS);
    this.query(Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES);
    this.query(Oid.GEN_MEDIA_CONNECT_STATUS);
    const f = new Uint8Array(4);
    put32(f, 0, options.filter ?? 0x0d);
    this.set(Oid.GEN_CURRENT_PACKET_FILTER, f);
  }

  /** Transmits `msgs` (RNDIS packets) through send-buffer section `section` (in-band). */
  sendInSection(msgs: Uint8Array[], section = 0, ch: GuestChannel = this.ch): bigint {
    let at = 0;
    for (const m of msgs) {
      this.writeSend(section * this.sectionSize + at, m);
      at += m.length;
    }
    return this.send(nvsp(NvspType.SEND_RNDIS_PKT, 0, section, at), true, ch);
  }

  /** Writes `data` at `off` of the (scattered) send buffer. */
  writeSend(off: number, data: Uint8Array): void {
    for (let i = 0; i < data.length;) {
      const page = this.sendPages[Math.floor((off + i) / 4096)]!;
      const po = (off + i) % 4096;
      const n = Math.min(4096 - po, data.length - i);
      this.guest.memory.write(page + po, data.subarray(i, i + n));
      i += n;
    }
  }

  /** Data frames received so far (RNDIS PACKET payloads), and clears them. */
  takeFrames(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const m of this.received) {
      if (m.type !== RndisType.PACKET) continue;
      const off = u32(m.bytes, 8);
      const len = u32(m.bytes, 12);
      out.push(m.bytes.slice(8 + off, 8 + off + len));
    }
    this.received.length = 0;
    return out;
  }
}

/** An Ethernet frame to `dst` of `length` bytes with a recognisable body. */
export function ethFrame(dst: Uint8Array, length: number, seed = 1): Uint8Array {
  const f = new Uint8Array(length);
  f.set(dst, 0);
  f.set([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc], 6);
  f[12] = 0x08;
  f[13] = 0x00;
  for (let i = 14; i < length; i++) f[i] = (i * 7 + seed) & 0xff;
  return f;
}
