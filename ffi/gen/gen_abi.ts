/**
 * Generates `ffi/kvm_abi.ts` from the host's `<linux/kvm.h>`: compiles `kvm_abi.c` with the
 * system C compiler, runs it, and formats the output with `deno fmt`. `--check` compares with the
 * checked-in file instead of writing it (exit 1 when it differs).
 * @module
 */
import { fileURLToPath as fromFileUrl } from "node:url";

const HERE = fromFileUrl(new URL(".", import.meta.url));
const TARGET = fromFileUrl(new URL("../kvm_abi.ts", import.meta.url));

/** Why the ABI cannot be generated on this host, or undefined when it can. */
export function cannotGenerateReason(): string | undefined {
  try {
    Deno.statSync("/usr/include/linux/kvm.h");
  } catch {
    return "no <linux/kvm.h> (install linux-libc-dev)";
  }
  for (const cc of ["cc", "gcc", "clang"]) {
    try {
      const r = new Deno.Command(cc, { args: ["--version"], stdout: "null", stderr: "null" })
        .outputSync();
      if (r.success) return undefined;
    } catch { /* try next */ }
  }
  return "no C compiler (cc/gcc/clang)";
}

/** Compiles and runs the generator; returns the formatted TypeScript text. */
export async function generateAbi(): Promise<string> {
  const tmp = await Deno.makeTempDir({ prefix: "hyperdeno-abi-" });
  try {
    const exe = `${tmp}/kvm_abi`;
    const build = await new Deno.Command("cc", {
      args: ["-Wall", "-Werror", "-o", exe, `${HERE}kvm_abi.c`],
    }).output();
    if (!build.success) {
      throw new Error(`compiling kvm_abi.c failed:\n${new TextDecoder().decode(build.stderr)}`);
    }
    const run = await new Deno.Command(exe).output();
    if (!run.success) throw new Error("kvm_abi generator failed");
    const fmt = new Deno.Command(Deno.execPath(), {
      args: ["fmt", "--line-width", "100", "--ext", "ts", "-"],
      stdin: "piped",
      stdout: "piped",
    }).spawn();
    const w = fmt.stdin.getWriter();
    await w.write(run.stdout);
    await w.close();
    const out = await fmt.output();
    if (!out.success) throw new Error("deno fmt of the generated ABI failed");
    return new TextDecoder().decode(out.stdout);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) {
  const why = cannotGenerateReason();
  if (why) {
    console.error(`Cannot generate the KVM ABI: ${why}.`);
    Deno.exit(2);
  }
  const text = await generateAbi();
  if (Deno.args.includes("--check")) {
    const current = await Deno.readTextFile(TARGET).catch(() => "");
    if (current !== text) {
      console.error("ffi/kvm_abi.ts is out of date: run `deno task gen:abi`.");
      Deno.exit(1);
    }
    console.log("ffi/kvm_abi.ts is current.");
  } else {
    await Deno.writeTextFile(TARGET, text);
    console.log(`wrote ${TARGET}`);
  }
}
