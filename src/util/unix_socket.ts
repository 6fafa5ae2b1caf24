/**
 * Unix sockets the VMM serves at a path the user named (`--control`, `--vsock`, `--vnc unix:`):
 * one rule for all of them, so that a typo in a flag never costs the user a file.
 *
 * - Nothing at the path: the socket is created there.
 * - A socket nobody answers on (connect refused: a VMM that died): it is replaced.
 * - A socket a live process serves (connect succeeds): refused, "in use".
 * - Anything else (a regular file, a directory, a symlink, a FIFO): refused, left untouched.
 *
 * The socket is bound inside a private 0700 directory, made owner-only (0600) there and then
 * hard-linked to the path, so it is never reachable by other local users with looser permissions,
 * and `link(2)` refuses to replace anything that appeared at the path in the meantime. On close,
 * the path is removed only while it still names this socket.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { UsageError } from "./errors.ts";

/** A listening unix socket owned by this process; `close()` is safe to call twice. */
export interface OwnedUnixListener {
  /** The listener (accept connections from it). */
  readonly listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr>;
  /** The path the socket is reachable at. */
  readonly path: string;
  /** Stops listening and removes the path if it is still this socket. */
  close(): void;
  [Symbol.dispose](): void;
}

function describe(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a directory";
  if (info.isSymlink) return "a symbolic link";
  if (info.isFifo) return "a FIFO";
  if (info.isCharDevice || info.isBlockDevice) return "a device";
  return "not a socket";
}

/** True when a process accepts connections on the unix socket at `path`. */
async function socketIsLive(path: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    return true;
  } catch (e) {
    // ECONNREFUSED: bound by nobody (a stale socket). Anything else we cannot judge: treat the
    // socket as someone's and leave it alone.
    if (e instanceof Deno.errors.ConnectionRefused) return false;
    return true;
  }
}

/**
 * Checks that `path` may become the socket of `flag` without destroying anything: nothing is
 * there, or a stale socket is. Throws a `UsageError` naming the path otherwise. Changes nothing.
 * @returns true when a stale socket is there (to be replaced).
 */
export async function checkSocketPath(path: string, flag: string): Promise<boolean> {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      let dir: Deno.FileInfo;
      try {
        dir = Deno.statSync(dirname(path));
      } catch {
        throw new UsageError(`${flag} ${path}: the directory ${dirname(path)} does not exist`);
      }
      if (!dir.isDirectory) {
        throw new UsageError(`${flag} ${path}: ${dirname(path)} is not a directory`);
      }
      return false;
    }
    throw new UsageError(`${flag} ${path}: cannot be checked: ${(e as Error).message}`);
  }
  if (!info.isSocket) {
    throw new UsageError(
      `${flag} ${path}: ${describe(info)} is already there; refusing to replace it ` +
        `(name a new path for the socket)`,
    );
  }
  if (await socketIsLive(path)) {
    throw new UsageError(`${flag} ${path}: in use (another running process serves this socket)`);
  }
  return true;
}

/**
 * Serves a unix socket at `path` for `flag` (the flag's name is used in error messages), after
 * `checkSocketPath`'s rule; the socket is owner-only (0600).
 */
export async function listenUnixSocket(path: string, flag: string): Promise<OwnedUnixListener> {
  if (await checkSocketPath(path, flag)) {
    // Stale: remove it only if it is still the very socket that was judged stale.
    Deno.removeSync(path);
  }
  const dir = Deno.makeTempDirSync({ dir: dirname(path), prefix: `.${basename(path)}.` });
  const privatePath = join(dir, "s");
  let listener: Deno.Listener<Deno.UnixConn, Deno.UnixAddr> | undefined;
  try {
    Deno.chmodSync(dir, 0o700);
    listener = Deno.listen({ transport: "unix", path: privatePath });
    Deno.chmodSync(privatePath, 0o600);
    try {
      Deno.linkSync(privatePath, path);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) {
        throw new UsageError(
          `${flag} ${path}: something was created there meanwhile; not replaced`,
        );
      }
      throw new UsageError(`${flag} ${path}: cannot create the socket: ${(e as Error).message}`);
    }
  } catch (e) {
    listener?.close();
    throw e instanceof UsageError
      ? e
      : new UsageError(`${flag} ${path}: cannot create the socket: ${(e as Error).message}`);
  } finally {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already gone */ }
  }
  const { ino, dev } = Deno.lstatSync(path);
  const l = listener;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      l.close();
    } catch { /* closed */ }
    try {
      const now = Deno.lstatSync(path);
      if (now.isSocket && now.ino === ino && now.dev === dev) Deno.removeSync(path);
    } catch { /* gone */ }
  };
  return { listener: l, path, close, [Symbol.dispose]: close };
}
