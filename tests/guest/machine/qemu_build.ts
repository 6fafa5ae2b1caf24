/**
 * The test machine's own QEMU: Debian's QEMU source with its patch series (`apt-get source qemu`,
 * the same version as the installed `qemu-system-x86`) plus `qemu/cr8-write-iothread-lock.patch`,
 * only `x86_64-softmmu`. Debian's stock binary aborts on any nested guest that writes CR8 with a
 * virtual interrupt pending (every OVMF guest, Windows), see the patch's header.
 *
 * Built once per machine and cached under `.cache/qemu/` (or `$HYPERDENO_CACHE_DIR/qemu/`), keyed
 * by the source version and the hash of the patch and this build recipe. Building installs the
 * build dependencies with apt-get (as root) and adds a `deb-src` entry when apt has none.
 * `testMachineQemu` never falls back to another QEMU: it returns why it could not build.
 * @module
 */
import { sha256Hex } from "../kit/initramfs.ts";
import { which } from "./detect.ts";

/** The fix applied on top of Debian's source. */
export const QEMU_FIX_PATCH = new URL("./qemu/cr8-write-iothread-lock.patch", import.meta.url)
  .pathname;

/** `./configure` flags: the one target, no docs, no user-mode, only what the machine uses. */
export const QEMU_CONFIGURE_FLAGS: readonly string[] = [
  "--target-list=x86_64-softmmu",
  "--disable-docs",
  "--disable-user",
  "--without-default-features",
  "--enable-virtfs",
  "--enable-attr",
  "--enable-cap-ng",
  "--enable-tcg",
  "--enable-fdt=system",
  "--disable-werror",
  "--disable-install-blobs",
];

/** Debian packages the build needs (sources, patching, configure, compile). */
export const QEMU_BUILD_PACKAGES: readonly string[] = [
  "dpkg-dev",
  "patch",
  "xz-utils",
  "gcc",
  "libc6-dev",
  "ninja-build",
  "meson",
  "pkg-config",
  "libglib2.0-dev",
  "libpixman-1-dev",
  "zlib1g-dev",
  "libcap-ng-dev",
  "libattr1-dev",
  "libfdt-dev",
  "flex",
  "bison",
  "python3-venv",
];

/** Where Debian's QEMU keeps the firmware and ROMs the built binary loads (`-L`, in order). */
export const QEMU_DATA_DIRS: readonly string[] = ["/usr/share/qemu", "/usr/share/seabios"];

/** The dfsg source ships no firmware blobs: this meson switch would unpack missing edk2 images. */
const EDK2_UNPACK = "if unpack_edk2_blobs";

/** Oldest Debian source version known to work (7.2.0 corrupts the machine's user space). */
const MIN_VERSION = [7, 2, 22] as const;

/** The built QEMU, or why there is none. */
export type MachineQemu =
  | { readonly ok: true; readonly path: string; readonly version: string; readonly built: boolean }
  | { readonly ok: false; readonly reason: string };

/** Options of `testMachineQemu`. */
export interface MachineQemuOptions {
  /** Progress lines ("building …", "[40%] …"); default: `console.error` with a prefix. */
  readonly onProgress?: (line: string) => void;
}

function cacheBase(): string {
  return Deno.env.get("HYPERDENO_CACHE_DIR") ??
    new URL("../../../.cache", import.meta.url).pathname;
}

async function run(
  cmd: string,
  args: readonly string[],
  options: { cwd?: string; env?: Record<string, string>; onLine?: (line: string) => void } = {},
): Promise<{ ok: boolean; tail: string }> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args: [...args],
      ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
      env: { DEBIAN_FRONTEND: "noninteractive", LC_ALL: "C", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    return { ok: false, tail: `cannot run ${cmd}: ${(e as Error).message}` };
  }
  const last: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let pending = "";
    const flush = (line: string) => {
      last.push(line);
      if (last.length > 25) last.shift();
      options.onLine?.(line);
    };
    for await (const s of stream.pipeThrough(new TextDecoderStream())) {
      pending += s;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        flush(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    }
    if (pending !== "") flush(pending);
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  const st = await child.status;
  return { ok: st.success, tail: last.join("\n") };
}

