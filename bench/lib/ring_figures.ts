/**
 * VMBus ring throughput figures: the production host side (`src/vmbus/ring.ts`, opened with
 * `openRingPair` from a GPADL, as the VMBus server opens a channel) over rings laid out exactly
 * as in guest memory (a `GuestMemory` over an ArrayBuffer, rings initialised by the guest side
 * of `src/vmbus/testing`), beside a plain memcpy of the same payload bytes and a C ring
 * (`bench/ref/ring.c`, same layout, same work) called through FFI.
 *
 * - **write** (host to guest): `OutgoingRing.writePacket` of an in-band packet; the guest then
 *   releases the space (read index = write index, one store: a guest that consumes in place).
 * - **read** (guest to host): the guest publishes a packet (descriptor and trailer written, write
 *   index moved; the payload is whatever the ring holds), the host `readPacket`s it, copies the
 *   payload out (what a device does with data it keeps) and `commitRead`s.
 *
 * Before measuring, each fixture is checked end to end: packets the host writes are read back by
 * the guest-side reader (`GuestRingReader`, Linux's algorithm), packets the guest-side writer
 * (`GuestRingWriter`) writes are read by the host, and the C ring's packets pass the same reader.
 * @module
 */
import assert from "node:assert/strict";
import { GuestMemory } from "../../src/kvm/guest_memory.ts";
import { Gpadl } from "../../src/vmbus/gpadl.ts";
import { RingControlWord, VmPacketType } from "../../src/vmbus/protocol.ts";
import {
  type IncomingRing,
  openRingPair,
  type OutgoingRing,
  packetSize,
  WriteResult,
} from "../../src/vmbus/ring.ts";
import {
  encodePacket,
  GuestRingReader,
  GuestRingView,
  GuestRingWriter,
} from "../../src/vmbus/testing/guest_ring.ts";
import { openRef } from "./cc.ts";
import type { Figure, Subject } from "./measure.ts";

const PAGE = 4096;
/** Data pages per ring: 256 KiB, room for a 64 KiB packet several times over. */
export const RING_DATA_PAGES = 64;
const RING_DATA = RING_DATA_PAGES * PAGE;
/** Where the ring GPADL starts in guest memory. */
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

/** Guest RAM holding one channel's ring GPADL: incoming ring pages, then outgoing ring pages. */
interface RingMemory {
  memory: GuestMemory;
  bytes: Uint8Array<ArrayBuffer>;
  /** GPAs of the guest-to-host ring (control page first) and of the host-to-guest ring. */
  upstreamGpas: number[];
  downstreamGpas: number[];
}

function ringMemory(): RingMemory {
  const bytes = new Uint8Array(new ArrayBuffer(MEMORY_SIZE));
  const memory = new GuestMemory([{ gpa: 0, bytes }]);
  const pages = 2 * (1 + RING_DATA_PAGES);
  const gpas = Array.from({ length: pages }, (_, i) => RING_GPA + i * PAGE);
  const upstreamGpas = gpas.slice(0, 1 + RING_DATA_PAGES);
  const downstreamGpas = gpas.slice(1 + RING_DATA_PAGES);
  // The guest initialises both rings (Linux hv_ringbuffer_init).
  new GuestRingView(memory, upstreamGpas).init();
  new GuestRingView(memory, downstreamGpas).init();
  return { memory, bytes, upstreamGpas, downstreamGpas };
}

/** The ring GPADL as the VMBus server builds it from GPADL_HEADER: one range of whole pages. */
function ringGpadl(m: RingMemory): Gpadl {
  const pfns = [...m.upstreamGpas, ...m.downstreamGpas].map((g) => g / PAGE);
  const data = new Uint8Array(8 + pfns.length * 8);
  const dv = new DataView(data.buffer);
  dv.setUint32(0, pfns.length * PAGE, true);
  dv.setUint32(4, 0, true);
  pfns.forEach((p, i) => dv.setBigUint64(8 + i * 8, BigInt(p), true));
  const gpadl = new Gpadl(1, 1, 1, data.length);
  gpadl.append(data);
  gpadl.finish(m.memory);
  return gpadl;
}

/** Host ring pair opened by the production code, plus raw guest-side words for the fast guest. */
interface HostFixture {
  incoming: IncomingRing;
  outgoing: OutgoingRing;
  upCtrl: Uint32Array;
  upData: Uint32Array;
  downCtrl: Uint32Array;
}

function hostFixture(m: RingMemory): HostFixture {
  const { incoming, outgoing } = openRingPair(m.memory, ringGpadl(m), 1 + RING_DATA_PAGES);
  const buf = m.bytes.buffer;
  return {
    incoming,
    outgoing,
    upCtrl: new Uint32Array(buf, m.upstreamGpas[0]!, PAGE / 4),
    upData: new Uint32Array(buf, m.upstreamGpas[1]!, RING_DATA / 4),
    downCtrl: new Uint32Array(buf, m.downstreamGpas[0]!, PAGE / 4),
  };
}

