/**
 * The `--hv` switch: which Hyper-V enlightenments the guest sees. `all` (the default), `none`,
 * or a comma list of names, with the dependencies between them checked the way QEMU checks its
 * `hv-*` properties (target/i386/kvm/kvm.c `kvm_hyperv_properties`).
 *
 * List items are applied left to right: `all` and `none` reset the set, `name` adds a feature,
 * `-name` removes one, `spinlocks=N` sets the spinlock retry count. So `all,-reset`,
 * `all,syndbg` and `vpindex,synic,time,stimer` are all valid. `all` leaves `syndbg` out unless
 * the caller says a debugger transport exists (`--syndbg`); see `parseHvFeatures`.
 * @module
 */
import { UsageError } from "../util/errors.ts";
import { HV_SPINLOCK_NEVER_NOTIFY } from "./tlfs.ts";

/** Names of the boolean enlightenments, as spelled on the command line. */
export const HV_FEATURE_NAMES = [
  "relaxed",
  "vpindex",
  "runtime",
  "time",
  "synic",
  "stimer",
  "stimer-direct",
  "frequencies",
  "reenlightenment",
  "tlbflush",
  "tlbflush-ext",
  "ipi",
  "xmm-input",
  "crash",
  "reset",
  "vapic",
  "syndbg",
] as const;

/** One boolean enlightenment. */
export type HvFeatureName = typeof HV_FEATURE_NAMES[number];

/**
 * The enlightenments a partition exposes. A plain object (structured-clonable), so the main
 * thread can hand it to every vCPU worker with the shared state.
 */
export interface HvFeatures {
  /** Boolean enlightenments; a name missing from the list is off. */
  readonly enabled: Readonly<Record<HvFeatureName, boolean>>;
  /**
   * Spinlock retry count reported in CPUID 0x40000004 EBX; `HV_SPINLOCK_NEVER_NOTIFY`
   * (0xFFFFFFFF) when the guest should never call HvNotifyLongSpinWait.
   */
  readonly spinlocks: number;
}

/** Smallest accepted `spinlocks=N` (QEMU's `hv-spinlocks` minimum). */
export const HV_SPINLOCKS_MIN = 0xfff;
/** Spinlock retry count used by `all` (the value Hyper-V and most QEMU setups use). */
export const HV_SPINLOCKS_DEFAULT = 0x1fff;

/** Feature `f` needs every feature listed. */
const DEPENDENCIES: Readonly<Partial<Record<HvFeatureName, readonly HvFeatureName[]>>> = {
  synic: ["vpindex"],
  stimer: ["synic", "time"],
  "stimer-direct": ["stimer"],
  tlbflush: ["vpindex"],
  "tlbflush-ext": ["tlbflush"],
  ipi: ["vpindex"],
  syndbg: ["synic", "relaxed"],
};

/**
 * Features `all` turns on by itself: everything except `syndbg`. Offering the synthetic debugger
 * tells Windows that a kernel debugger transport exists, which is only true when the VMM was
 * given a debugger to bridge to (`--syndbg HOST:PORT`, a UDP endpoint); QEMU's hv-passthrough
 * leaves it out for the same reason. `parseHvFeatures(spec, { syndbg: true })` makes `all`
 * include it.
 */
const ALL_EXCEPT: readonly HvFeatureName[] = ["syndbg"];

function emptySet(): Record<HvFeatureName, boolean> {
  return Object.fromEntries(HV_FEATURE_NAMES.map((n) => [n, false])) as Record<
    HvFeatureName,
    boolean
  >;
}

/** No enlightenment at all: the guest sees plain KVM. */
export const HV_FEATURES_NONE: HvFeatures = Object.freeze({
  enabled: Object.freeze(emptySet()),
  spinlocks: HV_SPINLOCK_NEVER_NOTIFY,
});

/** The default set (`--hv all`). */
export const HV_FEATURES_ALL: HvFeatures = Object.freeze({
  enabled: Object.freeze(
    Object.fromEntries(HV_FEATURE_NAMES.map((n) => [n, !ALL_EXCEPT.includes(n)])) as Record<
      HvFeatureName,
      boolean
    >,
  ),
  spinlocks: HV_SPINLOCKS_DEFAULT,
});

