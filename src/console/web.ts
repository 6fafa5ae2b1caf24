/**
 * The web console: a page that runs noVNC (npm `@novnc/novnc`, the kept RFB client) against this
 * VMM's VNC server over a WebSocket (`Deno.serve` upgrade). noVNC ships as CommonJS modules; the
 * server joins them into one script with a small module table at start (no build step).
 *
 * Access: every request must carry the random token printed at start (`?token=`); the server
 * listens on loopback unless the caller allows otherwise. Malformed WebSocket traffic is the
 * RFB server's to judge: it closes that connection only.
 * @module
 */
import { getLogger } from "../util/log.ts";
import type { ByteStream, VncServer } from "./vnc_server.ts";

const log = getLogger("console", "web");

/** Options of `startWebConsole`. */
export interface WebConsoleOptions {
  readonly hostname: string;
  /** TCP port (0: any free one). */
  readonly port: number;
  /** The RFB server the page talks to. */
  readonly vnc: VncServer;
  /** Directory of noVNC's `lib/` (CommonJS modules). */
  readonly novncLib: string;
  /** Access token (default: 16 random bytes, hex). */
  readonly token?: string;
}

/** A running web console. */
export interface WebConsole {
  /** The URL to open (with the token). */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Joins noVNC's CommonJS modules under `lib` into one browser script exposing `novncRequire`
 * (module names relative to the package root: `novncRequire("lib/rfb.js")`).
 */
export function bundleNovnc(lib: string): string {
  const parts: string[] = [];
  const walk = (dir: string, rel: string) => {
    for (const e of [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name))) {
      const path = `${dir}/${e.name}`;
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) walk(path, r);
      else if (e.name.endsWith(".js")) {
        parts.push(
          `__m[${JSON.stringify(r)}] = function (require, module, exports) {\n` +
            `${Deno.readTextFileSync(path)}\n};`,
        );
      }
    }
  };
  // Names relative to the package root: some modules reach "../lib/vendor/…".
  walk(lib, "lib");
  if (!parts.some((p) => p.startsWith('__m["lib/rfb.js"]'))) {
    throw new Error(`${lib} does not look like noVNC's lib directory (no rfb.js)`);
  }
  return `(function () {
"use strict";
const __m = Object.create(null);
const __cache = Object.create(null);
${parts.join("\n")}
function resolve(from, spec) {
  const out = from.split("/").slice(0, -1);
  for (const s of spec.split("/")) {
    if (s === "..") out.pop();
    else if (s !== "." && s !== "") out.push(s);
  }
  return out.join("/");
}
function load(name) {
  if (__cache[name]) return __cache[name].exports;
  const fn = __m[name];
  if (!fn) throw new Error("noVNC module not found: " + name);
  const module = { exports: {} };
  __cache[name] = module;
  try {
    fn((spec) => load(resolve(name, spec)), module, module.exports);
  } catch (e) {
    delete __cache[name];
    throw e;
  }
  return module.exports;
}
globalThis.novncRequire = (name) => load(name);
})();
`;
}

function page(token: string): string {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>hyperdeno console</title>
<style>html,body{margin:0;height:100%;background:#222;color:#ddd;font:14px sans-serif}
#bar{padding:4px 8px}#screen{position:absolute;top:28px;bottom:0;left:0;right:0}</style>
</head><body><div id="bar">hyperdeno <span id="status">connecting…</span>
<button id="cad">Ctrl-Alt-Del</button></div><div id="screen"></div>
<script src="novnc.js?token=${token}"></script>
<script>
const RFB = novncRequire("lib/rfb.js").default;
const proto = location.protocol === "https:" ? "wss:" : "ws:";
const rfb = new RFB(document.getElementById("screen"),
  proto + "//" + location.host + "/websockify?token=${token}");
rfb.scaleViewport = true;
rfb.focusOnClick = true;
const status = document.getElementById("status");
rfb.addEventListener("connect", () => { status.textContent = "connected"; rfb.focus(); });
rfb.addEventListener("disconnect", () => { status.textContent = "disconnected"; });
document.getElementById("cad").onclick = () => rfb.sendCtrlAltDel();
globalThis.rfb = rfb;
</script></body></html>
`;
}

/** Adapts a server-side WebSocket to the RFB server's byte stream. */
function socketStream(ws: WebSocket): { stream: ByteStream; opened: Promise<void> } {
  const queue: Uint8Array[] = [];
  let waiter: (() => void) | undefined;
  let closed = false;
  const wake = () => {
    const w = waiter;
    waiter = undefined;
    w?.();
  };
  ws.binaryType = "arraybuffer";
  const opened = new Promise<void>((resolve) => ws.onopen = () => resolve());
  ws.onmessage = (e) => {
    // RFB is binary; a text frame is hostile input: end the connection.
    if (!(e.data instanceof ArrayBuffer)) {
      closed = true;
      ws.close(1003, "binary frames only");
    } else queue.push(new Uint8Array(e.data));
    wake();
  };
  ws.onclose = () => {
    closed = true;
    wake();
  };
  ws.onerror = () => {
    closed = true;
    wake();
  };
  const stream: ByteStream = {
    async read(p) {
      while (queue.length === 0) {
        if (closed) return null;
        await new Promise<void>((r) => waiter = r);
      }
      const head = queue[0]!;
      const n = Math.min(p.length, head.length);
      p.set(head.subarray(0, n));
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      return n;
    },
    write(p) {
      if (closed || ws.readyState !== WebSocket.OPEN) {
        return Promise.reject(new Error("WebSocket closed"));
      }
      ws.send(p.slice());
      return Promise.resolve(p.length);
    },
    close() {
      closed = true;
      try {
        ws.close();
      } catch { /* closed */ }
    },
  };
  return { stream, opened };
}

/** Serves the web console until `close()`. */
export function startWebConsole(options: WebConsoleOptions): WebConsole {
  const token = options.token ??
    Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0"))
      .join("");
  const script = bundleNovnc(options.novncLib);
  const ok = (u: URL) => {
    const given = u.searchParams.get("token") ?? "";
    if (given.length !== token.length) return false;
    let diff = 0;
    for (let i = 0; i < token.length; i++) diff |= given.charCodeAt(i) ^ token.charCodeAt(i);
    return diff === 0;
  };
  const server = Deno.serve({
    hostname: options.hostname,
    port: options.port,
    onListen: () => {},
  }, (req) => {
    const url = new URL(req.url);
    if (!ok(url)) return new Response("forbidden: open the URL with the token\n", { status: 403 });
    switch (url.pathname) {
      case "/":
        return new Response(page(token), {
          headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
        });
      case "/novnc.js":
        return new Response(script, {
          headers: { "content-type": "text/javascript; charset=utf-8" },
        });
      case "/websockify": {
        if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
          return new Response("WebSocket only\n", { status: 400 });
        }
        const wanted = (req.headers.get("sec-websocket-protocol") ?? "").split(",").map((s) =>
          s.trim()
        );
        const { socket, response } = Deno.upgradeWebSocket(
          req,
          wanted.includes("binary") ? { protocol: "binary" } : {},
        );
        const { stream, opened } = socketStream(socket);
        opened.then(() => options.vnc.handle(stream)).catch((e) =>
          log.debug("web console connection ended: {error}", { error: String(e) })
        );
        return response;
      }
      default:
        return new Response("not found\n", { status: 404 });
    }
  });
  const port = server.addr.port;
  const host = options.hostname.includes(":") ? `[${options.hostname}]` : options.hostname;
  return {
    url: `http://${host}:${port}/?token=${token}`,
    port,
    close: () => server.shutdown(),
  };
}