const W = RingControlWord.WRITE_INDEX;
const R = RingControlWord.READ_INDEX;
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
  const m = ringMemory();
  const f = hostFixture(m);
  const reader = new GuestRingReader(new GuestRingView(m.memory, m.downstreamGpas));
  const writer = new GuestRingWriter(new GuestRingView(m.memory, m.upstreamGpas));
  // Enough packets to wrap both rings.
  for (let i = 0; i < Math.ceil((2 * RING_DATA) / packetSize(0, len)) + 2; i++) {
    const payload = pattern(len, i);
    assert.notEqual(
      f.outgoing.writePacket(VmPacketType.DATA_INBAND, 0, i, 0, null, payload),
      WriteResult.FULL,
    );
    const got = reader.read().packet!;
    assert.equal(got.transactionId, BigInt(i));
    assert.deepEqual(got.payload.subarray(0, len), payload);
    assert.notEqual(
      writer.write(encodePacket(VmPacketType.DATA_INBAND, 0, BigInt(i), new Uint8Array(), payload)),
      "full",
    );
    const pkt = f.incoming.readPacket()!;
    assert.equal(pkt.tidLo, i);
    assert.deepEqual(pkt.payload.subarray(0, len), payload);
    f.incoming.commitRead();
  }
}

/** Checks the C ring's packets with the guest-side reader. */
function checkRef(lib: RefLib, len: number): void {
  const m = ringMemory();
  const view = new GuestRingView(m.memory, m.downstreamGpas);
  const reader = new GuestRingReader(view);
  const ctrl = m.memory.slice(m.downstreamGpas[0]!, PAGE) as Uint8Array<ArrayBuffer>;
  const data = m.memory.slice(m.downstreamGpas[1]!, RING_DATA) as Uint8Array<ArrayBuffer>;
  for (let i = 0; i < Math.ceil((2 * RING_DATA) / packetSize(0, len)) + 2; i++) {
    const payload = pattern(len, i);
    const start = view.writeIndex;
    assert.equal(lib.symbols.ref_ring_write(ctrl, data, RING_DATA, payload, len, 1), 1);
    view.readIndex = start; // the C guest step released it: read it again
    const got = reader.read().packet!;
    assert.deepEqual(got.payload.subarray(0, len), payload);
  }
}

function ringFiguresFor(lib: RefLib, len: number): Figure[] {
  checkHost(len);
  checkRef(lib, len);
  const n = packetsPerBatch(len);
  const label = len % 1024 === 0 ? `${len / 1024} KiB` : `${len} B`;
  const payload = pattern(len, 7);
  const footprint = packetSize(0, len);

  // hyperdeno: production host ring.
  const host = hostFixture(ringMemory());
  const sink = new Uint8Array(len + 8);
  const hostWrite: Subject = {
    label: "hyperdeno ring.ts",
    batch() {
      const out = host.outgoing;
      const ctrl = host.downCtrl;
      for (let i = 0; i < n; i++) {
        if (
          out.writePacket(VmPacketType.DATA_INBAND, 0, i, 0, null, payload) === WriteResult.FULL
        ) {
          throw new Error("ring full");
        }
        ctrl[R] = ctrl[W]!; // guest consumes in place
      }
    },
  };
  const hostRead: Subject = {
    label: "hyperdeno ring.ts",
    batch() {
      const inc = host.incoming;
      for (let i = 0; i < n; i++) {
        guestPublish(host.upCtrl, host.upData, len, i);
        const p = inc.readPacket()!;
        sink.set(p.data.subarray(p.payloadOffset, p.payloadOffset + p.payloadLength));
        inc.commitRead();
      }
    },
  };

  // Floor: memcpy of the payload at rolling offsets in a ring-sized buffer.
  const area = new Uint8Array(RING_DATA);
  let pos = 0;
  const memcpyWrite: Subject = {
    label: "memcpy (TypedArray.set)",
    batch() {
      for (let i = 0; i < n; i++) {
        if (pos + len > RING_DATA) pos = 0;
        area.set(payload, pos);
        pos += footprint;
      }
    },
  };
  const memcpyRead: Subject = {
    label: "memcpy (TypedArray.set)",
    batch() {
      for (let i = 0; i < n; i++) {
        if (pos + len > RING_DATA) pos = 0;
        sink.set(area.subarray(pos, pos + len));
        pos += footprint;
      }
    },
  };

  // Reference: the C ring over its own guest memory, same layout.
  const ref = ringMemory();
  const upCtrl = ref.memory.slice(ref.upstreamGpas[0]!, PAGE) as Uint8Array<ArrayBuffer>;
  const upData = ref.memory.slice(ref.upstreamGpas[1]!, RING_DATA) as Uint8Array<ArrayBuffer>;
  const downCtrl = ref.memory.slice(ref.downstreamGpas[0]!, PAGE) as Uint8Array<ArrayBuffer>;
  const downData = ref.memory.slice(ref.downstreamGpas[1]!, RING_DATA) as Uint8Array<ArrayBuffer>;
  const cSink = new Uint8Array(len + 8);
  const { ref_ring_write, ref_ring_read } = lib.symbols;
  const cWrite: Subject = {
    label: "C ring (ref/ring.c)",
    batch() {
      if (ref_ring_write(downCtrl, downData, RING_DATA, payload, len, n) !== n) {
        throw new Error("C ring write failed");
      }
    },
  };
  const cRead: Subject = {
    label: "C ring (ref/ring.c)",
    batch() {
      if (ref_ring_read(upCtrl, upData, RING_DATA, cSink, len, n) !== n) {
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
