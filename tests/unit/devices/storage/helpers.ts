/**
 * Test support for the storage unit tests: assertions over node:assert/strict, an in-memory
 * `DiskBackend`, temporary files, and `StorvscGuest`, which plays Linux storvsc's side of the
 * protocol over `LoopbackGuest` (init sequence, EXECUTE_SRB with GPA-direct page lists).
 * @module
 */
import nodeAssert from "node:assert/strict";
import {
  checkRange,
  type DiskBackend,
  DiskError,
} from "../../../../src/devices/storage/backend/backend.ts";
import {
  MAX_VSTOR_PACKET_SIZE,
  VstorOperation,
  VstorVersion,
} from "../../../../src/devices/storage/protocol.ts";
import { ScsiController } from "../../../../src/devices/storage/scsi/controller.ts";
import { type ScsiBuffer, ScsiDisk } from "../../../../src/devices/storage/scsi/disk.ts";
import { StorvspDevice, type StorvspOptions } from "../../../../src/devices/storage/storvsp.ts";
import { encodePacket, type GuestPacket } from "../../../../src/vmbus/testing/guest_ring.ts";
import {
  type GuestChannel,
  type GuestOffer,
  LoopbackGuest,
} from "../../../../src/vmbus/testing/loopback_guest.ts";

/** Deep strict equality. */
export function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  nodeAssert.deepEqual(actual, expected, message);
}

/** Truthiness. */
export function assert(condition: unknown, message?: string): asserts condition {
  nodeAssert.ok(condition, message);
}

/** `fn` rejects (or throws) with an error whose class is `cls` and message matches `re`. */
export async function assertRejects(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  cls: abstract new (...args: any[]) => Error,
  re?: RegExp,
): Promise<Error> {
  let err: unknown;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  assert(err instanceof cls, `expected ${cls.name}, got ${String(err)}`);
  if (re) assert(re.test((err as Error).message), `message '${(err as Error).message}' !~ ${re}`);
  return err as Error;
}

