import { assert, assertEquals, assertFalse } from "./assert.ts";
import {
  type CpuidEntry,
  cpuidHasInvariantTsc,
  hvCpuidLeaves,
  patchCpuid,
} from "../../../src/hyperv/cpuid.ts";
import {
  HV_FEATURES_ALL,
  HV_FEATURES_NONE,
  parseHvFeatures,
} from "../../../src/hyperv/features.ts";
import * as T from "../../../src/hyperv/tlfs.ts";

function find(leaves: CpuidEntry[], fn: number): CpuidEntry {
  const e = leaves.find((l) => l.function === fn);
  if (!e) throw new Error(`leaf 0x${fn.toString(16)} missing`);
  return e;
}

function ascii(...regs: number[]): string {
  const b = new Uint8Array(regs.length * 4);
  const dv = new DataView(b.buffer);
  regs.forEach((r, i) => dv.setUint32(i * 4, r, true));
  return new TextDecoder().decode(b);
}

Deno.test("vendor leaf: 'Microsoft Hv', max leaf 0x4000000A; interface 'Hv#1'", () => {
  const leaves = hvCpuidLeaves(HV_FEATURES_ALL, { vpCount: 4 });
  const v = find(leaves, 0x40000000);
  assertEquals(v.eax, 0x4000000a);
  assertEquals([v.ebx, v.ecx, v.edx], [0x7263694d, 0x666f736f, 0x76482074]); // TLFS values
  assertEquals(ascii(v.ebx, v.ecx, v.edx), "Microsoft Hv");
  const i = find(leaves, 0x40000001);
  assertEquals(i.eax, 0x31237648);
  assertEquals(ascii(i.eax), "Hv#1");
  const ver = find(leaves, 0x40000002);
  assertEquals([ver.eax, ver.ebx], [14393, 0x000a0000]);
  assertEquals(find(leaves, 0x40000005).eax, 4);
  for (let fn = 0x40000000; fn <= 0x4000000a; fn++) find(leaves, fn);
  assertFalse(leaves.some((l) => l.function >= 0x40000080), "no syndbg leaves without syndbg");
});

Deno.test("feature leaf bits follow the switch list", () => {
  const all = hvCpuidLeaves(HV_FEATURES_ALL, { vpCount: 2, invariantTsc: true });
  const f = find(all, 0x40000003);
  const eaxAll = T.HV_MSR_VP_RUNTIME_AVAILABLE | T.HV_MSR_TIME_REF_COUNT_AVAILABLE |
    T.HV_MSR_SYNIC_AVAILABLE | T.HV_MSR_SYNTIMER_AVAILABLE | T.HV_MSR_APIC_ACCESS_AVAILABLE |
    T.HV_MSR_HYPERCALL_AVAILABLE | T.HV_MSR_VP_INDEX_AVAILABLE | T.HV_MSR_RESET_AVAILABLE |
    T.HV_MSR_REFERENCE_TSC_AVAILABLE | T.HV_ACCESS_FREQUENCY_MSRS | T.HV_ACCESS_REENLIGHTENMENT |
    T.HV_ACCESS_TSC_INVARIANT;
  assertEquals(f.eax, eaxAll >>> 0);
  assertEquals(f.ebx, T.HV_POST_MESSAGES | T.HV_SIGNAL_EVENTS);
  assertEquals(
    f.edx,
    T.HV_HYPERCALL_XMM_INPUT_AVAILABLE | T.HV_FREQUENCY_MSRS_AVAILABLE |
      T.HV_GUEST_CRASH_MSR_AVAILABLE | T.HV_EXT_GVA_RANGES_FLUSH_AVAILABLE |
      T.HV_STIMER_DIRECT_MODE_AVAILABLE,
  );
  assertEquals(f.ebx & T.HV_ACCESS_PARTITION_ID, 0, "never HvGetPartitionId (Linux BUG())");

  const r = find(all, 0x40000004);
  assertEquals(
    r.eax,
    T.HV_DEPRECATING_AEOI_RECOMMENDED | T.HV_RELAXED_TIMING_RECOMMENDED |
      T.HV_REMOTE_TLB_FLUSH_RECOMMENDED | T.HV_EX_PROCESSOR_MASKS_RECOMMENDED |
      T.HV_CLUSTER_IPI_RECOMMENDED,
  );
  assertEquals(r.eax & T.HV_APIC_ACCESS_RECOMMENDED, 0, "APIC access never recommended by default");
  assertEquals(r.ebx, 0x1fff);

  const minimal = hvCpuidLeaves(parseHvFeatures("relaxed"), { vpCount: 1 });
  assertEquals(find(minimal, 0x40000003).eax, T.HV_MSR_HYPERCALL_AVAILABLE);
  assertEquals(find(minimal, 0x40000003).edx, 0);
  assertEquals(
    find(minimal, 0x40000004).eax,
    T.HV_DEPRECATING_AEOI_RECOMMENDED | T.HV_RELAXED_TIMING_RECOMMENDED,
  );
  assertEquals(find(minimal, 0x40000004).ebx, 0xffffffff, "spinlocks off: never notify");

  const time = hvCpuidLeaves(parseHvFeatures("time"), { vpCount: 1, invariantTsc: false });
  assertEquals(find(time, 0x40000003).eax & T.HV_ACCESS_TSC_INVARIANT, 0);

  const vapic = hvCpuidLeaves(parseHvFeatures("vapic"), {
    vpCount: 1,
    apicAccessRecommended: true,
  });
  assert(find(vapic, 0x40000004).eax & T.HV_APIC_ACCESS_RECOMMENDED);
});

