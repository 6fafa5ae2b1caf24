/**
 * `--vsock PATH` with real unix sockets and the scripted guest: the listener refuses paths it
 * must not take, a host client's `CONNECT P` reaches a guest listener and reads `OK <port>`, and a
 * guest connect reaches the host service at `PATH_P`.
 */
import { assert, assertEquals } from "../../vmbus/assert.ts";
import { VsockUnixBackend } from "../../../../src/devices/hvsock/mod.ts";
import { UsageError } from "../../../../src/util/errors.ts";
import { LoopbackGuest } from "../../../../src/vmbus/testing/loopback_guest.ts";
import { drainGuest, guestConnect, offerFor, pipePacket, settle } from "./harness.ts";

async function rejects(p: Promise<unknown>, cls: new (...a: never[]) => Error): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof cls, `expected ${cls.name}, got ${e}`);
    return (e as Error).message;
  }
  throw new Error("expected a rejection");
}

Deno.test("vsock listener: refuses a file or a live socket, replaces a stale one, owner-only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/file`;
    await Deno.writeTextFile(file, "keep me");
    const msg = await rejects(VsockUnixBackend.listen(file), UsageError);
    assert(msg.includes("regular file"), msg);
    assertEquals(await Deno.readTextFile(file), "keep me");

    const live = Deno.listen({ transport: "unix", path: `${dir}/live` });
    assert((await rejects(VsockUnixBackend.listen(`${dir}/live`), UsageError)).includes("in use"));
    live.close();

    // A socket file nobody listens on any more (a crashed VMM's).
    const stalePath = `${dir}/stale`;
    const stale = Deno.listen({ transport: "unix", path: stalePath });
    stale.close();
    try {
      Deno.lstatSync(stalePath);
    } catch {
      // Deno removed it on close; make a stale socket file another way.
      const l2 = Deno.listen({ transport: "unix", path: stalePath });
      Deno.renameSync(stalePath, `${stalePath}.x`);
      l2.close();
      Deno.renameSync(`${stalePath}.x`, stalePath);
    }
    const b = await VsockUnixBackend.listen(stalePath);
    assertEquals(Deno.statSync(stalePath).mode! & 0o777, 0o600);
    b.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vsock listener: CONNECT P reaches a guest listener, OK <port>, bytes both ways", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/v.sock`;
  const backend = await VsockUnixBackend.listen(path);
  const host = backend.newBoot();
  const { guest, server } = LoopbackGuest.create({ server: host.serverOptions });
  const detach = host.attach(server);
  guest.connect();
  guest.requestOffers();
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  try {
    const client = await Deno.connect({ transport: "unix", path });
    await client.write(enc.encode("CONNECT 6000\nearly"));
    let offer;
    for (let i = 0; i < 100 && !offer; i++) {
      await settle(guest, 1);
      offer = offerFor(guest, 6000);
    }
    assert(offer, "offered to the guest");
    const ch = guest.open(offer);
    const buf = new Uint8Array(100);
    let text = "";
    while (!text.includes("early") || !text.includes("\n")) {
      await settle(guest, 1);
      const got = drainGuest(ch).data;
      text += dec.decode(new Uint8Array(got));
      if (text.includes("early")) break;
    }
    assertEquals(text, "early");
    assert(ch.send(pipePacket(enc.encode("reply"))));
    let answer = "";
    while (!answer.endsWith("reply")) {
      const n = await client.read(buf);
      if (n === null) break;
      answer += dec.decode(buf.subarray(0, n));
    }
    assert(/^OK \d+\nreply$/.test(answer), answer);
    client.close();
    await settle(guest);

    // A bad first line is refused with a close.
    const bad = await Deno.connect({ transport: "unix", path });
    await bad.write(enc.encode("HELLO\n"));
    assertEquals(await bad.read(buf), null);
    bad.close();

    // Guest → host: PATH_5000.
    const service = Deno.listen({ transport: "unix", path: `${path}_5000` });
    guestConnect(guest, 77, 5000);
    const accepted = service.accept();
    let g;
    for (let i = 0; i < 100 && !g; i++) {
      await settle(guest, 1);
      g = offerFor(guest, 5000);
    }
    assert(g, "guest connect offered");
    const gch = guest.open(g);
    const conn = await accepted;
    assert(gch.send(pipePacket(enc.encode("ping"))));
    await settle(guest);
    const n = await conn.read(buf);
    assertEquals(dec.decode(buf.subarray(0, n!)), "ping");
    await conn.write(enc.encode("pong"));
    conn.close();
    let seen = "";
    let fin = false;
    for (let i = 0; i < 200 && !fin; i++) {
      await settle(guest, 1);
      const d = drainGuest(gch);
      seen += dec.decode(new Uint8Array(d.data));
      fin = d.fin;
    }
    assertEquals(seen, "pong");
    assert(fin);
    service.close();
  } finally {
    detach();
    backend.close();
    await settle(guest);
    await Deno.remove(dir, { recursive: true });
  }
});
