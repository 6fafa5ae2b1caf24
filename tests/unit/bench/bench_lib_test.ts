/**
 * The benchmark helpers that can be wrong without anyone noticing: the guest programs'
 * branch and call targets (decoded back from the bytes), and the harness's ratio and target
 * arithmetic.
 */
import assert from "node:assert/strict";
import {
  CODE_GPA,
  DONE_PORT,
  HYPERCALL_PAGE_GPA,
  hypercallGuest,
  PIO_PORT,
  pioGuest,
} from "../../../bench/lib/guest32.ts";
import { type Figure, type FigureResult, targetVerdict } from "../../../bench/lib/measure.ts";
import { tlfs } from "../../../src/hyperv/mod.ts";

/**
 * Finds `before` followed by `op` and a rel32, and returns the absolute target of that rel32
 * (code loaded at CODE_GPA).
 */
function rel32Target(code: Uint8Array, before: number[], op: number[]): number {
  const seq = [...before, ...op];
  for (let i = 0; i + seq.length + 4 <= code.length; i++) {
    if (seq.every((b, k) => code[i + k] === b)) {
      const at = i + seq.length;
      const rel = new DataView(code.buffer, code.byteOffset).getInt32(at, true);
      return CODE_GPA + at + 4 + rel;
    }
  }
  throw new Error("opcode not found");
}

Deno.test("the hypercall guest calls the hypercall page and loops back to the call setup", () => {
  const { code, perBatch } = hypercallGuest(1000);
  assert.equal(perBatch, 1000);
  // xor edi, edi; call rel32
  assert.equal(rel32Target(code, [0x31, 0xff], [0xe8]), HYPERCALL_PAGE_GPA);
  // mov eax, HvSignalEvent | fast; the loop's jnz (rel8) lands on it.
  const ctl = tlfs.HVCALL_SIGNAL_EVENT | Number(tlfs.HV_HYPERCALL_FAST_BIT);
  const movEax = [0xb8, ctl & 0xff, (ctl >> 8) & 0xff, (ctl >> 16) & 0xff, ctl >>> 24];
  const loop = code.findIndex((_, i) => movEax.every((b, k) => code[i + k] === b));
  assert.ok(loop > 0);
  const jnz = code.indexOf(0x75, loop);
  assert.equal(jnz + 2 + ((code[jnz + 1]! << 24) >> 24), loop);
  // Batch end: out DONE_PORT, then jmp back to `mov ebp, n`.
  const done = jnz + 2;
  assert.equal(code[done], 0xe6); // out imm8, al
  assert.equal(code[done + 1], DONE_PORT);
  assert.equal(code[done + 2], 0xeb);
  const back = done + 4 + ((code[done + 3]! << 24) >> 24);
  assert.equal(code[back], 0xbd); // mov ebp, imm32
  assert.equal(new DataView(code.buffer).getUint32(back + 1, true), 1000);
});

Deno.test("the port I/O guest writes PIO_PORT n times per batch", () => {
  const { code } = pioGuest(7);
  assert.deepEqual([...code.subarray(0, 5)], [0xbd, 7, 0, 0, 0]);
  assert.deepEqual([...code.subarray(5, 7)], [0xe6, PIO_PORT]);
});

function result(kind: Figure["kind"], ratio: number, target: number): FigureResult {
  const s = { label: "s", batch() {} };
  const f = { label: "f", batch() {} };
  const figure: Figure = {
    name: "x",
    kind,
    opsPerBatch: 1,
    op: "op",
    subject: s,
    floors: [f],
    target: { floor: "f", ratio: target },
  };
  return {
    figure,
    nsPerOp: new Map([["s", 1], ["f", 1]]),
    ratios: new Map([["f", ratio]]),
    rounds: 1,
  };
}

Deno.test("targets read the ratio in the figure's sense: time for latency, rate for throughput", () => {
  assert.match(targetVerdict(result("latency", 1.1, 1.2)), /met$/);
  assert.match(targetVerdict(result("latency", 1.3, 1.2)), /MISSED$/);
  assert.match(targetVerdict(result("throughput", 0.9, 0.8)), /met$/);
  assert.match(targetVerdict(result("throughput", 0.7, 0.8)), /MISSED$/);
});
