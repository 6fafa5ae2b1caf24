/**
 * Builds the C references of the benchmarks (`bench/ref/*.c`) with the system C compiler into
 * `.cache/bench/`, once per source version (the file name carries a hash of the source and the
 * flags), and opens them with `Deno.dlopen`.
 * @module
 */

const REF_DIR = new URL("../ref/", import.meta.url);
const CACHE_DIR = new URL("../../.cache/bench/", import.meta.url);
const CFLAGS = ["-O2", "-shared", "-fPIC", "-Wall", "-Werror"];

/** The C compiler could not be run or refused a reference source. */
export class CcError extends Error {
  override name = "CcError";
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

/**
 * Compiles `bench/ref/<name>.c` into a shared library (if not already built) and returns its
 * path. Throws `CcError` saying what to install when `cc` is missing or fails.
 */
export async function buildRef(name: string): Promise<string> {
  const src = new URL(`${name}.c`, REF_DIR);
  const text = await Deno.readTextFile(src);
  const cc = Deno.env.get("CC") ?? "cc";
  const out = new URL(`${name}-${await sha256(text + CFLAGS.join(" ") + cc)}.so`, CACHE_DIR);
  try {
    await Deno.stat(out);
    return out.pathname;
  } catch {
    // not built yet
  }
  await Deno.mkdir(CACHE_DIR, { recursive: true });
  const tmp = `${out.pathname}.${Deno.pid}.tmp`;
  let result: Deno.CommandOutput;
  try {
    result = await new Deno.Command(cc, {
      args: [...CFLAGS, "-o", tmp, src.pathname],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new CcError(
      `cannot run the C compiler '${cc}' to build bench/ref/${name}.c (${(e as Error).message}): ` +
        "install one (apt-get install gcc) or set CC.",
    );
  }
  if (!result.success) {
    throw new CcError(
      `'${cc}' failed to build bench/ref/${name}.c:\n${new TextDecoder().decode(result.stderr)}`,
    );
  }
  await Deno.rename(tmp, out);
  // Older builds of the same reference are dead weight.
  for await (const e of Deno.readDir(CACHE_DIR)) {
    if (
      e.name.startsWith(`${name}-`) && e.name.endsWith(".so") &&
      e.name !== out.pathname.split("/").pop()
    ) {
      await Deno.remove(new URL(e.name, CACHE_DIR)).catch(() => {});
    }
  }
  return out.pathname;
}

/** Builds and opens a C reference. */
export async function openRef<S extends Deno.ForeignLibraryInterface>(
  name: string,
  symbols: S,
): Promise<Deno.DynamicLibrary<S>> {
  return Deno.dlopen(await buildRef(name), symbols);
}
