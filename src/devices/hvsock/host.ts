/**
 * The hv_sock switchboard of one boot: turns the guest's TL_CONNECT_REQUESTs into host
 * connections (through a `HvsockBackend`) and host connections into offers a guest listener
 * accepts, keeping one `HvsockConnection` device per connection on the VMBus server.
 *
 * Guest → host (Linux `hvs_connect`): the request names the host service (port P) and the
 * guest's endpoint; once the backend reached the host service, the host offers
 * `if_type = service, if_instance = endpoint` and the guest's connecting socket opens it.
 * Linux ignores TL_CONNECT_RESULT, so a refusal only shows as the guest's 2 s connect timeout.
 *
 * Host → guest: `connectToGuest(P, stream)` offers `if_type = <P>-facb-…`, `if_instance =
 * <host port>-facb-…` with `is_for_guest_accept`. A guest listening on P opens it; nothing opens
 * an offer nobody listens for, so it is rescinded after `openTimeoutMs` (OpenVMM waits 5 s too).
 * @module
 */
import type { HvsockConnectRequest, VmbusServer, VmbusServerOptions } from "../../vmbus/mod.ts";
import { getLogger, rateLimited } from "../../util/log.ts";
import { type ConnectionOwner, type HostStream, HvsockConnection } from "./connection.ts";
import { portOfServiceId, serviceIdForPort } from "./protocol.ts";

/** Where guest connections go. */
export interface HvsockBackend {
  /** Connects to the host service for guest port `port`; undefined when nobody serves it. */
  connectToHost(port: number): Promise<HostStream | undefined>;
}

/** Options of `HvsockHost`. */
export interface HvsockHostOptions {
  /** Live connections allowed at once (guest and host initiated); default 256. */
  readonly maxConnections?: number;
  /** How long a host connection waits for a guest listener to open it; default 5000 ms. */
  readonly openTimeoutMs?: number;
  /** Called by the function `attach` returns, after every connection ended. */
  readonly onDetach?: () => void;
}

/** One connection, for status displays. */
export interface HvsockConnectionInfo {
  readonly label: string;
  readonly state: string;
  readonly bytesToGuest: number;
  readonly bytesToHost: number;
}

/** First host-side port handed out for host-initiated connections (as the guest sees it). */
const FIRST_HOST_PORT = 0x40000000;

const logger = getLogger("dev", "hvsock");
const warnRefused = rateLimited();

/** hv_sock connections of one boot. */
export class HvsockHost {
  readonly #backend: HvsockBackend;
  readonly #max: number;
  readonly #openTimeoutMs: number;
  readonly #onDetach: (() => void) | undefined;
  readonly #live = new Set<HvsockConnection>();
  /** Guest connects waiting for the backend (counted against the limit). */
  #connecting = 0;
  #server: VmbusServer | undefined;
  #nextHostPort = FIRST_HOST_PORT;
  readonly #owner: ConnectionOwner;
  /** Timers that rescind offers the guest does not open in time. */
  readonly #openTimers = new Map<HvsockConnection, ReturnType<typeof setTimeout>>();
  /** Resolvers of host connections waiting for the guest's open. */
  readonly #waiting = new Map<HvsockConnection, (opened: boolean) => void>();

