/**
 * Kernel module selection for an initramfs: parse `modules.dep` (and `modules.builtin`), resolve
 * a list of module names to every file that must be loaded, in load order (dependencies first),
 * and read a module file, decompressing `.ko.gz` / `.ko.xz` / `.ko.zst` at build time so busybox
 * `insmod` never depends on the kernel's CONFIG_MODULE_DECOMPRESS.
 * @module
 */

/** Module name as the kernel compares them: `-` and `_` are the same character. */
export function normalizeModuleName(name: string): string {
  return name.replaceAll("-", "_");
}

/** Module name of a path in `modules.dep` (`kernel/arch/x86/kvm/kvm-amd.ko.xz` → `kvm_amd`). */
export function moduleNameOfPath(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1);
  return normalizeModuleName(base.replace(/\.ko(\.(gz|xz|zst))?$/, ""));
}

/** The parsed dependency table of one kernel's modules. */
export interface ModuleIndex {
  /** Normalized module name → path relative to `/lib/modules/<version>/`. */
  readonly paths: ReadonlyMap<string, string>;
  /** Path → the paths it depends on, as listed in `modules.dep`. */
  readonly deps: ReadonlyMap<string, readonly string[]>;
  /** Normalized names of modules built into the kernel image (nothing to load). */
  readonly builtin: ReadonlySet<string>;
}

/** Parses the text of `modules.dep` and, optionally, `modules.builtin`. */
export function parseModuleIndex(modulesDep: string, modulesBuiltin = ""): ModuleIndex {
  const paths = new Map<string, string>();
  const deps = new Map<string, string[]>();
  for (const raw of modulesDep.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const colon = line.indexOf(":");
    if (colon < 0) throw new Error(`malformed modules.dep line: ${line}`);
    const path = line.slice(0, colon).trim();
    const list = line.slice(colon + 1).trim();
    deps.set(path, list === "" ? [] : list.split(/\s+/));
    paths.set(moduleNameOfPath(path), path);
  }
  const builtin = new Set<string>();
  for (const raw of modulesBuiltin.split("\n")) {
    const line = raw.trim();
    if (line !== "") builtin.add(moduleNameOfPath(line));
  }
  return { paths, deps, builtin };
}

/** Thrown when a requested module is neither a loadable module nor built in. */
export class UnknownModuleError extends Error {
  override name = "UnknownModuleError";
}

/**
 * Resolves `names` to the module files to load, dependencies before dependents, each once.
 * Built-in modules are skipped. A dependency cycle (never produced by depmod) is an error.
 */
export function resolveModules(index: ModuleIndex, names: readonly string[]): string[] {
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (path: string, chain: readonly string[]): void => {
    const s = state.get(path);
    if (s === "done") return;
    if (s === "visiting") {
      throw new Error(`module dependency cycle: ${[...chain, path].join(" -> ")}`);
    }
    state.set(path, "visiting");
    const direct = index.deps.get(path);
    if (direct === undefined) throw new UnknownModuleError(`modules.dep has no entry ${path}`);
    // depmod lists the full transitive closure with the deepest dependency last, so walk it
    // from the end; the recursive visit keeps the order right for any listing.
    for (let i = direct.length - 1; i >= 0; i--) visit(direct[i]!, [...chain, path]);
    state.set(path, "done");
    order.push(path);
  };
  for (const raw of names) {
    const name = normalizeModuleName(raw);
    const path = index.paths.get(name);
    if (path !== undefined) {
      visit(path, []);
    } else if (!index.builtin.has(name)) {
      throw new UnknownModuleError(
        `kernel module "${raw}" is neither in modules.dep nor modules.builtin; ` +
          `check the name with: find /lib/modules/<version> -name '${raw}.ko*'`,
      );
    }
  }
  return order;
}

/** Path inside the initramfs for a module file: compression suffix dropped. */
export function uncompressedModulePath(path: string): string {
  return path.replace(/\.ko\.(gz|xz|zst)$/, ".ko");
}

async function decompressWith(cmd: string, path: string): Promise<Uint8Array> {
  const out = await new Deno.Command(cmd, { args: ["-dc", path], stdout: "piped", stderr: "piped" })
    .output()
    .catch((e) => {
      throw new Error(`cannot run "${cmd}" to decompress ${path}: ${e}. Install it (apt-get).`);
    });
  if (!out.success) {
    throw new Error(`${cmd} -dc ${path} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return out.stdout;
}

/** Reads a module file, decompressed. */
export async function readModule(fullPath: string): Promise<Uint8Array> {
  if (fullPath.endsWith(".ko")) return await Deno.readFile(fullPath);
  if (fullPath.endsWith(".ko.gz")) {
    const file = await Deno.open(fullPath);
    const stream = file.readable.pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  if (fullPath.endsWith(".ko.xz")) return await decompressWith("xz", fullPath);
  if (fullPath.endsWith(".ko.zst")) return await decompressWith("zstd", fullPath);
  throw new Error(`not a kernel module file: ${fullPath}`);
}

/** Loads the module index of an installed kernel from `/lib/modules/<version>`. */
export async function loadModuleIndex(modulesDir: string): Promise<ModuleIndex> {
  let dep: string;
  try {
    dep = await Deno.readTextFile(`${modulesDir}/modules.dep`);
  } catch (e) {
    throw new Error(
      `cannot read ${modulesDir}/modules.dep (${e}); install the kernel package ` +
        `(apt-get install linux-image-amd64) or run depmod`,
    );
  }
  const builtin = await Deno.readTextFile(`${modulesDir}/modules.builtin`).catch(() => "");
  return parseModuleIndex(dep, builtin);
}
