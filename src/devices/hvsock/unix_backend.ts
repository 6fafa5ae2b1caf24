/**
 * `--vsock PATH`: hv_sock connections as host unix sockets, in Firecracker's convention so its
 * tools fit.
 *
 * - A guest connecting to AF_VSOCK port P (CID 2) reaches the unix socket `PATH_P`, which a host
 *   service listens on.
 * - A host process connecting to `PATH` writes `CONNECT P\n` and reaches a guest listening on
 *   port P; it reads `OK <hostport>\n` once the guest accepted (`hostport` is the peer port the
 *   guest sees), and the connection is the stream from then on. Nobody accepting (or a bad first
 *   line) closes the connection.
 *
 * The listener outlives guest reboots; each boot gets its own `HvsockHost` from `newBoot()`.
 * @module
 */
import { listenUnixSocket, type OwnedUnixListener } from "../../util/unix_socket.ts";
import { getLogger } from "../../util/log.ts";
import type { HostStream } from "./connection.ts";
import { type HvsockBackend, HvsockHost } from "./host.ts";

/** Longest first line a host client may send (`CONNECT 4294967295\r\n` is 20 bytes). */
export const MAX_CONNECT_LINE = 64;

const logger = getLogger("dev", "hvsock");

/** The result of parsing a host client's first bytes. */
export type ConnectLine =
  | { readonly kind: "connect"; readonly port: number; readonly rest: Uint8Array }
  | { readonly kind: "partial" }
  | { readonly kind: "bad"; readonly why: string };

/**
 * Parses the start of a host connection: `CONNECT <port>\n` (decimal port, 0..2^32-1, an
 * optional `\r` before the newline). `rest` is whatever the client sent after the line (its
 * first stream bytes). `partial` asks for more bytes; more than `MAX_CONNECT_LINE` without a
 * newline is bad.
 */
export function parseConnectLine(bytes: Uint8Array): ConnectLine {
  const nl = bytes.indexOf(0x0a);
  if (nl < 0) {
    return bytes.length >= MAX_CONNECT_LINE
      ? { kind: "bad", why: `no newline in the first ${MAX_CONNECT_LINE} bytes` }
      : { kind: "partial" };
  }
  if (nl >= MAX_CONNECT_LINE) return { kind: "bad", why: "the first line is too long" };
  let end = nl;
  if (end > 0 && bytes[end - 1] === 0x0d) end--;
  let line = "";
  for (let i = 0; i < end; i++) line += String.fromCharCode(bytes[i]!);
  const m = /^CONNECT ([0-9]{1,10})$/.exec(line);
  if (!m) return { kind: "bad", why: "the first line is not CONNECT <port>" };
  const port = Number(m[1]);
  if (port > 0xffffffff) return { kind: "bad", why: `port ${m[1]} is out of range` };
  return { kind: "connect", port, rest: bytes.slice(nl + 1) };
}

/** A unix connection, with bytes already read from it served first. */
class UnixStream implements HostStream {
  readonly #conn: Deno.UnixConn;
  #head: Uint8Array | undefined;
  #closed = false;

  constructor(conn: Deno.UnixConn, head?: Uint8Array) {
    this.#conn = conn;
    this.#head = head && head.length > 0 ? head : undefined;
  }

  read(into: Uint8Array): Promise<number | null> {
    const head = this.#head;
    if (head) {
      const n = Math.min(head.length, into.length);
      into.set(head.subarray(0, n));
      this.#head = n < head.length ? head.subarray(n) : undefined;
      return Promise.resolve(n);
    }
    return this.#conn.read(into);
  }

  write(data: Uint8Array): Promise<number> {
    return this.#conn.write(data);
  }

  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }
}

/** The `--vsock PATH` backend: guest connections to `PATH_P`, host connections from `PATH`. */
export class VsockUnixBackend implements HvsockBackend {
  /** The socket path given to `--vsock`. */
  readonly path: string;
  readonly #socket: OwnedUnixListener;
  readonly #listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  #host: HvsockHost | undefined;
  readonly #pending = new Set<Deno.UnixConn>();
  #closed = false;

  private constructor(path: string, socket: OwnedUnixListener) {
    this.path = path;
    this.#socket = socket;
    this.#listener = socket.listener;
    void this.#acceptLoop();
  }

  /**
   * Listens on `path` (owner-only), by the rule of `src/util/unix_socket.ts`: throws `UsageError`
   * when `path` exists and is not a stale socket (a file, a directory, a live socket).
   */
  static async listen(path: string): Promise<VsockUnixBackend> {
    return new VsockUnixBackend(path, await listenUnixSocket(path, "--vsock"));
  }

  /**
   * The switchboard of a new boot: host connections go to it until the function its `attach`
   * returns runs (between boots they are refused).
   */
  newBoot(): HvsockHost {
    const host: HvsockHost = new HvsockHost(this, {
      onDetach: () => {
        if (this.#host === host) this.#host = undefined;
      },
    });
    this.#host = host;
    return host;
  }

  async connectToHost(port: number): Promise<HostStream | undefined> {
    try {
      const conn = await Deno.connect({ transport: "unix", path: `${this.path}_${port}` });
      return new UnixStream(conn);
    } catch {
      return undefined;
    }
  }

  /** Stops listening and removes the socket file (while it is still this socket). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.close();
    for (const c of this.#pending) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }

  async #acceptLoop(): Promise<void> {
    try {
      for await (const conn of this.#listener) void this.#handshake(conn);
    } catch (e) {
      if (!this.#closed) logger.warn("--vsock listener stopped: {error}", { error: String(e) });
    }
  }

  async #handshake(conn: Deno.UnixConn): Promise<void> {
    this.#pending.add(conn);
    const buf = new Uint8Array(MAX_CONNECT_LINE);
    let have = 0;
    let line: ConnectLine = { kind: "partial" };
    try {
      while (line.kind === "partial") {
        const n = await conn.read(buf.subarray(have));
        if (n === null) break;
        have += n;
        line = parseConnectLine(buf.subarray(0, have));
      }
    } catch { /* the client went away */ }
    this.#pending.delete(conn);
    const host = this.#host;
    if (line.kind !== "connect" || !host || this.#closed) {
      if (line.kind === "bad") {
        logger.info("--vsock client refused: {why}", { why: line.why });
      }
      try {
        conn.close();
      } catch { /* closed */ }
      return;
    }
    const enc = new TextEncoder();
    await host.connectToGuest(
      line.port,
      new UnixStream(conn, line.rest),
      (hostPort) => enc.encode(`OK ${hostPort}\n`),
    );
  }
}
