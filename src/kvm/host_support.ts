/**
 * Can this host's `/dev/kvm` run a stock 64-bit guest? One answer for `boot` (which refuses at
 * once when it cannot), `doctor` (its verdict) and the tests (direct or nested test machine).
 *
 * `judgeKvmHost` is a pure function of `KvmHostFacts`; `readKvmHostFacts` reads them with a few
 * `stat`s, one `open` and one read of `/proc/cpuinfo` (milliseconds, no ioctl, no guest), so a
 * host that cannot run the guest is told so before anything is built. Why these facts: PVM-based
 * KVM (the `kvm_pvm` module) opens and answers every ioctl like hardware KVM but emulates guest
 * code, and a stock kernel's 64-bit entry then hangs silently; hardware KVM shows as a `vmx`/`svm`
 * CPU flag or a loaded `kvm_intel`/`kvm_amd` vendor module.
 * @module
 */

/** What the verdict depends on. */
export interface KvmHostFacts {
  /** `Deno.build.arch`, e.g. `x86_64`. */
  readonly arch: string;
  /** `/dev/kvm` exists. */
  readonly kvmPresent: boolean;
  /** `/dev/kvm` opens read-write for this user. */
  readonly kvmAccessible: boolean;
  /** `/sys/module/kvm_pvm` exists: KVM is PVM, which cannot run a stock 64-bit guest. */
  readonly kvmPvm: boolean;
  /** The CPU advertises `vmx` or `svm` in /proc/cpuinfo, or `kvm_intel`/`kvm_amd` is loaded. */
  readonly hardwareVirtualization: boolean;
}

/** Why `/dev/kvm` cannot run the guest. */
export type KvmHostProblem = "arch" | "absent" | "permission" | "pvm" | "not-hardware";

/** The verdict: `ok`, or the problem with one sentence saying why and one saying what to do. */
export type KvmHostVerdict =
  | { readonly ok: true; readonly why: string }
  | {
    readonly ok: false;
    readonly problem: KvmHostProblem;
    readonly why: string;
    readonly advice: string;
  };

/** Where the guest can run instead, for every refusal. */
const ELSEWHERE = "use a host with hardware KVM (Intel VT-x or AMD-V), or run guests in the " +
  "project's nested test machine (deno task demo, deno task test, or deno run -A " +
  "tests/guest/machine/run_in_machine.ts -- deno run -A cli.ts boot ...)";

/** Module directory whose presence means PVM-based KVM. */
export const PVM_MODULE_PATH = "/sys/module/kvm_pvm";

/** Judges the facts. */
export function judgeKvmHost(f: KvmHostFacts): KvmHostVerdict {
  if (f.arch !== "x86_64") {
    return {
      ok: false,
      problem: "arch",
      why: `hyperdeno runs x86-64 guests on an x86-64 host; this host is ${f.arch}`,
      advice: "use an x86-64 host with KVM",
    };
  }
  if (!f.kvmPresent) {
    return {
      ok: false,
      problem: "absent",
      why: "/dev/kvm does not exist: this host has no KVM",
      advice: `load kvm-intel or kvm-amd (virtualization enabled in the firmware), or ${ELSEWHERE}`,
    };
  }
  if (!f.kvmAccessible) {
    return {
      ok: false,
      problem: "permission",
      why: "/dev/kvm is not read-writable by this user",
      advice: "run as root, or add the user to the 'kvm' group (usermod -aG kvm USER, then log " +
        "in again)",
    };
  }
  if (f.kvmPvm) {
    return {
      ok: false,
      problem: "pvm",
      why: `/dev/kvm is PVM-based KVM (${PVM_MODULE_PATH}), which cannot run a stock 64-bit ` +
        "guest (the guest would hang)",
      advice: ELSEWHERE,
    };
  }
  if (!f.hardwareVirtualization) {
    return {
      ok: false,
      problem: "not-hardware",
      why: "/dev/kvm is not hardware KVM (no vmx/svm CPU flag, no kvm_intel/kvm_amd module)",
      advice: ELSEWHERE,
    };
  }
  return { ok: true, why: "/dev/kvm is hardware KVM" };
}

/** The one line `boot` prints when it refuses (without the `hyperdeno: ` prefix). */
export function kvmRefusal(v: KvmHostVerdict & { ok: false }): string {
  return `cannot boot here: ${v.why}; ${v.advice}`;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function openableReadWrite(path: string): boolean {
  try {
    Deno.openSync(path, { read: true, write: true }).close();
    return true;
  } catch {
    return false;
  }
}

function cpuFlagsHaveVirtualization(): boolean {
  try {
    return /^flags\s*:.*\b(vmx|svm)\b/m.test(Deno.readTextFileSync("/proc/cpuinfo"));
  } catch {
    return false;
  }
}

/** Reads the facts from this host (fast: no ioctl, no guest). */
export function readKvmHostFacts(): KvmHostFacts {
  const kvmPresent = exists("/dev/kvm");
  return {
    arch: Deno.build.arch,
    kvmPresent,
    kvmAccessible: kvmPresent && openableReadWrite("/dev/kvm"),
    kvmPvm: exists(PVM_MODULE_PATH),
    hardwareVirtualization: exists("/sys/module/kvm_intel") || exists("/sys/module/kvm_amd") ||
      cpuFlagsHaveVirtualization(),
  };
}
