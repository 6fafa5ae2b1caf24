/**
 * Fuzz target (`tests/fuzz/mod.ts`): deterministic fuzzing of the four ICs through the real VMBus server: structured random host
 * actions (requests, timer advances, channel reloads, daemon restarts) interleaved with mutated
 * guest answers built from a corpus the ported Linux driver produced. Invariants on every step:
 * nothing throws out of the server's entry points, no IC or server internal error, every host
 * packet is well-formed (the guest-side ring reader throws otherwise), and at the end every
 * host-side promise settles and the warnings stayed rate-limited.
 * @module
 */
import { assert, bringUp, captureLogs, type Rig } from "../../unit/devices/ic/harness.ts";
import {
  HEARTBEAT_GUID,
  KVP_GUID,
  SHUTDOWN_GUID,
  TS_GUID,
} from "../../unit/devices/ic/linux_hv_utils.ts";
import { encodePacket } from "../../../src/vmbus/testing/guest_ring.ts";
import { prng, type Rng } from "../../unit/prng.ts";
import type { FuzzTarget } from "../target.ts";
const CLASSES = [SHUTDOWN_GUID, TS_GUID, HEARTBEAT_GUID, KVP_GUID];

const INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 0x10, 0x64, 0x65, 0xff, 0x100, 0x7fff, 0x8000, 0xffff];
const INTERESTING32 = [
  0,
  1,
  2,
  4,
  8,
  0x200,
  0x201,
  0x800,
  0x801,
  0x7fffffff,
  0x80004005,
  0x80070103,
  0xffffffff,
];
/** Offsets worth hitting: icmsg_hdr fields, negotiate counts/versions, message fields. */
const HOT_U16 = [12, 14, 16, 18, 28, 30, 36, 38, 40, 42];
const HOT_U32 = [0, 4, 20, 28, 32, 36, 40, 44];

function mutate(rng: Rng, src: Uint8Array): Uint8Array {
  let b = src.slice();
  const rounds = 1 + rng.int(3);
  for (let r = 0; r < rounds; r++) {
    const dv = () => new DataView(b.buffer, b.byteOffset, b.byteLength);
    switch (rng.int(8)) {
      case 0:
        if (b.length) b[rng.int(b.length)]! ^= 1 << rng.int(8);
        break;
      case 1:
        if (b.length) b[rng.int(b.length)] = rng.int(256);
        break;
      case 2: {
        const at = rng.pick(HOT_U16);
        if (at + 2 <= b.length) dv().setUint16(at, rng.pick(INTERESTING), true);
        break;
      }
      case 3: {
        const at = rng.pick(HOT_U32);
        if (at + 4 <= b.length) dv().setUint32(at, rng.pick(INTERESTING32), true);
        break;
      }
      case 4: // truncate
        b = b.slice(0, rng.int(b.length + 1));
        break;
      case 5: { // extend
        const n = new Uint8Array(b.length + 1 + rng.int(64));
        n.set(b);
        for (let i = b.length; i < n.length; i++) n[i] = rng.int(256);
        b = n;
        break;
      }
      case 6: // flags byte
        if (b.length > 25) b[25] = rng.pick([0, 1, 2, 3, 4, 5, 6, 7, 0xff]);
        break;
      case 7: // message type
        if (b.length > 13) b[12] = rng.int(9);
        break;
    }
  }
  return b;
}

function scriptedCorpus(): Map<string, Uint8Array[]> {
  const rig = bringUp({ ics: { timesync: { referenceTime: () => 1n } } });
  rig.linux.startDaemon();
  const kvp = rig.ics.kvp;
  void kvp.set(0, "key", "value");
  rig.linux.pump();
  void kvp.set(0, "n", 7);
  rig.linux.pump();
  void kvp.enumerate(0, 0);
  rig.linux.pump();
  void kvp.get(0, "key");
  rig.linux.pump();
  void kvp.delete(0, "n");
  rig.linux.pump();
  void kvp.enumerate(2, 9);
  rig.linux.pump();
  void rig.ics.shutdown.request("reboot");
  rig.linux.pump();
  rig.advance(10_000);
  const out = new Map<string, Uint8Array[]>();
  for (const t of rig.linux.tx) {
    let l = out.get(t.classId);
    if (!l) out.set(t.classId, l = []);
    l.push(t.payload);
  }
  rig.ics.dispose();
  return out;
}

