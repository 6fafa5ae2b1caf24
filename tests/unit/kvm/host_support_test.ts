/**
 * The /dev/kvm verdict `boot`, `doctor` and the tests share, from fake facts; and the real one on
 * this host is fast and agrees with the facts.
 */
import assert from "node:assert/strict";
import {
  judgeKvmHost,
  type KvmHostFacts,
  kvmRefusal,
  readKvmHostFacts,
} from "../../../src/kvm/host_support.ts";

const HARDWARE: KvmHostFacts = {
  arch: "x86_64",
  kvmPresent: true,
  kvmAccessible: true,
  kvmPvm: false,
  hardwareVirtualization: true,
};

function refused(f: KvmHostFacts): { problem: string; line: string } {
  const v = judgeKvmHost(f);
  assert.equal(v.ok, false, `expected a refusal for ${JSON.stringify(f)}`);
  if (v.ok) throw new Error("unreachable");
  return { problem: v.problem, line: kvmRefusal(v) };
}

Deno.test("kvm host: hardware KVM runs the guest", () => {
  assert.deepEqual(judgeKvmHost(HARDWARE), { ok: true, why: "/dev/kvm is hardware KVM" });
});

Deno.test("kvm host: PVM is refused even when the CPU flags say svm", () => {
  const r = refused({ ...HARDWARE, kvmPvm: true });
  assert.equal(r.problem, "pvm");
  assert.match(r.line, /PVM-based KVM \(\/sys\/module\/kvm_pvm\)/);
  assert.match(r.line, /hardware KVM/);
  assert.match(r.line, /nested test machine \(deno task demo/);
});

Deno.test("kvm host: each problem has its own reason and advice, on one line", () => {
  const cases: [Partial<KvmHostFacts>, string, RegExp][] = [
    [{ arch: "aarch64" }, "arch", /this host is aarch64/],
    [{ kvmPresent: false, kvmAccessible: false }, "absent", /does not exist.*load kvm-intel/],
    [{ kvmAccessible: false }, "permission", /not read-writable.*'kvm' group/],
    [{ hardwareVirtualization: false }, "not-hardware", /not hardware KVM.*test machine/],
  ];
  for (const [change, problem, re] of cases) {
    const r = refused({ ...HARDWARE, ...change });
    assert.equal(r.problem, problem);
    assert.match(r.line, re);
    assert.equal(r.line.includes("\n"), false);
  }
});

Deno.test("kvm host: absence wins over PVM, permission over PVM (the first thing to fix)", () => {
  assert.equal(refused({ ...HARDWARE, kvmPvm: true, kvmPresent: false }).problem, "absent");
  assert.equal(refused({ ...HARDWARE, kvmPvm: true, kvmAccessible: false }).problem, "permission");
});

Deno.test("kvm host: reading the facts takes milliseconds and matches /dev/kvm", () => {
  const t0 = performance.now();
  const f = readKvmHostFacts();
  const ms = performance.now() - t0;
  assert.ok(ms < 500, `${ms.toFixed(0)} ms`);
  let present = true;
  try {
    Deno.statSync("/dev/kvm");
  } catch {
    present = false;
  }
  assert.equal(f.kvmPresent, present);
  assert.equal(f.arch, Deno.build.arch);
  if (!f.kvmPresent) assert.equal(f.kvmAccessible, false);
});
