import { assert, assertEquals, assertFalse } from "./assert.ts";
import {
  HV_FEATURES_ALL,
  HV_FEATURES_NONE,
  type HvFeatureName,
  parseHvFeatures,
} from "../../../src/hyperv/features.ts";
import { HV_MSR_RANGES, hvMsrFilterRanges, HvMsrs } from "../../../src/hyperv/msrs.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { makeRig } from "./fakes.ts";

/** Readable MSR → the feature list that must be on for it. */
const GATED: [number, string][] = [
  [T.HV_X64_MSR_GUEST_OS_ID, "relaxed"],
  [T.HV_X64_MSR_HYPERCALL, "relaxed"],
  [T.HV_X64_MSR_VP_INDEX, "vpindex"],
  [T.HV_X64_MSR_RESET, "reset"],
  [T.HV_X64_MSR_VP_RUNTIME, "runtime"],
  [T.HV_X64_MSR_TIME_REF_COUNT, "time"],
  [T.HV_X64_MSR_REFERENCE_TSC, "time"],
  [T.HV_X64_MSR_TSC_FREQUENCY, "frequencies"],
  [T.HV_X64_MSR_APIC_FREQUENCY, "frequencies"],
  [T.HV_X64_MSR_VP_ASSIST_PAGE, "vapic"],
  [T.HV_X64_MSR_SCONTROL, "vpindex,synic"],
  [T.HV_X64_MSR_SVERSION, "vpindex,synic"],
  [T.HV_X64_MSR_SIEFP, "vpindex,synic"],
  [T.HV_X64_MSR_SIMP, "vpindex,synic"],
  [T.HV_X64_MSR_EOM, "vpindex,synic"],
  [T.HV_X64_MSR_SINT0 + 5, "vpindex,synic"],
  [T.HV_X64_MSR_STIMER0_CONFIG + 3, "vpindex,synic,time,stimer"],
  [T.HV_X64_MSR_CRASH_P0 + 2, "crash"],
  [T.HV_X64_MSR_CRASH_CTL, "crash"],
  [T.HV_X64_MSR_REENLIGHTENMENT_CONTROL, "reenlightenment"],
  [T.HV_X64_MSR_TSC_EMULATION_STATUS, "reenlightenment"],
  [T.HV_X64_MSR_TSC_INVARIANT_CONTROL, "time"],
  [T.HV_X64_MSR_SYNDBG_STATUS, "vpindex,synic,relaxed,syndbg"],
  [T.HV_X64_MSR_SYNDBG_OPTIONS, "vpindex,synic,relaxed,syndbg"],
];

Deno.test("each MSR reads only when its feature is on (else #GP), nothing with --hv none", () => {
  for (const [msr, spec] of GATED) {
    const on = makeRig({ features: parseHvFeatures(spec) });
    assert(on.hv.rdmsr(0, msr) !== undefined, `0x${msr.toString(16)} with ${spec}`);
    const none = makeRig({ features: HV_FEATURES_NONE });
    assertEquals(none.hv.rdmsr(0, msr), undefined, `0x${msr.toString(16)} with none`);
    // Everything (syndbg too) except the MSR's own feature.
    const last = spec.split(",").at(-1) as HvFeatureName;
    if (last !== "relaxed") {
      const enabled = { ...HV_FEATURES_ALL.enabled, syndbg: true, [last]: false };
      const without = makeRig({ features: { enabled, spinlocks: 0x1fff } });
      assertEquals(without.hv.rdmsr(0, msr), undefined, `0x${msr.toString(16)} without ${last}`);
    }
  }
});