  constructor(backend: HvsockBackend, options: HvsockHostOptions = {}) {
    this.#backend = backend;
    this.#max = options.maxConnections ?? 256;
    this.#openTimeoutMs = options.openTimeoutMs ?? 5000;
    this.#onDetach = options.onDetach;
    this.#owner = {
      rescind: (c) => this.#server?.removeDevice(c),
      opened: (c) => {
        this.#clearOpenTimer(c);
        this.#settleWait(c, true);
      },
      ended: (c) => {
        this.#live.delete(c);
        this.#clearOpenTimer(c);
        this.#settleWait(c, false);
      },
    };
  }

  /** Options to give the VMBus server so guest connect requests come here. */
  get serverOptions(): Pick<VmbusServerOptions, "onHvsockConnect"> {
    return { onHvsockConnect: (r) => this.onGuestConnect(r) };
  }

  /** Live connections. */
  connections(): HvsockConnectionInfo[] {
    return [...this.#live].map((c) => ({
      label: c.name,
      state: c.state,
      bytesToGuest: c.bytesToGuest,
      bytesToHost: c.bytesToHost,
    }));
  }

  /** Starts serving `server`; the returned function ends every connection and detaches. */
  attach(server: VmbusServer): () => void {
    this.#server = server;
    return () => {
      for (const c of [...this.#live]) c.abort("the VM stopped");
      this.#server = undefined;
      this.#onDetach?.();
    };
  }

  /** A guest TL_CONNECT_REQUEST (called by the VMBus server). */
  onGuestConnect(request: HvsockConnectRequest): void {
    const server = this.#server;
    if (!server) return;
    const port = portOfServiceId(request.serviceId);
    const refuse = (why: string) => {
      warnRefused((n) =>
        logger.info("hv_sock connect from the guest refused: {why}{more}", {
          why,
          more: n > 0 ? ` (${n} similar lines suppressed)` : "",
        })
      );
      server.refuseHvsockConnect(request);
    };
    if (port === undefined) return refuse(`service ${request.serviceId} is not a vsock port`);
    if (this.#live.size + this.#connecting >= this.#max) {
      return refuse(`${this.#max} connections are open`);
    }
    const guestPort = portOfServiceId(request.endpointId);
    const label = `guest:${guestPort ?? request.endpointId}->host:${port}`;
    this.#connecting++;
    this.#backend.connectToHost(port).then(
      (stream) => {
        this.#connecting--;
        if (!stream) return refuse(`nothing serves port ${port} on the host`);
        if (this.#server !== server) return stream.close();
        const conn = new HvsockConnection({
          serviceId: request.serviceId,
          endpointId: request.endpointId,
          forGuestAccept: false,
          stream,
          owner: this.#owner,
          label,
        });
        if (!this.#register(server, conn)) {
          stream.close();
          return refuse(`the endpoint of ${label} is still in use`);
        }
        // A guest socket that gave up meanwhile (its connect timeout is 2 s) never opens it.
        this.#startOpenTimer(conn, "the guest did not open the connection");
      },
      (e) => {
        this.#connecting--;
        refuse(`connecting to host port ${port} failed: ${(e as Error).message}`);
      },
    );
  }

  /**
   * Offers a host connection to a guest listening on `port`. Resolves the host port the guest
   * sees as its peer once the guest accepted, or undefined (nobody accepted in time, no guest,
   * too many connections); the stream is closed then. `greeting(hostPort)` is written to the
   * stream when the guest accepts, before any byte from the guest.
   */
  connectToGuest(
    port: number,
    stream: HostStream,
    greeting?: (hostPort: number) => Uint8Array,
  ): Promise<number | undefined> {
    const server = this.#server;
    if (!server?.connection?.offersSent || this.#live.size + this.#connecting >= this.#max) {
      stream.close();
      return Promise.resolve(undefined);
    }
    const hostPort = this.#allocHostPort();
    const conn = new HvsockConnection({
      serviceId: serviceIdForPort(port),
      endpointId: serviceIdForPort(hostPort),
      forGuestAccept: true,
      stream,
      owner: this.#owner,
      label: `host:${hostPort}->guest:${port}`,
      ...(greeting ? { greeting: greeting(hostPort) } : {}),
    });
    return new Promise((resolve) => {
      this.#waiting.set(conn, (opened) => resolve(opened ? hostPort : undefined));
      if (!this.#register(server, conn)) {
        this.#settleWait(conn, false);
        stream.close();
        return;
      }
      this.#startOpenTimer(conn, `no guest listener took port ${port}`);
    });
  }

  #register(server: VmbusServer, conn: HvsockConnection): boolean {
    try {
      server.addDevice(conn);
    } catch (e) {
      logger.debug("hv_sock offer failed: {error}", { error: String(e) });
      return false;
    }
    this.#live.add(conn);
    return true;
  }

  #startOpenTimer(conn: HvsockConnection, why: string): void {
    this.#openTimers.set(
      conn,
      setTimeout(() => {
        this.#openTimers.delete(conn);
        if (conn.state === "offered") conn.abort(why);
      }, this.#openTimeoutMs),
    );
  }

  #clearOpenTimer(conn: HvsockConnection): void {
    const t = this.#openTimers.get(conn);
    if (t === undefined) return;
    clearTimeout(t);
    this.#openTimers.delete(conn);
  }

  #settleWait(conn: HvsockConnection, opened: boolean): void {
    const done = this.#waiting.get(conn);
    if (!done) return;
    this.#waiting.delete(conn);
    done(opened);
  }

  #allocHostPort(): number {
    // Skip ports of live host connections (after 2^30 connections the counter wraps).
    for (;;) {
      const p = this.#nextHostPort;
      this.#nextHostPort = p >= 0x7fffffff ? FIRST_HOST_PORT : p + 1;
      const id = serviceIdForPort(p);
      if (![...this.#live].some((c) => c.instanceId === id)) return p;
    }
  }
}
