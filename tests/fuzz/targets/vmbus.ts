/**
 * Fuzz targets (`tests/fuzz/mod.ts`): deterministic fuzzing of everything the guest controls: channel messages (mutated from a
 * corpus recorded while a scripted Linux guest brings channels up) and ring contents (mutated
 * packets and control fields written into live rings). Invariants on every step: no exception
 * out of an entry point, no caught internal error, no device ever handed an inconsistent packet,
 * no host write outside the rings it was given, every host message and packet well-formed.
 * @module
 */
import { assert, assertEquals } from "../../unit/vmbus/assert.ts";
import { cmd } from "../../unit/vmbus/echo_device.ts";
import type { Channel } from "../../../src/vmbus/channel.ts";
import type { VmbusDevice } from "../../../src/vmbus/device.ts";
import { MAX_MESSAGE_SIZE, VmPacketType } from "../../../src/vmbus/protocol.ts";
import type { RingPacket } from "../../../src/vmbus/ring.ts";
import { encodePacket } from "../../../src/vmbus/testing/guest_ring.ts";
import { type GuestChannel, LoopbackGuest } from "../../../src/vmbus/testing/loopback_guest.ts";
import { prng, type Rng } from "../../unit/prng.ts";
import type { FuzzTarget } from "../target.ts";

const INTERESTING_U32 = [
  0,
  1,
  2,
  3,
  4,
  7,
  8,
  0xff,
  0x100,
  0xfff,
  0x1000,
  0x7fff,
  0xffff,
  0x10000,
  0x7fffffff,
  0x80000000,
  0xfffffff8,
  0xffffffff,
];

function mutate(rng: Rng, src: Uint8Array, corpus: readonly Uint8Array[]): Uint8Array {
  let b = src.slice();
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    switch (rng.int(9)) {
      case 0: // bit flip
        if (b.length) b[rng.int(b.length)]! ^= 1 << rng.int(8);
        break;
      case 1: // random byte
        if (b.length) b[rng.int(b.length)] = rng.int(256);
        break;
      case 2: // interesting u32 at an aligned offset
        if (b.length >= 4) {
          const at = rng.int(b.length >> 2) * 4;
          new DataView(b.buffer).setUint32(at, rng.pick(INTERESTING_U32), true);
        }
        break;
      case 3: // small delta on a u16/u32 field
        if (b.length >= 4) {
          const at = rng.int(b.length >> 1) * 2;
          const dv = new DataView(b.buffer);
          if (at + 2 <= b.length) {
            dv.setUint16(at, (dv.getUint16(at, true) + rng.int(9) - 4) & 0xffff, true);
          }
        }
        break;
      case 4: // truncate
        b = b.slice(0, rng.int(b.length + 1));
        break;
      case 5: { // extend with random bytes
        const n = rng.int(64);
        const out = new Uint8Array(Math.min(MAX_MESSAGE_SIZE, b.length + n));
        out.set(b.subarray(0, out.length));
        for (let i = b.length; i < out.length; i++) out[i] = rng.int(256);
        b = out;
        break;
      }
      case 6: { // splice with another corpus entry
        const o = rng.pick(corpus);
        const cut = rng.int(Math.min(b.length, o.length) + 1);
        const out = new Uint8Array(Math.max(b.length, o.length));
        out.set(b.subarray(0, cut));
        out.set(o.subarray(cut), cut);
        b = out;
        break;
      }
      case 7: // message type swap
        if (b.length >= 4) new DataView(b.buffer).setUint32(0, rng.int(30), true);
        break;
      default: // unchanged this round
        break;
    }
  }
  return b;
}

/** A device that checks every packet it is handed and echoes some of them. */
class CheckingDevice implements VmbusDevice {
  readonly classId = "8a8f1e2c-0000-4000-8000-00000000f022";
  readonly instanceId: string;
  readonly name: string;
  readonly maxSubChannels = 2;
  packets = 0;
  violations: string[] = [];
  readonly open = new Set<Channel>();

  constructor(n: number) {
    this.instanceId = `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`;
    this.name = `fuzz${n}`;
  }

  onOpen(ch: Channel): boolean {
    if (this.open.has(ch)) this.violations.push("opened twice");
    this.open.add(ch);
    return true;
  }

