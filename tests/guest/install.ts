/**
 * What `deno task test` and `deno task demo` install on a fresh Debian/Ubuntu host, and how: one
 * installer for both, which says what it installs and why, runs `apt-get` (as root) with its own
 * progress on the terminal, and says how long it took. `neededPackages` is a pure function of
 * `InstallFacts` (what is already on the host); `prepareGuestHost` does the whole step: the guest
 * kit's packages, the VMM's Deno modules (`cacheVmmModules`), then the machine mode
 * (`decideMachineMode`) and QEMU when the nested test machine is needed.
 *
 * `HYPERDENO_TEST_NO_INSTALL=1` never runs apt-get (it says what is missing instead). Inside the
 * test machine nothing is installed: it runs on the host's root, already prepared.
 * @module
 */
import { findHostKernel, findStaticBusybox } from "./kit/host.ts";
import { missingGrubIsoPackages } from "./kit/grub_iso.ts";
import { sha256Hex } from "./kit/initramfs.ts";
import {
  decideMachineMode,
  gatherMachineFacts,
  type MachineMode,
  which,
} from "./machine/detect.ts";

/** Who is asking: the demo needs a kernel and busybox; the test suite needs more. */
export type InstallPurpose = "demo" | "test";

/** A Debian package to install and the reason, as the user is told. */
export interface PackageNeed {
  readonly name: string;
  readonly why: string;
}

/** What is already on the host. */
export interface InstallFacts {
  /** A `/boot/vmlinuz-*` with its `/lib/modules` (`findHostKernel`). */
  readonly kernel: boolean;
  /** A statically linked busybox (`findStaticBusybox`). */
  readonly staticBusybox: boolean;
  /** `qemu-img` on PATH. */
  readonly qemuImg: boolean;
  /** `/usr/sbin/hv_kvp_daemon`. */
  readonly kvpDaemon: boolean;
  /** A C compiler (`$CC` or `cc`) and the static C library, for the guest tools. */
  readonly staticCompiler: boolean;
  /** `iasl` on PATH (the ACPI unit tests disassemble and recompile our tables). */
  readonly iasl: boolean;
  /** `objdump` on PATH (a unit test disassembles the hypercall page). */
  readonly objdump: boolean;
  /** Debian's OVMF (`/usr/share/OVMF/OVMF_CODE_4M.fd`), for the firmware guest tests. */
  readonly ovmf: boolean;
  /** Packages `buildGrubIso` needs that are missing (`missingGrubIsoPackages`). */
  readonly grubIsoMissing: readonly string[];
}

/** Debian packages the guest kit needs, each with the reason given to the user. */
export const KIT_PACKAGES = {
  kernel: {
    name: "linux-image-amd64",
    why: "the guest kernel: Debian's own kernel and its Hyper-V modules boot as the guest",
  },
  busybox: {
    name: "busybox-static",
    why: "the guest's init and shell (a static busybox goes in the initramfs)",
  },
  qemuImg: {
    name: "qemu-utils",
    why: "qemu-img makes and checks the storage tests' qcow2 images",
  },
  kvpDaemon: {
    name: "hyperv-daemons",
    why: "the KVP test runs Debian's hv_kvp_daemon inside the guest",
  },
  compiler: {
    name: "gcc",
    why: "builds the static guest tools (tests/guest/tools: the test machine's " +
      "kvm_pin_apic_keys, which keeps its CPUs from locking up, and the storage tests' odirect)",
  },
  staticLibc: {
    name: "libc6-dev",
    why: "the static C library those tools link with",
  },
  iasl: {
    name: "acpica-tools",
    why: "iasl disassembles and recompiles the ACPI tables the unit tests build",
  },
  objdump: {
    name: "binutils",
    why: "objdump disassembles the hypercall page in a unit test",
  },
  ovmf: {
    name: "ovmf",
    why: "Debian's UEFI firmware, which the firmware guest tests boot",
  },
} as const satisfies Record<string, PackageNeed>;

