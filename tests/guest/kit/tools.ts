/**
 * Guest tools: small static C programs from `tests/guest/tools/NAME.c` that a test puts in its
 * initramfs (busybox cannot do everything). Each is compiled with `cc -static -O2` (or `$CC`) on
 * first use and cached under `.cache/guestkit/tools/` by the hash of its source, flags and
 * compiler, like the images.
 *
 * ```ts
 * const odirect = await guestTool("odirect");
 * if (!odirect.ok) console.warn(`skipped: O_DIRECT checks (${odirect.reason})`);
 * const files = odirect.ok ? { "/hd/odirect": { data: odirect.image, mode: 0o755 } } : {};
 * ```
 * @module
 */
import { isStaticElf } from "./host.ts";
import { cacheDir, sha256Hex } from "./initramfs.ts";

const TOOLS_DIR = new URL("../tools/", import.meta.url).pathname;
const CFLAGS = ["-static", "-O2", "-Wall", "-Werror"];

/** A built tool, or why it could not be built. */
export type GuestTool =
  | { readonly ok: true; readonly path: string; readonly image: Uint8Array }
  | { readonly ok: false; readonly reason: string };

/** Builds (or reuses from the cache) the static guest tool `name`. Never throws. */
export async function guestTool(name: string): Promise<GuestTool> {
  let source: string;
  try {
    source = await Deno.readTextFile(`${TOOLS_DIR}${name}.c`);
  } catch (e) {
    return {
      ok: false,
      reason: `cannot read tests/guest/tools/${name}.c: ${(e as Error).message}`,
    };
  }
  const cc = Deno.env.get("CC") ?? "cc";
  const hash = await sha256Hex(new TextEncoder().encode([source, cc, ...CFLAGS].join("\0")));
  const dir = `${cacheDir()}/tools`;
  const path = `${dir}/${name}-${hash.slice(0, 16)}`;
  const cached = await Deno.readFile(path).catch(() => undefined);
  if (cached) return { ok: true, path, image: cached };
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cc, {
      args: [...CFLAGS, "-o", tmp, `${TOOLS_DIR}${name}.c`],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (e) {
    return {
      ok: false,
      reason: `no C compiler '${cc}' (${(e as Error).message}): install one ` +
        "(apt-get install gcc libc6-dev) or set CC",
    };
  }
  if (!out.success) {
    await Deno.remove(tmp).catch(() => {});
    return {
      ok: false,
      reason: `'${cc} -static' failed to build tests/guest/tools/${name}.c (a static libc is ` +
        `in libc6-dev): ${new TextDecoder().decode(out.stderr).trim()}`,
    };
  }
  const image = await Deno.readFile(tmp);
  if (!isStaticElf(image)) {
    await Deno.remove(tmp).catch(() => {});
    return { ok: false, reason: `'${cc} -static' built a dynamically linked ${name}` };
  }
  await Deno.rename(tmp, path);
  return { ok: true, path, image };
}
