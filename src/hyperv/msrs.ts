/**
 * Synthetic MSR dispatch: `rdmsr`/`wrmsr` for every Hyper-V MSR, gated by the feature set the
 * way Hyper-V gates them by partition privilege (an MSR whose feature is off raises #GP), and
 * routed to the partition, per-VP, SynIC or synthetic-timer state.
 *
 * These run on the VP's own worker for KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR. They reach user
 * space only for MSRs the caller denies in KVM_X86_SET_MSR_FILTER (with KVM_CAP_X86_USER_SPACE_MSR
 * and KVM_MSR_EXIT_REASON_FILTER): `hvMsrFilterRanges` lists them.
 * @module
 */
import type { PowerControl } from "../machine/power.ts";
import { getLogger, rateLimited } from "../util/log.ts";
import { grantsTscInvariant } from "./cpuid.ts";
import { hasFeature, hvEnabled, type HvFeatureName, type HvFeatures } from "./features.ts";
import type { HvPartition } from "./partition.ts";
import type { SyntheticTimers } from "./stimer.ts";
import type { SyntheticDebugger } from "./syndbg.ts";
import type { SynIC } from "./synic.ts";
import * as T from "./tlfs.ts";
import type { HvVpRegisters } from "./vp.ts";

/** A range of MSR indices: `[base, base + count)`. */
export interface MsrRange {
  readonly base: number;
  readonly count: number;
}

/**
 * Every MSR index the Hyper-V interface defines (0x40000000-0x400001FF: the synthetic MSRs,
 * SynIC, timers, syndbg at 0x400000F1-0x400000FF, crash, reenlightenment and TSC invariant
 * control at 0x40000100-0x40000118). KVM's own paravirtual MSRs live elsewhere (0x4B564D00..),
 * so nothing else is in this window even with `--hv-kvm-leaves`.
 */
export const HV_MSR_RANGES: readonly MsrRange[] = [{ base: 0x40000000, count: 0x200 }];

/** The virtual APIC MSRs (EOI, ICR, TPR) that `vapic` leaves to KVM's in-kernel Hyper-V code. */
export const HV_VAPIC_KVM_MSRS: MsrRange = { base: T.HV_X64_MSR_EOI, count: 3 };

/**
 * MSR ranges the caller must deny in KVM_X86_SET_MSR_FILTER so that they exit to user space and
 * reach `HvMsrs`. Empty when no enlightenment is on (KVM then answers #GP itself, its Hyper-V
 * support being off without the "Hv#1" leaf). With `vapic` the EOI/ICR/TPR MSRs are left out:
 * KVM handles them in the kernel against its LAPIC (it enables its Hyper-V MSR handling because
 * CPUID 0x40000001 says "Hv#1"), which user space cannot do correctly.
 */
export function hvMsrFilterRanges(features: HvFeatures): MsrRange[] {
  if (!hvEnabled(features)) return [];
  const [all] = HV_MSR_RANGES as [MsrRange];
  if (!hasFeature(features, "vapic")) return [{ ...all }];
  const gapEnd = HV_VAPIC_KVM_MSRS.base + HV_VAPIC_KVM_MSRS.count;
  return [
    { base: all.base, count: HV_VAPIC_KVM_MSRS.base - all.base },
    { base: gapEnd, count: all.base + all.count - gapEnd },
  ];
}

/** What the MSR dispatcher routes to. */
export interface HvMsrsDeps {
  features: HvFeatures;
  /** The base CPUID reports an invariant TSC (gates TSC_INVARIANT_CONTROL with `time`). */
  invariantTsc: boolean;
  partition: HvPartition;
  vps: HvVpRegisters;
  synic: SynIC;
  stimers: SyntheticTimers;
  /** SYNDBG MSRs; absent: they raise #GP even with `syndbg`. */
  syndbg?: SyntheticDebugger;
  /** HV_X64_MSR_RESET target. */
  power: PowerControl;
}

type Group = "partition" | "vp" | "synic" | "stimer" | "syndbg" | "reset";

interface Route {
  group: Group;
  /** Feature that must be on; "any" = any enlightenment; "tsc-invariant" = HV_ACCESS_TSC_INVARIANT. */
  feature: HvFeatureName | "any" | "tsc-invariant";
}

function route(index: number): Route | undefined {
  switch (index) {
    case T.HV_X64_MSR_GUEST_OS_ID:
    case T.HV_X64_MSR_HYPERCALL:
      return { group: "partition", feature: "any" };
    case T.HV_X64_MSR_VP_INDEX:
      return { group: "vp", feature: "vpindex" };
    case T.HV_X64_MSR_RESET:
      return { group: "reset", feature: "reset" };
    case T.HV_X64_MSR_VP_RUNTIME:
      return { group: "vp", feature: "runtime" };
    case T.HV_X64_MSR_TIME_REF_COUNT:
    case T.HV_X64_MSR_REFERENCE_TSC:
      return { group: "partition", feature: "time" };
    case T.HV_X64_MSR_TSC_FREQUENCY:
    case T.HV_X64_MSR_APIC_FREQUENCY:
      return { group: "partition", feature: "frequencies" };
    case T.HV_X64_MSR_VP_ASSIST_PAGE:
      return { group: "vp", feature: "vapic" };
    case T.HV_X64_MSR_SCONTROL:
    case T.HV_X64_MSR_SVERSION:
    case T.HV_X64_MSR_SIEFP:
    case T.HV_X64_MSR_SIMP:
    case T.HV_X64_MSR_EOM:
      return { group: "synic", feature: "synic" };
    case T.HV_X64_MSR_SYNDBG_OPTIONS:
      return { group: "syndbg", feature: "syndbg" };
    case T.HV_X64_MSR_CRASH_CTL:
      return { group: "partition", feature: "crash" };
    case T.HV_X64_MSR_REENLIGHTENMENT_CONTROL:
    case T.HV_X64_MSR_TSC_EMULATION_CONTROL:
    case T.HV_X64_MSR_TSC_EMULATION_STATUS:
      return { group: "partition", feature: "reenlightenment" };
    case T.HV_X64_MSR_TSC_INVARIANT_CONTROL:
      return { group: "partition", feature: "tsc-invariant" };
  }
  if (index >= T.HV_X64_MSR_SINT0 && index <= T.HV_X64_MSR_SINT15) {
    return { group: "synic", feature: "synic" };
  }
  if (index >= T.HV_X64_MSR_STIMER0_CONFIG && index <= T.HV_X64_MSR_STIMER3_COUNT) {
    return { group: "stimer", feature: "stimer" };
  }
  if (index >= T.HV_X64_MSR_SYNDBG_CONTROL && index <= T.HV_X64_MSR_SYNDBG_PENDING_BUFFER) {
    return { group: "syndbg", feature: "syndbg" };
  }
  if (index >= T.HV_X64_MSR_CRASH_P0 && index <= T.HV_X64_MSR_CRASH_P4) {
    return { group: "partition", feature: "crash" };
  }
  return undefined; // EOI/ICR/TPR, guest idle, stats pages, unknown: #GP
}

