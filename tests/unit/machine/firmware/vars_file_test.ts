import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { UsageError } from "../../../../src/util/errors.ts";
import {
  EfiVarsFile,
  VarsFileWriter,
  varsImageProblem,
} from "../../../../src/machine/firmware/vars_file.ts";
import { createPflashState, PflashDevice } from "../../../../src/machine/firmware/pflash.ts";

const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const HAVE_OVMF = (() => {
  try {
    return Deno.statSync(OVMF_VARS).isFile;
  } catch {
    return false;
  }
})();

function usage(f: () => unknown, re: RegExp) {
  throws(f, (e: unknown) => e instanceof UsageError && re.test(e.message));
}

Deno.test({
  name: "Debian's OVMF_VARS_4M.fd is a variable store; truncated or damaged copies are not",
  ignore: !HAVE_OVMF,
}, () => {
  const t = Deno.readFileSync(OVMF_VARS);
  strictEqual(t.length, 540_672);
  strictEqual(varsImageProblem(t), undefined);
  ok(varsImageProblem(t.subarray(0, 4096), t.length)?.includes("4096 bytes"));
  const torn = t.slice();
  torn[0x20] = torn[0x20]! ^ 1;
  ok(varsImageProblem(torn));
  const foreign = new Uint8Array(t.length);
  strictEqual(varsImageProblem(foreign), "it has no firmware-volume header (_FVH)");
});

Deno.test({
  name: "--efi-vars: created from the template, locked, written through, never truncated",
  ignore: !HAVE_OVMF,
}, () => {
  const dir = Deno.makeTempDirSync();
  try {
    const path = `${dir}/vm.vars`;
    const a = EfiVarsFile.open(path, { template: OVMF_VARS });
    strictEqual(a.created, true);
    deepStrictEqual(Deno.readFileSync(path), Deno.readFileSync(OVMF_VARS));
    deepStrictEqual(
      Deno.readDirSync(dir).toArray().map((e) => e.name),
      ["vm.vars"],
      "no temp left",
    );
    usage(() => EfiVarsFile.open(path, { template: OVMF_VARS }), /in use by another VM/);

    // A program cycle through the flash reaches the file at the next read-array.
    const bytes = a.initial.slice();
    const writer = new VarsFileWriter(a.handle, bytes);
    const dev = new PflashDevice(createPflashState(), writer);
    const at = 0x1000 + 0x40;
    for (const [i, v] of [0x48, 0x44, 0x4d].entries()) {
      dev.write(at + i, Uint8Array.of(0x10));
      dev.write(at + i, Uint8Array.of(v));
    }
    strictEqual(Deno.readFileSync(path)[at], a.initial[at], "not yet: still in program mode");
    dev.write(at, Uint8Array.of(0xff));
    strictEqual(new TextDecoder().decode(Deno.readFileSync(path).subarray(at, at + 3)), "HDM");
    strictEqual(writer.error, undefined);
    a.close(bytes);
    a.close(bytes); // twice is harmless

    // Reopened: kept, not recreated.
    const b = EfiVarsFile.open(path, { template: OVMF_VARS });
    strictEqual(b.created, false);
    strictEqual(new TextDecoder().decode(b.initial.subarray(at, at + 3)), "HDM");
    b.close();

    // Foreign and wrong-size files are refused and left exactly as they were.
    const junk = `${dir}/junk.vars`;
    Deno.writeFileSync(junk, new Uint8Array(540_672).fill(7));
    usage(() => EfiVarsFile.open(junk, { template: OVMF_VARS }), /no firmware-volume header/);
    const short = `${dir}/short.vars`;
    Deno.writeFileSync(short, Deno.readFileSync(OVMF_VARS).subarray(0, 131072));
    usage(() => EfiVarsFile.open(short, { template: OVMF_VARS }), /131072 bytes/);
    strictEqual(Deno.statSync(short).size, 131072);
    ok(Deno.readFileSync(junk).every((x) => x === 7));
    usage(
      () => EfiVarsFile.open(`${dir}/new.vars`, { template: `${dir}/none.fd` }),
      /Install Debian's 'ovmf' package/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