  onPacket(ch: Channel, p: RingPacket): boolean | void {
    this.packets++;
    if (!this.open.has(ch)) this.violations.push("packet on a channel that is not open");
    // The copy straight from the ring and the (possibly scratch) view must agree.
    const copied = new Uint8Array(p.payloadLength);
    p.copyPayload(copied);
    if (
      p.payloadOffset < 0 || p.payloadLength < 0 ||
      p.payloadOffset + p.payloadLength > p.data.length
    ) {
      this.violations.push(
        `payload ${p.payloadOffset}+${p.payloadLength} outside ${p.data.length}`,
      );
    }
    if ((p.payloadLength & 7) !== 0) this.violations.push("payload not 8-aligned");
    const view = p.data.subarray(p.payloadOffset, p.payloadOffset + p.payloadLength);
    if (copied.some((b, i) => b !== view[i])) this.violations.push("copyPayload differs from data");
    if (p.type === VmPacketType.DATA_USING_GPA_DIRECT) {
      const r = p.gpaRanges();
      if (r.length !== p.rangeCount || r.length === 0) {
        this.violations.push("GPA range count mismatch");
      }
    } else if (p.type === VmPacketType.DATA_USING_XFER_PAGES) {
      if (p.transferPageRanges().length !== p.rangeCount) {
        this.violations.push("transfer range mismatch");
      }
    } else if (p.type !== VmPacketType.DATA_INBAND && p.type !== VmPacketType.COMP) {
      this.violations.push(`unexpected packet type ${p.type}`);
    }
    const first = p.payloadLength > 0 ? p.data[p.payloadOffset]! : 0;
    if (first === 0x73 /* "s" */) ch.enableSubChannels(1 + (p.payloadLength & 1));
    if (p.completionRequested) {
      return ch.complete(p, p.payload.subarray(0, Math.min(64, p.payloadLength)));
    }
    if (first === 0x62 /* "b" */) ch.send(new Uint8Array(200 + (first & 0x3ff)));
  }

  onClose(ch: Channel): void {
    if (!this.open.delete(ch)) this.violations.push("closed a channel that was not open");
  }

  onWritable(): void {}
}

/** Brings up a Linux-style guest with open channels; returns them. */
function bringUp(guest: LoopbackGuest): GuestChannel[] {
  if (!guest.connect()) return [];
  const offers = guest.requestOffers();
  const chans: GuestChannel[] = [];
  for (const o of offers) {
    const ch = guest.tryOpen(o, {
      sendPages: 2 + (o.relid % 3),
      recvPages: 2,
      scattered: o.relid % 2 === 0,
    });
    if (typeof ch !== "number") chans.push(ch);
  }
  if (chans[0]) {
    chans[0].send(cmd("s"), {});
    for (const sub of guest.subChannelOffers(chans[0].offer)) {
      const ch = guest.tryOpen(sub, { sendPages: 2, recvPages: 3 });
      if (typeof ch !== "number") chans.push(ch);
    }
  }
  return chans;
}

