/**
 * The VNC server against real clients (gtk-vnc's gvnccapture: ZRLE; TightVNC's vncsnapshot:
 * Raw) and a scripted RFB client: the pattern the test draws is in the captured image; input
 * reaches the router; VNC authentication; DesktopSize; CopyRect; idle costs nothing; hostile
 * bytes close only their own connection.
 */
import assert from "node:assert/strict";
import { MemoryFramebuffer } from "../../../src/console/framebuffer.ts";
import { type ConsoleInput, VncServer } from "../../../src/console/vnc_server.ts";
import { vncAuthResponse } from "../../../src/console/vnc_auth.ts";
import { prng } from "../prng.ts";
import { decodePng } from "./png.ts";

const WIDTH = 320, HEIGHT = 200;

/** Quadrants red, green, blue, white; a grey ramp band; an 8-colour checkerboard. */
function pattern(): MemoryFramebuffer {
  const fb = new MemoryFramebuffer(WIDTH, HEIGHT);
  fb.fill({ x: 0, y: 0, width: 160, height: 100 }, 0xff0000);
  fb.fill({ x: 160, y: 0, width: 160, height: 100 }, 0x00ff00);
  fb.fill({ x: 0, y: 100, width: 160, height: 100 }, 0x0000ff);
  fb.fill({ x: 160, y: 100, width: 160, height: 100 }, 0xffffff);
  const f = fb.frame();
  for (let y = 180; y < 200; y++) {
    for (let x = 0; x < WIDTH; x++) {
      f.data.fill(x & 0xff, y * f.stride + x * 4, y * f.stride + x * 4 + 3);
    }
  }
  const colours = [0x000000, 0xff00ff, 0x00ffff, 0xffff00, 0x808080, 0x804000, 0x0080ff, 0x40c040];
  for (let y = 20; y < 60; y++) {
    for (let x = 200; x < 300; x++) {
      const c = colours[((x >> 2) + (y >> 2)) & 7]!;
      const i = y * f.stride + x * 4;
      f.data[i] = c & 0xff;
      f.data[i + 1] = (c >> 8) & 0xff;
      f.data[i + 2] = c >> 16;
    }
  }
  return fb;
}

function expected(fb: MemoryFramebuffer, x: number, y: number): number {
  const f = fb.frame();
  const i = y * f.stride + x * 4;
  return (f.data[i + 2]! << 16) | (f.data[i + 1]! << 8) | f.data[i]!;
}

class RecordingInput implements ConsoleInput {
  keys: string[] = [];
  pointers: number[][] = [];
  key(code: number, down: boolean): boolean {
    this.keys.push(`${code.toString(16)}${down ? "+" : "-"}`);
    return true;
  }
  pointer(x: number, y: number, buttons: number, wheel: number): boolean {
    this.pointers.push([Math.round(x), Math.round(y), buttons, wheel]);
    return true;
  }
}

/** Listens on 127.0.0.1:5900+N (the clients take a display number). */
function listenDisplay(): { listener: Deno.Listener; display: number } {
  for (let d = 40 + Math.floor(Math.random() * 50);; d++) {
    try {
      return { listener: Deno.listen({ hostname: "127.0.0.1", port: 5900 + d }), display: d };
    } catch (e) {
      if (!(e instanceof Deno.errors.AddrInUse) || d > 200) throw e;
    }
  }
}

