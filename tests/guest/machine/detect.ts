/**
 * Choosing how guest tests run: `direct` (this host's /dev/kvm runs a stock 64-bit guest),
 * `nested` (a QEMU TCG test machine with nested SVM provides a real /dev/kvm), or `skip` with the
 * reason. `decideMachineMode` is a pure function of `MachineFacts`; `gatherMachineFacts` reads
 * them from the host.
 * @module
 */

/** What the decision depends on. */
export interface MachineFacts {
  /** `process arch`, e.g. `x86_64`. */
  readonly arch: string;
  /** `/dev/kvm` exists. */
  readonly kvmPresent: boolean;
  /** `/dev/kvm` opens read-write for this user. */
  readonly kvmAccessible: boolean;
  /** `/sys/module/kvm_pvm` exists: KVM is PVM, which cannot run a stock 64-bit guest. */
  readonly kvmPvm: boolean;
  /** The CPU advertises `vmx` or `svm` in /proc/cpuinfo. */
  readonly cpuVirtualization: boolean;
  /** Already inside the test machine (`HYPERDENO_IN_TEST_MACHINE=1`). */
  readonly insideTestMachine: boolean;
  /** Path of `qemu-system-x86_64`, if on PATH. */
  readonly qemuPath: string | undefined;
  /** `apt-get` is usable (present, and we are root). */
  readonly canApt: boolean;
  /** Value of `HYPERDENO_TEST_MACHINE`, if set. */
  readonly forced: string | undefined;
}

/** The decision. `install` lists Debian packages to install first. */
export type MachineMode =
  | { readonly kind: "direct"; readonly why: string }
  | { readonly kind: "nested"; readonly why: string; readonly install: readonly string[] }
  | { readonly kind: "skip"; readonly why: string };

/** The values `HYPERDENO_TEST_MACHINE` may take (empty or unset: decide from the host). */
export const FORCED_MODES = ["direct", "nested", "none"] as const;

/** Debian package that provides `qemu-system-x86_64`. */
export const QEMU_PACKAGE = "qemu-system-x86";

function directProblem(f: MachineFacts): string | undefined {
  if (!f.kvmPresent) return "/dev/kvm does not exist";
  if (!f.kvmAccessible) return "/dev/kvm is not read-writable by this user";
  if (f.insideTestMachine) return undefined;
  if (f.kvmPvm) return "/dev/kvm is PVM (/sys/module/kvm_pvm), which cannot run a stock guest";
  if (!f.cpuVirtualization) return "the CPU has no vmx/svm flag, so /dev/kvm is not hardware KVM";
  return undefined;
}

function nested(f: MachineFacts, why: string): MachineMode {
  if (f.qemuPath !== undefined) return { kind: "nested", why, install: [] };
  if (f.canApt) return { kind: "nested", why, install: [QEMU_PACKAGE] };
  return {
    kind: "skip",
    why: `${why}, and qemu-system-x86_64 is missing and cannot be installed ` +
      `(need root and apt-get: apt-get install ${QEMU_PACKAGE})`,
  };
}

/** Decides the machine mode from the facts. */
export function decideMachineMode(f: MachineFacts): MachineMode {
  if (f.arch !== "x86_64") {
    return { kind: "skip", why: `guest tests need an x86_64 host, this is ${f.arch}` };
  }
  const problem = directProblem(f);
  switch (f.forced) {
    case undefined:
    case "":
      break;
    case "direct":
      return problem === undefined
        ? { kind: "direct", why: "forced by HYPERDENO_TEST_MACHINE=direct" }
        : { kind: "skip", why: `HYPERDENO_TEST_MACHINE=direct but ${problem}` };
    case "nested":
      return nested(f, "forced by HYPERDENO_TEST_MACHINE=nested");
    case "none":
      return { kind: "skip", why: "HYPERDENO_TEST_MACHINE=none asks for no guest runs" };
    default:
      return {
        kind: "skip",
        why: `HYPERDENO_TEST_MACHINE=${f.forced} is not one of ${FORCED_MODES.join(", ")}`,
      };
  }
  if (problem === undefined) {
    return {
      kind: "direct",
      why: f.insideTestMachine ? "inside the test machine" : "/dev/kvm is hardware KVM",
    };
  }
  if (f.insideTestMachine) return { kind: "skip", why: `inside the test machine but ${problem}` };
  return nested(f, problem);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Finds an executable on PATH. */
export function which(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    if (dir === "") continue;
    const p = `${dir}/${name}`;
    try {
      const st = Deno.statSync(p);
      if (st.isFile && ((st.mode ?? 0o111) & 0o111) !== 0) return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

function kvmAccessible(): boolean {
  try {
    Deno.openSync("/dev/kvm", { read: true, write: true }).close();
    return true;
  } catch {
    return false;
  }
}

function cpuVirtualization(): boolean {
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    return /^flags\s*:.*\b(vmx|svm)\b/m.test(info);
  } catch {
    return false;
  }
}

/** Reads the facts from this host. */
export function gatherMachineFacts(): MachineFacts {
  const kvmPresent = exists("/dev/kvm");
  return {
    arch: Deno.build.arch,
    kvmPresent,
    kvmAccessible: kvmPresent && kvmAccessible(),
    kvmPvm: exists("/sys/module/kvm_pvm"),
    cpuVirtualization: cpuVirtualization(),
    insideTestMachine: Deno.env.get("HYPERDENO_IN_TEST_MACHINE") === "1",
    qemuPath: which("qemu-system-x86_64"),
    canApt: which("apt-get") !== undefined && Deno.uid() === 0,
    forced: Deno.env.get("HYPERDENO_TEST_MACHINE"),
  };
}