async function capture(cmd: string, args: readonly string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command(cmd, {
      args: [...args],
      env: { LC_ALL: "C" },
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/** The Debian source version of the installed `qemu-system-x86` (binNMU suffix dropped). */
async function installedQemuSource(): Promise<string | undefined> {
  const v = await capture("dpkg-query", ["-W", "-f", "${source:Version}", "qemu-system-x86"]);
  return v === "" ? undefined : v;
}

/** The cache key: the source version plus the hash of the patch and this recipe. */
export async function qemuCacheKey(version: string): Promise<string> {
  const patch = await Deno.readTextFile(QEMU_FIX_PATCH);
  const hash = await sha256Hex(
    new TextEncoder().encode([patch, EDK2_UNPACK, ...QEMU_CONFIGURE_FLAGS].join("\0")),
  );
  return `${version.replace(/[^A-Za-z0-9.+~-]/g, "_")}-${hash.slice(0, 16)}`;
}

async function missingPackages(packages: readonly string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const p of packages) {
    const st = await capture("dpkg-query", ["-W", "-f", "${db:Status-Status}", p]);
    if (st !== "installed") missing.push(p);
  }
  return missing;
}

function canApt(): boolean {
  return which("apt-get") !== undefined && Deno.uid() === 0;
}

/** The release codename (`bookworm`), from /etc/os-release. */
function codename(): string | undefined {
  try {
    return /^VERSION_CODENAME=(\S+)$/m.exec(Deno.readTextFileSync("/etc/os-release"))?.[1];
  } catch {
    return undefined;
  }
}

/** Where this module adds the deb-src entry when apt has none. */
export const DEB_SRC_FILE = "/etc/apt/sources.list.d/hyperdeno-deb-src.sources";

/** The deb-src entry for Debian release `suite` (main, updates, security). */
export function debSrcEntry(suite: string): string {
  const keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
  return [
    "# Added by hyperdeno's test machine: Debian's QEMU source for its own QEMU build.",
    "Types: deb-src",
    "URIs: http://deb.debian.org/debian",
    `Suites: ${suite} ${suite}-updates`,
    "Components: main",
    `Signed-By: ${keyring}`,
    "",
    "Types: deb-src",
    "URIs: http://deb.debian.org/debian-security",
    `Suites: ${suite}-security`,
    "Components: main",
    `Signed-By: ${keyring}`,
    "",
  ].join("\n");
}

/** Source versions of `qemu` apt knows, or [] when there is no deb-src entry. */
async function sourceVersions(): Promise<string[]> {
  const out = await capture("apt-cache", ["showsrc", "qemu"]);
  if (out === undefined) return [];
  return [...out.matchAll(/^Version: (\S+)$/gm)].map((m) => m[1]!);
}

/** Makes `apt-get source qemu=VERSION` possible: adds deb-src if missing, updates the lists. */
async function ensureSource(version: string, say: (s: string) => void): Promise<string | null> {
  if ((await sourceVersions()).includes(version)) return null;
  if (!canApt()) {
    return `Debian's source of qemu ${version} is not available to apt and this user cannot ` +
      "change that: as root, add deb-src entries and run apt-get update";
  }
  const hasDebSrc = (await capture("sh", [
    "-c",
    "grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d",
  ])) !== undefined;
  if (!hasDebSrc) {
    const suite = codename();
    if (suite === undefined) return "no deb-src entry in apt's sources and no VERSION_CODENAME";
    say(`adding deb-src for ${suite}, ${suite}-updates, ${suite}-security to ${DEB_SRC_FILE}`);
    await Deno.writeTextFile(DEB_SRC_FILE, debSrcEntry(suite), { createNew: true });
  }
  say("apt-get update (source lists)");
  const up = await run("apt-get", ["update"]);
  if (!up.ok) return `apt-get update failed:\n${up.tail}`;
  const have = await sourceVersions();
  if (!have.includes(version)) {
    return `apt has no source for qemu ${version} (it has ${have.join(", ") || "none"}): ` +
      "install the matching qemu-system-x86 (apt-get install qemu-system-x86)";
  }
  return null;
}

function versionAtLeast(v: string, min: readonly number[]): boolean {
  const parts = v.trim().split(".").map((p) => Number.parseInt(p, 10));
  for (let i = 0; i < min.length; i++) {
    const a = parts[i] ?? 0;
    if (a !== min[i]) return a > min[i]!;
  }
  return true;
}

/** Builds the fixed QEMU in `work`; returns the binary's path there or throws with the reason. */
async function build(version: string, work: string, say: (s: string) => void): Promise<string> {
  say(`apt-get source qemu=${version} (Debian's source with its patch series)`);
  const src = await run("apt-get", ["source", `qemu=${version}`], { cwd: work });
  if (!src.ok) throw new Error(`apt-get source qemu=${version} failed:\n${src.tail}`);
  const dir = [...Deno.readDirSync(work)].find((e) => e.isDirectory && e.name.startsWith("qemu-"));
  if (dir === undefined) throw new Error("apt-get source unpacked no qemu-* directory");
  const tree = `${work}/${dir.name}`;
  const upstream = Deno.readTextFileSync(`${tree}/VERSION`).trim();
  if (!versionAtLeast(upstream, MIN_VERSION)) {
    throw new Error(
      `Debian's qemu source is upstream ${upstream}; the test machine needs ` +
        `${MIN_VERSION.join(".")} or later (older ones corrupt its user space)`,
    );
  }
  say(`applying ${QEMU_FIX_PATCH.replace(/^.*\/tests\//, "tests/")} to QEMU ${upstream}`);
  const patched = await run("patch", ["-p1", "--forward", "-i", QEMU_FIX_PATCH], { cwd: tree });
  if (!patched.ok) throw new Error(`the fix does not apply to QEMU ${upstream}:\n${patched.tail}`);
  const mesonFile = `${tree}/pc-bios/meson.build`;
  const meson = Deno.readTextFileSync(mesonFile);
  if (!meson.includes(EDK2_UNPACK)) {
    throw new Error(`pc-bios/meson.build has no '${EDK2_UNPACK}' to disable`);
  }
  Deno.writeTextFileSync(mesonFile, meson.replace(EDK2_UNPACK, "if false"));
  say(`configure ${QEMU_CONFIGURE_FLAGS.join(" ")}`);
  const bdir = `${tree}/build`;
  Deno.mkdirSync(bdir);
  const conf = await run("../configure", QEMU_CONFIGURE_FLAGS, { cwd: bdir });
  if (!conf.ok) throw new Error(`configure failed:\n${conf.tail}`);
  say("ninja qemu-system-x86_64 (a few minutes on 2 cores)");
  let lastTenth = -1;
  const made = await run("ninja", ["qemu-system-x86_64"], {
    cwd: bdir,
    onLine: (line) => {
      const m = /^\[(\d+)\/(\d+)\]/.exec(line);
      if (!m) return;
      const tenth = Math.floor((Number(m[1]) / Number(m[2])) * 10);
      if (tenth > lastTenth) {
        lastTenth = tenth;
        say(`compiling: ${tenth * 10}% (${m[1]}/${m[2]})`);
      }
    },
  });
  if (!made.ok) throw new Error(`ninja qemu-system-x86_64 failed:\n${made.tail}`);
  return `${bdir}/qemu-system-x86_64`;
}

/**
 * The path of the test machine's QEMU, building it first when it is not cached. Never throws and
 * never returns any other QEMU: on failure `reason` says what went wrong and what to do.
 */
export async function testMachineQemu(options: MachineQemuOptions = {}): Promise<MachineQemu> {
  const say = options.onProgress ?? ((s: string) => console.error(`test machine QEMU: ${s}`));
  const version = await installedQemuSource();
  if (version === undefined) {
    return {
      ok: false,
      reason: "qemu-system-x86 is not installed (its firmware and ROMs are used): " +
        "apt-get install qemu-system-x86",
    };
  }
  const key = await qemuCacheKey(version);
  const dir = `${cacheBase()}/qemu`;
  const path = `${dir}/qemu-system-x86_64-${key}`;
  const cached = async () => await Deno.stat(path).then((s) => s.isFile, () => false);
  if (await cached()) return { ok: true, path, version, built: false };

  await Deno.mkdir(dir, { recursive: true });
  // One build per machine even when two test machines start at once.
  const lock = await Deno.open(`${dir}/build.lock`, { create: true, write: true });
  const started = performance.now();
  let work: string | undefined;
  try {
    await lock.lock(true);
    if (await cached()) return { ok: true, path, version, built: false };
    say(`building Debian's QEMU ${version} with the nested-CR8 fix (once per machine) → ${path}`);
    const missing = await missingPackages(QEMU_BUILD_PACKAGES);
    if (missing.length > 0) {
      if (!canApt()) {
        return {
          ok: false,
          reason: `building the test machine's QEMU needs ${missing.join(" ")}: as root, ` +
            `apt-get install ${missing.join(" ")}`,
        };
      }
      say(`apt-get install ${missing.join(" ")} (build dependencies)`);
      const inst = await run("apt-get", ["install", "-y", "--no-install-recommends", ...missing]);
      if (!inst.ok) {
        return {
          ok: false,
          reason: `apt-get install of the build dependencies failed:\n${inst.tail}`,
        };
      }
    }
    const noSource = await ensureSource(version, say);
    if (noSource !== null) return { ok: false, reason: noSource };
    work = await Deno.makeTempDir({ dir, prefix: "build-" });
    const binary = await build(version, work, say);
    await Deno.copyFile(binary, `${path}.tmp`);
    await Deno.rename(`${path}.tmp`, path);
    say(`built in ${((performance.now() - started) / 1000).toFixed(0)} s`);
    return { ok: true, path, version, built: true };
  } catch (e) {
    return {
      ok: false,
      reason: `building the test machine's QEMU failed: ${(e as Error).message}`,
    };
  } finally {
    if (work !== undefined) await Deno.remove(work, { recursive: true }).catch(() => {});
    lock.close();
  }
}

if (import.meta.main) {
  const q = await testMachineQemu();
  if (!q.ok) {
    console.error(`test machine QEMU: ${q.reason}`);
    Deno.exit(1);
  }
  console.log(q.path);
}