const log = getLogger("hyperv", "msr");
const limit = rateLimited();

/** Synthetic MSR handler for all VPs. */
export class HvMsrs {
  readonly #d: HvMsrsDeps;

  constructor(deps: HvMsrsDeps) {
    this.#d = deps;
  }

  /** True when `index` lies in the Hyper-V MSR window (whether or not it is implemented). */
  static inRange(index: number): boolean {
    return HV_MSR_RANGES.some((r) => index >= r.base && index < r.base + r.count);
  }

  #available(r: Route): boolean {
    const f = this.#d.features;
    if (r.feature === "any") return hvEnabled(f);
    if (r.feature === "tsc-invariant") return grantsTscInvariant(f, this.#d.invariantTsc);
    return hasFeature(f, r.feature);
  }

  #validVp(vp: number): boolean {
    return Number.isInteger(vp) && vp >= 0 && vp < this.#d.vps.vpCount;
  }

  /** RDMSR of `index` on VP `vp`: the value, or `undefined` to inject #GP. Never throws. */
  rdmsr(vp: number, index: number): bigint | undefined {
    try {
      const r = route(index);
      if (!r || !this.#available(r) || !this.#validVp(vp)) return this.#fault("rdmsr", vp, index);
      let v: bigint | undefined;
      switch (r.group) {
        case "partition":
          v = this.#d.partition.readMsr(index);
          break;
        case "vp":
          v = this.#d.vps.readMsr(vp, index);
          break;
        case "synic":
          v = this.#d.synic.readMsr(vp, index);
          break;
        case "stimer":
          v = this.#d.stimers.readMsr(vp, index);
          break;
        case "syndbg":
          v = this.#d.syndbg?.readMsr(index);
          break;
        case "reset":
          v = 0n;
          break;
      }
      return v ?? this.#fault("rdmsr", vp, index);
    } catch (e) {
      return this.#error("rdmsr", vp, index, undefined, e);
    }
  }

  /** WRMSR of `value` to `index` on VP `vp`: `false` to inject #GP. Never throws. */
  wrmsr(vp: number, index: number, value: bigint): boolean {
    try {
      const r = route(index);
      if (!r || !this.#available(r) || !this.#validVp(vp)) {
        return this.#fault("wrmsr", vp, index, value) ?? false;
      }
      let ok: boolean;
      switch (r.group) {
        case "partition":
          ok = this.#d.partition.writeMsr(vp, index, value);
          break;
        case "vp":
          ok = this.#d.vps.writeMsr(vp, index, value);
          break;
        case "synic":
          ok = this.#d.synic.writeMsr(vp, index, value);
          break;
        case "stimer":
          ok = this.#d.stimers.writeMsr(vp, index, value);
          break;
        case "syndbg":
          ok = this.#d.syndbg?.writeMsr(index, value) ?? false;
          break;
        case "reset":
          ok = this.#writeReset(value);
          break;
      }
      return ok || (this.#fault("wrmsr", vp, index, value) ?? false);
    } catch (e) {
      return this.#error("wrmsr", vp, index, value, e) ?? false;
    }
  }

  #writeReset(value: bigint): boolean {
    value = BigInt.asUintN(64, value);
    if (value & ~1n) return false;
    if (value & 1n) {
      log.info("guest requested a reset through HV_X64_MSR_RESET");
      this.#d.power.reset();
    }
    return true;
  }

  #fault(op: string, vp: number, index: number, value?: bigint): undefined {
    limit((n) =>
      log.debug("{op} 0x{index} on VP {vp}{value}: #GP{dropped}", {
        op,
        index: index.toString(16),
        vp,
        value: value === undefined ? "" : ` value 0x${BigInt.asUintN(64, value).toString(16)}`,
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
    return undefined;
  }

  #error(op: string, vp: number, index: number, value: bigint | undefined, e: unknown): undefined {
    limit((n) =>
      log.error("{op} 0x{index} on VP {vp}{value} failed, injecting #GP: {error}{dropped}", {
        op,
        index: index.toString(16),
        vp,
        value: value === undefined ? "" : ` value 0x${BigInt.asUintN(64, value).toString(16)}`,
        error: e instanceof Error ? e.stack ?? e.message : String(e),
        dropped: n ? ` (${n} similar suppressed)` : "",
      })
    );
    return undefined;
  }
}
