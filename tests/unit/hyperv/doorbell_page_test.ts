/**
 * The long-mode hypercall page and its doorbell: the bytes (decoded by hand and, where binutils
 * is installed, by objdump), which mode gets which page, and the user-space answer to a
 * doorbell no eventfd took.
 */
import { assert, assertEquals } from "./assert.ts";
import { HV_FEATURES_ALL } from "../../../src/hyperv/features.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { makeRig } from "./fakes.ts";

const PAGE = T.HYPERCALL_PAGE_CODE_LONG_MODE;

/** Signed 8-bit branch target of the 2-byte jcc at `at`. */
function jccTarget(at: number): number {
  return at + 2 + ((PAGE[at + 1]! << 24) >> 24);
}

function imm32(at: number): number {
  return (PAGE[at]! | PAGE[at + 1]! << 8 | PAGE[at + 2]! << 16 | PAGE[at + 3]! << 24) | 0;
}

Deno.test("long-mode page: checks the fast HvSignalEvent control and the doorbell range", () => {
  const plain = PAGE.length - 3;
  assertEquals([...PAGE.slice(0, 4)], [0xf3, 0x0f, 0x1e, 0xfa], "endbr64");
  assertEquals([...PAGE.slice(4, 7)], [0x48, 0x81, 0xf9], "cmp rcx, imm32");
  assertEquals(imm32(7), 0x1005d, "HvSignalEvent | fast");
  assertEquals(PAGE[11], 0x75, "jne");
  assertEquals(jccTarget(11), plain);
  assertEquals([...PAGE.slice(13, 16)], [0x48, 0x8d, 0x82], "lea rax, [rdx + disp32]");
  assertEquals(imm32(16), -T.HV_DOORBELL_FIRST);
  assertEquals([...PAGE.slice(20, 22)], [0x48, 0x3d], "cmp rax, imm32");
  assertEquals(imm32(22), T.HV_DOORBELL_LAST - T.HV_DOORBELL_FIRST);
  assertEquals(PAGE[26], 0x77, "ja (unsigned: ids below the range wrap above it)");
  assertEquals(jccTarget(26), plain);
  assertEquals([...PAGE.slice(28, 30)], [0x31, 0xc0], "xor eax, eax");
  assertEquals(T.DOORBELL_OUT_OFFSET, 30);
  assertEquals(PAGE[T.DOORBELL_OUT_OFFSET], 0xef, "out dx, eax");
  assertEquals(T.HYPERCALL_OUT_OFFSET_LONG_MODE, plain);
  assertEquals(T.HYPERCALL_OUT_OFFSET, 4);
  assertEquals(PAGE[T.DOORBELL_OUT_OFFSET + 1], 0xc3, "ret");
  assertEquals([...PAGE.slice(plain)], [0xe6, T.HV_HYPERCALL_PORT, 0xc3], "the plain page's path");
});

/** objdump is installed (binutils; `deno task test` installs it). */
const HAVE_OBJDUMP = (() => {
  try {
    return new Deno.Command("objdump", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

// Ignored, and so counted as skipped, without binutils; never a silent pass.
Deno.test("long-mode page: objdump agrees", { ignore: !HAVE_OBJDUMP }, async () => {
  let out: Deno.CommandOutput;
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeFile(file, new Uint8Array(PAGE));
    out = await new Deno.Command("objdump", {
      args: ["-D", "-b", "binary", "-m", "i386:x86-64", file],
      stdout: "piped",
      stderr: "null",
    }).output();
  } finally {
    await Deno.remove(file);
  }
  const text = new TextDecoder().decode(out.stdout);
  const insns = text.split("\n").filter((l) => /^\s+[0-9a-f]+:\t/.test(l)).map((l) =>
    l.split("\t")[2]!.trim().replace(/\s+/g, " ")
  );
  assertEquals(insns, [
    "endbr64",
    "cmp $0x1005d,%rcx",
    "jne 0x20",
    "lea -0x2001(%rdx),%rax",
    "cmp $0x7fe,%rax",
    "ja 0x20",
    "xor %eax,%eax",
    "out %eax,(%dx)",
    "ret",
    "out %al,$0xe3",
    "ret",
  ]);
});

function enable(rig: ReturnType<typeof makeRig>, gpa = 0x2000): Uint8Array {
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_GUEST_OS_ID, 0x8100_0006_0100_0000n));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, BigInt(gpa) | 1n));
  return rig.memory.slice(gpa, PAGE.length);
}

Deno.test("the page follows the enabling vCPU's mode, and needs HvSignalEvent", () => {
  let long = true;
  const r = makeRig({ callerLongMode: () => long });
  assertEquals([...enable(r)], [...PAGE], "enabled from long mode");
  long = false;
  const page = enable(r, 0x3000);
  assertEquals([...page.subarray(0, T.HYPERCALL_PAGE_CODE.length)], [...T.HYPERCALL_PAGE_CODE]);

  const noSynic = makeRig({
    features: { ...HV_FEATURES_ALL, enabled: { ...HV_FEATURES_ALL.enabled, synic: false } },
    callerLongMode: () => true,
  });
  const p = enable(noSynic);
  assertEquals([...p.subarray(0, T.HYPERCALL_PAGE_CODE.length)], [...T.HYPERCALL_PAGE_CODE]);
  const mainThread = makeRig(); // no caller mode: the plain page
  const q = enable(mainThread);
  assertEquals([...q.subarray(0, T.HYPERCALL_PAGE_CODE.length)], [...T.HYPERCALL_PAGE_CODE]);
});

Deno.test("a doorbell that reached user space is the fast HvSignalEvent it stands for", () => {
  const r = makeRig();
  assertEquals(r.hv.doorbell(0x2001), T.HV_STATUS_SUCCESS);
  assertEquals(r.hv.doorbell(0x27ff), T.HV_STATUS_SUCCESS);
  assertEquals(r.bridge.events, [{ connectionId: 0x2001, flag: 0 }, {
    connectionId: 0x27ff,
    flag: 0,
  }]);
  for (const id of [0, 0x2000, 0x2800, 0xffff, -1]) {
    assertEquals(r.hv.doorbell(id), T.HV_STATUS_INVALID_CONNECTION_ID, `0x${id.toString(16)}`);
  }
  r.bridge.status = T.HV_STATUS_INVALID_CONNECTION_ID;
  assertEquals(r.hv.doorbell(0x2005), T.HV_STATUS_INVALID_CONNECTION_ID, "the host's answer");
  r.bridge.status = 0x12345;
  assertEquals(r.hv.doorbell(0x2005), T.HV_STATUS_INVALID_PARAMETER, "no bridge bug leaks");
  assertEquals(makeRig({ noBridge: true }).hv.doorbell(0x2001), T.HV_STATUS_INVALID_CONNECTION_ID);
  const noSynic = makeRig({
    features: { ...HV_FEATURES_ALL, enabled: { ...HV_FEATURES_ALL.enabled, synic: false } },
  });
  assertEquals(noSynic.hv.doorbell(0x2001), T.HV_STATUS_ACCESS_DENIED);
});
