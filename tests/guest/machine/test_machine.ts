/**
 * The nested test machine (L1): QEMU with TCG and an emulated AMD CPU with SVM+NPT boots the
 * host's Debian kernel with a kit initramfs that loads virtio/9p/overlay/kvm-amd, mounts the
 * host `/` read-only over virtio-9p under a tmpfs overlay, chroots into it and runs one command
 * in the repo with a real `/dev/kvm`. Output streams back over the serial console between
 * machine markers; extra 9p shares (e.g. a writable results directory) carry files back.
 *
 * The machine runs on its own QEMU build (`qemu_build.ts`: Debian's source plus a fix for nested
 * CR8 writes), never silently on the stock one, and checks at start that its QEMU survives a
 * nested guest writing CR8 with an interrupt pending (`tests/guest/tools/cr8_vintr_check.c`).
 * @module
 */
import { findHostKernel } from "../kit/host.ts";
import { initramfsFile } from "../kit/initramfs.ts";
import { guestTool } from "../kit/tools.ts";
import { MACHINE_MARKER_PREFIX, parseSerial, type SerialReport } from "../kit/markers.ts";
import { QEMU_DATA_DIRS, testMachineQemu } from "./qemu_build.ts";

/** Kernel modules the test machine loads, dependencies resolved by the kit. */
export const MACHINE_MODULES: readonly string[] = [
  "virtio_pci",
  "9pnet_virtio",
  "9p",
  "overlay",
  "kvm_amd",
  "tun", // the network guest test's tap (in a namespace of its own)
];

/** A host directory shared into the test machine at the same path. */
export interface MachineShare {
  readonly hostPath: string;
  /** Path inside the machine; default `hostPath`. */
  readonly guestPath?: string;
  readonly writable?: boolean;
}

/** How to run one command in the test machine. */
export interface MachineRunOptions {
  /** Working directory inside the machine (the host path; default `Deno.cwd()`). */
  readonly cwd?: string;
  /** Environment of the command (added to a minimal one; `HYPERDENO_IN_TEST_MACHINE=1` is set). */
  readonly env?: Readonly<Record<string, string>>;
  /** Extra 9p shares, mounted after the root overlay. */
  readonly shares?: readonly MachineShare[];
  /** Wall-clock limit for the whole boot, default 25 minutes. */
  readonly timeoutMs?: number;
  /** Called with each output line of the command as it arrives. */
  readonly onLine?: (line: string) => void;
  /** Called once when the machine's init starts (`booted`) and once when the command starts,
   * with the seconds since QEMU was spawned (for progress: the boot prints nothing). */
  readonly onPhase?: (phase: "booted" | "command", seconds: number) => void;
  /** Also pass kernel and init lines (outside the command) to `onLine`. */
  readonly verbose?: boolean;
  /** Guest RAM, default `$HYPERDENO_TEST_MACHINE_MEMORY` or `6G`. */
  readonly memory?: string;
  /** vCPUs, default min(host CPUs, 4). */
  readonly cpus?: number;
  /** QEMU binary, default `$HYPERDENO_TEST_MACHINE_QEMU` or the project's own build
   * (`testMachineQemu`, built when missing). */
  readonly qemu?: string;
}

/** What came back from the test machine. */
export interface MachineRunResult {
  /** Exit status of the command; undefined when the machine did not get that far. Meaningful
   * only when `problem` is undefined. */
  readonly status: number | undefined;
  /** Why the run failed outside the command (timeout, QEMU error, no marker…), if it did. */
  readonly problem: string | undefined;
  readonly report: SerialReport;
  /** QEMU's own exit code (0 after a clean power-off). */
  readonly qemuCode: number | null;
  readonly qemuStderr: string;
  readonly timedOut: boolean;
  /** Seconds from QEMU spawn to init start, to command start, and in total. */
  readonly timings: { bootSeconds?: number; commandStartSeconds?: number; totalSeconds: number };
}

/** Quotes `s` for a POSIX shell. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

const ROOT = "/mnt/root";

/** A machine CPU reported stuck in its kernel this long is given up on. */
const LOCKUP_GIVE_UP_SECONDS = 150;

/** How long the kernel says a CPU has been stuck, from its "soft lockup" line, else undefined. */
export function softLockupSeconds(line: string): number | undefined {
  const m = /soft lockup - CPU#\d+ stuck for (\d+)s!/.exec(line);
  return m ? Number(m[1]) : undefined;
}