/** `MUTATED_PACKETS` mutated guest answers from `SEED`; returns the packets sent. */
async function fuzzIcs(SEED: number, MUTATED_PACKETS: number): Promise<number> {
  const logs = await captureLogs();
  try {
    const corpus = scriptedCorpus();
    for (const c of CLASSES) assert.ok((corpus.get(c)?.length ?? 0) >= 2, `corpus for ${c}`);
    const rng = prng(SEED);
    const rig: Rig = bringUp({
      ics: { timesync: { referenceTime: () => 1n }, kvp: { requestTimeoutMs: 3000 } },
    });
    let daemon = rig.linux.startDaemon();
    const { ics, linux } = rig;
    let created = 0;
    let settled = 0;
    const track = (p: Promise<unknown>) => {
      created++;
      p.then(() => settled++, () => settled++);
    };
    /** Host requests seen by the fuzzing guest, per class (tid → payload). */
    const seen = new Map<string, { tid: bigint; payload: Uint8Array }[]>(
      CLASSES.map((c) => [c, []]),
    );
    let sent = 0;
    let steps = 0;
    const started = performance.now();

    const hostAction = () => {
      switch (rng.int(12)) {
        case 0:
          track(ics.shutdown.request(rng.pick(["poweroff", "reboot", "hibernate"] as const)));
          break;
        case 1:
          track(ics.kvp.set(rng.int(5), `k${rng.int(4)}`, rng.next() < 0.5 ? "v" : rng.int(100)));
          break;
        case 2:
          track(ics.kvp.get(rng.int(5), `k${rng.int(4)}`));
          break;
        case 3:
          track(ics.kvp.enumerate(rng.int(5), rng.int(4)));
          break;
        case 4:
          track(ics.kvp.delete(rng.int(5), `k${rng.int(4)}`));
          break;
        case 5:
          ics.timesync.sync();
          break;
        case 6:
        case 7:
          rig.sched.advance(rng.int(4000));
          break;
        case 8:
          linux.pump(); // the real driver answers whatever is on the rings
          break;
        case 9: { // hv_utils reload of one IC
          const cls = rng.pick(CLASSES);
          linux.remove(cls);
          linux.probe(rig.offers.filter((o) => o.classId === cls));
          if (rng.next() < 0.5) linux.pump();
          break;
        }
        case 10:
          if (rng.next() < 0.5) linux.stopDaemon();
          else daemon = linux.startDaemon();
          break;
        case 11:
          track(ics.kvp.waitReady(rng.int(3000)));
          break;
      }
    };

    while (sent < MUTATED_PACKETS) {
      steps++;
      if (rng.next() < 0.3) hostAction();
      const cls = rng.pick(CLASSES);
      const ch = linux.channels.get(cls);
      if (!ch) continue;
      // The fuzzing guest takes what the host sent on this channel.
      const list = seen.get(cls)!;
      for (const p of ch.receive()) {
        if (p.type === 6) list.push({ tid: p.transactionId, payload: p.payload });
        if (list.length > 16) list.shift();
      }
      const base = rng.next() < 0.6 || list.length === 0
        ? rng.pick(corpus.get(cls)!)
        : rng.pick(list).payload;
      const payload = rng.next() < 0.9 ? mutate(rng, base) : base.slice();
      if (payload.length > 25 && rng.next() < 0.8) payload[25]! |= 4; // mostly answers
      // Mostly answer an outstanding host request (each once), else an old or made-up id.
      const r = rng.next();
      const tid = r < 0.7 && list.length > 0
        ? list.splice(rng.int(list.length), 1)[0]!.tid
        : r < 0.85
        ? 0n
        : BigInt(rng.int(0x7fffffff)) << BigInt(rng.int(33));
      const kind = rng.int(20);
      if (kind === 0) {
        ch.sendRaw(encodePacket(11, 0, tid, new Uint8Array(0), payload));
      } else {
        ch.send(payload, { transactionId: tid, completionRequested: kind === 1 });
      }
      sent++;
      if (sent % 8000 === 0 && Deno.env.get("IC_FUZZ_TRACE")) {
        for (const d of [ics.shutdown, ics.heartbeat, ics.timesync, ics.kvp]) {
          console.log(sent, d.name, d.state, JSON.stringify(d.stats));
        }
      }
      for (const d of [ics.shutdown, ics.heartbeat, ics.timesync, ics.kvp]) {
        if (d.stats.internalErrors !== 0) {
          throw new Error(`${d.name}: internal error at step ${steps} (seed ${SEED})`);
        }
      }
      const s = rig.guest.server.stats;
      if (s.deviceErrors !== 0 || s.internalErrors !== 0) {
        throw new Error(`server: device/internal error at step ${steps} (seed ${SEED})`);
      }
    }
    void daemon;
    const elapsed = performance.now() - started;

    // Everything the host started settles: answered, timed out, or failed on dispose.
    rig.sched.advance(60_000);
    ics.dispose();
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(settled, created, "every host promise settled");

    const malformed = [ics.shutdown, ics.heartbeat, ics.timesync, ics.kvp]
      .reduce((n, d) => n + d.stats.malformed, 0);
    assert.ok(
      malformed > MUTATED_PACKETS / 24,
      `only ${malformed} answers were rejected as malformed`,
    );
    const warnings = logs.records.filter((r) =>
      r.category[1] === "dev" && (r.level === "warning" || r.level === "error")
    );
    // 4 devices, 10 lines per 5 s window each (plus one per window for negotiation notes).
    const windows = Math.ceil(elapsed / 5000) + 1;
    assert.ok(
      warnings.length <= 4 * 10 * windows,
      `${warnings.length} guest-triggered warnings in ${windows} windows`,
    );
    assert.ok(!logs.records.some((r) => /bug while handling/.test(r.message.join(""))));
    if (Deno.env.get("IC_FUZZ_TRACE")) {
      console.log(
        `ic fuzz: ${sent} packets, ${steps} steps, ${created} host requests, ${malformed} malformed, ${warnings.length} warnings, ${
          Math.round(elapsed)
        } ms (seed 0x${SEED.toString(16)})`,
      );
    }
    return sent;
  } finally {
    await logs.stop();
  }
}

/** The four ICs' guest answers through the real VMBus server and the ported Linux driver. */
export const IC_PACKETS: FuzzTarget = {
  name: "ic-packets",
  what: "IC packets (shutdown, time sync, heartbeat, KVP): mutated guest answers",
  unitInputs: 24_000,
  batch: 12_000,
  run: fuzzIcs,
};
