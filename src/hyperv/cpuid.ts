/**
 * The Hyper-V CPUID leaves (0x40000000-0x4000000A, plus 0x40000080-0x40000082 for the synthetic
 * debugger) built from the enabled features, and the patch applied to the CPUID list KVM
 * supports before it is set on every vCPU.
 *
 * What KVM itself does with these leaves matters: when 0x40000001 EAX reads "Hv#1", KVM turns
 * on its own in-kernel Hyper-V support for the vCPU (`kvm_hv_set_cpuid`). Everything hyperdeno
 * implements in user space is reached only because the caller denies the HV MSR ranges in
 * KVM_X86_SET_MSR_FILTER (see `msrs.ts`) and because the hypercall page uses an `out` instead of
 * `vmcall`; the one thing deliberately left to KVM is the APIC EOI/ICR/TPR MSRs of `vapic`.
 * @module
 */
import { hasFeature, hvEnabled, type HvFeatures } from "./features.ts";
import * as T from "./tlfs.ts";
import type { CpuidEntry } from "../kvm/kvm.ts";

/** One CPUID leaf: the KVM layer's `struct kvm_cpuid_entry2` shape, so leaves pass straight through. */
export type { CpuidEntry };

/** Hypervisor version reported in leaf 0x40000002. */
export interface HvVersion {
  build: number;
  major: number;
  minor: number;
}

/** Windows Server 2016 (10.0.14393), the version KVM and QEMU report by default. */
export const HV_DEFAULT_VERSION: HvVersion = { build: 14393, major: 10, minor: 0 };

/** Inputs of the Hyper-V leaves beyond the feature set. */
export interface HvCpuidOptions {
  /** Number of virtual processors (leaf 0x40000005 EAX). */
  vpCount: number;
  /**
   * The host TSC is invariant and the guest sees CPUID 0x80000007 EDX[8]: with `time`, leaf
   * 0x40000003 then grants HV_ACCESS_TSC_INVARIANT (Linux writes TSC_INVARIANT_CONTROL and
   * marks its TSC reliable). Default false.
   */
  invariantTsc?: boolean;
  /**
   * Set HV_APIC_ACCESS_RECOMMENDED (use the EOI/ICR/TPR MSRs instead of the APIC page).
   * Default false, and leave it so unless the caller has checked that 0x40000070-0x40000072 are
   * handled by KVM's in-kernel Hyper-V code: they are left out of the MSR filter when `vapic` is
   * on (`hvMsrFilterRanges`) and KVM routes them to the in-kernel LAPIC only when its Hyper-V
   * support is active for the vCPU (KVM_CAP_HYPERV and this "Hv#1" leaf). If they reached user
   * space instead there is no correct answer to give: an EOI cannot be performed on the
   * in-kernel LAPIC from user space (KVM_SET_LAPIC rewrites the whole state and skips the EOI
   * side effects such as the IOAPIC EOI broadcast), so a guest following the recommendation
   * would hang on its first interrupt. The MMIO/x2APIC path it uses otherwise is just as fast
   * with APICv.
   */
  apicAccessRecommended?: boolean;
  /** Version of leaf 0x40000002; default `HV_DEFAULT_VERSION`. */
  version?: HvVersion;
}

function signature(text: string): [number, number, number] {
  const b = new TextEncoder().encode(text.padEnd(12, "\0"));
  const dv = new DataView(b.buffer);
  return [dv.getUint32(0, true), dv.getUint32(4, true), dv.getUint32(8, true)];
}

function leaf(fn: number, eax = 0, ebx = 0, ecx = 0, edx = 0): CpuidEntry {
  return {
    function: fn,
    index: 0,
    flags: 0,
    eax: eax >>> 0,
    ebx: ebx >>> 0,
    ecx: ecx >>> 0,
    edx: edx >>> 0,
  };
}

/** True when the feature set grants HV_ACCESS_TSC_INVARIANT (and so TSC_INVARIANT_CONTROL). */
export function grantsTscInvariant(features: HvFeatures, invariantTsc: boolean): boolean {
  return invariantTsc && hasFeature(features, "time");
}

/** Partition privileges (0x40000003 EAX, EBX) for a feature set. */
export function hvPrivileges(
  features: HvFeatures,
  invariantTsc = false,
): { eax: number; ebx: number } {
  const on = (n: Parameters<typeof hasFeature>[1]) => hasFeature(features, n);
  let eax = T.HV_MSR_HYPERCALL_AVAILABLE; // GUEST_OS_ID + HYPERCALL, always with any feature
  if (on("runtime")) eax |= T.HV_MSR_VP_RUNTIME_AVAILABLE;
  if (on("time")) eax |= T.HV_MSR_TIME_REF_COUNT_AVAILABLE | T.HV_MSR_REFERENCE_TSC_AVAILABLE;
  if (on("synic")) eax |= T.HV_MSR_SYNIC_AVAILABLE;
  if (on("stimer")) eax |= T.HV_MSR_SYNTIMER_AVAILABLE;
  if (on("vapic")) eax |= T.HV_MSR_APIC_ACCESS_AVAILABLE;
  if (on("vpindex")) eax |= T.HV_MSR_VP_INDEX_AVAILABLE;
  if (on("reset")) eax |= T.HV_MSR_RESET_AVAILABLE;
  if (on("frequencies")) eax |= T.HV_ACCESS_FREQUENCY_MSRS;
  if (on("reenlightenment")) eax |= T.HV_ACCESS_REENLIGHTENMENT;
  if (grantsTscInvariant(features, invariantTsc)) eax |= T.HV_ACCESS_TSC_INVARIANT;
  // Never HV_ACCESS_PARTITION_ID: Linux 6.1 then calls HvGetPartitionId with a per-CPU output
  // page that only the root partition allocates, and BUG()s when it fails.
  let ebx = 0;
  if (on("synic")) ebx |= T.HV_POST_MESSAGES | T.HV_SIGNAL_EVENTS;
  if (on("syndbg")) ebx |= T.HV_DEBUGGING;
  return { eax: eax >>> 0, ebx: ebx >>> 0 };
}

