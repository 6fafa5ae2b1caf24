import { assert, assertEquals, assertFalse, assertThrows } from "./assert.ts";
import { referenceTime, referenceTscParams } from "../../../src/hyperv/time.ts";
import { parseHvFeatures } from "../../../src/hyperv/features.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { makeMemory, makeRig } from "./fakes.ts";

const U64 = (1n << 64n) - 1n;

/** What a guest computes from the TSC page (TLFS formula, 64-bit wrapping arithmetic). */
function guestReadsPage(page: Uint8Array, tsc: bigint): bigint | undefined {
  const L = T.HV_REFERENCE_TSC_PAGE;
  const seq = L.get(page, 0, "tscSequence");
  if (seq === 0) return undefined;
  const scale = L.get(page, 0, "tscScale");
  const offset = L.get(page, 0, "tscOffset");
  return (((tsc * scale) >> 64n) + offset) & U64;
}

Deno.test("reference time: 0 at VM start, 100 ns units, monotonic", () => {
  const hz = 2_500_000_000;
  const start = 123_456_789_000n;
  const p = referenceTscParams(hz, start);
  assertEquals(referenceTime(start, p), 0n);
  // One second of TSC is 10^7 ticks of 100 ns (within the truncation of the scale).
  const oneSecond = referenceTime(start + BigInt(hz), p);
  assert(oneSecond >= 9_999_999n && oneSecond <= 10_000_000n, `${oneSecond}`);
  const oneHour = referenceTime(start + BigInt(hz) * 3600n, p);
  assert(oneHour >= 36_000_000_000n - 1n && oneHour <= 36_000_000_000n, `${oneHour}`);
  let prev = -1n;
  for (let tsc = start; tsc < start + 50_000n; tsc += 7n) {
    const t = referenceTime(tsc, p);
    assert(t >= prev, "monotonic");
    prev = t;
  }
  assertThrows(() => referenceTscParams(1_000_000, 0n), RangeError);
});

Deno.test("TIME_REF_COUNT and the TSC page are the same function of the guest TSC", () => {
  const rig = makeRig();
  const gpa = 0x3000;
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_REFERENCE_TSC, BigInt(gpa) | 1n));
  const page = rig.memory.slice(gpa, 4096);
  assert(T.HV_REFERENCE_TSC_PAGE.get(page, 0, "tscSequence") !== 0);
  assertEquals(rig.hv.rdmsr(1, T.HV_X64_MSR_TIME_REF_COUNT), 0n, "0 at VM start");
  for (const ns100 of [1n, 10_000n, 10_000_000n, 864_000_000_000n]) {
    rig.clock.advance100ns(ns100);
    const msr = rig.hv.rdmsr(2, T.HV_X64_MSR_TIME_REF_COUNT)!;
    assertEquals(guestReadsPage(page, rig.clock.tsc), msr);
  }
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_TIME_REF_COUNT, 5n), "read-only: #GP");
});

Deno.test("REFERENCE_TSC keeps RsvdP bits, bumps the sequence, tolerates a page outside RAM", () => {
  const rig = makeRig();
  const value = 0x5000n | 0x7f0n | 1n;
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_REFERENCE_TSC, value));
  assertEquals(rig.hv.rdmsr(3, T.HV_X64_MSR_REFERENCE_TSC), value);
  const seq1 = T.HV_REFERENCE_TSC_PAGE.get(rig.memory.slice(0x5000, 24), 0, "tscSequence");
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_REFERENCE_TSC, 0x5001n));
  const seq2 = T.HV_REFERENCE_TSC_PAGE.get(rig.memory.slice(0x5000, 24), 0, "tscSequence");
  assert(seq2 !== seq1 && seq2 !== 0 && seq2 !== 0xffffffff);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_REFERENCE_TSC, 0x7_0000_0000n | 1n), "no #GP outside RAM");
});