/** The packages `purpose` needs that `facts` say are missing, in install order. */
export function neededPackages(purpose: InstallPurpose, facts: InstallFacts): PackageNeed[] {
  const needs: PackageNeed[] = [];
  if (!facts.kernel) needs.push(KIT_PACKAGES.kernel);
  if (!facts.staticBusybox) needs.push(KIT_PACKAGES.busybox);
  if (purpose === "test") {
    if (!facts.qemuImg) needs.push(KIT_PACKAGES.qemuImg);
    if (!facts.kvpDaemon) needs.push(KIT_PACKAGES.kvpDaemon);
    if (!facts.staticCompiler) needs.push(...compilerPackages());
    if (!facts.iasl) needs.push(KIT_PACKAGES.iasl);
    if (!facts.objdump) needs.push(KIT_PACKAGES.objdump);
    if (!facts.ovmf) needs.push(KIT_PACKAGES.ovmf);
    for (const name of facts.grubIsoMissing) {
      needs.push({ name, why: "grub-mkrescue builds the bootable ISOs of the firmware tests" });
    }
  }
  return needs;
}

function compilerPackages(): PackageNeed[] {
  return [KIT_PACKAGES.compiler, KIT_PACKAGES.staticLibc];
}

/** The packages the nested test machine needs in `mode` (QEMU, and a compiler for its
 * kvm_pin_apic_keys), each with why; none outside nested mode. */
export function machinePackages(mode: MachineMode, facts: InstallFacts): PackageNeed[] {
  if (mode.kind !== "nested") return [];
  const needs: PackageNeed[] = mode.install.map((name) => ({
    name,
    why: `the test machine (QEMU TCG with nested SVM), because ${mode.why}`,
  }));
  if (!facts.staticCompiler) needs.push(...compilerPackages());
  return needs;
}