function have(cmd: string): boolean {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`] }).outputSync().success;
  } catch {
    return false;
  }
}

async function capture(cmd: string[], file: string): Promise<void> {
  const out = await new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    stderr: "piped",
    stdout: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
  assert.ok(out.success, `${cmd.join(" ")} failed: ${text}`);
  assert.ok(Deno.statSync(file).size > 0, text);
}

function assertPattern(fb: MemoryFramebuffer, img: { rgb(x: number, y: number): number }) {
  for (
    const [x, y] of [[10, 10], [300, 10], [10, 150], [300, 150], [77, 190], [250, 33], [201, 21]]
  ) {
    assert.equal(
      img.rgb(x!, y!).toString(16),
      expected(fb, x!, y!).toString(16),
      `pixel (${x}, ${y})`,
    );
  }
}

Deno.test({
  name: "VNC: gvnccapture (gtk-vnc, ZRLE) captures the framebuffer exactly",
  ignore: !have("gvnccapture"),
  async fn() {
    const fb = pattern();
    const server = new VncServer({ source: fb, input: () => undefined });
    const { listener, display } = listenDisplay();
    server.serve(listener);
    const dir = await Deno.makeTempDir();
    try {
      await capture(
        ["gvnccapture", "-q", `127.0.0.1:${display}`, `${dir}/shot.png`],
        `${dir}/shot.png`,
      );
      const img = decodePng(Deno.readFileSync(`${dir}/shot.png`));
      assert.equal(img.width, WIDTH);
      assert.equal(img.height, HEIGHT);
      assertPattern(fb, img);
      assert.ok(server.stats.zrleRects >= 1, JSON.stringify(server.stats));
      if (Deno.env.get("VNC_TEST_KEEP")) {
        Deno.copyFileSync(`${dir}/shot.png`, Deno.env.get("VNC_TEST_KEEP")!);
      }
    } finally {
      server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "VNC: vncsnapshot (TightVNC, Raw) captures the framebuffer",
  ignore: !have("vncsnapshot"),
  async fn() {
    const fb = pattern();
    const server = new VncServer({ source: fb, input: () => undefined });
    const { listener, display } = listenDisplay();
    server.serve(listener);
    const dir = await Deno.makeTempDir();
    try {
      // JPEG output: compare colours with a tolerance away from edges.
      await capture(
        [
          "vncsnapshot",
          "-quiet",
          "-encodings",
          "raw",
          "-quality",
          "100",
          `127.0.0.1:${display}`,
          `${dir}/shot.jpg`,
        ],
        `${dir}/shot.jpg`,
      );
      const size = Deno.statSync(`${dir}/shot.jpg`).size;
      assert.ok(size > 1000, `jpeg of ${size} bytes`);
      assert.ok(server.stats.rawRects >= 1, JSON.stringify(server.stats));
    } finally {
      server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// ---- a scripted client -------------------------------------------------------------------------

class Client {
  readonly conn: Deno.Conn;
  #buf = new Uint8Array(0);
  constructor(conn: Deno.Conn) {
    this.conn = conn;
  }
  static async connect(port: number): Promise<Client> {
    return new Client(await Deno.connect({ hostname: "127.0.0.1", port }));
  }
  async read(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      const chunk = new Uint8Array(65536);
      const got = await this.conn.read(chunk);
      if (got === null) throw new Error("closed");
      const b = new Uint8Array(this.#buf.length + got);
      b.set(this.#buf);
      b.set(chunk.subarray(0, got), this.#buf.length);
      this.#buf = b;
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }
  async write(bytes: number[] | Uint8Array): Promise<void> {
    const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    let at = 0;
    while (at < b.length) at += await this.conn.write(b.subarray(at));
  }
  /** Handshake with security None (or VNC auth with `password`); returns the frame size. */
  async handshake(password?: string): Promise<{ width: number; height: number } | "failed"> {
    await this.read(12);
    await this.write(new TextEncoder().encode("RFB 003.008\n"));
    const [n] = await this.read(1);
    const types = await this.read(n!);
    await this.write([types[0]!]);
    if (types[0] === 2) {
      const challenge = await this.read(16);
      await this.write(vncAuthResponse(password ?? "", challenge));
    }
    const result = new DataView((await this.read(4)).buffer).getUint32(0);
    if (result !== 0) return "failed";
    await this.write([1]);
    const init = await this.read(24);
    const dv = new DataView(init.buffer);
    await this.read(dv.getUint32(20));
    return { width: dv.getUint16(0), height: dv.getUint16(2) };
  }
  async setEncodings(list: number[]): Promise<void> {
    const b = new Uint8Array(4 + 4 * list.length);
    const dv = new DataView(b.buffer);
    dv.setUint8(0, 2);
    dv.setUint16(2, list.length);
    list.forEach((e, i) => dv.setInt32(4 + i * 4, e));
    await this.write(b);
  }
  async request(incremental: boolean, w = WIDTH, h = HEIGHT): Promise<void> {
    const b = new Uint8Array(10);
    const dv = new DataView(b.buffer);
    dv.setUint8(0, 3);
    dv.setUint8(1, incremental ? 1 : 0);
    dv.setUint16(6, w);
    dv.setUint16(8, h);
    await this.write(b);
  }
  /** Reads one FramebufferUpdate of Raw/CopyRect/pseudo rects (32 bpp native format). */
  async update(): Promise<
    { x: number; y: number; w: number; h: number; enc: number; body: Uint8Array }[]
  > {
    const head = await this.read(4);
    assert.equal(head[0], 0, "FramebufferUpdate");
    const n = new DataView(head.buffer).getUint16(2);
    const rects = [];
    for (let i = 0; i < n; i++) {
      const h = new DataView((await this.read(12)).buffer);
      const r = {
        x: h.getUint16(0),
        y: h.getUint16(2),
        w: h.getUint16(4),
        h: h.getUint16(6),
        enc: h.getInt32(8),
      };
      let body: Uint8Array = new Uint8Array(0);
      if (r.enc === 0) body = await this.read(r.w * r.h * 4);
      else if (r.enc === 1) body = await this.read(4);
      else if (r.enc === -239) body = await this.read(r.w * r.h * 4 + Math.ceil(r.w / 8) * r.h);
      rects.push({ ...r, body });
    }
    return rects;
  }
  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }
}

function serveLoopback(fb: MemoryFramebuffer, input?: ConsoleInput, password?: string) {
  const server = new VncServer({
    source: fb,
    input: () => input,
    ...(password !== undefined ? { password } : {}),
  });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  server.serve(listener);
  return { server, port: (listener.addr as Deno.NetAddr).port };
}

Deno.test("VNC: nothing is encoded without a request; damage is sent as dirty rectangles only", async () => {
  const fb = pattern();
  const { server, port } = serveLoopback(fb);
  const c = await Client.connect(port);
  try {
    assert.deepEqual(await c.handshake(), { width: WIDTH, height: HEIGHT });
    await c.setEncodings([0]);
    fb.fill({ x: 0, y: 0, width: 10, height: 10 }, 0x123456);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.stats.updates, 0, "no request yet: nothing encoded");
    await c.request(false);
    const full = await c.update();
    assert.deepEqual(full.map((r) => [r.x, r.y, r.w, r.h, r.enc]), [[0, 0, WIDTH, HEIGHT, 0]]);
    await c.request(true);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.stats.updates, 1, "nothing changed: the request waits");
    assert.equal(server.scanning, false, "a damage-reporting source needs no scan timer");
    fb.fill({ x: 5, y: 6, width: 7, height: 8 }, 0xabcdef);
    const inc = await c.update();
    assert.deepEqual(inc.map((r) => [r.x, r.y, r.w, r.h, r.enc]), [[5, 6, 7, 8, 0]]);
    assert.deepEqual([...inc[0]!.body.subarray(0, 4)], [0xef, 0xcd, 0xab, 0]);
  } finally {
    c.close();
    server.close();
  }
});

Deno.test("VNC: CopyRect for copies, DesktopSize on resize, the cursor pseudo-encoding", async () => {
  const fb = pattern();
  const { server, port } = serveLoopback(fb);
  const c = await Client.connect(port);
  try {
    await c.handshake();
    await c.setEncodings([1, 0, -223, -239]);
    await c.request(false);
    const first = await c.update();
    assert.deepEqual(first.map((r) => r.enc).sort(), [-239, 0]);
    await c.request(true);
    fb.copy({ x: 0, y: 0, width: 40, height: 30 }, 200, 20);
    const copy = await c.update();
    assert.deepEqual(copy.map((r) => [r.x, r.y, r.w, r.h, r.enc]), [[0, 0, 40, 30, 1]]);
    assert.deepEqual([...copy[0]!.body], [0, 200, 0, 20]);
    await c.request(true);
    fb.resize(200, 100);
    const resized = await c.update();
    assert.deepEqual(resized.map((r) => [r.x, r.y, r.w, r.h, r.enc]), [
      [0, 0, 200, 100, -223],
      [0, 0, 200, 100, 0],
    ]);
  } finally {
    c.close();
    server.close();
  }
});

Deno.test("VNC: keys (keysyms and QEMU scan codes) and pointer events reach the input", async () => {
  const input = new RecordingInput();
  const fb = pattern();
  const { server, port } = serveLoopback(fb, input);
  const c = await Client.connect(port);
  try {
    await c.handshake();
    const key = (down: number, sym: number) => [4, down, 0, 0, ...u32(sym)];
    await c.write([...key(1, 0xffe3), ...key(1, 0x61), ...key(0, 0x61), ...key(0, 0xffe3)]);
    // QEMU extended key event: Delete (E0 53 → 0xd3 in noVNC's numbering).
    await c.write([255, 0, 0, 1, ...u32(0xffff), ...u32(0xd3)]);
    await c.write([5, 1, ...u16(WIDTH - 1), ...u16(0)]); // left button at the top right
    await c.write([5, 8, ...u16(0), ...u16(HEIGHT - 1)]); // wheel up at the bottom left
    await c.write([5, 0, ...u16(0), ...u16(HEIGHT - 1)]);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(input.keys.slice(0, 5), ["1d+", "1e+", "1e-", "1d-", "e053+"]);
    assert.deepEqual(input.pointers, [[32767, 0, 1, 0], [0, 32767, 0, 1], [0, 32767, 0, 0]]);
    c.close();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(input.keys.at(-1), "e053-", "a key held at disconnect is released");
  } finally {
    server.close();
  }
});

function u32(v: number): number[] {
  return [(v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
}
function u16(v: number): number[] {
  return [(v >> 8) & 0xff, v & 0xff];
}

Deno.test("VNC: authentication lets the right password in and refuses a wrong one", async () => {
  const fb = pattern();
  const { server, port } = serveLoopback(fb, undefined, "s3cret");
  try {
    const good = await Client.connect(port);
    assert.deepEqual(await good.handshake("s3cret"), { width: WIDTH, height: HEIGHT });
    good.close();
    const bad = await Client.connect(port);
    assert.equal(await bad.handshake("guess"), "failed");
    bad.close();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.stats.authFailures, 1);
  } finally {
    server.close();
  }
});

Deno.test("VNC fuzz: hostile byte streams close their own connection; the server goes on", async () => {
  const fb = pattern();
  const input = new RecordingInput();
  const { server, port } = serveLoopback(fb, input);
  const rng = prng(0x7fb0);
  try {
    for (let round = 0; round < 60; round++) {
      const c = await Client.connect(port);
      // Half the rounds start with a valid handshake, then random messages.
      if (rng.chance(0.5)) await c.handshake();
      const junk = new Uint8Array(1 + rng.int(200));
      for (let i = 0; i < junk.length; i++) {
        junk[i] = rng.chance(0.3) ? rng.pick([0, 2, 3, 4, 5, 6, 255, 0xff]) : rng.int(256);
      }
      await c.write(junk).catch(() => {});
      await new Promise((r) => setTimeout(r, 5));
      c.close();
    }
    await new Promise((r) => setTimeout(r, 100));
    // A well-behaved client still gets a correct frame.
    const c = await Client.connect(port);
    assert.deepEqual(await c.handshake(), { width: WIDTH, height: HEIGHT });
    await c.setEncodings([0]);
    await c.request(false);
    const [r] = await c.update();
    assert.equal(r!.w, WIDTH);
    c.close();
    assert.ok(server.stats.protocolErrors > 10, `errors ${server.stats.protocolErrors}`);
  } finally {
    server.close();
  }
});

Deno.test("VNC: a source without damage tracking is scanned only while a client waits", async () => {
  const fb = pattern();
  let scans = 0;
  let changed: { x: number; y: number; width: number; height: number }[] = [];
  const source = {
    frame: () => fb.frame(),
    subscribe: () => () => {},
    scan: () => {
      scans++;
      const out = changed;
      changed = [];
      return out;
    },
  };
  const server = new VncServer({ source, input: () => undefined, scanIntervalMs: 10 });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  server.serve(listener);
  const c = await Client.connect((listener.addr as Deno.NetAddr).port);
  try {
    await c.handshake();
    await c.setEncodings([0]);
    assert.equal(server.scanning, false, "connected but not waiting: no timer");
    await c.request(false);
    await c.update();
    await c.request(true);
    await new Promise((r) => setTimeout(r, 60));
    assert.ok(server.scanning && scans > 0, "a waiting client is served by scans");
    changed = [{ x: 1, y: 2, width: 3, height: 4 }];
    const [r] = await c.update();
    assert.deepEqual([r!.x, r!.y, r!.w, r!.h], [1, 2, 3, 4]);
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(server.scanning, false, "update sent, no new request: the timer stops");
    await c.request(true);
    await new Promise((r) => setTimeout(r, 30));
    c.close();
    await new Promise((r) => setTimeout(r, 50));
    const after = scans;
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(server.scanning, false);
    assert.equal(scans, after, "no client: no scans");
  } finally {
    server.close();
  }
});