/** Where the L1 initramfs carries `tests/guest/tools/kvm_pin_apic_keys.c`, when it was built. */
export const APIC_KEY_PIN = "/bin/kvm_pin_apic_keys";

/** Where the L1 initramfs carries the outer-QEMU self-check `tests/guest/tools/cr8_vintr_check.c`. */
export const CR8_CHECK = "/bin/cr8_vintr_check";

/**
 * Why the outer QEMU failed its self-check, from the machine's report, or undefined when it
 * passed. Against a QEMU without the CR8 fix the machine dies between `cr8_check=start` and the
 * result, and QEMU's stderr holds the assertion.
 */
export function selfCheckProblem(
  marks: ReadonlyMap<string, string>,
  qemuStderr: string,
): string | undefined {
  const result = marks.get("cr8_check");
  if (result === undefined) return "the outer QEMU self-check did not run";
  if (result.startsWith("ok")) return undefined;
  const abort = qemuStderr.split("\n").find((l) => /assert|Abort/i.test(l))?.trim();
  const why = result === "start"
    ? `the outer QEMU died while a nested guest wrote CR8 with an interrupt pending` +
      (abort ? ` (${abort})` : "")
    : `the nested CR8 guest reported: ${result}`;
  return `outer QEMU self-check FAILED: ${why}. This QEMU aborts on firmware guests (OVMF, ` +
    "Windows); the test machine needs its own build (tests/guest/machine/qemu_build.ts)";
}

/** The L1 init body: mount the host root under an overlay, chroot, run the command. */
export function machineScript(
  argv: readonly string[],
  cwd: string,
  env: Readonly<Record<string, string>>,
  shares: readonly MachineShare[],
): string {
  const p9 = "trans=virtio,version=9p2000.L,msize=512000";
  const lines = [
    `R=${ROOT}`,
    "mkdir -p /mnt/lower /mnt/rw $R",
    `mount -t 9p -o ${p9},ro,cache=loose hostroot /mnt/lower || { hd_fail "mount host / over 9p"; exit 120; }`,
    "mount -t tmpfs -o mode=0755 tmpfs /mnt/rw && mkdir -p /mnt/rw/upper /mnt/rw/work",
    "mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay $R" +
    ' || { hd_fail "overlay mount"; exit 120; }',
    "mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev",
    "mkdir -p $R/dev/pts $R/dev/shm && mount -t devpts devpts $R/dev/pts",
    "mount -t tmpfs tmpfs $R/dev/shm && mount -t tmpfs tmpfs $R/run",
  ];
  shares.forEach((s, i) => {
    const at = shellQuote(`${ROOT}${s.guestPath ?? s.hostPath}`);
    lines.push(
      `mkdir -p ${at} && mount -t 9p -o ${p9}${s.writable ? "" : ",ro"} share${i} ${at}` +
        ` || { hd_fail "mount share ${i}"; exit 120; }`,
    );
  });
  lines.push(
    `hd_mark kvm "$([ -c /dev/kvm ] && echo present || echo missing)"`,
    // The self-check first: against a QEMU without the CR8 fix the machine dies here.
    "hd_mark cr8_check start",
    `hd_mark cr8_check "$(${CR8_CHECK} 2>&1 | head -c 200)"`,
    // Keeps KVM's LAPIC static keys from being live-patched under TCG (see the tool's source).
    `hd_mark apic_keys "$([ -x ${APIC_KEY_PIN} ] && ${APIC_KEY_PIN} 2>&1 | head -c 200 || echo absent)"`,
    `hd_mark uptime "$(cut -d' ' -f1 /proc/uptime)"`,
  );
  const envArgs = Object.entries(env).map(([k, v]) => shellQuote(`${k}=${v}`)).join(" ");
  lines.push(
    `chroot $R /usr/bin/env -i ${envArgs} /bin/sh -c 'cd "$0" && exec "$@"' ` +
      [cwd, ...argv].map(shellQuote).join(" "),
  );
  return lines.join("\n");
}

function defaultCpus(): number {
  return Math.max(1, Math.min(navigator.hardwareConcurrency ?? 2, 4));
}