/** True when qemu-img is installed. */
export function haveQemuImg(): boolean {
  try {
    new Deno.Command("qemu-img", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync();
    return true;
  } catch {
    return false;
  }
}

/** Runs qemu-img; returns exit code and output. */
export function qemuImg(...args: string[]): { code: number; out: string } {
  const r = new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" }).outputSync();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
}

/** A temporary directory removed by `using`. */
export function tempDir(): { path: string; [Symbol.dispose](): void } {
  const path = Deno.makeTempDirSync({ prefix: "hyperdeno-storage-" });
  return {
    path,
    [Symbol.dispose]() {
      Deno.removeSync(path, { recursive: true });
    },
  };
}

/** The file system type of the mount holding `path` (from /proc/mounts), or undefined. */
export function fsTypeOf(path: string): string | undefined {
  let mounts: string;
  try {
    mounts = Deno.readTextFileSync("/proc/mounts");
  } catch {
    return undefined;
  }
  const real = Deno.realPathSync(path);
  let best: { at: string; type: string } | undefined;
  for (const line of mounts.split("\n")) {
    const [, at, type] = line.split(" ");
    if (!at || !type) continue;
    const inside = real === at || real.startsWith(at.endsWith("/") ? at : `${at}/`);
    if (inside && (!best || at.length > best.at.length)) best = { at, type };
  }
  return best?.type;
}

/**
 * A temporary directory on a disk file system (O_DIRECT tests): the system temporary directory
 * unless it is tmpfs, else /var/tmp, else the repository's `.cache`.
 */
export function diskTempDir(): { path: string; [Symbol.dispose](): void } {
  const repoCache = new URL("../../../../.cache", import.meta.url).pathname;
  const candidates = [undefined, "/var/tmp", repoCache];
  for (const parent of candidates) {
    try {
      if (parent) Deno.mkdirSync(parent, { recursive: true });
      const prefix = "hyperdeno-storage-";
      const path = Deno.makeTempDirSync(parent ? { prefix, dir: parent } : { prefix });
      if (fsTypeOf(path) !== "tmpfs" || parent === repoCache) {
        return {
          path,
          [Symbol.dispose]() {
            Deno.removeSync(path, { recursive: true });
          },
        };
      }
      Deno.removeSync(path, { recursive: true });
    } catch { /* try the next */ }
  }
  return tempDir();
}

/** Deterministic bytes. */
export function pattern(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** An in-memory disk with optional artificial latency and failure injection. */
export class MemoryBackend implements DiskBackend {
  readonly format = "memory";
  readonly size: number;
  readonly sectorSize: number;
  readonly readOnly: boolean;
  readonly canDiscard: boolean;
  readonly discardGranularity: number;
  readonly bytes: Uint8Array;
  flushes = 0;
  discards: [number, number][] = [];
  /** Throw this on the next I/O. */
  failNext: DiskError | undefined;
  /** Milliseconds each I/O waits. */
  delayMs = 0;
  /** Highest number of reads/writes in flight at once. */
  maxInflight = 0;
  #inflight = 0;

  constructor(
    size: number,
    opts: { sectorSize?: number; readOnly?: boolean; thin?: boolean } = {},
  ) {
    this.size = size;
    this.bytes = new Uint8Array(size);
    this.sectorSize = opts.sectorSize ?? 512;
    this.readOnly = opts.readOnly ?? false;
    this.canDiscard = opts.thin ?? true;
    this.discardGranularity = 4096;
  }

  async #io(): Promise<void> {
    this.#inflight++;
    this.maxInflight = Math.max(this.maxInflight, this.#inflight);
    try {
      if (this.delayMs) await new Promise((r) => setTimeout(r, this.delayMs));
      else await Promise.resolve();
      const f = this.failNext;
      if (f) {
        this.failNext = undefined;
        throw f;
      }
    } finally {
      this.#inflight--;
    }
  }

  async read(offset: number, dst: Uint8Array): Promise<void> {
    checkRange(offset, dst.length, this.size);
    await this.#io();
    dst.set(this.bytes.subarray(offset, offset + dst.length));
  }

  async write(offset: number, src: Uint8Array): Promise<void> {
    if (this.readOnly) throw new DiskError("read-only", "read-only");
    checkRange(offset, src.length, this.size);
    await this.#io();
    this.bytes.set(src, offset);
  }

  async readv(offset: number, dst: readonly Uint8Array[]): Promise<void> {
    const length = dst.reduce((n, d) => n + d.length, 0);
    checkRange(offset, length, this.size);
    await this.#io();
    let at = offset;
    for (const d of dst) {
      d.set(this.bytes.subarray(at, at + d.length));
      at += d.length;
    }
  }

  async writev(offset: number, src: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) throw new DiskError("read-only", "read-only");
    const length = src.reduce((n, d) => n + d.length, 0);
    checkRange(offset, length, this.size);
    await this.#io();
    let at = offset;
    for (const d of src) {
      this.bytes.set(d, at);
      at += d.length;
    }
  }

  async flush(): Promise<void> {
    await this.#io();
    this.flushes++;
  }

  async discard(offset: number, length: number): Promise<void> {
    checkRange(offset, length, this.size);
    await this.#io();
    this.discards.push([offset, length]);
    this.bytes.fill(0, offset, offset + length);
  }

  close(): void {}
}

/** A linear `ScsiBuffer` over one array (optionally split into `pieces` segments). */
export function linearBuffer(bytes: Uint8Array, pieces = 1): ScsiBuffer {
  const segs: Uint8Array[] = [];
  const step = Math.ceil(bytes.length / pieces) || 1;
  for (let at = 0; at < bytes.length; at += step) segs.push(bytes.subarray(at, at + step));
  return {
    length: bytes.length,
    segments: segs,
    read: (o, dst) => {
      if (o + dst.length > bytes.length) throw new RangeError("read past buffer");
      dst.set(bytes.subarray(o, o + dst.length));
    },
    write: (o, src) => {
      if (o + src.length > bytes.length) throw new RangeError("write past buffer");
      bytes.set(src, o);
    },
  };
}

/** A host completion as the guest decoded it. */
export interface VstorReply {
  readonly operation: number;
  readonly status: number;
  readonly packetSize: number;
  readonly transactionId: bigint;
  readonly srbStatus: number;
  readonly scsiStatus: number;
  readonly senseLength: number;
  readonly dataTransferLength: number;
  readonly sense: Uint8Array;
  /** The whole packet payload. */
  readonly payload: Uint8Array;
}

/** Decodes a vstor packet the host sent. */
export function decodeReply(p: GuestPacket): VstorReply {
  const dv = new DataView(p.payload.buffer, p.payload.byteOffset, p.payload.byteLength);
  const get8 = (at: number) => (at < p.payload.length ? p.payload[at]! : 0);
  return {
    operation: dv.getUint32(0, true),
    status: dv.getUint32(8, true),
    packetSize: p.payload.length,
    transactionId: p.transactionId,
    srbStatus: get8(14),
    scsiStatus: get8(15),
    senseLength: get8(21),
    dataTransferLength: p.payload.length >= 28 ? dv.getUint32(24, true) : 0,
    sense: p.payload.slice(28, 48),
    payload: p.payload,
  };
}

/** An SRB the guest sends. */
export interface SrbSpec {
  readonly cdb: readonly number[] | Uint8Array;
  readonly lun?: number;
  readonly pathId?: number;
  readonly targetId?: number;
  /** 0 write (data-out), 1 read (data-in), 2 none. */
  readonly dataIn?: number;
  /** Guest page GPAs holding the buffer (a GPA-direct packet when given). */
  readonly pages?: readonly number[];
  /** Byte offset of the buffer in the first page. */
  readonly offset?: number;
  /** Range byte count (default: dataTransferLength). */
  readonly rangeBytes?: number;
  /** data_transfer_length. */
  readonly length?: number;
  /** Request packet size (default 64). */
  readonly packetSize?: number;
  readonly cdbLength?: number;
}

/** Builds a vstor packet payload. */
export function vstorPacket(
  op: number,
  size = MAX_VSTOR_PACKET_SIZE,
  body?: Uint8Array,
): Uint8Array {
  const p = new Uint8Array(size);
  const dv = new DataView(p.buffer);
  dv.setUint32(0, op, true);
  dv.setUint32(4, 1, true);
  if (body) p.set(body.subarray(0, size - 12), 12);
  return p;
}

/** The SRB packet payload for `s`. */
export function srbPacket(s: SrbSpec): Uint8Array {
  const p = vstorPacket(VstorOperation.EXECUTE_SRB, MAX_VSTOR_PACKET_SIZE);
  const dv = new DataView(p.buffer);
  const b = 12;
  dv.setUint16(b, 0x34, true);
  p[b + 5] = s.pathId ?? 0;
  p[b + 6] = s.targetId ?? 0;
  p[b + 7] = s.lun ?? 0;
  p[b + 8] = s.cdbLength ?? s.cdb.length;
  p[b + 9] = 0x14;
  p[b + 10] = s.dataIn ?? 2;
  dv.setUint32(b + 12, s.length ?? 0, true);
  p.set(Uint8Array.from(s.cdb).subarray(0, 16), b + 16);
  return p.slice(0, s.packetSize ?? MAX_VSTOR_PACKET_SIZE);
}

/** The GPA-direct extension (reserved, rangecount, one range). */
export function gpaExt(pages: readonly number[], offset: number, bytes: number): Uint8Array {
  const ext = new Uint8Array(8 + 8 + pages.length * 8);
  const dv = new DataView(ext.buffer);
  dv.setUint32(4, 1, true);
  dv.setUint32(8, bytes, true);
  dv.setUint32(12, offset, true);
  pages.forEach((g, i) => dv.setBigUint64(16 + i * 8, BigInt(g / 4096), true));
  return ext;
}

/** Linux storvsc's side, scripted. */
export class StorvscGuest {
  readonly guest: LoopbackGuest;
  readonly device: StorvspDevice;
  readonly controller: ScsiController;
  readonly offer: GuestOffer;
  ch: GuestChannel;
  #tid = 0x100n;
  /** Replies received but not yet claimed, by transaction id. */
  readonly replies = new Map<bigint, VstorReply>();
  /** Unsolicited packets (transaction id 0). */
  readonly unsolicited: VstorReply[] = [];

  private constructor(
    guest: LoopbackGuest,
    device: StorvspDevice,
    offer: GuestOffer,
    ch: GuestChannel,
  ) {
    this.guest = guest;
    this.device = device;
    this.controller = device.controller;
    this.offer = offer;
    this.ch = ch;
  }

  /** VMBus up, storvsp offered and opened (no vstor init yet). */
  static open(
    controller: ScsiController,
    options: StorvspOptions & { ringPages?: number; memoryBytes?: number } = {},
  ): StorvscGuest {
    const device = new StorvspDevice(controller, options);
    const { guest } = LoopbackGuest.create({
      devices: [device],
      memoryBytes: options.memoryBytes ?? 32 << 20,
    });
    guest.connect();
    const offers = guest.requestOffers();
    const offer = offers.find((o) => o.classId === device.classId)!;
    const pages = options.ringPages ?? 32;
    const ch = guest.open(offer, { sendPages: pages, recvPages: pages });
    return new StorvscGuest(guest, device, offer, ch);
  }

  /** A controller with one disk per backend at LUN 0, 1, … */
  static withDisks(
    backends: readonly DiskBackend[],
    options: StorvspOptions & { ringPages?: number } = {},
  ): StorvscGuest {
    const c = new ScsiController();
    backends.forEach((b, i) => c.attach(i, new ScsiDisk(b, { serial: `disk${i}` })));
    return StorvscGuest.open(c, options);
  }

  /** Sends a vstor packet (in-band, completion requested); returns its transaction id. */
  send(payload: Uint8Array, ch: GuestChannel = this.ch): bigint {
    const tid = this.#tid++;
    if (!ch.send(payload, { completionRequested: true, transactionId: tid })) {
      throw new Error("guest ring full");
    }
    return tid;
  }

  /** Sends an SRB (GPA-direct when `pages` is given). */
  sendSrb(s: SrbSpec, ch: GuestChannel = this.ch): bigint {
    const payload = srbPacket(s);
    if (!s.pages) return this.send(payload, ch);
    const tid = this.#tid++;
    const ext = gpaExt(s.pages, s.offset ?? 0, s.rangeBytes ?? s.length ?? 0);
    const r = ch.sendRaw(encodePacket(9, 1, tid, ext, payload));
    if (r === "full") throw new Error("guest ring full");
    return tid;
  }

  /** Collects host packets on every channel of the guest. */
  poll(chs: readonly GuestChannel[] = [this.ch]): void {
    this.guest.runDeferred();
    this.guest.receive();
    for (const ch of chs) {
      for (const p of ch.receive()) {
        const r = decodeReply(p);
        if (p.transactionId === 0n) this.unsolicited.push(r);
        else this.replies.set(p.transactionId, r);
      }
    }
    this.guest.runDeferred();
  }

  /** Waits (up to `ms`) for the reply to `tid`. */
  async wait(
    tid: bigint,
    chs: readonly GuestChannel[] = [this.ch],
    ms = 5000,
  ): Promise<VstorReply> {
    const end = performance.now() + ms;
    for (;;) {
      this.poll(chs);
      const r = this.replies.get(tid);
      if (r) {
        this.replies.delete(tid);
        return r;
      }
      if (performance.now() > end) throw new Error(`no reply to transaction ${tid}`);
      await new Promise((res) => setTimeout(res, 0));
    }
  }

  /** One request/reply round trip. */
  async call(payload: Uint8Array): Promise<VstorReply> {
    return await this.wait(this.send(payload));
  }

  /**
   * storvsc_channel_init: BEGIN, versions newest first, QUERY_PROPERTIES, END. Returns the
   * version and the properties reply.
   */
  async init(
    versions: readonly number[] = [VstorVersion.WIN10, VstorVersion.WIN8_1, VstorVersion.WIN8],
    size = MAX_VSTOR_PACKET_SIZE,
  ): Promise<{ version: number; properties: VstorReply }> {
    const begin = await this.call(vstorPacket(VstorOperation.BEGIN_INITIALIZATION, size));
    assertEquals([begin.operation, begin.status], [VstorOperation.COMPLETE_IO, 0], "BEGIN");
    let version = 0;
    for (const v of versions) {
      const body = new Uint8Array(4);
      new DataView(body.buffer).setUint16(0, v, true);
      const r = await this.call(vstorPacket(VstorOperation.QUERY_PROTOCOL_VERSION, size, body));
      if (r.status === 0) {
        version = v;
        break;
      }
    }
    assert(version !== 0, "no version accepted");
    const properties = await this.call(vstorPacket(VstorOperation.QUERY_PROPERTIES, size));
    assertEquals(properties.status, 0, "QUERY_PROPERTIES");
    const end = await this.call(vstorPacket(VstorOperation.END_INITIALIZATION, size));
    assertEquals(end.status, 0, "END");
    return { version, properties };
  }

  /** Allocates `n` guest pages (scattered like a fragmented guest when asked). */
  pages(n: number, scattered = false): number[] {
    return this.guest.pages.alloc(n, scattered);
  }

  /** Writes `bytes` into guest pages starting `offset` bytes into the first. */
  fill(pages: readonly number[], offset: number, bytes: Uint8Array): void {
    let done = 0;
    let i = 0;
    let o = offset;
    while (done < bytes.length) {
      const n = Math.min(4096 - o, bytes.length - done);
      this.guest.memory.write(pages[i]! + o, bytes.subarray(done, done + n));
      done += n;
      i++;
      o = 0;
    }
  }

  /** Reads `length` bytes from guest pages starting `offset` bytes into the first. */
  collect(pages: readonly number[], offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let done = 0;
    let i = 0;
    let o = offset;
    while (done < length) {
      const n = Math.min(4096 - o, length - done);
      out.set(this.guest.memory.slice(pages[i]! + o, n), done);
      done += n;
      i++;
      o = 0;
    }
    return out;
  }

  /** READ/WRITE(10) helper: a data-in or data-out SRB over fresh pages. */
  async rw(
    op: "read" | "write",
    lba: number,
    blocks: number,
    options: { lun?: number; data?: Uint8Array; scattered?: boolean; offset?: number } = {},
  ): Promise<{ reply: VstorReply; data: Uint8Array }> {
    const bytes = blocks * 512;
    const offset = options.offset ?? 0;
    const pages = this.pages(Math.max(1, Math.ceil((offset + bytes) / 4096)), options.scattered);
    if (op === "write") this.fill(pages, offset, options.data ?? new Uint8Array(bytes));
    const cdb = [
      op === "read" ? 0x28 : 0x2a,
      0,
      ...be32(lba),
      0,
      (blocks >> 8) & 0xff,
      blocks & 0xff,
      0,
    ];
    const tid = this.sendSrb({
      cdb,
      lun: options.lun ?? 0,
      dataIn: op === "read" ? 1 : 0,
      pages,
      offset,
      length: bytes,
    });
    const reply = await this.wait(tid);
    const data = this.collect(pages, offset, bytes);
    this.guest.pages.free(pages);
    return { reply, data };
  }
}

/** Big-endian u32 bytes. */
export function be32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}
