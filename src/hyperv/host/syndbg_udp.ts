/**
 * The synthetic debugger's host side: a UDP socket connected to the kernel debugger (KDNET's
 * host end, or any tool speaking its datagrams), and the `DebugTransport` each thread builds
 * over it.
 *
 * Threads: the socket is opened once, on the main thread, before the guest runs (so a bad
 * address is a usage error, not a guest-visible failure) and lives for the whole run, across
 * guest resets, like the debugger session it carries. Its fd number is valid in every thread
 * of the process, so it goes to each vCPU worker in its init message (`HvThreadInit`); each
 * worker wraps it in its own `UdpDebugTransport` (own buffers; libc calls on the worker's own
 * handle, whose errno is the worker's). The main thread watches it edge-triggered for the
 * pending flag and closes it after every worker has stopped. Datagram sends and receives are
 * atomic, so workers never interleave bytes; the `SyntheticDebugger` lock orders the rest.
 *
 * The socket is connected, so the kernel drops datagrams from anyone but the debugger's
 * address and port. It is bound to 127.0.0.1 for a loopback debugger; a remote one (explicitly
 * allowed on the command line) gets the wildcard address so the kernel picks the interface.
 * @module
 */
import { C, ERRNO, errno, libc, SysError, udpSocket } from "../../../ffi/libc.ts";
import type { DebugSendResult, DebugTransport } from "../mod.ts";
import { getLogger, rateLimited } from "../../util/log.ts";

/** An IPv4 endpoint: host-order address and port. */
export interface UdpEndpoint {
  readonly address: number;
  readonly port: number;
}

/** True for 127.0.0.0/8. */
export function isLoopback(address: number): boolean {
  return address >>> 24 === 127;
}

/**
 * Opens the bridge socket, non-blocking, connected to the debugger at `peer`. Throws `SysError` when the
 * socket cannot be created, bound or connected (e.g. ENETUNREACH for a remote address).
 */
export function openDebugSocket(peer: UdpEndpoint): number {
  const local = isLoopback(peer.address) ? C.INADDR_LOOPBACK : C.INADDR_ANY;
  return udpSocket({ address: local, port: 0 }, peer);
}

const log = getLogger("hyperv", "syndbg-udp");
const limit = rateLimited();

/**
 * `DebugTransport` over a connected UDP socket that someone else owns (`close()` does not close
 * it). Never blocks (MSG_DONTWAIT) and never throws.
 */
export class UdpDebugTransport implements DebugTransport {
  /** The debugger's address and port (what the socket is connected to). */
  readonly peer: UdpEndpoint;
  readonly #fd: number;
  readonly #peek = new Uint8Array(1);

  constructor(fd: number, peer: UdpEndpoint) {
    this.#fd = fd;
    this.peer = peer;
  }

  /** Sends one datagram; a refusal left by an earlier ICMP "port unreachable" is retried once. */
  send(bytes: Uint8Array): DebugSendResult {
    for (let attempt = 0; attempt < 2; attempt++) {
      const n = Number(
        libc.sendto(
          this.#fd,
          bytes as Uint8Array<ArrayBuffer>,
          BigInt(bytes.length),
          C.MSG_DONTWAIT | C.MSG_NOSIGNAL,
          null,
          0,
        ),
      );
      if (n >= 0) return "sent";
      const e = errno();
      if (e === ERRNO.EAGAIN || e === ERRNO.ENOBUFS) return "busy";
      // A connected UDP socket reports the ICMP error of an earlier datagram (no debugger
      // listening yet) on the next call, which then sends nothing: try once more.
      if (e === ERRNO.ECONNREFUSED || e === ERRNO.EINTR) continue;
      this.#failed("send", e);
      return "failed";
    }
    return "failed";
  }

  /** Takes one queued datagram; its full length (MSG_TRUNC), or 0 when none is queued. */
  tryReceive(into: Uint8Array): number {
    if (into.length === 0) return 0;
    return this.#recv(into, C.MSG_DONTWAIT | C.MSG_TRUNC);
  }

  /** True when a datagram is queued. */
  hasPending(): boolean {
    // A queued empty datagram peeks as 0 bytes, which still means "something is queued".
    return this.#recv(this.#peek, C.MSG_DONTWAIT | C.MSG_PEEK, true) >= 0;
  }

  #recv(into: Uint8Array, flags: number, peek = false): number {
    for (let attempt = 0; attempt < 2; attempt++) {
      const n = Number(
        libc.recvfrom(
          this.#fd,
          into as Uint8Array<ArrayBuffer>,
          BigInt(into.length),
          flags,
          null,
          null,
        ),
      );
      if (n >= 0) return n;
      const e = errno();
      if (e === ERRNO.ECONNREFUSED || e === ERRNO.EINTR) continue; // error consumed: look again
      if (e !== ERRNO.EAGAIN) this.#failed("recv", e);
      return peek ? -1 : 0;
    }
    return peek ? -1 : 0;
  }

  #failed(op: string, e: number): void {
    limit((n) =>
      log.warn("debugger socket {op}: {error}{dropped}", {
        op,
        error: new SysError(op, e).message,
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
  }
}