/** The QEMU command line of the test machine. */
export function machineQemuArgs(
  kernel: string,
  initrd: string,
  shares: readonly MachineShare[],
  options: { memory: string; cpus: number },
): string[] {
  const args = [
    ...QEMU_DATA_DIRS.flatMap((d) => ["-L", d]),
    "-accel",
    "tcg,thread=multi",
    "-cpu",
    "max", // TCG's full model: SVM with NPT, AVX2 (EPYC warns about features TCG lacks)
    "-smp",
    String(options.cpus),
    "-m",
    options.memory,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-nic",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    // loglevel=5 keeps the boot quiet but prints the stacks (KERN_WARNING) that follow a
    // lockup report, so a hang in CI shows where the machine's kernel was stuck.
    "console=ttyS0 panic=-1 loglevel=5 mitigations=off softlockup_all_cpu_backtrace=1" +
    (Deno.env.get("HYPERDENO_MACHINE_APPEND")
      ? ` ${Deno.env.get("HYPERDENO_MACHINE_APPEND")}`
      : ""),
    "-virtfs",
    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
  ];
  shares.forEach((s, i) => {
    args.push(
      "-virtfs",
      `local,path=${s.hostPath.replaceAll(",", ",,")},mount_tag=share${i},` +
        "security_model=none,multidevs=remap" +
        (s.writable ? "" : ",readonly=on"),
    );
  });
  return args;
}

/** Environment passed from the host into the machine when set. */
const PASSED_ENV = ["CI", "NO_COLOR", "DENO_DIR", "HYPERDENO_LOG", "HYPERDENO_GUEST_VMM"];