/** True when `features` exposes any Hyper-V interface (CPUID leaves, MSRs, hypercalls). */
export function hvEnabled(features: HvFeatures): boolean {
  return HV_FEATURE_NAMES.some((n) => features.enabled[n]);
}

/** True when feature `name` is on. */
export function hasFeature(features: HvFeatures, name: HvFeatureName): boolean {
  return features.enabled[name] === true;
}

function isFeatureName(s: string): s is HvFeatureName {
  return (HV_FEATURE_NAMES as readonly string[]).includes(s);
}

function parseSpinlocks(text: string): number {
  const n = /^0x[0-9a-f]+$/i.test(text)
    ? parseInt(text.slice(2), 16)
    : /^[0-9]+$/.test(text)
    ? parseInt(text, 10)
    : NaN;
  if (!Number.isSafeInteger(n) || n < HV_SPINLOCKS_MIN || n > HV_SPINLOCK_NEVER_NOTIFY) {
    throw new UsageError(
      `--hv spinlocks=${text}: expected a retry count from ${HV_SPINLOCKS_MIN} (0xfff) to ` +
        `4294967295 (0xffffffff, never notify), in decimal or 0x-hex`,
    );
  }
  return n;
}

/**
 * Parses the `--hv` value. Throws `UsageError` for an unknown name, a bad `spinlocks=N`, or a
 * feature whose dependencies are missing (the message names the flag and what it needs).
 * With `options.syndbg` (a debugger transport is configured) `all` includes `syndbg` too.
 */
export function parseHvFeatures(spec: string, options: { syndbg?: boolean } = {}): HvFeatures {
  const text = spec.trim();
  if (text === "") {
    throw new UsageError("--hv needs a value: all, none, or a comma list of enlightenments");
  }
  const enabled = emptySet();
  let spinlocks = HV_SPINLOCK_NEVER_NOTIFY;
  for (const raw of text.split(",")) {
    const item = raw.trim().toLowerCase();
    if (item === "") {
      throw new UsageError(`--hv ${spec}: empty item in the list`);
    }
    if (item === "all") {
      Object.assign(enabled, HV_FEATURES_ALL.enabled);
      if (options.syndbg) enabled.syndbg = true;
      spinlocks = HV_FEATURES_ALL.spinlocks;
    } else if (item === "none") {
      Object.assign(enabled, emptySet());
      spinlocks = HV_SPINLOCK_NEVER_NOTIFY;
    } else if (item.startsWith("spinlocks=")) {
      spinlocks = parseSpinlocks(item.slice("spinlocks=".length));
    } else if (item === "spinlocks" || item === "-spinlocks") {
      if (item === "spinlocks") {
        throw new UsageError(`--hv spinlocks needs a value, e.g. spinlocks=0x1fff`);
      }
      spinlocks = HV_SPINLOCK_NEVER_NOTIFY;
    } else {
      const off = item.startsWith("-");
      const name = off ? item.slice(1) : item;
      if (!isFeatureName(name)) {
        throw new UsageError(
          `--hv: unknown enlightenment '${name}'; valid: all, none, ` +
            `${HV_FEATURE_NAMES.join(", ")}, spinlocks=N`,
        );
      }
      enabled[name] = !off;
    }
  }
  const features: HvFeatures = { enabled, spinlocks };
  checkDependencies(features);
  return features;
}

/** Throws `UsageError` naming the first feature whose dependencies are not all enabled. */
export function checkDependencies(features: HvFeatures): void {
  for (const name of HV_FEATURE_NAMES) {
    if (!features.enabled[name]) continue;
    const needs = DEPENDENCIES[name] ?? [];
    const missing = needs.filter((d) => !features.enabled[d]);
    if (missing.length > 0) {
      throw new UsageError(
        `--hv ${name} needs ${missing.join(" and ")}: add ${
          missing.join(",")
        } to the --hv list or drop ${name}`,
      );
    }
  }
}

/** Canonical text of a feature set (`none`, `all`, or the list), for logs and tests. */
export function formatHvFeatures(features: HvFeatures): string {
  const on = HV_FEATURE_NAMES.filter((n) => features.enabled[n]);
  if (on.length === 0) return "none";
  const parts: string[] = [...on];
  if (features.spinlocks !== HV_SPINLOCK_NEVER_NOTIFY) {
    parts.push(`spinlocks=0x${features.spinlocks.toString(16)}`);
  }
  return parts.join(",");
}