/** Feature identification (0x40000003 EDX) for a feature set. */
export function hvFeatureBits(features: HvFeatures): number {
  const on = (n: Parameters<typeof hasFeature>[1]) => hasFeature(features, n);
  let edx = 0;
  if (on("xmm-input")) edx |= T.HV_HYPERCALL_XMM_INPUT_AVAILABLE;
  if (on("frequencies")) edx |= T.HV_FREQUENCY_MSRS_AVAILABLE;
  if (on("crash")) edx |= T.HV_GUEST_CRASH_MSR_AVAILABLE;
  if (on("syndbg")) edx |= T.HV_GUEST_DEBUGGING_AVAILABLE | T.HV_DEBUG_MSRS_AVAILABLE;
  if (on("tlbflush-ext")) edx |= T.HV_EXT_GVA_RANGES_FLUSH_AVAILABLE;
  if (on("stimer-direct")) edx |= T.HV_STIMER_DIRECT_MODE_AVAILABLE;
  return edx >>> 0;
}

/** Implementation recommendations (0x40000004 EAX) for a feature set. */
export function hvRecommendations(features: HvFeatures, apicAccessRecommended = false): number {
  const on = (n: Parameters<typeof hasFeature>[1]) => hasFeature(features, n);
  // AutoEOI cannot be honoured: the LAPIC is KVM's in-kernel one and user space has no way to
  // EOI on the guest's behalf at delivery time, so a SINT with AutoEOI set would stay in the
  // ISR forever and block every interrupt of equal or lower priority. Telling the guest to
  // deprecate AutoEOI makes Linux (hv_synic_enable_regs) and Windows program SINTs without it.
  let eax = T.HV_DEPRECATING_AEOI_RECOMMENDED;
  if (on("relaxed")) eax |= T.HV_RELAXED_TIMING_RECOMMENDED;
  if (on("tlbflush")) {
    eax |= T.HV_REMOTE_TLB_FLUSH_RECOMMENDED | T.HV_EX_PROCESSOR_MASKS_RECOMMENDED;
  }
  if (on("ipi")) eax |= T.HV_CLUSTER_IPI_RECOMMENDED | T.HV_EX_PROCESSOR_MASKS_RECOMMENDED;
  // See HvCpuidOptions.apicAccessRecommended for why this is opt-in even with `vapic`.
  if (on("vapic") && apicAccessRecommended) eax |= T.HV_APIC_ACCESS_RECOMMENDED;
  return eax >>> 0;
}

/**
 * The Hyper-V leaves for `features`, or an empty list when no enlightenment is on (the guest
 * then sees plain KVM).
 */
export function hvCpuidLeaves(features: HvFeatures, options: HvCpuidOptions): CpuidEntry[] {
  if (!hvEnabled(features)) return [];
  const version = options.version ?? HV_DEFAULT_VERSION;
  const priv = hvPrivileges(features, options.invariantTsc ?? false);
  const [v0, v1, v2] = signature(T.HV_VENDOR_ID);
  const leaves: CpuidEntry[] = [
    leaf(T.HV_CPUID_VENDOR_AND_MAX_FUNCTIONS, T.HV_CPUID_MAX_LEAF, v0, v1, v2),
    leaf(T.HV_CPUID_INTERFACE, T.HV_INTERFACE_SIGNATURE),
    leaf(T.HV_CPUID_VERSION, version.build, ((version.major & 0xffff) << 16) | version.minor),
    leaf(T.HV_CPUID_FEATURES, priv.eax, priv.ebx, 0, hvFeatureBits(features)),
    leaf(
      T.HV_CPUID_ENLIGHTENMENT_INFO,
      hvRecommendations(features, options.apicAccessRecommended ?? false),
      features.spinlocks,
    ),
    // Max VPs; max LPs and interrupt-remapping vectors not exposed (0).
    leaf(T.HV_CPUID_IMPLEMENT_LIMITS, options.vpCount),
    // KVM always runs guests with MSR bitmaps and EPT/NPT; never "APIC overlay assist".
    leaf(T.HV_CPUID_HARDWARE_FEATURES, T.HV_HW_MSR_BITMAPS_IN_USE | T.HV_HW_SLAT_IN_USE),
    // 0x40000007 CPU management (root partition only), 0x40000008 reserved, 0x40000009 and
    // 0x4000000A nested virtualization (no enlightened VMCS): all zero.
    leaf(T.HV_CPUID_CPU_MANAGEMENT_FEATURES),
    leaf(0x40000008),
    leaf(0x40000009),
    leaf(T.HV_CPUID_NESTED_FEATURES),
  ];
  if (hasFeature(features, "syndbg")) {
    const [s0, s1, s2] = signature(T.HV_SYNDBG_VENDOR_ID);
    leaves.push(
      leaf(
        T.HV_CPUID_SYNDBG_VENDOR_AND_MAX_FUNCTIONS,
        T.HV_CPUID_SYNDBG_PLATFORM_CAPABILITIES,
        s0,
        s1,
        s2,
      ),
      leaf(T.HV_CPUID_SYNDBG_INTERFACE, T.HV_SYNDBG_INTERFACE_SIGNATURE),
      leaf(T.HV_CPUID_SYNDBG_PLATFORM_CAPABILITIES, T.HV_SYNDBG_CAP_ALLOW_KERNEL_DEBUGGING),
    );
  }
  return leaves;
}

