/**
 * Choosing how guest tests run: `direct` (this host's /dev/kvm runs a stock 64-bit guest),
 * `nested` (a QEMU TCG test machine with nested SVM provides a real /dev/kvm), or `skip` with the
 * reason. `decideMachineMode` is a pure function of `MachineFacts`; `gatherMachineFacts` reads
 * them from the host. Whether /dev/kvm can run the guest is the VMM's own verdict
 * (`src/kvm/host_support.ts`), so a test never boots where `hyperdeno boot` would refuse.
 * @module
 */
import {
  judgeKvmHost,
  type KvmHostFacts,
  readKvmHostFacts,
} from "../../../src/kvm/host_support.ts";

/** What the decision depends on: the VMM's own facts about /dev/kvm plus the test run's. */
export interface MachineFacts extends KvmHostFacts {
  /** Already inside the test machine (`HYPERDENO_IN_TEST_MACHINE=1`): never nest again. */
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

/** Why this host cannot boot guests directly: the same verdict `boot` and `doctor` give. */
function directProblem(f: MachineFacts): string | undefined {
  const verdict = judgeKvmHost(f);
  return verdict.ok ? undefined : verdict.why;
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

/** Reads the facts from this host. */
export function gatherMachineFacts(): MachineFacts {
  return {
    ...readKvmHostFacts(),
    insideTestMachine: Deno.env.get("HYPERDENO_IN_TEST_MACHINE") === "1",
    qemuPath: which("qemu-system-x86_64"),
    canApt: which("apt-get") !== undefined && Deno.uid() === 0,
    forced: Deno.env.get("HYPERDENO_TEST_MACHINE"),
  };
}
