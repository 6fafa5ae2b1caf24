/**
 * An RFB 3.8 server (RFC 6143) for the guest's screen, keyboard and pointer: several clients at
 * once, each with its own pixel format and encodings (Raw, CopyRect, ZRLE; DesktopSize and
 * cursor pseudo-encodings; QEMU extended key events for exact scan codes), security None or VNC
 * authentication.
 *
 * Cost model: nothing is encoded unless a client has asked for an update, only changed regions
 * are sent, and the server arms no timer while no client waits. A source that cannot report
 * damage is scanned (`FramebufferSource.scan`) only while some client waits for an update.
 *
 * Hostile clients: every message is bounded and checked; a malformed one closes that connection
 * only (logged, rate-limited).
 * @module
 */
import zlib from "node:zlib";
import { Buffer } from "node:buffer";
import { getLogger, rateLimited } from "../util/log.ts";
import { keysymToScanCode } from "../devices/input/keymap.ts";
import {
  clipRect,
  type DisplayChange,
  type FramebufferSource,
  type Rect,
  unionRect,
} from "./framebuffer.ts";
import {
  COLOUR_MAP_233,
  defaultCursor,
  encodeCursor,
  encodeRaw,
  encodeZrleTiles,
  PixelEncoder,
} from "./rfb_encode.ts";
import {
  ClientMessage,
  Encoding,
  NATIVE_PIXEL_FORMAT,
  type PixelFormat,
  readPixelFormat,
  RFB_VERSION_3_8,
  SecurityType,
  ServerMessage,
  writePixelFormat,
} from "./rfb_protocol.ts";
import { vncAuthResponse } from "./vnc_auth.ts";

const log = getLogger("console", "vnc");

/** Where key and pointer events go (the input router). */
export interface ConsoleInput {
  /** A key (set-1 scan code, 0xE0xx for extended keys) pressed or released. */
  key(scanCode: number, down: boolean): boolean;
  /** Pointer at (x, y) in 0..32767 across the screen, buttons bit 0 left, 1 right, 2 middle. */
  pointer(x: number, y: number, buttons: number, wheel: number): boolean;
}

/** A byte stream to one client (a `Deno.Conn`, or a WebSocket adapter). */
export interface ByteStream {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** Options of `VncServer`. */
export interface VncServerOptions {
  /** The display shown first. */
  readonly source: FramebufferSource;
  /** Where input goes (looked up per event: the target changes across guest reboots). */
  readonly input: () => ConsoleInput | undefined;
  /** VNC authentication password (only its first 8 bytes count, as in every VNC). */
  readonly password?: string;
  /** Desktop name sent to clients. */
  readonly name?: string;
  /** Scan interval for sources without damage tracking, while a client waits (default 50 ms). */
  readonly scanIntervalMs?: number;
}

/** Counters. */
export interface VncStats {
  connections: number;
  updates: number;
  rects: number;
  bytesSent: number;
  protocolErrors: number;
  authFailures: number;
  /** Pixel rectangles sent as ZRLE. */
  zrleRects: number;
  /** Pixel rectangles sent as Raw. */
  rawRects: number;
}

/** A protocol violation by a client: closes its connection. */
class ClientError extends Error {}

/** Largest ClientCutText accepted (bytes). */
const MAX_CUT_TEXT = 1 << 20;
/** Largest SetEncodings list. */
const MAX_ENCODINGS = 1024;
/** Dirty rectangles kept per client before they merge into one. */
const MAX_DIRTY = 32;

/** The RFB server. */
export class VncServer {
  readonly stats: VncStats = {
    connections: 0,
    updates: 0,
    rects: 0,
    bytesSent: 0,
    protocolErrors: 0,
    authFailures: 0,
    zrleRects: 0,
    rawRects: 0,
  };
  #source: FramebufferSource;
  #unsubscribe: () => void;
  readonly #options: VncServerOptions;
  readonly #clients = new Set<VncClient>();
  readonly #listeners = new Set<Deno.Listener>();
  #scanTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #warn = rateLimited();

  /** A server showing `options.source`. */
  constructor(options: VncServerOptions) {
    this.#options = options;
    this.#source = options.source;
    this.#unsubscribe = this.#source.subscribe((c) => this.#onChange(c));
  }