/** CPUID.1:ECX[31], the "hypervisor present" bit. */
export const CPUID_1_ECX_HYPERVISOR = 0x80000000;
/** CPUID.80000007H:EDX[8], invariant TSC. */
export const CPUID_80000007_EDX_INVTSC = 1 << 8;
/** Where KVM's own signature leaves go when kept alongside Hyper-V's (`--hv-kvm-leaves`). */
export const KVM_LEAVES_RELOCATED_BASE = 0x40000100;

const HV_RANGE_START = 0x40000000;
const HV_RANGE_END = 0x400000ff;

/** True when the base CPUID list reports an invariant TSC (0x80000007 EDX[8]). */
export function cpuidHasInvariantTsc(entries: readonly CpuidEntry[]): boolean {
  const e = entries.find((x) => x.function === 0x80000007);
  return e !== undefined && (e.edx & CPUID_80000007_EDX_INVTSC) !== 0;
}

/** How `patchCpuid` treats the list beyond the Hyper-V leaves. */
export interface PatchCpuidOptions extends Omit<HvCpuidOptions, "invariantTsc"> {
  /**
   * Keep KVM's own signature leaves, moved from 0x40000000 to 0x40000100 (`--hv-kvm-leaves`).
   * Note that Linux then picks KVM as its platform (its hypervisor detection prefers the
   * highest CPUID base), so a Linux guest uses kvmclock and KVM PV features rather than the
   * Hyper-V ones; Windows only looks at 0x40000000.
   */
  kvmLeaves?: boolean;
  /**
   * Force CPUID 0x80000007 EDX[8] on (true) or off (false); by default the host's answer in
   * `entries` is kept (KVM reports it only for a constant, non-stop host TSC).
   */
  invariantTsc?: boolean;
}

/**
 * Patches the CPUID list from KVM_GET_SUPPORTED_CPUID for a Hyper-V guest: KVM's signature
 * leaves (0x40000000..) are removed, or moved to 0x40000100 with `kvmLeaves`; the hypervisor bit
 * (CPUID.1:ECX[31]) is kept set; the invariant TSC bit is forced when asked; the Hyper-V leaves
 * are appended, granting HV_ACCESS_TSC_INVARIANT when the final list has an invariant TSC. With
 * no enlightenment on, KVM's leaves stay where they are. Returns a new list; entries are copied.
 */
export function patchCpuid(
  entries: readonly CpuidEntry[],
  features: HvFeatures,
  options: PatchCpuidOptions,
): CpuidEntry[] {
  const out: CpuidEntry[] = entries.map((e) => ({ ...e }));
  for (const e of out) {
    if (e.function === 1) e.ecx = (e.ecx | CPUID_1_ECX_HYPERVISOR) >>> 0;
    if (e.function === 0x80000007 && options.invariantTsc !== undefined) {
      e.edx = options.invariantTsc
        ? (e.edx | CPUID_80000007_EDX_INVTSC) >>> 0
        : (e.edx & ~CPUID_80000007_EDX_INVTSC) >>> 0;
    }
  }
  if (!hvEnabled(features)) return out;

  const kept: CpuidEntry[] = [];
  const kvm: CpuidEntry[] = [];
  for (const e of out) {
    (e.function >= HV_RANGE_START && e.function <= HV_RANGE_END ? kvm : kept).push(e);
  }
  if (options.kvmLeaves) {
    const delta = KVM_LEAVES_RELOCATED_BASE - HV_RANGE_START;
    for (const e of kvm) {
      if (e.function === HV_RANGE_START && e.eax >= HV_RANGE_START && e.eax <= HV_RANGE_END) {
        e.eax = e.eax + delta; // max leaf of KVM's range moves with it
      }
      e.function += delta;
      kept.push(e);
    }
  }
  kept.push(
    ...hvCpuidLeaves(features, {
      ...options,
      invariantTsc: cpuidHasInvariantTsc(out),
    }),
  );
  return kept;
}