/** Boots the test machine, runs `argv` in it, and returns once it powered off. */
export async function runInTestMachine(
  argv: readonly string[],
  options: MachineRunOptions = {},
): Promise<MachineRunResult> {
  const setupStart = performance.now();
  const failed = (problem: string): MachineRunResult => ({
    status: undefined,
    problem,
    report: parseSerial("", MACHINE_MARKER_PREFIX),
    qemuCode: null,
    qemuStderr: "",
    timedOut: false,
    timings: { totalSeconds: (performance.now() - setupStart) / 1000 },
  });
  let qemu = options.qemu ?? Deno.env.get("HYPERDENO_TEST_MACHINE_QEMU");
  if (qemu !== undefined) {
    console.error(`test machine: QEMU ${qemu} (given, not the project's build)`);
  } else {
    const built = await testMachineQemu();
    if (!built.ok) return failed(built.reason);
    qemu = built.path;
  }
  const check = await guestTool("cr8_vintr_check");
  if (!check.ok) return failed(`cannot build the outer QEMU self-check: ${check.reason}`);
  const kernel = findHostKernel();
  const cwd = options.cwd ?? Deno.cwd();
  const shares = options.shares ?? [];
  const env: Record<string, string> = {
    PATH: `${Deno.execPath().replace(/\/[^/]*$/, "")}:/usr/local/sbin:/usr/local/bin:` +
      "/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: Deno.env.get("HOME") ?? "/root",
    TERM: "dumb",
    LANG: "C.UTF-8",
    DENO_NO_UPDATE_CHECK: "1",
  };
  for (const k of PASSED_ENV) {
    const v = Deno.env.get(k);
    if (v !== undefined) env[k] = v;
  }
  for (const [k, v] of Object.entries(Deno.env.toObject())) {
    if (k.startsWith("HYPERDENO_")) env[k] = v;
  }
  Object.assign(env, options.env ?? {});
  env.HYPERDENO_IN_TEST_MACHINE = "1";
  delete env.HYPERDENO_TEST_MACHINE;

  const pin = await guestTool("kvm_pin_apic_keys");
  if (!pin.ok) {
    console.warn(
      `test machine: without kvm_pin_apic_keys its CPUs can lock up in KVM (${pin.reason})`,
    );
  }
  const initrd = await initramfsFile({
    kernelVersion: kernel.version,
    modules: MACHINE_MODULES,
    markerPrefix: MACHINE_MARKER_PREFIX,
    script: machineScript(argv, cwd, env, shares),
    files: {
      [CR8_CHECK]: { data: check.image, mode: 0o755 },
      ...(pin.ok ? { [APIC_KEY_PIN]: { data: pin.image, mode: 0o755 } } : {}),
    },
  });
  const memory = options.memory ?? Deno.env.get("HYPERDENO_TEST_MACHINE_MEMORY") ?? "6G";
  const args = machineQemuArgs(kernel.path, initrd, shares, {
    memory,
    cpus: options.cpus ?? defaultCpus(),
  });

  const start = performance.now();
  const elapsed = () => (performance.now() - start) / 1000;
  const child = new Deno.Command(qemu, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, options.timeoutMs ?? 25 * 60_000);
  // A CPU of the machine stuck in its kernel this long never comes back (TCG's stale
  // translations loop forever): stop there instead of waiting for the timeout.
  let lockedUp: string | undefined;

  const stderrPromise = new Response(child.stderr).text();
  let text = "";
  let pending = "";
  let inCommand = false;
  let bootSeconds: number | undefined;
  let commandStartSeconds: number | undefined;
  const begin = `${MACHINE_MARKER_PREFIX}:begin`;
  const exitMarker = `${MACHINE_MARKER_PREFIX}:exit `;
  const handleLine = (raw: string) => {
    const line = raw.replaceAll("\r", "");
    if ((softLockupSeconds(line) ?? 0) >= LOCKUP_GIVE_UP_SECONDS && lockedUp === undefined) {
      lockedUp = line.trim();
      kill();
    }
    if (line.includes(`${MACHINE_MARKER_PREFIX}:booted`) && bootSeconds === undefined) {
      bootSeconds = elapsed();
      options.onPhase?.("booted", bootSeconds);
    }
    if (
      line.includes(`${MACHINE_MARKER_PREFIX}:mark uptime=`) && commandStartSeconds === undefined
    ) {
      commandStartSeconds = elapsed();
      options.onPhase?.("command", commandStartSeconds);
    }
    const isMarker = line.includes(`${MACHINE_MARKER_PREFIX}:`);
    if (line.includes(begin)) inCommand = true;
    if (line.includes(exitMarker)) inCommand = false;
    if (options.onLine && (options.verbose || (inCommand && !isMarker))) options.onLine(line);
  };
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    const s = decoder.decode(chunk, { stream: true });
    text += s;
    pending += s;
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      handleLine(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
  }
  if (pending !== "") handleLine(pending);
  const status = await child.status;
  clearTimeout(timer);
  const qemuStderr = await stderrPromise;
  const report = parseSerial(text, MACHINE_MARKER_PREFIX);

  let problem: string | undefined;
  if (lockedUp !== undefined) {
    problem = `test machine kernel locked up (${lockedUp}); stopped after ${
      Math.round(elapsed())
    } s`;
  } else if (timedOut) {
    problem = `test machine timed out after ${Math.round(elapsed())} s`;
  } else if (selfCheckProblem(report.marks, qemuStderr) !== undefined) {
    problem = selfCheckProblem(report.marks, qemuStderr);
  } else if (report.exitStatus === undefined) {
    const panic = report.lines.find((l) => l.includes("Kernel panic"));
    problem = panic
      ? `test machine kernel panicked: ${panic.trim()}`
      : `test machine stopped before the command finished (QEMU exit ${status.code}` +
        `${qemuStderr.trim() ? `: ${qemuStderr.trim()}` : ""})`;
  } else if (report.moduleFailures.length > 0) {
    problem = `test machine could not load modules: ${report.moduleFailures.join(", ")}`;
  } else if (report.exitStatus === 120 && report.checks.some((c) => !c.ok)) {
    const failed = report.checks.filter((c) => !c.ok).map((c) => c.description);
    problem = `test machine setup failed: ${failed.join(", ")}`;
  } else if (report.marks.get("kvm") !== "present") {
    problem = "/dev/kvm is missing in the test machine (kvm_amd did not load: no SVM?)";
  }
  const pinned = report.marks.get("apic_keys");
  if (pin.ok && pinned !== "pinned" && problem === undefined) {
    console.warn(`test machine: kvm_pin_apic_keys did not pin KVM's LAPIC keys: ${pinned}`);
  }
  return {
    status: report.exitStatus,
    problem,
    report,
    qemuCode: status.code,
    qemuStderr,
    timedOut,
    timings: {
      ...(bootSeconds !== undefined ? { bootSeconds } : {}),
      ...(commandStartSeconds !== undefined ? { commandStartSeconds } : {}),
      totalSeconds: elapsed(),
    },
  };
}