Deno.test("hypercall page: needs a guest OS id, written at the GPA, disabled when id cleared", () => {
  const rig = makeRig();
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, 0x2001n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_HYPERCALL), 0x2000n, "enable stays 0 without OS id");
  assertFalse(rig.hv.partition.hypercallsEnabled);

  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_GUEST_OS_ID, 0x8100_0006_0100_0000n));
  assertEquals(rig.hv.rdmsr(1, T.HV_X64_MSR_GUEST_OS_ID), 0x8100_0006_0100_0000n);
  assert(rig.hv.wrmsr(1, T.HV_X64_MSR_HYPERCALL, 0x2001n | 0xff0n));
  assertEquals(rig.hv.rdmsr(2, T.HV_X64_MSR_HYPERCALL), 0x2ff1n, "RsvdP preserved, shared");
  assert(rig.hv.partition.hypercallsEnabled);
  assertEquals(
    [...rig.memory.slice(0x2000, 7)],
    [0xf3, 0x0f, 0x1e, 0xfa, 0xe6, T.HV_HYPERCALL_PORT, 0xc3],
  );
  assertEquals(T.HV_HYPERCALL_PORT, 0xe3);

  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_GUEST_OS_ID, 0n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_HYPERCALL)! & 1n, 0n);
  assertFalse(rig.hv.partition.hypercallsEnabled);
});

Deno.test("hypercall page outside RAM is #GP; the locked bit freezes the MSR", () => {
  const rig = makeRig({ memory: makeMemory(1 << 20) });
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_GUEST_OS_ID, 1n << 48n));
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, 0x10_0000n | 1n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_HYPERCALL), 0n);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, 0x3000n | 3n));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_HYPERCALL, 0x4000n | 1n), "ignored, not #GP");
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_HYPERCALL), 0x3003n);
});

Deno.test("frequency MSRs are read-only; reenlightenment and TSC controls check reserved bits", () => {
  const rig = makeRig({ vpCount: 2 });
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_TSC_FREQUENCY), 2_560_000_000n);
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_APIC_FREQUENCY), 1_000_000_000n);
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_FREQUENCY, 1n));
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_APIC_FREQUENCY, 1n));

  const ctl = (1n << 32n) | T.HV_REENLIGHTENMENT_ENABLED | 0xf0n;
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_REENLIGHTENMENT_CONTROL, ctl));
  assertEquals(rig.hv.rdmsr(1, T.HV_X64_MSR_REENLIGHTENMENT_CONTROL), ctl);
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_REENLIGHTENMENT_CONTROL, ctl | 0x100n), "RsvdZ");
  assertFalse(
    rig.hv.wrmsr(
      0,
      T.HV_X64_MSR_REENLIGHTENMENT_CONTROL,
      (5n << 32n) | T.HV_REENLIGHTENMENT_ENABLED,
    ),
    "no such target VP",
  );
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_EMULATION_CONTROL, 1n));
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_EMULATION_CONTROL, 2n));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_EMULATION_STATUS, 0n));
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_EMULATION_STATUS, 1n), "never in progress");
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_INVARIANT_CONTROL, 1n));
  assertEquals(rig.hv.rdmsr(1, T.HV_X64_MSR_TSC_INVARIANT_CONTROL), 1n);
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_TSC_INVARIANT_CONTROL, 2n));

  const noInv = makeRig({ invariantTsc: false });
  assertEquals(noInv.hv.rdmsr(0, T.HV_X64_MSR_TSC_INVARIANT_CONTROL), undefined);
});

Deno.test("syndbg MSRs are stored behind the syndbg feature", () => {
  const off = makeRig();
  assertEquals(off.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_CONTROL), undefined);
  assertFalse(off.hv.wrmsr(0, T.HV_X64_MSR_SYNDBG_OPTIONS, 4n));
  const on = makeRig({ features: parseHvFeatures("all,syndbg") });
  for (
    const [i, msr] of [
      T.HV_X64_MSR_SYNDBG_CONTROL,
      T.HV_X64_MSR_SYNDBG_STATUS,
      T.HV_X64_MSR_SYNDBG_SEND_BUFFER,
      T.HV_X64_MSR_SYNDBG_RECV_BUFFER,
      T.HV_X64_MSR_SYNDBG_PENDING_BUFFER,
      T.HV_X64_MSR_SYNDBG_OPTIONS,
    ].entries()
  ) {
    assert(on.hv.wrmsr(0, msr, BigInt(0x1000 * (i + 1))));
    assertEquals(on.hv.rdmsr(1, msr), BigInt(0x1000 * (i + 1)));
  }
});