Deno.test("syndbg adds the debugger leaves and privileges", () => {
  const leaves = hvCpuidLeaves(parseHvFeatures("all,syndbg"), { vpCount: 1 });
  const v = find(leaves, 0x40000080);
  assertEquals(ascii(v.ebx, v.ecx, v.edx), "Microsoft VS");
  assertEquals(ascii(find(leaves, 0x40000081).eax), "VS#1");
  assert(find(leaves, 0x40000082).eax & T.HV_SYNDBG_CAP_ALLOW_KERNEL_DEBUGGING);
  assert(find(leaves, 0x40000003).edx & T.HV_DEBUG_MSRS_AVAILABLE);
  assert(find(leaves, 0x40000003).ebx & T.HV_DEBUGGING);
});

Deno.test("no leaves with --hv none", () => {
  assertEquals(hvCpuidLeaves(HV_FEATURES_NONE, { vpCount: 1 }), []);
});

const KVM_BASE: CpuidEntry[] = [
  { function: 0, index: 0, flags: 0, eax: 0xd, ebx: 0, ecx: 0, edx: 0 },
  { function: 1, index: 0, flags: 0, eax: 0x806ec, ebx: 0, ecx: 0x7ffaf3bf, edx: 0xbfebfbff },
  {
    function: 0x40000000,
    index: 0,
    flags: 0,
    eax: 0x40000001,
    ebx: 0x4b4d564b,
    ecx: 0x564b4d56,
    edx: 0x4d,
  },
  { function: 0x40000001, index: 0, flags: 0, eax: 0x01007afb, ebx: 0, ecx: 0, edx: 0 },
  { function: 0x80000000, index: 0, flags: 0, eax: 0x80000008, ebx: 0, ecx: 0, edx: 0 },
  { function: 0x80000007, index: 0, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0x100 },
];

Deno.test("patchCpuid replaces KVM's leaves, keeps the hypervisor bit, grants TSC invariant", () => {
  const out = patchCpuid(KVM_BASE, HV_FEATURES_ALL, { vpCount: 2 });
  assert(find(out, 1).ecx & 0x80000000, "hypervisor bit");
  assertEquals(ascii(find(out, 0x40000000).ebx), "Micr");
  assertEquals(out.filter((e) => e.function === 0x40000000).length, 1);
  assertFalse(out.some((e) => e.function === 0x40000100), "KVM leaves dropped by default");
  assert(cpuidHasInvariantTsc(out));
  assert(find(out, 0x40000003).eax & T.HV_ACCESS_TSC_INVARIANT);
  assertEquals(find(out, 1).flags, 0, "flags kept");
  assertEquals(KVM_BASE[2]!.function, 0x40000000, "input untouched");
});

Deno.test("patchCpuid --hv-kvm-leaves moves KVM's leaves to 0x40000100", () => {
  const out = patchCpuid(KVM_BASE, HV_FEATURES_ALL, { vpCount: 2, kvmLeaves: true });
  const kvm = find(out, 0x40000100);
  assertEquals(kvm.eax, 0x40000101);
  assertEquals(ascii(kvm.ebx, kvm.ecx, kvm.edx).replace(/\0+$/, ""), "KVMKVMKVM");
  assertEquals(find(out, 0x40000101).eax, 0x01007afb);
  assertEquals(ascii(find(out, 0x40000000).ebx), "Micr");
});

Deno.test("patchCpuid without invariant TSC, forced, and with --hv none", () => {
  const noInv = KVM_BASE.map((e) => e.function === 0x80000007 ? { ...e, edx: 0 } : e);
  const a = patchCpuid(noInv, HV_FEATURES_ALL, { vpCount: 1 });
  assertEquals(find(a, 0x40000003).eax & T.HV_ACCESS_TSC_INVARIANT, 0);
  const b = patchCpuid(noInv, HV_FEATURES_ALL, { vpCount: 1, invariantTsc: true });
  assert(find(b, 0x80000007).edx & 0x100);
  assert(find(b, 0x40000003).eax & T.HV_ACCESS_TSC_INVARIANT);

  const none = patchCpuid(KVM_BASE, HV_FEATURES_NONE, { vpCount: 1 });
  assertEquals(ascii(find(none, 0x40000000).ebx), "KVMK", "KVM leaves stay with --hv none");
  assertEquals(none.length, KVM_BASE.length);
});
