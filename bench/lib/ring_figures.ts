/**
 * VMBus ring throughput figures: the production host path a device uses, a `Channel` of a
 * `VmbusServer` opened by a Linux-like guest (`src/vmbus/testing` `LoopbackGuest`), over rings
 * laid out exactly as in guest memory, beside a plain memcpy of the same bytes and a C ring
 * (`bench/ref/ring.c`, same layout, same work) called through FFI.
 *
 * - **write** (host to guest): the device's `Channel.send` of an in-band packet (ring write,
 *   flow-control and signalling decision); the guest then releases the space (read index =
 *   write index, one store: a guest that consumes in place) and keeps its interrupts masked, as
 *   a guest that polls a busy ring does, so no interrupt is raised.
 * - **read** (guest to host): the guest publishes a packet (descriptor and trailer written,
 *   write index moved; the payload is whatever the ring holds) and signals the channel
 *   (`VmbusServer.onSignalEvent`, the HvSignalEvent handler); the channel's read loop masks
 *   interrupts, reads the packet, hands it to the device, whose `onPacket` copies the payload
 *   into its own buffer (`RingPacket.copyPayload`: what a device does with data it keeps),
 *   publishes the read index (`pending_send_sz` check), unmasks and re-checks the ring.
 * - **memcpy** floors copy the same bytes: the payload into (write) or out of (read) a ring
 *   data area at the offsets the packets' payloads occupy, split in two where a payload wraps
 *   around the end of the ring, as any ring reader must.
 *
 * Before measuring, each fixture is checked end to end: packets the host writes are read back by
 * the guest-side reader (`GuestRingReader`, Linux's algorithm), packets the guest-side writer
 * (`GuestRingWriter`) writes reach the device intact, and the C ring's packets pass the same
 * reader.
 * @module
 */
import assert from "node:assert/strict";
import { GuestMemory } from "../../src/kvm/guest_memory.ts";
import type { Channel } from "../../src/vmbus/channel.ts";
import type { VmbusDevice } from "../../src/vmbus/device.ts";
import { RingControlWord, VmPacketType } from "../../src/vmbus/protocol.ts";
import { packetSize, type RingPacket } from "../../src/vmbus/ring.ts";
import {
  encodePacket,
  type GuestChannel,
  GuestRingReader,
  GuestRingView,
  LoopbackGuest,
} from "../../src/vmbus/testing/mod.ts";
import { openRef } from "./cc.ts";
import type { Figure, Subject } from "./measure.ts";

const PAGE = 4096;
/** Data pages per ring: 256 KiB, room for a 64 KiB packet several times over. */
export const RING_DATA_PAGES = 64;
const RING_DATA = RING_DATA_PAGES * PAGE;
/** Where the C ring's pages start in its guest memory. */
const RING_GPA = 0x10000;
const MEMORY_SIZE = 1 << 20;

/** Payload sizes measured. */
export const PACKET_SIZES = [64, 256, 1500, 64 * 1024] as const;

