/**
 * Initramfs builder: a static busybox with its applet links, chosen kernel modules (with their
 * dependencies, loaded in order), extra files, and an init that mounts proc/sys/dev, runs a shell
 * test body between serial markers and powers the machine off. Images are gzip-compressed with
 * `CompressionStream` and cached under `.cache/guestkit/` by the hash of their contents.
 * @module
 */
import { CpioWriter } from "./cpio.ts";
import { findHostKernel, findStaticBusybox } from "./host.ts";
import { GUEST_MARKER_PREFIX } from "./markers.ts";
import { loadModuleIndex, readModule, resolveModules, uncompressedModulePath } from "./modules.ts";

/** A file to put in the image: text or bytes, optionally with permission bits. */
export type InitramfsFile = string | Uint8Array | { data: string | Uint8Array; mode?: number };

/** What goes into a test initramfs. */
export interface InitramfsOptions {
  /** Shell body (busybox `sh`) run after boot; its exit status is reported. See `lib.sh` helpers
   * in `GUEST_LIB_SH`: `hd_mark KEY VALUE`, `hd_check DESCRIPTION CMD…`, `hd_fail DESCRIPTION`. */
  readonly script: string;
  /** Kernel whose modules to include; default: the newest installed (`findHostKernel`). */
  readonly kernelVersion?: string;
  /** Module names (`hv_vmbus`, `kvm-amd`…); dependencies are added and loaded first. */
  readonly modules?: readonly string[];
  /** Extra files by absolute guest path (`/etc/motd`); parent directories are created. */
  readonly files?: Readonly<Record<string, InitramfsFile>>;
  /** How the init ends the boot after the body: default `poweroff` (`poweroff -f`). */
  readonly exit?: "poweroff" | "reboot" | "halt";
  /** Marker prefix; default `GUEST_MARKER_PREFIX`. */
  readonly markerPrefix?: string;
  /** Busybox to use; default the first static one of /bin/busybox, /usr/bin/busybox. */
  readonly busybox?: string;
}

/** Helpers sourced before the test body. */
export function guestLibSh(prefix: string): string {
  return `# hyperdeno guest kit helpers
# hd_mark KEY VALUE: report a key/value to the host.
hd_mark() { echo "${prefix}:mark $1=$2"; }
# hd_check DESCRIPTION CMD...: run CMD; report pass/fail; a failure fails the test.
hd_check() {
  _hd_d=$1; shift
  if "$@"; then echo "${prefix}:check pass $_hd_d"; return 0; fi
  echo "${prefix}:check fail $_hd_d"; : > /run/hd-failed; return 1
}
# hd_fail DESCRIPTION: record a failed check.
hd_fail() { echo "${prefix}:check fail $*"; : > /run/hd-failed; return 1; }
`;
}

/** The init script (PID 1). */
export function guestInitSh(prefix: string, exit: "poweroff" | "reboot" | "halt"): string {
  return `#!/bin/sh
# hyperdeno guest kit init: mount, load modules, run /hd/body.sh, report, ${exit}.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "${prefix}:booted $(cut -d' ' -f1 /proc/uptime)"
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$m" || echo "${prefix}:module-fail $m"
done < /hd/modules
echo "${prefix}:begin"
( . /hd/lib.sh; . /hd/body.sh )
status=$?
if [ "$status" = 0 ] && [ -e /run/hd-failed ]; then status=1; fi
echo "${prefix}:exit $status"
echo "${prefix}:end"
sync
${exit} -f
while :; do sleep 3600; done
`;
}

const encoder = new TextEncoder();

function toBytes(data: string | Uint8Array): Uint8Array {
  return typeof data === "string" ? encoder.encode(data) : data;
}

