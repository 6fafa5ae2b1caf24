/**
 * The web console: token-guarded page and noVNC bundle, RFB over a WebSocket to the same VNC
 * server, hostile WebSocket frames closing only their connection.
 */
import assert from "node:assert/strict";
import { MemoryFramebuffer } from "../../../src/console/framebuffer.ts";
import { VncServer } from "../../../src/console/vnc_server.ts";
import { startWebConsole } from "../../../src/console/web.ts";
import { findNovncLib } from "../../../src/vmm/console.ts";

/** A WebSocket byte reader. */
class WsClient {
  readonly ws: WebSocket;
  #buf = new Uint8Array(0);
  #waiter: (() => void) | undefined;
  closed = false;
  constructor(url: string) {
    this.ws = new WebSocket(url, ["binary"]);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) => {
      const d = new Uint8Array(e.data as ArrayBuffer);
      const b = new Uint8Array(this.#buf.length + d.length);
      b.set(this.#buf);
      b.set(d, this.#buf.length);
      this.#buf = b;
      this.#waiter?.();
    };
    this.ws.onclose = () => {
      this.closed = true;
      this.#waiter?.();
    };
  }
  opened(): Promise<void> {
    return new Promise((r, j) => {
      this.ws.onopen = () => r();
      this.ws.onerror = () => j(new Error("websocket error"));
    });
  }
  async read(n: number): Promise<Uint8Array> {
    while (this.#buf.length < n) {
      if (this.closed) throw new Error("closed");
      await new Promise<void>((r) => this.#waiter = r);
    }
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.slice(n);
    return out;
  }
  send(b: number[] | Uint8Array): void {
    this.ws.send(b instanceof Uint8Array ? b : new Uint8Array(b));
  }
  closedSoon(): Promise<boolean> {
    return new Promise((r) => {
      if (this.closed) return r(true);
      const t = setTimeout(() => r(false), 2000);
      this.ws.addEventListener("close", () => {
        clearTimeout(t);
        r(true);
      });
    });
  }
}

const lib = await findNovncLib().catch((e) => {
  console.warn(`skipped: web console test (${(e as Error).message})`);
  return undefined;
});

Deno.test({
  name: "web console: token, noVNC bundle, RFB over WebSocket, hostile frames",
  ignore: lib === undefined,
  fn: async () => {
    const fb = new MemoryFramebuffer(64, 32);
    fb.fill({ x: 0, y: 0, width: 64, height: 32 }, 0x336699);
    const vnc = new VncServer({ source: fb, input: () => undefined });
    const web = startWebConsole({ hostname: "127.0.0.1", port: 0, vnc, novncLib: lib! });
    try {
      const base = `http://127.0.0.1:${web.port}`;
      const denied = await fetch(`${base}/`);
      assert.equal(denied.status, 403);
      await denied.body?.cancel();
      const bad = await fetch(`${base}/?token=nope`);
      assert.equal(bad.status, 403);
      await bad.body?.cancel();
      const page = await (await fetch(web.url)).text();
      assert.match(page, /novncRequire\("lib\/rfb.js"\)/);
      const token = new URL(web.url).searchParams.get("token")!;
      const script = await (await fetch(`${base}/novnc.js?token=${token}`)).text();
      assert.ok(script.includes('__m["lib/rfb.js"]') && script.length > 200_000, "noVNC bundled");
      // The bundle is one valid script (it runs in a browser: window, document).
      assert.equal(typeof new Function(script), "function");

      const ws = new WsClient(`ws://127.0.0.1:${web.port}/websockify?token=${token}`);
      await ws.opened();
      assert.equal(ws.ws.protocol, "binary");
      assert.equal(new TextDecoder().decode(await ws.read(12)), "RFB 003.008\n");
      ws.send(new TextEncoder().encode("RFB 003.008\n"));
      const [n] = await ws.read(1);
      await ws.read(n!);
      ws.send([1]);
      await ws.read(4);
      ws.send([1]);
      const init = await ws.read(24);
      assert.deepEqual([...init.subarray(0, 4)], [0, 64, 0, 32]);
      await ws.read(new DataView(init.buffer).getUint32(20));
      ws.send([2, 0, 0, 1, 0, 0, 0, 0]); // SetEncodings: Raw
      ws.send([3, 0, 0, 0, 0, 0, 0, 64, 0, 32]);
      const head = await ws.read(16);
      assert.equal(head[0], 0);
      const pixels = await ws.read(64 * 32 * 4);
      assert.deepEqual([...pixels.subarray(0, 4)], [0x99, 0x66, 0x33, 0]);
      ws.ws.close();

      // A text frame and junk bytes each close their own connection.
      const text = new WsClient(`ws://127.0.0.1:${web.port}/websockify?token=${token}`);
      await text.opened();
      text.ws.send("hello");
      assert.equal(await text.closedSoon(), true);
      const junk = new WsClient(`ws://127.0.0.1:${web.port}/websockify?token=${token}`);
      await junk.opened();
      await junk.read(12);
      junk.send(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"));
      assert.equal(await junk.closedSoon(), true);
      assert.ok(vnc.stats.protocolErrors >= 1);
      const noToken = new WebSocket(`ws://127.0.0.1:${web.port}/websockify`);
      const refused = await new Promise((r) => {
        noToken.onerror = () => r(true);
        noToken.onopen = () => r(false);
      });
      assert.equal(refused, true);
    } finally {
      vnc.close();
      await web.close();
    }
  },
});
