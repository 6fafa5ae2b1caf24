/**
 * What the guest kit takes from the host: an installed Debian kernel (`/boot/vmlinuz-<version>`
 * with `/lib/modules/<version>`) and a statically linked busybox.
 * @module
 */

/** An installed kernel usable as a guest kernel. */
export interface HostKernel {
  /** `uname -r` of the kernel, e.g. `6.1.0-56-amd64`. */
  readonly version: string;
  /** The bzImage, e.g. `/boot/vmlinuz-6.1.0-56-amd64`. */
  readonly path: string;
  /** `/lib/modules/<version>`. */
  readonly modulesDir: string;
  /** `/boot/config-<version>` (may not exist). */
  readonly configPath: string;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Compares kernel versions numerically by their dotted/dashed numeric parts. */
export function compareKernelVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((x) => parseInt(x, 10));
  const pb = b.split(/[.-]/).map((x) => parseInt(x, 10));
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? -1;
    const y = pb[i] ?? -1;
    const nx = Number.isNaN(x) ? -1 : x;
    const ny = Number.isNaN(y) ? -1 : y;
    if (nx !== ny) return nx - ny;
  }
  return a.localeCompare(b);
}

/** Versions of kernels that have both a bzImage in `/boot` and a `modules.dep`. */
export function listHostKernels(bootDir = "/boot", modulesRoot = "/lib/modules"): string[] {
  const versions: string[] = [];
  let names: Deno.DirEntry[];
  try {
    names = [...Deno.readDirSync(bootDir)];
  } catch {
    return [];
  }
  for (const e of names) {
    if (!e.name.startsWith("vmlinuz-")) continue;
    const v = e.name.slice("vmlinuz-".length);
    if (exists(`${modulesRoot}/${v}/modules.dep`)) versions.push(v);
  }
  return versions.sort(compareKernelVersions);
}

/**
 * The guest kernel: `version` if given, else `$HYPERDENO_GUEST_KERNEL_VERSION`, else the newest
 * installed one. Throws with the install command when there is none.
 */
export function findHostKernel(version?: string): HostKernel {
  const wanted = version ?? Deno.env.get("HYPERDENO_GUEST_KERNEL_VERSION");
  const all = listHostKernels();
  const v = wanted ?? all[all.length - 1];
  if (v === undefined || !all.includes(v)) {
    throw new Error(
      wanted
        ? `kernel ${wanted} not found: need /boot/vmlinuz-${wanted} and /lib/modules/${wanted}/modules.dep`
        : "no guest kernel found in /boot with modules in /lib/modules; " +
          "install one with: apt-get install linux-image-amd64",
    );
  }
  return {
    version: v,
    path: `/boot/vmlinuz-${v}`,
    modulesDir: `/lib/modules/${v}`,
    configPath: `/boot/config-${v}`,
  };
}

/** True when the ELF image has no PT_INTERP program header (no dynamic loader needed). */
export function isStaticElf(image: Uint8Array): boolean {
  if (image.length < 64 || image[0] !== 0x7f || image[1] !== 0x45 || image[2] !== 0x4c) {
    return false;
  }
  if (image[4] !== 2 || image[5] !== 1) return false; // ELFCLASS64, little-endian only
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const phoff = Number(dv.getBigUint64(0x20, true));
  const phentsize = dv.getUint16(0x36, true);
  const phnum = dv.getUint16(0x38, true);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 4 > image.length) return false;
    if (dv.getUint32(at, true) === 3) return false; // PT_INTERP
  }
  return true;
}

/** A static busybox and the applets it provides. */
export interface Busybox {
  readonly path: string;
  readonly image: Uint8Array;
  /** Applet paths without a leading slash, e.g. `bin/sh`, `sbin/insmod`. */
  readonly applets: readonly string[];
}

const BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"];

/** Finds a statically linked busybox; throws with the install command when there is none. */
export async function findStaticBusybox(path?: string): Promise<Busybox> {
  const candidates = path ? [path] : BUSYBOX_CANDIDATES;
  for (const p of candidates) {
    let image: Uint8Array;
    try {
      image = await Deno.readFile(p);
    } catch {
      continue;
    }
    if (!isStaticElf(image)) continue;
    const out = await new Deno.Command(p, { args: ["--list-full"], stdout: "piped" }).output();
    const applets = new TextDecoder().decode(out.stdout).split("\n")
      .map((l) => l.trim().replace(/^\/+/, ""))
      .filter((l) => l !== "" && !l.includes(".."));
    if (!out.success || applets.length === 0) continue;
    return { path: p, image, applets };
  }
  throw new Error(
    `no statically linked busybox at ${candidates.join(" or ")}; ` +
      "install one with: apt-get install busybox-static",
  );
}