/** Reads `InstallFacts` from this host. */
export async function gatherInstallFacts(): Promise<InstallFacts> {
  let kernel = true;
  try {
    findHostKernel();
  } catch {
    kernel = false;
  }
  const staticBusybox = await findStaticBusybox().then(() => true, () => false);
  const cc = Deno.env.get("CC");
  const staticCompiler = (cc !== undefined && cc !== "") ||
    (which("cc") !== undefined && exists("/usr/lib/x86_64-linux-gnu/libc.a"));
  return {
    kernel,
    staticBusybox,
    qemuImg: which("qemu-img") !== undefined,
    kvpDaemon: exists("/usr/sbin/hv_kvp_daemon"),
    staticCompiler,
    iasl: which("iasl") !== undefined,
    objdump: which("objdump") !== undefined,
    ovmf: exists("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    grubIsoMissing: missingGrubIsoPackages(),
  };
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Where the installer's messages go (default: `==> ` lines on stdout). */
export type Say = (line: string) => void;

const defaultSay: Say = (line) => console.log(`\n==> ${line}`);

let aptUpdated = false;

/** What an install step did. */
export interface InstallResult {
  /** Everything asked for is installed (or nothing was needed). */
  readonly ok: boolean;
  /** Wall time spent in apt-get, seconds (0 when nothing was needed). */
  readonly seconds: number;
  /** Why not, when `ok` is false. */
  readonly problem?: string;
}

/**
 * Installs `needs` with apt-get (update once per process, then install), saying what and why
 * first and how long it took after; apt-get's own progress goes to the terminal.
 */
export async function installPackages(
  needs: readonly PackageNeed[],
  say: Say = defaultSay,
): Promise<InstallResult> {
  if (needs.length === 0) return { ok: true, seconds: 0 };
  const names = needs.map((n) => n.name).join(" ");
  const manual = `apt-get install ${names}`;
  if (Deno.env.get("HYPERDENO_TEST_NO_INSTALL") === "1") {
    return {
      ok: false,
      seconds: 0,
      problem: `${names} missing; not installing (HYPERDENO_TEST_NO_INSTALL): ${manual}`,
    };
  }
  if (Deno.env.get("HYPERDENO_IN_TEST_MACHINE") === "1") {
    return {
      ok: false,
      seconds: 0,
      problem: `${names} missing in the test machine (install them on the host)`,
    };
  }
  if (Deno.uid() !== 0 || which("apt-get") === undefined) {
    return { ok: false, seconds: 0, problem: `${names} missing; install them as root: ${manual}` };
  }
  say(
    `installing ${needs.length} Debian package(s) with apt-get:\n` +
      needs.map((n) => `    ${n.name}: ${n.why}`).join("\n"),
  );
  const started = performance.now();
  const seconds = () => (performance.now() - started) / 1000;
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  const steps = aptUpdated ? 1 : 2;
  if (!aptUpdated) {
    say(`[1/${steps}] apt-get update (package lists)`);
    const up = await new Deno.Command("apt-get", { args: ["update"], env, stdin: "null" })
      .spawn().status;
    if (!up.success) {
      return { ok: false, seconds: seconds(), problem: `apt-get update failed (exit ${up.code})` };
    }
    aptUpdated = true;
  }
  say(`[${steps}/${steps}] apt-get install ${names} (downloads and unpacks; can take minutes)`);
  const st = await new Deno.Command("apt-get", {
    args: ["install", "-y", "--no-install-recommends", ...needs.map((n) => n.name)],
    env,
    stdin: "null",
  }).spawn().status;
  if (!st.success) {
    return { ok: false, seconds: seconds(), problem: `${manual} failed (exit ${st.code})` };
  }
  say(`installed ${names} in ${seconds().toFixed(0)} s`);
  return { ok: true, seconds: seconds() };
}

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/**
 * Fills Deno's cache with the VMM's whole module graph (`cli.ts` and its vCPU worker), npm
 * metadata included, once per lockfile, Deno and cache directory. Without this a first
 * `deno task demo` caches only the npm package's tarball, and later `cli.ts` runs (the test
 * machine's, which has no network, or the user's next one) try to fetch its registry metadata.
 * `deno cache` itself always asks the registry, so a stamp under `.cache/` says it was done.
 */
export async function cacheVmmModules(): Promise<InstallResult> {
  const started = performance.now();
  const denoDir = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME") ?? ""}/.cache/deno`;
  const key = await sha256Hex(
    new TextEncoder().encode(
      [await Deno.readTextFile(`${REPO}/deno.lock`), Deno.version.deno, denoDir].join("\0"),
    ),
  );
  const stamp = `${REPO}/.cache/deno-modules-${key.slice(0, 16)}`;
  if (await Deno.stat(stamp).then(() => true, () => false)) return { ok: true, seconds: 0 };
  const st = await new Deno.Command(Deno.execPath(), {
    args: ["cache", "cli.ts", "src/vmm/vcpu_thread.ts"],
    cwd: REPO,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  const seconds = (performance.now() - started) / 1000;
  if (!st.success) {
    return {
      ok: false,
      seconds,
      problem: `deno cache cli.ts failed (exit ${st.code}): the VMM's npm dependency ` +
        "(@logtape/logtape) could not be fetched from the npm registry",
    };
  }
  await Deno.mkdir(`${REPO}/.cache`, { recursive: true });
  await Deno.writeTextFile(
    stamp,
    `deno cache cli.ts src/vmm/vcpu_thread.ts, DENO_DIR ${denoDir}\n`,
  );
  return { ok: true, seconds };
}

/** The host, ready (or not) to run guests. */
export interface PreparedHost {
  /** How guests run; `skip` says why they cannot. */
  readonly mode: MachineMode;
  /** Seconds spent installing. */
  readonly installSeconds: number;
  /** Why the guest kit is not usable (packages missing and not installed), if it is not. */
  readonly problem?: string;
}

/**
 * Installs what `purpose` needs on this host: the guest kit's packages, then QEMU when guests
 * must run in the nested test machine. Says what it does through `say`.
 */
export async function prepareGuestHost(
  purpose: InstallPurpose,
  say: Say = defaultSay,
): Promise<PreparedHost> {
  let installSeconds = 0;
  const kit = await installPackages(neededPackages(purpose, await gatherInstallFacts()), say);
  installSeconds += kit.seconds;
  let mode = decideMachineMode(gatherMachineFacts());
  if (!kit.ok) return { mode, installSeconds, problem: kit.problem ?? "packages missing" };
  if (Deno.env.get("HYPERDENO_IN_TEST_MACHINE") !== "1") {
    const modules = await cacheVmmModules();
    installSeconds += modules.seconds;
    if (!modules.ok) return { mode, installSeconds, problem: modules.problem ?? "deno cache" };
  }
  const machineNeeds = machinePackages(mode, await gatherInstallFacts());
  if (machineNeeds.length > 0) {
    const qemu = await installPackages(machineNeeds, say);
    installSeconds += qemu.seconds;
    mode = decideMachineMode(gatherMachineFacts());
    if (!qemu.ok) {
      return {
        mode: { kind: "skip", why: `${mode.why}; ${qemu.problem ?? "QEMU not installed"}` },
        installSeconds,
      };
    }
  }
  return { mode, installSeconds };
}
