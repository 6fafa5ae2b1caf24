/**
 * The web console in a real browser: headless Chromium (Debian `chromium`) driven over the
 * DevTools protocol opens the page, noVNC connects, its canvas holds the test's pattern, and
 * text typed into the page reaches the input router as scan codes.
 */
import assert from "node:assert/strict";
import { MemoryFramebuffer } from "../../../src/console/framebuffer.ts";
import { type ConsoleInput, VncServer } from "../../../src/console/vnc_server.ts";
import { startWebConsole } from "../../../src/console/web.ts";
import { findNovncLib } from "../../../src/vmm/console.ts";
import { decodePng } from "./png.ts";

const CHROMIUM = ["chromium", "chromium-browser"].find((c) => {
  try {
    return new Deno.Command("sh", { args: ["-c", `command -v ${c}`] }).outputSync().success;
  } catch {
    return false;
  }
});
const lib = CHROMIUM ? await findNovncLib().catch(() => undefined) : undefined;

/** A DevTools protocol result: JSON whose shape depends on the method. */
// deno-lint-ignore no-explicit-any
type CdpResult = Record<string, any>;

/** A DevTools protocol session over the browser's WebSocket. */
class Cdp {
  readonly #ws: WebSocket;
  #id = 0;
  readonly #pending = new Map<number, (m: Record<string, unknown>) => void>();
  constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (e) => {
      const m = JSON.parse(String(e.data));
      this.#pending.get(m.id)?.(m);
      this.#pending.delete(m.id);
    };
  }
  static async open(url: string): Promise<Cdp> {
    const ws = new WebSocket(url);
    await new Promise((r, j) => {
      ws.onopen = r;
      ws.onerror = () => j(new Error("DevTools WebSocket failed"));
    });
    return new Cdp(ws);
  }
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string) {
    const id = ++this.#id;
    this.#ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    return new Promise<CdpResult>((resolve, reject) => {
      this.#pending.set(
        id,
        (m) =>
          m.error ? reject(new Error(JSON.stringify(m.error))) : resolve(m.result as CdpResult),
      );
    });
  }
  close(): void {
    this.#ws.close();
  }
}

class RecordingInput implements ConsoleInput {
  keys: string[] = [];
  key(code: number, down: boolean): boolean {
    this.keys.push(`${code.toString(16)}${down ? "+" : "-"}`);
    return true;
  }
  pointer(): boolean {
    return true;
  }
}

Deno.test({
  name: "web console in headless Chromium: noVNC shows the pattern; typed text arrives as keys",
  ignore: !CHROMIUM || !lib,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const fb = new MemoryFramebuffer(320, 200);
    fb.fill({ x: 0, y: 0, width: 160, height: 200 }, 0xcc2200);
    fb.fill({ x: 160, y: 0, width: 160, height: 200 }, 0x0044ee);
    fb.fill({ x: 100, y: 80, width: 120, height: 40 }, 0xffffff);
    const input = new RecordingInput();
    const vnc = new VncServer({ source: fb, input: () => input });
    const web = startWebConsole({ hostname: "127.0.0.1", port: 0, vnc, novncLib: lib! });
    const profile = await Deno.makeTempDir();
    const browser = new Deno.Command(CHROMIUM!, {
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "--window-size=800,600",
        "about:blank",
      ],
      stderr: "piped",
      stdout: "null",
    }).spawn();
    let cdp: Cdp | undefined;
    try {
      // "DevTools listening on ws://…" on stderr.
      const reader = browser.stderr.pipeThrough(new TextDecoderStream()).getReader();
      let text = "", wsUrl = "";
      const deadline = Date.now() + 60_000;
      while (!wsUrl && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
        wsUrl = /DevTools listening on (ws:\/\/\S+)/.exec(text)?.[1] ?? "";
      }
      assert.ok(wsUrl, `Chromium did not start: ${text}`);
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })().catch(() => {});
      cdp = await Cdp.open(wsUrl);
      const { targetId } = await cdp.send("Target.createTarget", { url: web.url });
      const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
      const evaluate = async (expression: string) =>
        (await cdp!.send("Runtime.evaluate", { expression, returnByValue: true }, sessionId))
          .result?.value;
      let status = "";
      for (let i = 0; i < 100 && status !== "connected"; i++) {
        await new Promise((r) => setTimeout(r, 100));
        status = String(await evaluate("document.getElementById('status')?.textContent"));
      }
      assert.equal(status, "connected");
      await new Promise((r) => setTimeout(r, 500)); // first frame drawn
      const dataUrl = String(
        await evaluate("document.querySelector('#screen canvas').toDataURL('image/png')"),
      );
      const img = decodePng(Uint8Array.from(atob(dataUrl.split(",")[1]!), (c) => c.charCodeAt(0)));
      assert.deepEqual([img.width, img.height], [320, 200]);
      assert.equal(img.rgb(20, 20).toString(16), "cc2200");
      assert.equal(img.rgb(300, 190).toString(16), "44ee");
      assert.equal(img.rgb(160, 100).toString(16), "ffffff");
      const shot = await cdp.send("Page.captureScreenshot", { format: "png" }, sessionId);
      const keep = Deno.env.get("BROWSER_TEST_SHOT");
      if (keep) Deno.writeFileSync(keep, Uint8Array.from(atob(shot.data), (c) => c.charCodeAt(0)));
      // Type "hi" into the page.
      await evaluate("rfb.focus()");
      for (const [key, code, vk] of [["h", "KeyH", 72], ["i", "KeyI", 73]] as const) {
        for (const type of ["keyDown", "keyUp"]) {
          await cdp.send("Input.dispatchKeyEvent", {
            type,
            key,
            code,
            windowsVirtualKeyCode: vk,
            ...(type === "keyDown" ? { text: key } : {}),
          }, sessionId);
        }
      }
      for (let i = 0; i < 50 && input.keys.length < 4; i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(input.keys, ["23+", "23-", "17+", "17-"]);
    } finally {
      cdp?.close();
      try {
        browser.kill("SIGTERM");
      } catch { /* gone */ }
      await browser.status;
      vnc.close();
      await web.close();
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    }
  },
});