Deno.test("unimplemented and out-of-range MSRs are #GP; EOI/ICR/TPR are never handled here", () => {
  const rig = makeRig();
  for (
    const msr of [
      T.HV_X64_MSR_EOI,
      T.HV_X64_MSR_ICR,
      T.HV_X64_MSR_TPR,
      0x400000f0, // guest idle
      0x40000004,
      0x400001ff,
      0x10,
      0x40000200,
    ]
  ) {
    assertEquals(rig.hv.rdmsr(0, msr), undefined, msr.toString(16));
    assertFalse(rig.hv.wrmsr(0, msr, 0n), msr.toString(16));
  }
  assertEquals(rig.hv.rdmsr(9, T.HV_X64_MSR_VP_INDEX), undefined, "no VP 9");
  assertEquals(rig.hv.rdmsr(-1, T.HV_X64_MSR_VP_INDEX), undefined);
  assert(HvMsrs.inRange(0x40000118));
  assertFalse(HvMsrs.inRange(0x40000200));
});

Deno.test("VP_INDEX is the vCPU index and read-only; VP_RUNTIME comes from the caller", () => {
  const rig = makeRig({ vpCount: 4 });
  for (let vp = 0; vp < 4; vp++) assertEquals(rig.hv.rdmsr(vp, T.HV_X64_MSR_VP_INDEX), BigInt(vp));
  assertFalse(rig.hv.wrmsr(1, T.HV_X64_MSR_VP_INDEX, 3n));
  rig.runtime.set(2, 123_456n);
  assertEquals(rig.hv.rdmsr(2, T.HV_X64_MSR_VP_RUNTIME), 123_456n);
  assertFalse(rig.hv.wrmsr(2, T.HV_X64_MSR_VP_RUNTIME, 0n));
});

Deno.test("RESET: bit 0 asks for a reset, reserved bits #GP, reads 0", () => {
  const rig = makeRig();
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_RESET), 0n);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_RESET, 0n));
  assertEquals(rig.power.resets, 0);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_RESET, 1n));
  assertEquals(rig.power.resets, 1);
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_RESET, 3n));
  assertEquals(rig.power.resets, 1);
});

Deno.test("VP_ASSIST_PAGE: per VP, clears apic_assist, #GP outside RAM", () => {
  const rig = makeRig();
  rig.memory.writeU32(0x6000, 0xffffffff);
  rig.memory.writeU32(0x6004, 0x12345678);
  assert(rig.hv.wrmsr(1, T.HV_X64_MSR_VP_ASSIST_PAGE, 0x6001n));
  assertEquals(rig.memory.readU32(0x6000), 0);
  assertEquals(rig.memory.readU32(0x6004), 0x12345678, "rest of the page kept");
  assertEquals(rig.hv.rdmsr(1, T.HV_X64_MSR_VP_ASSIST_PAGE), 0x6001n);
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_VP_ASSIST_PAGE), 0n, "per VP");
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_VP_ASSIST_PAGE, 0x9_0000_0000n | 1n));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_VP_ASSIST_PAGE, 0x9_0000_0000n), "disabled: no check");
});

Deno.test("a failing dependency turns into #GP, never an exception", () => {
  const bad = makeRig({
    vpRuntime: () => {
      throw new Error("boom");
    },
    crashSink: () => {
      throw new Error("sink down");
    },
  });
  assertEquals(bad.hv.rdmsr(0, T.HV_X64_MSR_VP_RUNTIME), undefined);
  assertFalse(bad.hv.wrmsr(0, T.HV_X64_MSR_CRASH_CTL, T.HV_CRASH_CTL_CRASH_NOTIFY));
});

Deno.test("filter ranges: the whole HV window, minus EOI/ICR/TPR with vapic, none without HV", () => {
  assertEquals(HV_MSR_RANGES, [{ base: 0x40000000, count: 0x200 }]);
  assertEquals(hvMsrFilterRanges(HV_FEATURES_NONE), []);
  assertEquals(hvMsrFilterRanges(parseHvFeatures("all,-vapic")), [{
    base: 0x40000000,
    count: 0x200,
  }]);
  assertEquals(hvMsrFilterRanges(HV_FEATURES_ALL), [
    { base: 0x40000000, count: 0x70 },
    { base: 0x40000073, count: 0x18d },
  ]);
});
