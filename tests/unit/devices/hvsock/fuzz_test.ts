/**
 * Deterministic fuzzing of hv_sock through the real VMBus server: random guest connects, opens,
 * well-formed and mutated pipe packets, FINs, channel closes, VMBus unloads, host data, host end
 * of stream and host errors, host connects. Invariants on every step: nothing throws out of the
 * server, no internal or device error, every host packet is well-formed and within Linux's
 * HVS_MAX_PKT_SIZE, each host stream received exactly a prefix of the bytes of the well-formed
 * data packets its guest sent, and every connection ends with its stream closed.
 */
import { assert, assertEquals } from "../../vmbus/assert.ts";
import { HVSOCK_MTU, PipeDataHeader } from "../../../../src/devices/hvsock/mod.ts";
import type { GuestChannel } from "../../../../src/vmbus/testing/loopback_guest.ts";
import { prng } from "../../prng.ts";
import { FakeStream, guestConnect, offerFor, pattern, pipePacket, rig, settle } from "./harness.ts";

const SEED = Number(Deno.env.get("HVSOCK_FUZZ_SEED") ?? 0x50c4);
const STEPS = 3000;

interface Live {
  port: number;
  ch: GuestChannel | undefined;
  stream: FakeStream;
  /** Bytes of the well-formed data packets the guest sent, up to its first bad packet or FIN. */
  expected: number[];
  stopped: boolean;
}

Deno.test("hvsock fuzz: random guest and host actions keep every invariant", async () => {
  const rng = prng(SEED);
  const r = rig({ openTimeoutMs: 5 });
  const { guest, server, streams } = r;
  const live: Live[] = [];
  let nextPort = 1000;
  const logs: string[] = [];
  const origWarn = console.warn;
  console.warn = (...a: unknown[]) => logs.push(a.join(" "));
  try {
    for (let step = 0; step < STEPS; step++) {
      const action = rng.int(12);
      const open = live.filter((l) => l.ch);
      if (action === 0 && live.length < 30) {
        const port = nextPort++;
        guestConnect(guest, port + 100000, port);
        await settle(guest, 1);
        const offer = offerFor(guest, port);
        const stream = streams.get(port);
        if (offer && stream) {
          live.push({
            port,
            ch: rng.chance(0.9) ? guest.open(offer, { sendPages: 3 + rng.int(6) }) : undefined,
            stream,
            expected: [],
            stopped: false,
          });
        }
      } else if (action <= 4 && open.length > 0) {
        const l = rng.pick(open);
        const n = rng.int(3) === 0 ? rng.int(HVSOCK_MTU + 1) : rng.int(200);
        const pkt = pipePacket(pattern(n, step));
        if (rng.chance(0.1)) {
          const field = rng.chance(0.5) ? "pktType" : "dataSize";
          PipeDataHeader.set(pkt, 0, field, rng.pick([0, 2, n + 1, HVSOCK_MTU + 1, 0xffffffff]));
        } else if (rng.chance(0.05)) {
          l.ch!.send(pkt.subarray(0, rng.int(8)));
          l.stopped = true;
          continue;
        }
        // What the parser must make of it: data of `size` bytes, a FIN, or a malformed packet.
        const type = PipeDataHeader.get(pkt, 0, "pktType");
        const size = PipeDataHeader.get(pkt, 0, "dataSize");
        // The payload the host sees includes the ring's padding to 8 bytes (as in Linux).
        const padded = new Uint8Array((pkt.length + 7) & ~7);
        padded.set(pkt);
        const valid = type === 1 && size <= padded.length - 8 && size <= HVSOCK_MTU;
        if (l.ch!.send(pkt)) {
          if (!valid || size === 0) l.stopped = true;
          else if (!l.stopped) { for (const b of padded.subarray(8, 8 + size)) l.expected.push(b); }
        }
      } else if (action === 5 && open.length > 0) {
        const l = rng.pick(open);
        if (l.ch!.send(pipePacket(new Uint8Array(0)))) l.stopped = true;
      } else if (action === 6 && live.length > 0) {
        const l = rng.pick(live);
        const roll = rng.int(10);
        l.stream.feed(
          roll === 0 ? null : roll === 1 ? new Error("reset") : pattern(rng.int(70000), step),
        );
      } else if (action === 7 && open.length > 0) {
        const l = rng.pick(open);
        for (const p of l.ch!.receive()) {
          assert(p.payload.length <= 8 + HVSOCK_MTU, "packet within HVS_MTU");
          const size = PipeDataHeader.get(p.payload, 0, "dataSize");
          assert(size <= p.payload.length - 8);
        }
      } else if (action === 8 && open.length > 0 && rng.chance(0.2)) {
        const l = rng.pick(open);
        guest.close(l.ch!);
        l.ch = undefined;
        l.stopped = true;
      } else if (action === 9 && rng.chance(0.02)) {
        guest.unload();
        await settle(guest);
        for (const l of live) {
          l.ch = undefined;
          l.stopped = true;
        }
        guest.connect();
        guest.requestOffers();
      } else if (action === 10 && rng.chance(0.3)) {
        const s = new FakeStream();
        const p = r.host.connectToGuest(7000 + rng.int(5), s);
        const offer = offerFor(guest, 7000);
        if (offer && rng.chance(0.5)) {
          try {
            guest.open(offer);
          } catch { /* already open or rescinded */ }
        }
        void p;
      } else {
        await settle(guest, 1);
      }
      // Released rescinded relids, as Linux does.
      for (const relid of guest.rescinded.splice(0)) {
        for (const l of live) {
          if (l.ch?.relid === relid) {
            l.ch.receive();
            l.ch = undefined;
            l.stopped = true;
          }
        }
        guest.release(relid);
      }
      assertEquals(server.stats.internalErrors, 0);
      assertEquals(server.stats.deviceErrors, 0);
    }
    await settle(guest, 10);
    for (const l of live) {
      const got = l.stream.written;
      assert(got.length <= l.expected.length, `port ${l.port}: more bytes than sent`);
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== l.expected[i]) throw new Error(`port ${l.port}: byte ${i} differs`);
      }
    }
    r.detach();
    await settle(guest, 4);
    for (const l of live) assert(l.stream.closed, `port ${l.port}: stream closed at the end`);
    assertEquals(r.host.connections().length, 0);
  } finally {
    console.warn = origWarn;
  }
});