const REF_SYMBOLS = {
  // int32_t ref_ring_write(uint8_t *ctrl, uint8_t *data, uint32_t size, const uint8_t *payload,
  //                        uint32_t len, uint32_t count)
  ref_ring_write: {
    parameters: ["buffer", "buffer", "u32", "buffer", "u32", "u32"],
    result: "i32",
  },
  // int32_t ref_ring_read(uint8_t *ctrl, uint8_t *data, uint32_t size, uint8_t *dst,
  //                       uint32_t len, uint32_t count)
  ref_ring_read: {
    parameters: ["buffer", "buffer", "u32", "buffer", "u32", "u32"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

type RefLib = Deno.DynamicLibrary<typeof REF_SYMBOLS>;

/** 32-bit words over `length` bytes of guest RAM at `gpa`. */
function words(memory: GuestMemory, gpa: number, length: number): Uint32Array {
  const b = memory.slice(gpa, length);
  return new Uint32Array(b.buffer, b.byteOffset, length / 4);
}

/** A device that keeps what it reads: each payload is copied into `sink`, as storage keeps data. */
class SinkDevice implements VmbusDevice {
  readonly classId = "8a8f1e2c-0000-4000-8000-0000000b3e7c";
  readonly instanceId = "00000000-0000-4000-8000-000000000001";
  readonly name = "ring-bench";
  channel: Channel | undefined;
  /** Packets received and the last one's transaction id (low half). */
  packets = 0;
  lastTid = -1;
  readonly sink: Uint8Array;

  constructor(sinkBytes: number) {
    this.sink = new Uint8Array(sinkBytes);
  }

  onOpen(channel: Channel): boolean {
    this.channel = channel;
    return true;
  }

  onPacket(_channel: Channel, packet: RingPacket): boolean {
    packet.copyPayload(this.sink);
    this.packets++;
    this.lastTid = packet.tidLo;
    return true;
  }

  onClose(): void {
    this.channel = undefined;
  }
}

/** An open channel between the loopback guest and the production server, with guest-side words. */
interface ChannelFixture {
  device: SinkDevice;
  channel: Channel;
  guest: GuestChannel;
  /** Guest-to-host ring: control words and data words (the guest writes them). */
  upCtrl: Uint32Array;
  upData: Uint32Array;
  /** Host-to-guest ring control words. */
  downCtrl: Uint32Array;
}

function channelFixture(len: number): ChannelFixture {
  const device = new SinkDevice(len + 8);
  const { guest } = LoopbackGuest.create({ devices: [device], memoryBytes: 4 << 20 });
  assert.notEqual(guest.connect(), 0);
  const [offer] = guest.requestOffers();
  const ring = { sendPages: 1 + RING_DATA_PAGES, recvPages: 1 + RING_DATA_PAGES };
  const gch = guest.open(offer!, ring);
  const channel = device.channel;
  assert(channel, "the bench device was not opened");
  const mem = guest.memory;
  return {
    device,
    channel,
    guest: gch,
    upCtrl: words(mem, gch.pages[0]!, PAGE),
    upData: words(mem, gch.pages[1]!, RING_DATA),
    downCtrl: words(mem, gch.pages[1 + RING_DATA_PAGES]!, PAGE),
  };
}

const W = RingControlWord.WRITE_INDEX;
const R = RingControlWord.READ_INDEX;
const MASK = RingControlWord.INTERRUPT_MASK;
const WORD_MASK = RING_DATA / 4 - 1;

/**
 * The guest's side of a read: descriptor and trailer of an in-band packet of `len` payload bytes
 * at the guest's write index, then the new write index (the payload is left as it is).
 */
function guestPublish(ctrl: Uint32Array, data: Uint32Array, len: number, tid: number): void {
  const total = (16 + len + 7) & ~7;
  const w = ctrl[W]!;
  const at = w >>> 2;
  data[at] = VmPacketType.DATA_INBAND | (2 << 16); // type, offset8
  data[(at + 1) & WORD_MASK] = total >>> 3; // len8, flags 0
  data[(at + 2) & WORD_MASK] = tid;
  data[(at + 3) & WORD_MASK] = 0;
  const t = ((w + total) >>> 2) & WORD_MASK;
  data[t] = 0;
  data[(t + 1) & WORD_MASK] = w;
  ctrl[W] = (w + total + 8) % RING_DATA;
}

function pattern(len: number, seed: number): Uint8Array<ArrayBuffer> {
  const p = new Uint8Array(len);
  for (let i = 0; i < len; i++) p[i] = (i * 31 + seed) & 0xff;
  return p;
}

/** Packets per batch: about 1 MiB of ring traffic, at least 16 and at most 4096 packets. */
function packetsPerBatch(len: number): number {
  return Math.max(16, Math.min(4096, Math.floor((1 << 20) / packetSize(0, len))));
}

/** End-to-end check of the production host against the guest-side code, before measuring. */
function checkHost(len: number): void {
  const f = channelFixture(len);
  // Enough packets to wrap both rings.
  for (let i = 0; i < Math.ceil((2 * RING_DATA) / packetSize(0, len)) + 2; i++) {
    const payload = pattern(len, i);
    assert(f.channel.send(payload, { transactionId: BigInt(i) }));
    const got = f.guest.in.read().packet!;
    assert.equal(got.transactionId, BigInt(i));
    assert.deepEqual(got.payload.subarray(0, len), payload);
    const packets = f.device.packets;
    assert.notEqual(
      f.guest.sendRaw(
        encodePacket(VmPacketType.DATA_INBAND, 0, BigInt(i), new Uint8Array(), payload),
      ),
      "full",
    );
    assert.equal(f.device.packets, packets + 1);
    assert.equal(f.device.lastTid, i);
    assert.deepEqual(f.device.sink.subarray(0, len), payload);
    assert.equal(f.upCtrl[R], f.upCtrl[W]);
  }
  // The bench's fast guest publishes packets the device receives whole, signalled or not.
  const packets = f.device.packets;
  guestPublish(f.upCtrl, f.upData, len, 77);
  f.guest.signalHost();
  assert.equal(f.device.packets, packets + 1);
  assert.equal(f.device.lastTid, 77);
}

/** Checks the C ring's packets with the guest-side reader. */
function checkRef(lib: RefLib, len: number): void {
  const m = refMemory();
  const view = new GuestRingView(m.memory, m.downstreamGpas);
  const reader = new GuestRingReader(view);
  for (let i = 0; i < Math.ceil((2 * RING_DATA) / packetSize(0, len)) + 2; i++) {
    const payload = pattern(len, i);
    const start = view.writeIndex;
    assert.equal(lib.symbols.ref_ring_write(m.downCtrl, m.downData, RING_DATA, payload, len, 1), 1);
    view.readIndex = start; // the C guest step released it: read it again
    const got = reader.read().packet!;
    assert.deepEqual(got.payload.subarray(0, len), payload);
  }
}

/** Guest RAM for the C ring: guest-to-host ring pages, then host-to-guest ring pages. */
function refMemory() {
  const bytes = new Uint8Array(new ArrayBuffer(MEMORY_SIZE));
  const memory = new GuestMemory([{ gpa: 0, bytes }]);
  const pages = 2 * (1 + RING_DATA_PAGES);
  const gpas = Array.from({ length: pages }, (_, i) => RING_GPA + i * PAGE);
  const upstreamGpas = gpas.slice(0, 1 + RING_DATA_PAGES);
  const downstreamGpas = gpas.slice(1 + RING_DATA_PAGES);
  // The guest initialises both rings (Linux hv_ringbuffer_init).
  new GuestRingView(memory, upstreamGpas).init();
  new GuestRingView(memory, downstreamGpas).init();
  const at = (gpa: number, length: number) => memory.slice(gpa, length) as Uint8Array<ArrayBuffer>;
  return {
    memory,
    downstreamGpas,
    upCtrl: at(upstreamGpas[0]!, PAGE),
    upData: at(upstreamGpas[1]!, RING_DATA),
    downCtrl: at(downstreamGpas[0]!, PAGE),
    downData: at(downstreamGpas[1]!, RING_DATA),
  };
}

/**
 * The memcpy floor: `n` copies of `len` bytes between `buf` and ring data area `area`, at the
 * ring offsets successive packets' payloads occupy (two copies where a payload wraps).
 */
function memcpySubject(
  area: Uint8Array,
  buf: Uint8Array,
  len: number,
  n: number,
  direction: "in" | "out",
): Subject {
  const footprint = packetSize(0, len);
  let pos = 0; // packet start, as the ring's write index moves
  return {
    label: "memcpy (TypedArray.set)",
    batch() {
      for (let i = 0; i < n; i++) {
        let at = pos + 16;
        if (at >= RING_DATA) at -= RING_DATA;
        const first = RING_DATA - at;
        if (direction === "in") {
          if (len <= first) area.set(buf, at);
          else {
            area.set(buf.subarray(0, first), at);
            area.set(buf.subarray(first, len), 0);
          }
        } else {
          if (len <= first) buf.set(area.subarray(at, at + len));
          else {
            buf.set(area.subarray(at));
            buf.set(area.subarray(0, len - first), first);
          }
        }
        pos += footprint;
        if (pos >= RING_DATA) pos -= RING_DATA;
      }
    },
  };
}

function ringFiguresFor(lib: RefLib, len: number): Figure[] {
  checkHost(len);
  checkRef(lib, len);
  const n = packetsPerBatch(len);
  const label = len % 1024 === 0 ? `${len / 1024} KiB` : `${len} B`;
  const payload = pattern(len, 7);
  // Payload bytes as a device sees them (padded to 8): what the read floor copies too.
  const paddedLen = (len + 7) & ~7;

  // hyperdeno: a device's channel on the production server.
  const writer = channelFixture(len);
  writer.downCtrl[MASK] = 1; // a polling guest: no interrupt per packet
  const hostWrite: Subject = {
    label: "hyperdeno Channel",
    batch() {
      const ch = writer.channel;
      const ctrl = writer.downCtrl;
      for (let i = 0; i < n; i++) {
        if (!ch.send(payload)) throw new Error("ring full");
        ctrl[R] = ctrl[W]!; // guest consumes in place
      }
    },
  };
  const reader = channelFixture(len);
  const hostRead: Subject = {
    label: "hyperdeno Channel",
    batch() {
      const { upCtrl, upData, guest, device } = reader;
      const before = device.packets;
      for (let i = 0; i < n; i++) {
        guestPublish(upCtrl, upData, len, i);
        guest.signalHost();
      }
      if (device.packets !== before + n) throw new Error("the device missed packets");
    },
  };

  // Floors: memcpy of the same bytes at the same ring offsets.
  const floorRing = refMemory();
  const memcpyWrite = memcpySubject(floorRing.downData, payload, len, n, "in");
  const memcpyRead = memcpySubject(floorRing.upData, new Uint8Array(len + 8), paddedLen, n, "out");

  // Reference: the C ring over its own guest memory, same layout.
  const ref = refMemory();
  const cSink = new Uint8Array(len + 8);
  const { ref_ring_write, ref_ring_read } = lib.symbols;
  const cWrite: Subject = {
    label: "C ring (ref/ring.c)",
    batch() {
      if (ref_ring_write(ref.downCtrl, ref.downData, RING_DATA, payload, len, n) !== n) {
        throw new Error("C ring write failed");
      }
    },
  };
  const cRead: Subject = {
    label: "C ring (ref/ring.c)",
    batch() {
      if (ref_ring_read(ref.upCtrl, ref.upData, RING_DATA, cSink, len, n) !== n) {
        throw new Error("C ring read failed");
      }
    },
  };

  const big = len === 64 * 1024;
  const common = { kind: "throughput", opsPerBatch: n, bytesPerOp: len, op: "pkt" } as const;
  return [
    {
      ...common,
      name: `ring write ${label}`,
      subject: hostWrite,
      floors: [memcpyWrite, cWrite],
      ...(big ? { target: { floor: memcpyWrite.label, ratio: 0.8 } } : {}),
    },
    {
      ...common,
      name: `ring read ${label}`,
      subject: hostRead,
      floors: [memcpyRead, cRead],
      ...(big ? { target: { floor: memcpyRead.label, ratio: 0.8 } } : {}),
    },
  ];
}

/** Builds the C reference and every ring figure (checked before they are returned). */
export async function ringFigures(): Promise<Figure[]> {
  const lib = await openRef("ring", REF_SYMBOLS);
  return PACKET_SIZES.flatMap((len) => ringFiguresFor(lib, len));
}