/** `CONTROL_ITERATIONS` steps of mutated channel messages from `SEED`; returns the inputs run. */
function fuzzChannelMessages(SEED: number, CONTROL_ITERATIONS: number): number {
  const rng = prng(SEED);
  const devices = [new CheckingDevice(1), new CheckingDevice(2), new CheckingDevice(3)];
  const { guest, server } = LoopbackGuest.create({
    devices,
    memoryBytes: 256 << 20,
    server: { maxQueuedMessages: 64, maxGpadls: 256, maxPacketsPerDrain: 64 },
  });
  // Record every message the scripted guest posts: the seed corpus.
  const corpus: Uint8Array[] = [];
  const post = server.onPostMessage.bind(server);
  let recording = true;
  server.onPostMessage = (c, t, p) => {
    if (recording) corpus.push(p.slice());
    return post(c, t, p);
  };
  let chans = bringUp(guest);
  for (const ch of chans) {
    guest.teardownGpadl(ch.relid, guest.establishGpadl(ch.relid, guest.pages.alloc(30)).handle);
  }
  assert(guest.unload());
  chans = bringUp(guest);
  recording = false;
  assert(corpus.length > 20);

  let executed = 0;
  for (let i = 0; i < CONTROL_ITERATIONS; i++) {
    const action = rng.int(100);
    if (action < 80) {
      const msg = mutate(rng, rng.pick(corpus), corpus);
      const connId = rng.next() < 0.95 ? rng.pick([1, 4]) : rng.int(8);
      const status = server.onPostMessage(connId, rng.next() < 0.98 ? 1 : rng.int(4), msg);
      assert([0, 5, 18, 19].includes(status), `status ${status}`);
      executed++;
    } else if (action < 88) {
      server.onSignalEvent(
        rng.pick([0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 2, 3, rng.int(0x3000)]),
        0,
      );
    } else if (action < 96) {
      // The guest consumes its messages (EOM), and pokes its channels.
      guest.receive();
      for (const ch of chans) {
        try {
          ch.in.read();
          if (rng.next() < 0.3) {
            ch.send(cmd(rng.pick(["s", "x", "b"])), { completionRequested: rng.next() < 0.5 });
          }
        } catch {
          // The host may legitimately be writing a ring the mutated guest redefined.
        }
      }
    } else if (action < 99) {
      guest.runDeferred();
    } else {
      // Back to a rich state now and then.
      guest.receive();
      if (rng.next() < 0.5) server.reset();
      chans = bringUp(guest);
    }
    assertEquals(server.stats.internalErrors, 0, `internal error at iteration ${i}`);
    assert(server.queuedMessages <= 64 + 8, "message queue is bounded");
  }
  guest.receive();
  if (Deno.env.get("VMBUS_FUZZ_VERBOSE")) {
    const opened = guest.log.filter((m) => m.type === 6).length;
    console.log({
      ...server.stats,
      hostMessages: guest.log.length,
      openResults: opened,
      packets: devices.map((d) => d.packets),
    });
  }
  for (const d of devices) assertEquals(d.violations, [], d.name);
  assert(executed >= CONTROL_ITERATIONS * 0.7, `only ${executed} mutated messages`);
  assert(server.stats.messagesIn > CONTROL_ITERATIONS / 2);
  return CONTROL_ITERATIONS;
}

