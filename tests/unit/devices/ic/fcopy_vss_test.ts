/**
 * File copy and VSS ICs against the real VMBus server and a scripted guest that answers the way
 * Linux's hv_utils and its daemons do: the message sequence and layouts (START with UTF-16 names
 * and flags, 6 KiB fragments at increasing offsets, COMPLETE), the guest's error codes turned
 * into clear errors (and a cancel after a failed write), freeze/thaw, and a fuzzed guest.
 */
import { assert, assertEquals } from "../../vmbus/assert.ts";
import {
  createIntegrationComponents,
  DoFcopyMessage,
  FCOPY_DATA_FRAGMENT,
  FcopyHeader,
  FcopyOperation,
  IC_HEADER_OFFSET,
  IcError,
  IcHeaderFlags,
  IcMessageHeader,
  IcMessageType,
  ICMSG_HDR,
  IcStatus,
  IcVersionLayout,
  NegotiateMessage,
  splitGuestPath,
  StartFcopyMessage,
  VssMessage,
  VssOperation,
} from "../../../../src/devices/ic/mod.ts";
import type { GuestChannel } from "../../../../src/vmbus/testing/loopback_guest.ts";
import { LoopbackGuest } from "../../../../src/vmbus/testing/loopback_guest.ts";
import { prng } from "../../prng.ts";

interface Request {
  type: number;
  body: Uint8Array;
  tid: bigint;
  payload: Uint8Array;
}

/** A guest that negotiates like hv_utils and hands each request to `answer`. */
function rig(answer: (r: Request) => number | undefined, timeoutMs?: number) {
  const ics = createIntegrationComponents(
    timeoutMs === undefined ? {} : {
      fcopy: { requestTimeoutMs: timeoutMs },
      vss: { requestTimeoutMs: timeoutMs, freezeTimeoutMs: timeoutMs },
    },
  );
  const { guest } = LoopbackGuest.create({ devices: ics.devices });
  guest.connect();
  const offers = guest.requestOffers();
  const chans: GuestChannel[] = [];
  for (const o of offers) {
    if (o.classId === ics.fcopy.classId || o.classId === ics.vss.classId) {
      chans.push(guest.open(o, { sendPages: 4, recvPages: 4 }));
    }
  }
  const seen: Request[] = [];
  const pump = () => {
    for (const ch of chans) {
      for (const p of ch.receive()) {
        const pl = p.payload.slice(
          0,
          ICMSG_HDR + IcMessageHeader.get(p.payload, IC_HEADER_OFFSET, "msgSize"),
        );
        const type = IcMessageHeader.get(pl, IC_HEADER_OFFSET, "msgType");
        let status = 0;
        if (type === IcMessageType.NEGOTIATE) {
          // Pick the first framework and message version offered.
          const n = NegotiateMessage.decode(pl, ICMSG_HDR)!;
          const fw = IcVersionLayout.decode(pl, ICMSG_HDR + 8)!;
          const msg = IcVersionLayout.decode(pl, ICMSG_HDR + 8 + n.frameworkCount * 4)!;
          const out = new Uint8Array(ICMSG_HDR + 16);
          out.set(pl.subarray(0, ICMSG_HDR));
          NegotiateMessage.encode({ frameworkCount: 1, messageCount: 1 }, out, ICMSG_HDR);
          IcVersionLayout.encode(fw, out, ICMSG_HDR + 8);
          IcVersionLayout.encode(msg, out, ICMSG_HDR + 12);
          IcMessageHeader.set(out, IC_HEADER_OFFSET, "msgSize", 16);
          IcMessageHeader.set(
            out,
            IC_HEADER_OFFSET,
            "flags",
            IcHeaderFlags.TRANSACTION | IcHeaderFlags.RESPONSE,
          );
          ch.send(out, { transactionId: p.transactionId });
          continue;
        }
        const req = { type, body: pl.subarray(ICMSG_HDR), tid: p.transactionId, payload: pl };
        seen.push(req);
        const s = answer(req);
        if (s === undefined) continue; // no answer (hung daemon)
        status = s;
        IcMessageHeader.set(pl, IC_HEADER_OFFSET, "status", status);
        IcMessageHeader.set(
          pl,
          IC_HEADER_OFFSET,
          "flags",
          IcHeaderFlags.TRANSACTION | IcHeaderFlags.RESPONSE,
        );
        ch.send(pl, { transactionId: p.transactionId });
      }
    }
  };
  pump();
  return { ics, guest, seen, pump };
}

