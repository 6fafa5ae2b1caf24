/**
 * The console front ends of a run (`--vnc`, `--web`): they outlive guest reboots, show the
 * current display and send input to the current boot's input router. The web console is noVNC
 * (npm `@novnc/novnc`) talking to the same RFB server over a WebSocket.
 * @module
 */
import { type FramebufferSource, MemoryFramebuffer, VncServer } from "../console/mod.ts";
import { startWebConsole, type WebConsole } from "../console/web.ts";
import type { InputRouter } from "../devices/input/mod.ts";
import { UsageError } from "../util/errors.ts";
import { listenUnixSocket } from "../util/unix_socket.ts";
import { getLogger } from "../util/log.ts";
import type { VncSpec } from "./config.ts";

const log = getLogger("console");

/** What the console front ends read and drive; updated at every boot. */
export interface ConsoleTargets {
  /** The current boot's input router (undefined between boots). */
  input: InputRouter | undefined;
}

/** The running console front ends. */
export interface ConsoleFrontEnds {
  /** Shows `source` (a display device's framebuffer), or the blank screen when undefined. */
  setDisplay(source: FramebufferSource | undefined): void;
  close(): void;
}

/** Screen shown while no display device exists (a guest booted without one). */
const BLANK = { width: 640, height: 480 };

/** The noVNC release the web console serves. */
export const NOVNC_PACKAGE = "npm:@novnc/novnc@1.5.0";

/**
 * Finds noVNC's `lib/` directory: `$HYPERDENO_NOVNC_LIB`, else the package in Deno's npm cache
 * (fetched into it on first use, through the npm registry).
 */
export async function findNovncLib(): Promise<string> {
  const env = Deno.env.get("HYPERDENO_NOVNC_LIB");
  if (env) return env;
  try {
    await import(`${NOVNC_PACKAGE}/lib/util/int.js`);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json"],
      stdout: "piped",
      stderr: "null",
    }).output();
    const cache = JSON.parse(new TextDecoder().decode(out.stdout)).npmCache as string;
    const [name, version] = NOVNC_PACKAGE.slice(4).split(/@(?=[^@]+$)/);
    const dir = `${cache}/registry.npmjs.org/${name}/${version}/lib`;
    Deno.statSync(`${dir}/rfb.js`);
    return dir;
  } catch (e) {
    throw new UsageError(
      `--web: cannot find noVNC (${NOVNC_PACKAGE}): ${(e as Error).message}; ` +
        "set HYPERDENO_NOVNC_LIB to the package's lib directory",
    );
  }
}

/** Options of `startConsole`. */
export interface ConsoleOptions {
  readonly vnc?: VncSpec;
  readonly password?: string;
  readonly web?: { hostname: string; port: number };
  /** noVNC's lib directory (found with `findNovncLib` when absent). */
  readonly novncLib?: string;
}

/**
 * Starts `--vnc` and `--web` (nothing when both are absent). Bad addresses are the user's:
 * `UsageError`.
 */
export async function startConsole(
  options: ConsoleOptions,
  targets: ConsoleTargets,
): Promise<ConsoleFrontEnds> {
  const { vnc: spec, password, web } = options;
  if (!spec && !web) return { setDisplay() {}, close() {} };
  const blank = new MemoryFramebuffer(BLANK.width, BLANK.height);
  const server = new VncServer({
    source: blank,
    input: () => targets.input,
    ...(password !== undefined ? { password } : {}),
    name: "hyperdeno",
  });
  let webConsole: WebConsole | undefined;
  if (web) {
    const novncLib = options.novncLib ?? await findNovncLib();
    try {
      webConsole = startWebConsole({
        hostname: web.hostname,
        port: web.port,
        vnc: server,
        novncLib,
      });
    } catch (e) {
      throw new UsageError(
        `--web: cannot serve on ${web.hostname}:${web.port}: ${(e as Error).message}`,
      );
    }
    console.error(`hyperdeno: web console: ${webConsole.url}`);
  }
  if (!spec) {
    return {
      setDisplay: (source) => server.setSource(source ?? blank),
      close() {
        server.close();
        void webConsole?.close();
      },
    };
  }
  const { listener, close: closeListener } = await listen(spec);
  server.serve(listener);
  if (spec.kind === "tcp") {
    log.info("VNC on {host}:{port}", { host: spec.hostname, port: spec.port });
    if (!spec.loopback) {
      console.error(
        `hyperdeno: warning: VNC on ${spec.hostname}:${spec.port} is not encrypted; ` +
          "VNC authentication protects the login only (tunnel it over SSH)",
      );
    }
  } else log.info("VNC on unix socket {path}", { path: spec.path });
  return {
    setDisplay(source) {
      server.setSource(source ?? blank);
    },
    close() {
      server.close();
      void webConsole?.close();
      closeListener();
    },
  };
}

/**
 * Listens where `--vnc` says: a unix socket under `listenUnixSocket`'s rule (owner-only; an
 * existing file or a live socket refused, only a stale socket replaced), or a TCP address.
 */
async function listen(spec: VncSpec): Promise<{ listener: Deno.Listener; close(): void }> {
  if (spec.kind === "unix") {
    const owned = await listenUnixSocket(spec.path, "--vnc");
    return { listener: owned.listener, close: owned.close };
  }
  try {
    const listener = Deno.listen({ hostname: spec.hostname, port: spec.port });
    return {
      listener,
      close() {
        try {
          listener.close();
        } catch { /* closed with the server */ }
      },
    };
  } catch (e) {
    throw new UsageError(
      `--vnc: cannot listen on ${spec.hostname}:${spec.port}: ${(e as Error).message}`,
    );
  }
}
