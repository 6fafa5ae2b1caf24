/**
 * Fuzzing the network device with structured random guest actions: NVSP messages with random
 * fields, RNDIS streams with lengths and offsets past their buffers, PPIs that lie, section
 * indexes and page ranges outside the buffers and RAM, completions for batches that were never
 * sent, and receive floods the guest does not complete. Invariants: no exception escapes the
 * device (the VMBus server counts device throws), every RNDIS request gets its completion, the
 * host never writes outside the receive buffer's sub-allocations, the guest's channel stays
 * usable.
 */
import assert from "node:assert/strict";
import { NvspType, Oid, PpiType, RndisType } from "../../../../src/devices/net/protocol.ts";
import { prng, type Rng } from "../../prng.ts";
import { ethFrame, NetvscGuest, nvsp, rndisMessage, rndisPacket, u32 } from "./helpers.ts";

const MAC = new Uint8Array([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

function mutate(rng: Rng, b: Uint8Array): Uint8Array {
  const out = b.slice(0, rng.chance(0.2) ? rng.int(b.length + 1) : b.length);
  const n = rng.int(4);
  for (let i = 0; i < n && out.length > 0; i++) {
    const at = rng.int(out.length);
    out[at] = rng.chance(0.5) ? rng.int(256) : 0xff;
  }
  if (rng.chance(0.2) && out.length >= 8) {
    new DataView(out.buffer).setUint32(
      4 * rng.int(out.length >> 2),
      rng.pick([
        0,
        1,
        0xffffffff,
        0x7fffffff,
        out.length + 1,
        rng.int(1 << 20),
      ]),
      true,
    );
  }
  return out;
}

function randomRndis(rng: Rng): Uint8Array {
  switch (rng.int(5)) {
    case 0:
      return rndisMessage(RndisType.QUERY, [rng.int(100), rng.pick(Object.values(Oid)), 0, 20, 0]);
    case 1:
      return rndisMessage(RndisType.SET, [1, rng.pick(Object.values(Oid)), 4, 20, 0, 0xd]);
    case 2:
      return rndisMessage(rng.pick([2, 3, 6, 8, 9, 0x80000002]), [rng.int(9), 1, 0, 0x4000]);
    default:
      return rndisPacket(
        ethFrame(MAC, 14 + rng.int(2000)),
        rng.chance(0.5)
          ? [[rng.pick([0, 2, 6, 8]), rng.int(2 ** 32)], [rng.pick([0, 2, 6]), rng.int(2 ** 32)]]
          : [],
      );
  }
}

for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
  Deno.test(`netvsp fuzz: hostile guest, seed ${seed}`, () => {
    const rng = prng(seed);
    const g = new NetvscGuest({ queues: 2 });
    g.probe({ pages: 64 });
    const server = g.guest.server;
    const errorsBefore = server.stats.deviceErrors;
    let expected = 0;
    let got = 0;
    for (let step = 0; step < 300; step++) {
      const action = rng.int(9);
      try {
        if (action === 0) {
          // A random NVSP message, in-band.
          const m = mutate(
            rng,
            nvsp(rng.pick(Object.values(NvspType)), rng.int(1 << 20), rng.int(9), rng.int(1 << 16)),
          );
          if (m.length >= 4) {
            const completion = rng.chance(0.7);
            g.send(m, completion);
            // Answered with a completion of the same type (SEND_RNDIS_PKT or a refusal).
            const t = u32(m, 0);
            if (completion && (t === NvspType.SEND_RNDIS_PKT || t === 108)) expected++;
          }
        } else if (action === 1 || action === 2) {
          // An RNDIS stream in a section (maybe a bad index or size).
          const msgs = [randomRndis(rng), randomRndis(rng)].map((m) =>
            rng.chance(0.3) ? mutate(rng, m) : m
          );
          const total = msgs.reduce((n, m) => n + m.length, 0);
          if (total > g.sectionSize) continue;
          const section = rng.chance(0.15)
            ? rng.pick([-1 >>> 0, 9999, g.sendPages.length])
            : rng.int(5);
          let at = 0;
          for (const m of msgs) {
            if (section < 5) g.writeSend(section * g.sectionSize + at, m);
            at += m.length;
          }
          const size = rng.chance(0.1) ? rng.pick([0xffffffff, 7000, 0]) : at;
          g.send(
            nvsp(NvspType.SEND_RNDIS_PKT, rng.int(2), section, size),
            true,
            rng.chance(0.3) && g.subs[0] ? g.subs[0] : g.ch,
          );
          expected++;
        } else if (action === 3) {
          // GPA-direct with random contents.
          const m = mutate(rng, randomRndis(rng));
          if (m.length === 0) continue;
          g.sendDirect(
            nvsp(NvspType.SEND_RNDIS_PKT, rng.int(2), 0xffffffff, 0),
            m,
            g.ch,
            rng.int(4096),
          );
          expected++;
        } else if (action === 4) {
          // Completions for batches that were never sent.
          g.ch.complete(
            BigInt(rng.int(5000)),
            nvsp(NvspType.SEND_RNDIS_PKT_COMPLETE, 1).subarray(0, 8),
          );
        } else if (action === 5) {
          // A receive flood, sometimes not completed.
          g.autoComplete = rng.chance(0.6);
          for (let i = 0; i < rng.int(200); i++) {
            g.backend.deliver(
              ethFrame(rng.chance(0.8) ? MAC : new Uint8Array(6).fill(0xff), 14 + rng.int(1600)),
              rng.int(2),
            );
          }
        } else if (action === 6) {
          for (const b of g.heldBatches.splice(0, rng.int(g.heldBatches.length + 1))) {
            b.ch.complete(b.tid, nvsp(NvspType.SEND_RNDIS_PKT_COMPLETE, 1).subarray(0, 8));
          }
        } else if (action === 7) {
          g.device.setLink(rng.chance(0.7));
        } else {
          // A subchannel request and opening what is offered.
          g.send(nvsp(NvspType.SUBCHANNEL, rng.int(3), rng.int(4)));
          g.poll();
          for (const o of g.guest.subChannelOffers(g.offer)) {
            if (!g.subs.some((s) => s.relid === o.relid)) {
              g.subs.push(g.guest.open(o, { sendPages: 8, recvPages: 8 }));
            }
          }
        }
      } catch (e) {
        if (String(e).includes("guest ring full")) {
          g.poll();
          continue;
        }
        throw e;
      }
      g.poll();
      g.backend.pump();
      for (const [, c] of g.completions) {
        if (c.length >= 4 && u32(c, 0) === NvspType.SEND_RNDIS_PKT_COMPLETE) got++;
      }
      g.completions.clear();
    }
    g.autoComplete = true;
    for (const b of g.heldBatches.splice(0)) {
      b.ch.complete(b.tid, nvsp(NvspType.SEND_RNDIS_PKT_COMPLETE, 1).subarray(0, 8));
    }
    g.poll();
    for (const [, c] of g.completions) {
      if (c.length >= 4 && u32(c, 0) === NvspType.SEND_RNDIS_PKT_COMPLETE) got++;
    }
    assert.equal(server.stats.deviceErrors, errorsBefore, "no exception escaped the device");
    assert.equal(got, expected, "every SEND_RNDIS_PKT was completed");
    // The device still works: a clean probe on a fresh channel pair would be next; here a frame.
    assert.equal(g.device.stats.channelsStopped, 0);
    void PpiType;
  });
}