/** Drives `promise` while the scripted guest answers. */
async function drive<T>(promise: Promise<T>, pump: () => void): Promise<T> {
  let done = false;
  promise.finally(() => done = true).catch(() => {});
  for (let i = 0; i < 100_000 && !done; i++) {
    pump();
    await new Promise((r) => setTimeout(r, 0));
  }
  return await promise;
}

function utf16(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i + 1 < bytes.length; i += 2) {
    const c = bytes[i]! | (bytes[i + 1]! << 8);
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

Deno.test("fcopy/vss layouts match Linux's packed structs", () => {
  assertEquals(FcopyHeader.size, 36);
  assertEquals(StartFcopyMessage.size, 1088);
  assertEquals(DoFcopyMessage.size, 6196);
  assertEquals(VssMessage.size, 12);
  assertEquals(splitGuestPath("/tmp/x.bin"), { dir: "/tmp", file: "x.bin" });
  assertEquals(splitGuestPath("/x"), { dir: "/", file: "x" });
  assertEquals(splitGuestPath("x"), undefined);
  assertEquals(splitGuestPath("/tmp/"), undefined);
});

Deno.test("fcopy: START, 6 KiB fragments at increasing offsets, COMPLETE; bytes arrive intact", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = `${dir}/src.bin`;
    const data = new Uint8Array(100_000);
    const rng = prng(3);
    for (let i = 0; i < data.length; i++) data[i] = rng.int(256);
    await Deno.writeFile(src, data);
    const received = new Uint8Array(data.length);
    let start: ReturnType<typeof StartFcopyMessage.decode>;
    const { ics, seen, pump } = rig((r) => {
      if (r.type !== IcMessageType.FCOPY) return IcStatus.E_FAIL;
      const op = FcopyHeader.get(r.body, 0, "operation");
      if (op === FcopyOperation.START_FILE_COPY) start = StartFcopyMessage.decode(r.body);
      if (op === FcopyOperation.WRITE_TO_FILE) {
        const d = DoFcopyMessage.decode(r.body)!;
        received.set(d.data.subarray(0, d.size), Number(d.offset));
      }
      return IcStatus.S_OK;
    });
    const result = await drive(
      ics.fcopy.copyToGuest(src, "/var/tmp/x.bin", { overwrite: true }),
      pump,
    );
    assertEquals(result.bytes, data.length);
    assertEquals(received, data);
    assert(start);
    assertEquals(utf16(start.fileName), "x.bin");
    assertEquals(utf16(start.pathName), "/var/tmp");
    assertEquals(start.copyFlags, 1);
    assertEquals(start.fileSize, BigInt(data.length));
    const ops = seen.map((r) => FcopyHeader.get(r.body, 0, "operation"));
    const writes = Math.ceil(data.length / FCOPY_DATA_FRAGMENT);
    assertEquals(ops, [0, ...Array(writes).fill(1), 2]);
    // Every WRITE_TO_FILE is the whole struct, as Hyper-V sends it.
    for (const r of seen.filter((r) => FcopyHeader.get(r.body, 0, "operation") === 1)) {
      assertEquals(r.body.length, DoFcopyMessage.size);
    }
    assertEquals(ics.fcopy.progress?.state, "done");
    assertEquals(ics.fcopy.progress?.bytes, data.length);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fcopy: the guest's ALREADY_EXISTS and a failed write become clear errors; a cancel follows", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = `${dir}/src.bin`;
    await Deno.writeFile(src, new Uint8Array(20_000));
    let mode = "exists";
    const { ics, seen, pump } = rig((r) => {
      const op = FcopyHeader.get(r.body, 0, "operation");
      if (mode === "exists" && op === 0) return IcStatus.ERROR_ALREADY_EXISTS;
      if (mode === "full" && op === 1 && seen.filter((s) => s.body[0] === 1).length === 2) {
        return IcStatus.ERROR_DISK_FULL;
      }
      return IcStatus.S_OK;
    });
    let err: unknown;
    await drive(ics.fcopy.copyToGuest(src, "/tmp/x"), pump).catch((e) => err = e);
    assert(err instanceof IcError && err.status === IcStatus.ERROR_ALREADY_EXISTS, String(err));
    assert(/already exists.*overwrite/.test((err as Error).message), (err as Error).message);
    assertEquals(seen.length, 1, "nothing after a refused START");
    mode = "full";
    seen.length = 0;
    err = undefined;
    await drive(ics.fcopy.copyToGuest(src, "/tmp/x", { overwrite: true }), pump).catch((e) =>
      err = e
    );
    assert(err instanceof IcError && /full/.test(err.message), String(err));
    const ops = seen.map((r) => FcopyHeader.get(r.body, 0, "operation"));
    assertEquals(ops, [0, 1, 1, 3], "START, two writes (the second failed), CANCEL");
    assertEquals(ics.fcopy.progress?.state, "failed");
    // A missing host file is a host error, before anything reaches the guest.
    seen.length = 0;
    err = undefined;
    await drive(ics.fcopy.copyToGuest(`${dir}/nope`, "/tmp/x"), pump).catch((e) => err = e);
    assert(err instanceof Error && /cannot read/.test(err.message), String(err));
    assertEquals(seen.length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vss: freeze sends HOT_BACKUP then FREEZE; thaw reports the frozen time; E_FAIL explained", async () => {
  let fail = false;
  const { ics, seen, pump } = rig((r) => {
    if (r.type !== IcMessageType.VSS) return IcStatus.E_FAIL;
    return fail ? IcStatus.E_FAIL : IcStatus.S_OK;
  });
  await drive(ics.vss.freeze(), pump);
  assert(ics.vss.frozen);
  const ms = await drive(ics.vss.thaw(), pump);
  assert(ms !== undefined && ms >= 0);
  assert(!ics.vss.frozen);
  assertEquals(seen.map((r) => VssMessage.get(r.body, 0, "operation")), [
    VssOperation.HOT_BACKUP,
    VssOperation.FREEZE,
    VssOperation.THAW,
  ]);
  assertEquals(seen[1]!.body.length, VssMessage.size);
  fail = true;
  let err: unknown;
  await drive(ics.vss.freeze(), pump).catch((e) => err = e);
  assert(err instanceof IcError && /hv_vss_daemon/.test(err.message), String(err));
  assert(!ics.vss.frozen);
});

Deno.test("fcopy/vss fuzz: random statuses, truncated and mutated answers never escape", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = `${dir}/src.bin`;
    await Deno.writeFile(src, new Uint8Array(30_000).fill(7));
    const rng = prng(0xfc09);
    const { ics, guest, pump } = rig((r) => {
      if (rng.chance(0.1)) return undefined; // never answered: the request times out
      if (rng.chance(0.2)) {
        for (let i = 0; i < 4; i++) r.payload[rng.int(r.payload.length)] = rng.int(256);
      }
      return rng.pick([IcStatus.S_OK, IcStatus.S_OK, IcStatus.E_FAIL, 0x12345678]);
    }, 20);
    // Short per-request timeouts so unanswered requests end quickly.
    const outcomes: string[] = [];
    for (let i = 0; i < 40; i++) {
      const op = rng.int(3);
      const p = op === 0
        ? ics.fcopy.copyToGuest(src, `/tmp/f${i}`)
        : op === 1
        ? ics.vss.freeze()
        : ics.vss.thaw();
      const timed = Promise.race([
        p.then(() => "ok", (e) => e instanceof Error ? "error" : "weird"),
        new Promise<string>((r) => setTimeout(() => r("pending"), 2000)),
      ]);
      const outcome = await drive(timed, pump);
      assert(outcome === "ok" || outcome === "error", `request ${i}: ${outcome}`);
      outcomes.push(outcome);
    }
    assert(outcomes.includes("ok") && outcomes.includes("error"), outcomes.join());
    assertEquals(ics.fcopy.stats.internalErrors, 0);
    assertEquals(ics.vss.stats.internalErrors, 0);
    assertEquals(guest.server.stats.internalErrors, 0);
    ics.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