  /** Connected clients (after the handshake). */
  get clientCount(): number {
    let n = 0;
    for (const c of this.#clients) if (c.ready) n++;
    return n;
  }

  /** True while a scan timer is armed (tests check that idle costs nothing). */
  get scanning(): boolean {
    return this.#scanTimer !== undefined;
  }

  /** The display shown now. */
  get source(): FramebufferSource {
    return this.#source;
  }

  /** Shows another display (bochs → synthvid): every client gets a resize and a full frame. */
  setSource(source: FramebufferSource): void {
    if (source === this.#source) return;
    this.#unsubscribe();
    this.#source = source;
    this.#unsubscribe = source.subscribe((c) => this.#onChange(c));
    this.#onChange({ kind: "resize" });
    this.#onChange({ kind: "cursor" });
  }

  /** Accepts connections from `listener` until `close()`. */
  serve(listener: Deno.Listener): void {
    this.#listeners.add(listener);
    (async () => {
      try {
        for await (const conn of listener) void this.handle(conn);
      } catch { /* listener closed */ }
    })();
  }

  /** Runs one client connection to its end. */
  async handle(stream: ByteStream): Promise<void> {
    const client = new VncClient(this, stream, this.#options);
    this.#clients.add(client);
    this.stats.connections++;
    try {
      await client.run();
    } catch (e) {
      if (e instanceof ClientError) {
        this.stats.protocolErrors++;
        this.#warn((n) =>
          log.warning("closed a VNC client: {why}{more}", {
            why: e.message,
            more: n > 0 ? ` (${n} similar suppressed)` : "",
          })
        );
      } else log.debug("VNC client ended: {error}", { error: String(e) });
    } finally {
      client.dispose();
      this.#clients.delete(client);
      this.#updateScan();
      try {
        stream.close();
      } catch { /* closed */ }
    }
  }

  /** Stops listening and closes every client. */
  close(): void {
    for (const l of this.#listeners) {
      try {
        l.close();
      } catch { /* closed */ }
    }
    this.#listeners.clear();
    for (const c of this.#clients) c.abort();
    this.#unsubscribe();
    if (this.#scanTimer !== undefined) clearTimeout(this.#scanTimer);
    this.#scanTimer = undefined;
  }

  #onChange(c: DisplayChange): void {
    for (const client of this.#clients) client.change(c);
  }

  /** Arms or disarms the scan timer: armed only while a client waits and the source scans. */
  #updateScan(): void {
    const wanted = this.#source.scan !== undefined &&
      [...this.#clients].some((c) => c.waiting);
    if (wanted && this.#scanTimer === undefined) {
      this.#scanTimer = setTimeout(() => {
        this.#scanTimer = undefined;
        for (const r of this.#source.scan?.() ?? []) this.#onChange({ kind: "damage", rect: r });
        this.#updateScan();
      }, this.#options.scanIntervalMs ?? 50);
    } else if (!wanted && this.#scanTimer !== undefined) {
      clearTimeout(this.#scanTimer);
      this.#scanTimer = undefined;
    }
  }

  /** A client started or stopped waiting for an update. @internal */
  _waitingChanged(): void {
    this.#updateScan();
  }
}

/** One client connection. */
class VncClient {
  readonly #server: VncServer;
  readonly #stream: ByteStream;
  readonly #options: VncServerOptions;
  #buf = new Uint8Array(4096);
  #start = 0;
  #end = 0;
  ready = false;
  #aborted = false;
  #format: PixelFormat = NATIVE_PIXEL_FORMAT;
  #enc = new PixelEncoder(NATIVE_PIXEL_FORMAT);
  #encodings = new Set<number>();
  /** An update request is outstanding (incremental or not). */
  #requested = false;
  #dirty: Rect[] = [];
  #copies: { rect: Rect; fromX: number; fromY: number }[] = [];
  #resized = false;
  #cursorChanged = true;
  /** The QEMU extended key event pseudo-encoding still to be acknowledged. */
  #qemuKeysPending = false;
  #sending = false;
  #deflate: zlib.Deflate | undefined;
  #deflateOut: Uint8Array[] = [];
  /** Known frame size (what the client was last told). */
  #width = 0;
  #height = 0;
  #buttons = 0;
  readonly #keysDown = new Set<number>();

  constructor(server: VncServer, stream: ByteStream, options: VncServerOptions) {
    this.#server = server;
    this.#stream = stream;
    this.#options = options;
  }

  /** True while an update request waits for something to send. */
  get waiting(): boolean {
    return this.ready && this.#requested && !this.#sending;
  }

  abort(): void {
    this.#aborted = true;
    try {
      this.#stream.close();
    } catch { /* closed */ }
  }

  dispose(): void {
    // Release keys the client held, so the guest does not see a stuck modifier.
    const input = this.#options.input();
    for (const k of this.#keysDown) input?.key(k, false);
    this.#keysDown.clear();
    this.#deflate?.close();
    this.#deflate = undefined;
  }

  // ---- reading -------------------------------------------------------------------------------

  async #fill(n: number): Promise<void> {
    if (n > this.#buf.length) {
      const bigger = new Uint8Array(Math.max(n, this.#buf.length * 2));
      bigger.set(this.#buf.subarray(this.#start, this.#end));
      this.#end -= this.#start;
      this.#start = 0;
      this.#buf = bigger;
    }
    while (this.#end - this.#start < n) {
      if (this.#start > 0 && this.#buf.length - this.#start < n) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      const got = await this.#stream.read(this.#buf.subarray(this.#end));
      if (got === null || this.#aborted) throw new Error("connection closed");
      this.#end += got;
    }
  }

  /** The next `n` bytes (valid until the next read). */
  async #take(n: number): Promise<Uint8Array> {
    await this.#fill(n);
    const out = this.#buf.subarray(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  async #write(bytes: Uint8Array): Promise<void> {
    let at = 0;
    while (at < bytes.length) at += await this.#stream.write(bytes.subarray(at));
    this.#server.stats.bytesSent += bytes.length;
  }

  // ---- handshake -----------------------------------------------------------------------------

  async run(): Promise<void> {
    const enc = new TextEncoder();
    await this.#write(enc.encode(RFB_VERSION_3_8));
    const version = new TextDecoder().decode(await this.#take(12));
    const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(version);
    if (!m) throw new ClientError(`not an RFB client (${JSON.stringify(version)})`);
    const minor = Number(m[1]) === 3 ? Number(m[2]) : 8;
    const password = this.#options.password;
    const type = password !== undefined ? SecurityType.VNC_AUTH : SecurityType.NONE;
    if (minor >= 7) {
      await this.#write(new Uint8Array([1, type]));
      const chosen = (await this.#take(1))[0];
      if (chosen !== type) {
        await this.#securityFailed("security type not offered");
        throw new ClientError(`client chose security type ${chosen}`);
      }
    } else {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint32(0, type);
      await this.#write(b);
    }
    if (password !== undefined) {
      const challenge = crypto.getRandomValues(new Uint8Array(16));
      await this.#write(challenge);
      const response = (await this.#take(16)).slice();
      const expected = vncAuthResponse(password, challenge);
      let diff = 0;
      for (let i = 0; i < 16; i++) diff |= response[i]! ^ expected[i]!;
      if (diff !== 0) {
        this.#server.stats.authFailures++;
        await this.#securityFailed("authentication failed");
        throw new ClientError("VNC authentication failed");
      }
      await this.#write(new Uint8Array(4)); // SecurityResult OK
    } else if (minor >= 8) {
      await this.#write(new Uint8Array(4));
    }
    await this.#take(1); // ClientInit shared-flag: every client shares
    const frame = this.#server.source.frame();
    this.#width = frame.width;
    this.#height = frame.height;
    const name = enc.encode(this.#options.name ?? "hyperdeno");
    const init = new Uint8Array(24 + name.length);
    const dv = new DataView(init.buffer);
    dv.setUint16(0, frame.width);
    dv.setUint16(2, frame.height);
    writePixelFormat(NATIVE_PIXEL_FORMAT, init, 4);
    dv.setUint32(20, name.length);
    init.set(name, 24);
    await this.#write(init);
    this.ready = true;
    for (;;) await this.#message();
  }

  async #securityFailed(reason: string): Promise<void> {
    const text = new TextEncoder().encode(reason);
    const b = new Uint8Array(8 + text.length);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, 1);
    dv.setUint32(4, text.length);
    b.set(text, 8);
    await this.#write(b).catch(() => {});
  }

  // ---- messages ------------------------------------------------------------------------------

  async #message(): Promise<void> {
    const type = (await this.#take(1))[0]!;
    switch (type) {
      case ClientMessage.SET_PIXEL_FORMAT: {
        const b = await this.#take(19);
        const f = readPixelFormat(b, 3);
        if (typeof f === "string") throw new ClientError(`unsupported pixel format: ${f}`);
        this.#format = f;
        if (!f.trueColour) {
          this.#enc = new PixelEncoder(COLOUR_MAP_233);
          await this.#sendColourMap();
        } else this.#enc = new PixelEncoder(f);
        // Pixels already queued were in the old format; the next update sends everything.
        this.#dirty = [{ x: 0, y: 0, width: this.#width, height: this.#height }];
        this.#copies = [];
        this.#cursorChanged = true;
        return;
      }
      case ClientMessage.SET_ENCODINGS: {
        const h = await this.#take(3);
        const n = (h[1]! << 8) | h[2]!;
        if (n > MAX_ENCODINGS) throw new ClientError(`${n} encodings`);
        const list = await this.#take(n * 4);
        const dv = new DataView(list.buffer, list.byteOffset, list.byteLength);
        this.#encodings = new Set(Array.from({ length: n }, (_, i) => dv.getInt32(i * 4)));
        this.#cursorChanged = true;
        this.#qemuKeysPending = this.#encodings.has(Encoding.QEMU_EXTENDED_KEY_EVENT);
        return;
      }
      case ClientMessage.FRAMEBUFFER_UPDATE_REQUEST: {
        const b = await this.#take(9);
        const dv = new DataView(b.buffer, b.byteOffset, 9);
        const incremental = b[0] !== 0;
        const r = clipRect(
          {
            x: dv.getUint16(1),
            y: dv.getUint16(3),
            width: dv.getUint16(5),
            height: dv.getUint16(7),
          },
          this.#width,
          this.#height,
        );
        if (!incremental && r) this.#addDirty(r);
        this.#requested = true;
        this.#kick();
        return;
      }
      case ClientMessage.KEY_EVENT: {
        const b = await this.#take(7);
        const keysym = new DataView(b.buffer, b.byteOffset, 7).getUint32(3);
        const code = keysymToScanCode(keysym);
        if (code !== undefined) this.#key(code, b[0] !== 0);
        return;
      }
      case ClientMessage.POINTER_EVENT: {
        const b = await this.#take(5);
        const dv = new DataView(b.buffer, b.byteOffset, 5);
        this.#pointer(b[0]!, dv.getUint16(1), dv.getUint16(3));
        return;
      }
      case ClientMessage.CLIENT_CUT_TEXT: {
        const h = await this.#take(7);
        const len = new DataView(h.buffer, h.byteOffset, 7).getUint32(3);
        if (len > MAX_CUT_TEXT) throw new ClientError(`cut text of ${len} bytes`);
        await this.#take(len); // the guest has no clipboard channel: dropped
        return;
      }
      case ClientMessage.QEMU: {
        const sub = (await this.#take(1))[0];
        if (sub !== 0) throw new ClientError(`QEMU client message ${sub}`);
        const b = await this.#take(10);
        const dv = new DataView(b.buffer, b.byteOffset, 10);
        const down = dv.getUint16(0) !== 0;
        const keycode = dv.getUint32(6);
        // noVNC's XT code: 0x80|code for E0-prefixed keys.
        const code = keycode >= 0x80 && keycode < 0x100 ? 0xe000 | (keycode & 0x7f) : keycode;
        if (code > 0 && code <= 0xe07f) this.#key(code, down);
        else {
          const bySym = keysymToScanCode(dv.getUint32(2));
          if (bySym !== undefined) this.#key(bySym, down);
        }
        return;
      }
      default:
        throw new ClientError(`unknown message type ${type}`);
    }
  }

  #key(code: number, down: boolean): void {
    if (down) this.#keysDown.add(code);
    else this.#keysDown.delete(code);
    this.#options.input()?.key(code, down);
  }

  #pointer(mask: number, x: number, y: number): void {
    const pressed = mask & ~this.#buttons;
    this.#buttons = mask;
    // RFB: bit 0 left, 1 middle, 2 right, 3 wheel up, 4 wheel down.
    const buttons = (mask & 1) | ((mask & 4) ? 2 : 0) | ((mask & 2) ? 4 : 0);
    const wheel = (pressed & 8 ? 1 : 0) - (pressed & 16 ? 1 : 0);
    const ax = this.#width > 1 ? Math.min(x, this.#width - 1) * 32767 / (this.#width - 1) : 0;
    const ay = this.#height > 1 ? Math.min(y, this.#height - 1) * 32767 / (this.#height - 1) : 0;
    this.#options.input()?.pointer(ax, ay, buttons, wheel);
  }

  async #sendColourMap(): Promise<void> {
    const b = new Uint8Array(6 + 256 * 6);
    const dv = new DataView(b.buffer);
    dv.setUint8(0, ServerMessage.SET_COLOUR_MAP_ENTRIES);
    dv.setUint16(2, 0);
    dv.setUint16(4, 256);
    for (let i = 0; i < 256; i++) {
      dv.setUint16(6 + i * 6, Math.round(((i >> 5) & 7) * 65535 / 7));
      dv.setUint16(8 + i * 6, Math.round(((i >> 2) & 7) * 65535 / 7));
      dv.setUint16(10 + i * 6, Math.round((i & 3) * 65535 / 3));
    }
    await this.#write(b);
  }

  // ---- updates -------------------------------------------------------------------------------

  change(c: DisplayChange): void {
    switch (c.kind) {
      case "damage": {
        const r = clipRect(c.rect, this.#width, this.#height);
        if (r) this.#addDirty(r);
        break;
      }
      case "copy": {
        const r = clipRect(c.rect, this.#width, this.#height);
        if (!r) break;
        const fits = c.fromX >= 0 && c.fromY >= 0 && c.fromX + r.width <= this.#width &&
          c.fromY + r.height <= this.#height;
        if (this.#encodings.has(Encoding.COPY_RECT) && this.#dirty.length === 0 && fits) {
          this.#copies.push({ rect: r, fromX: c.fromX, fromY: c.fromY });
        } else this.#addDirty(r);
        break;
      }
      case "resize":
        this.#resized = true;
        this.#copies = [];
        break;
      case "cursor":
        this.#cursorChanged = true;
        break;
    }
    this.#kick();
  }

  #addDirty(r: Rect): void {
    const inside = (a: Rect, b: Rect) =>
      a.x >= b.x && a.y >= b.y && a.x + a.width <= b.x + b.width &&
      a.y + a.height <= b.y + b.height;
    if (this.#dirty.some((d) => inside(r, d))) return;
    this.#dirty = this.#dirty.filter((d) => !inside(d, r));
    this.#dirty.push(r);
    if (this.#dirty.length > MAX_DIRTY) this.#dirty = [this.#dirty.reduce(unionRect)];
  }

  /** Sends an update if one is asked for and there is something to send. */
  #kick(): void {
    if (!this.ready || this.#sending || !this.#requested) {
      this.#server._waitingChanged();
      return;
    }
    const cursor = this.#cursorChanged && this.#encodings.has(Encoding.CURSOR);
    if (
      !this.#resized && !cursor && !this.#qemuKeysPending && this.#dirty.length === 0 &&
      this.#copies.length === 0
    ) {
      this.#server._waitingChanged();
      return;
    }
    this.#sending = true;
    this.#requested = false;
    this.#server._waitingChanged();
    this.#sendUpdate().then(
      () => {
        this.#sending = false;
        this.#kick();
      },
      (e) => {
        log.debug("VNC update failed: {error}", { error: String(e) });
        this.abort();
      },
    );
  }

  async #sendUpdate(): Promise<void> {
    const source = this.#server.source;
    const frame = source.frame();
    const parts: Uint8Array[] = [];
    let rects = 0;
    const header = (r: Rect, encoding: number) => {
      const h = new Uint8Array(12);
      const dv = new DataView(h.buffer);
      dv.setUint16(0, r.x);
      dv.setUint16(2, r.y);
      dv.setUint16(4, r.width);
      dv.setUint16(6, r.height);
      dv.setInt32(8, encoding);
      parts.push(h);
      rects++;
    };
    if (this.#resized) {
      this.#resized = false;
      if (this.#encodings.has(Encoding.DESKTOP_SIZE)) {
        this.#width = frame.width;
        this.#height = frame.height;
        header({ x: 0, y: 0, width: frame.width, height: frame.height }, Encoding.DESKTOP_SIZE);
      }
      this.#dirty = [{ x: 0, y: 0, width: this.#width, height: this.#height }];
    }
    if (this.#cursorChanged && this.#encodings.has(Encoding.CURSOR)) {
      this.#cursorChanged = false;
      const c = source.cursor?.() ?? defaultCursor();
      header({ x: c.hotX, y: c.hotY, width: c.width, height: c.height }, Encoding.CURSOR);
      parts.push(encodeCursor(c, this.#enc));
    }
    if (this.#qemuKeysPending) {
      // Tells the client it may send scan codes (QEMU extended key events).
      this.#qemuKeysPending = false;
      header({ x: 0, y: 0, width: 0, height: 0 }, Encoding.QEMU_EXTENDED_KEY_EVENT);
    }
    for (const c of this.#copies) {
      header(c.rect, Encoding.COPY_RECT);
      const b = new Uint8Array(4);
      new DataView(b.buffer).setUint16(0, c.fromX);
      new DataView(b.buffer).setUint16(2, c.fromY);
      parts.push(b);
    }
    this.#copies = [];
    // The frame may be smaller than what the client knows (no DesktopSize): clip to both.
    const w = Math.min(this.#width, frame.width), h = Math.min(this.#height, frame.height);
    const dirty = this.#dirty;
    this.#dirty = [];
    const zrle = this.#encodings.has(Encoding.ZRLE) &&
      [...this.#encodings].find((e) => e === Encoding.ZRLE || e === Encoding.RAW) ===
        Encoding.ZRLE;
    for (const d of dirty) {
      const r = clipRect(d, w, h);
      if (!r) continue;
      if (zrle) {
        header(r, Encoding.ZRLE);
        this.#server.stats.zrleRects++;
        const data = await this.#compress(encodeZrleTiles(frame, r, this.#enc));
        const len = new Uint8Array(4);
        new DataView(len.buffer).setUint32(0, data.length);
        parts.push(len, data);
      } else {
        header(r, Encoding.RAW);
        this.#server.stats.rawRects++;
        parts.push(encodeRaw(frame, r, this.#enc));
      }
    }
    if (rects === 0) {
      this.#requested = true; // nothing survived clipping: the request still stands
      return;
    }
    const head = new Uint8Array(4);
    head[0] = ServerMessage.FRAMEBUFFER_UPDATE;
    new DataView(head.buffer).setUint16(2, rects);
    let total = 4;
    for (const p of parts) total += p.length;
    const msg = new Uint8Array(total);
    msg.set(head, 0);
    let at = 4;
    for (const p of parts) {
      msg.set(p, at);
      at += p.length;
    }
    this.#server.stats.updates++;
    this.#server.stats.rects += rects;
    await this.#write(msg);
  }

  /** Runs `data` through the connection's one zlib stream (ZRLE), with a sync flush. */
  #compress(data: Uint8Array): Promise<Uint8Array> {
    if (!this.#deflate) {
      this.#deflate = zlib.createDeflate({ level: 6 });
      this.#deflate.on("data", (c: Uint8Array) => this.#deflateOut.push(c));
    }
    const d = this.#deflate;
    d.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    return new Promise((resolve) => {
      d.flush(zlib.constants.Z_SYNC_FLUSH, () => {
        let n = 0;
        for (const c of this.#deflateOut) n += c.length;
        const out = new Uint8Array(n);
        let at = 0;
        for (const c of this.#deflateOut) {
          out.set(c, at);
          at += c.length;
        }
        this.#deflateOut = [];
        resolve(out);
      });
    });
  }
}