/** Builds the uncompressed cpio archive (no cache). */
export async function buildInitramfsCpio(options: InitramfsOptions): Promise<Uint8Array> {
  const prefix = options.markerPrefix ?? GUEST_MARKER_PREFIX;
  const busybox = await findStaticBusybox(options.busybox);
  const w = new CpioWriter();
  const dirs = new Set<string>();
  const ensureDir = (path: string): void => {
    const parts = path.split("/").filter((p) => p !== "");
    for (let i = 1; i <= parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!dirs.has(d)) {
        dirs.add(d);
        w.dir(d);
      }
    }
  };
  const addFile = (path: string, data: Uint8Array, mode: number): void => {
    const name = path.replace(/^\/+/, "");
    const slash = name.lastIndexOf("/");
    if (slash > 0) ensureDir(name.slice(0, slash));
    w.file(name, data, mode);
  };

  for (const d of ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp"]) {
    ensureDir(d);
  }
  for (const d of ["run", "root", "hd", "lib/modules", "mnt"]) ensureDir(d);
  w.charDevice("dev/console", 5, 1);
  w.charDevice("dev/null", 1, 3, 0o666);
  addFile("bin/busybox", busybox.image, 0o755);
  // A test's own files replace busybox applets of the same path (e.g. /sbin/poweroff).
  const own = new Set(Object.keys(options.files ?? {}).map((p) => p.replace(/^\/+/, "")));
  for (const applet of busybox.applets) {
    if (applet === "bin/busybox" || w.has(applet) || own.has(applet)) continue;
    const slash = applet.lastIndexOf("/");
    if (slash > 0) ensureDir(applet.slice(0, slash));
    w.symlink(applet, "/bin/busybox");
  }
  addFile("etc/passwd", encoder.encode("root:x:0:0:root:/root:/bin/sh\n"), 0o644);
  addFile("etc/group", encoder.encode("root:x:0:\n"), 0o644);

  const moduleList: string[] = [];
  if (options.modules && options.modules.length > 0) {
    const kernel = findHostKernel(options.kernelVersion);
    const index = await loadModuleIndex(kernel.modulesDir);
    for (const rel of resolveModules(index, options.modules)) {
      const target = `${kernel.version}/${uncompressedModulePath(rel)}`;
      addFile(`lib/modules/${target}`, await readModule(`${kernel.modulesDir}/${rel}`), 0o644);
      moduleList.push(target);
    }
  }
  addFile("hd/modules", encoder.encode(moduleList.map((m) => m + "\n").join("")), 0o644);
  addFile("hd/lib.sh", encoder.encode(guestLibSh(prefix)), 0o644);
  addFile("hd/body.sh", encoder.encode(options.script + "\n"), 0o755);
  for (const [path, f] of Object.entries(options.files ?? {})) {
    if (!path.startsWith("/")) throw new Error(`initramfs file path must be absolute: ${path}`);
    const data = typeof f === "string" || f instanceof Uint8Array ? toBytes(f) : toBytes(f.data);
    const mode = typeof f === "string" || f instanceof Uint8Array ? 0o644 : f.mode ?? 0o644;
    addFile(path, data, mode);
  }
  addFile("init", encoder.encode(guestInitSh(prefix, options.exit ?? "poweroff")), 0o755);
  return w.finish();
}

/** gzip via `CompressionStream`. */
export async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Hex SHA-256 of `data`. */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Directory of cached images: `$HYPERDENO_CACHE_DIR/guestkit` or `<repo>/.cache/guestkit`. */
export function cacheDir(): string {
  const base = Deno.env.get("HYPERDENO_CACHE_DIR") ??
    new URL("../../../.cache", import.meta.url).pathname;
  return `${base}/guestkit`;
}

/**
 * Builds (or reuses from the cache) a gzip initramfs and returns the path of the image file.
 * The cache key is the SHA-256 of the uncompressed archive, so any change of input rebuilds.
 */
export async function initramfsFile(options: InitramfsOptions): Promise<string> {
  const cpio = await buildInitramfsCpio(options);
  const dir = cacheDir();
  const path = `${dir}/initramfs-${(await sha256Hex(cpio)).slice(0, 32)}.cpio.gz`;
  const now = new Date();
  if (await Deno.stat(path).then(() => true, () => false)) {
    await Deno.utime(path, now, now).catch(() => {}); // mark as used, for pruning
    return path;
  }
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`;
  await Deno.writeFile(tmp, await gzip(cpio));
  await Deno.rename(tmp, path);
  await pruneCache(dir, now.getTime() - CACHE_MAX_AGE_MS);
  return path;
}

/** Cached images unused for this long are deleted when a new one is written. */
const CACHE_MAX_AGE_MS = 7 * 24 * 3600_000;

async function pruneCache(dir: string, before: number): Promise<void> {
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.startsWith("initramfs-")) continue;
    const p = `${dir}/${e.name}`;
    const st = await Deno.stat(p).catch(() => undefined);
    if (st?.mtime && st.mtime.getTime() < before) await Deno.remove(p).catch(() => {});
  }
}

/** Builds (or reuses from the cache) a gzip initramfs and returns its bytes. */
export async function buildInitramfs(options: InitramfsOptions): Promise<Uint8Array> {
  return await Deno.readFile(await initramfsFile(options));
}