/** `RING_ITERATIONS` steps of mutated ring packets and control words; returns the inputs run. */
function fuzzRings(SEED: number, RING_ITERATIONS: number): number {
  const rng = prng(SEED ^ 0xa5a5);
  const devices = [new CheckingDevice(1), new CheckingDevice(2)];
  const memoryBytes = 16 << 20;
  const { guest, server } = LoopbackGuest.create({
    devices,
    memoryBytes,
    server: { maxPacketsPerDrain: 32 },
  });
  // Canary: every byte of RAM not handed to a ring must stay untouched by the host.
  const ram = guest.memory.slice(0x100000, memoryBytes);
  ram.fill(0xa5);
  const ringPages = new Set<number>();
  const track = (ch: GuestChannel) => {
    for (const p of ch.pages) ringPages.add(p);
    return ch;
  };
  assert(guest.connect());
  const offers = guest.requestOffers();
  // Zero the control pages the fake guest will allocate (it initializes what it uses).
  let chans = offers.map((o) =>
    track(guest.open(o, { sendPages: 3, recvPages: 2, scattered: o.relid === 2 }))
  );
  let reopened = 0;
  let packetsWritten = 0;
  let mutatedInputs = 0;
  // Channels whose inbound (host-to-guest) control page the guest scribbled on: what it reads
  // back from them is its own doing.
  const tampered = new Set<GuestChannel>();

  for (let i = 0; i < RING_ITERATIONS; i++) {
    const k = rng.int(chans.length);
    let ch = chans[k]!;
    const action = rng.int(100);
    if (action < 70) {
      // A mutated packet written where the host reads next.
      const type = rng.next() < 0.8 ? rng.pick([6, 6, 6, 11, 9, 7]) : rng.int(16);
      let ext = new Uint8Array(0);
      if (type === 9 || type === 7) {
        const n = rng.int(3);
        ext = new Uint8Array(8 + n * 16 + rng.int(2) * 8);
        const dv = new DataView(ext.buffer);
        dv.setUint32(4, rng.next() < 0.9 ? Math.max(1, n) : rng.pick(INTERESTING_U32), true);
        for (let j = 0; j < n; j++) {
          dv.setUint32(
            8 + j * 16,
            rng.next() < 0.9 ? 1 + rng.int(4096) : rng.pick(INTERESTING_U32),
            true,
          );
          dv.setUint32(12 + j * 16, rng.next() < 0.9 ? 0 : rng.pick(INTERESTING_U32), true);
          dv.setUint32(16 + j * 16, rng.int(1 << 20), true);
          dv.setUint32(20 + j * 16, rng.next() < 0.95 ? 0 : rng.int(0x400), true);
        }
      }
      const payload = new Uint8Array(rng.int(rng.next() < 0.9 ? 300 : 5000));
      for (let j = 0; j < Math.min(payload.length, 4); j++) payload[j] = rng.int(256);
      const flags = rng.next() < 0.95 ? rng.int(2) : rng.int(0x10000);
      let pkt = encodePacket(type, flags, BigInt(rng.int(1 << 30)), ext, payload);
      if (rng.next() < 0.3) pkt = mutate(rng, pkt, [pkt]);
      if (pkt.length % 8 !== 0) pkt = pkt.slice(0, pkt.length & ~7);
      mutatedInputs++;
      if (pkt.length >= 16) {
        ch.sendRaw(pkt);
        packetsWritten++;
      }
    } else if (action < 80) {
      // Scribble on a control word of either ring, then signal.
      const inbound = rng.next() < 0.5;
      const view = inbound ? ch.in.ring : ch.out.ring;
      if (inbound) tampered.add(ch);
      const word = rng.pick([0, 4, 8, 12, 64]);
      const value = rng.next() < 0.5 ? rng.pick(INTERESTING_U32) : rng.int(view.size * 2);
      view.control.setUint32(word, value, true);
      mutatedInputs++;
      ch.signalHost();
    } else if (action < 92) {
      // The guest reads the host's packets; they must be well-formed unless the guest broke its
      // own inbound ring control page.
      try {
        ch.receive();
      } catch (e) {
        if (!tampered.has(ch)) throw e;
      }
    } else if (action < 96) {
      ch.signalHost();
      guest.runDeferred();
    }
    // Close and reopen now and then, and always once the host stopped the channel (a broken
    // channel stays open for the guest until it closes it).
    if (action >= 96 || server.channel(ch.relid)?.isBroken) {
      guest.close(ch);
      guest.receive();
      tampered.delete(ch);
      ch = track(
        guest.open(ch.offer, {
          sendPages: 2 + rng.int(3),
          recvPages: 2 + rng.int(2),
          scattered: rng.next() < 0.5,
        }),
      );
      chans[k] = ch;
      reopened++;
    }
    assertEquals(server.stats.internalErrors, 0, `internal error at iteration ${i}`);
    assertEquals(server.stats.deviceErrors, 0, `device error at iteration ${i}`);
  }
  guest.runDeferred();
  if (Deno.env.get("VMBUS_FUZZ_VERBOSE")) {
    console.log({
      ...server.stats,
      reopened,
      packetsWritten,
      packets: devices.map((d) => d.packets),
    });
  }
  for (const d of devices) assertEquals(d.violations, [], d.name);
  // The canary: no host write outside ring pages.
  for (let off = 0; off < ram.length; off += 4096) {
    const gpa = 0x100000 + off;
    if (ringPages.has(gpa)) continue;
    const page = ram.subarray(off, off + 4096);
    // Pages the fake guest allocated for monitor/GPADL use are zero or canary, never partially.
    const first = page[0]!;
    for (let j = 0; j < page.length; j++) {
      if (page[j] !== first) {
        throw new Error(`host wrote outside the rings at 0x${(gpa + j).toString(16)}`);
      }
    }
  }
  assert(mutatedInputs >= RING_ITERATIONS * 0.7, `only ${mutatedInputs} mutated ring inputs`);
  assert(packetsWritten > RING_ITERATIONS / 2);
  // Coverage checks that only make sense for a run long enough to hit them.
  if (RING_ITERATIONS >= 20_000) {
    assert(devices.reduce((n, d) => n + d.packets, 0) > 1000, "packets reached the devices");
    assert(server.stats.ringErrors > 0, "corruptions were detected");
    assert(reopened > 100);
  }
  chans = [];
  return RING_ITERATIONS;
}

/** VMBus channel messages (HvPostMessage payloads) against the real server. */
export const VMBUS_MESSAGES: FuzzTarget = {
  name: "vmbus-messages",
  what: "VMBus channel messages, mutated from a recorded Linux bring-up",
  unitInputs: 70_000,
  batch: 20_000,
  run: fuzzChannelMessages,
};

/** VMBus ring packets and ring control words against live channels (canary RAM). */
export const VMBUS_RINGS: FuzzTarget = {
  name: "vmbus-rings",
  what: "VMBus ring packets and control words, RAM outside the rings a canary",
  unitInputs: 70_000,
  batch: 20_000,
  run: fuzzRings,
};
