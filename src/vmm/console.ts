/**
 * The console front ends of a run (`--vnc`): they outlive guest reboots, show the current
 * display and send input to the current boot's input router.
 * @module
 */
import { type FramebufferSource, MemoryFramebuffer, VncServer } from "../console/mod.ts";
import type { InputRouter } from "../devices/input/mod.ts";
import { UsageError } from "../util/errors.ts";
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

/** Starts `--vnc` (nothing when absent). Bad addresses are the user's: `UsageError`. */
export function startConsole(
  spec: VncSpec | undefined,
  password: string | undefined,
  targets: ConsoleTargets,
): ConsoleFrontEnds {
  if (!spec) return { setDisplay() {}, close() {} };
  const blank = new MemoryFramebuffer(BLANK.width, BLANK.height);
  const server = new VncServer({
    source: blank,
    input: () => targets.input,
    ...(password !== undefined ? { password } : {}),
    name: "hyperdeno",
  });
  const listener = listen(spec);
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
      if (spec.kind === "unix") removeSocket(spec.path);
    },
  };
}

function listen(spec: VncSpec): Deno.Listener {
  try {
    if (spec.kind === "unix") {
      removeSocket(spec.path);
      return Deno.listen({ transport: "unix", path: spec.path });
    }
    return Deno.listen({ hostname: spec.hostname, port: spec.port });
  } catch (e) {
    if (e instanceof UsageError) throw e;
    const where = spec.kind === "unix" ? spec.path : `${spec.hostname}:${spec.port}`;
    throw new UsageError(`--vnc: cannot listen on ${where}: ${(e as Error).message}`);
  }
}

/** Removes a stale socket at `path`; refuses to touch anything that is not a socket. */
function removeSocket(path: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!info.isSocket) {
    throw new UsageError(`--vnc unix:${path}: a file that is not a socket is in the way`);
  }
  try {
    Deno.removeSync(path);
  } catch { /* gone */ }
}
