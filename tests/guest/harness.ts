/**
 * Guest test API. A guest test is a kernel + a kit initramfs (a shell test body and the modules
 * it needs) + VMM flags + expectations on the serial markers the kit init prints:
 *
 * ```ts
 * import { assertGuestOk, assertMark, bootGuest, guestTest } from "../harness.ts";
 *
 * guestTest("vmbus comes up and the guest powers off", {
 *   modules: ["hv_vmbus", "hv_utils"],
 *   script: `
 *     hd_check "vmbus devices" sh -c 'ls /sys/bus/vmbus/devices | grep -q .'
 *     hd_mark clocksource "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
 *   `,
 * }, (run) => assertMark(run, "clocksource", "hyperv_clocksource_tsc_page"));
 * ```
 *
 * `guestTest` registers a `Deno.test` that boots the guest with `bootGuest`, requires a clean run
 * (`assertGuestOk`: VMM exit 0, body exit 0, every `hd_check` passed, every module loaded, init
 * reached its end marker), then calls your check. It is ignored when this host cannot run a
 * stock guest (run the suite with `deno task test`, which uses the nested test machine).
 *
 * The VMM is `hyperdeno` (`deno run -A cli.ts boot …`) unless the spec or
 * `$HYPERDENO_GUEST_VMM` says `qemu` (`qemu-system-x86_64 -accel kvm`, the reference).
 * @module
 */
import { findHostKernel } from "./kit/host.ts";
import { initramfsFile, type InitramfsOptions } from "./kit/initramfs.ts";
import {
  defangMarkers,
  GUEST_MARKER_PREFIX,
  parseSerial,
  type SerialReport,
} from "./kit/markers.ts";
import { decideMachineMode, gatherMachineFacts, which } from "./machine/detect.ts";

/** Which VMM boots the guest. */
export type Vmm = "hyperdeno" | "qemu";

/** One guest boot. */
export interface GuestSpec extends Omit<InitramfsOptions, "markerPrefix"> {
  /** Default: `$HYPERDENO_GUEST_VMM`, else `hyperdeno`. */
  readonly vmm?: Vmm;
  /** Guest RAM as the VMM flag takes it, default `512M`. */
  readonly memory?: string;
  /** vCPUs, default 1. */
  readonly cpus?: number;
  /** Extra kernel arguments after `console=ttyS0 panic=-1` (and `quiet`). */
  readonly cmdline?: string;
  /** Keep kernel boot messages on the console (no `quiet`). Costly in the nested test machine:
   * every serial byte is a nested exit, ~2 ms each; a full Debian boot log adds about a minute. */
  readonly verboseKernel?: boolean;
  /** Extra VMM flags (VMM-specific). */
  readonly vmmArgs?: readonly string[];
  /** Extra environment of the VMM process (added to the test's own). */
  readonly env?: Readonly<Record<string, string>>;
  /** A guest reset ends the VMM (`--no-reboot` / `-no-reboot`); default true, so a panicking
   * guest (`panic=-1` makes a panic a reset) fails fast instead of rebooting until the timeout.
   * Set false for tests that reboot on purpose. */
  readonly noReboot?: boolean;
  /** For `vmm: "qemu"`: the `-cpu` value, default `host`. */
  readonly qemuCpu?: string;
  /** bzImage path, default the host kernel of `kernelVersion`. */
  readonly kernel?: string;
  /** Kill the VMM after this long; default 180 s (a quiet nested Debian boot takes ~30-45 s). */
  readonly timeoutMs?: number;
  /** Type `text` into the VMM's stdin (the guest's serial console) once the console shows
   * `after`. */
  readonly input?: { readonly after: string; readonly text: string };
  /** Called with the VMM process right after it is spawned (to signal it, for example). */
  readonly onSpawn?: (child: Deno.ChildProcess) => void;
  /** Called for each `hd_mark KEY VALUE` line as it arrives, while the VMM runs; console reading
   * waits for it. Text it returns is typed into the guest's console (a body can `read` it to wait
   * for the host: `hd_mark ready 1; read -t 120 -r reply`). */
  readonly onMark?: (
    key: string,
    value: string,
  ) => string | undefined | void | Promise<string | undefined | void>;
}

/** What one boot produced: the serial report plus how the VMM ended. */
export interface GuestRun extends SerialReport {
  readonly vmm: Vmm;
  /** The VMM command line that ran. */
  readonly argv: readonly string[];
  /** VMM exit code (null when killed by a signal). */
  readonly code: number | null;
  readonly signal: Deno.Signal | null;
  readonly timedOut: boolean;
  /** Host time (seconds since the VMM started) at which each `hd_mark KEY` line arrived. */
  readonly markArrivals: ReadonlyMap<string, number>;
  /** Seconds from the init's end marker (just before `poweroff -f`) to the VMM's exit. */
  readonly endToExitSeconds: number | undefined;
  /** Guest serial output (the VMM's stdout). */
  readonly serial: string;
  /** The VMM's stderr (its own logs). */
  readonly stderr: string;
  /** Wall time from VMM spawn to exit, seconds. */
  readonly seconds: number;
}

/**
 * Spec fields that make the `qemu` VMM a Hyper-V reference: TLFS enlightenments, the KVM CPUID
 * signature hidden (`kvm=off`, else Linux prefers KVM), and QEMU's VMBus bridge (bus only, no
 * devices). Linux then reports "Hypervisor detected: Microsoft Hyper-V", uses
 * hyperv_clocksource_tsc_page and hv_vmbus negotiates VMBus 4.0.
 */
export const QEMU_HYPERV: Pick<GuestSpec, "qemuCpu" | "vmmArgs"> = {
  qemuCpu: "host,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-runtime,hv-time," +
    "hv-synic,hv-stimer,hv-frequencies,hv-reset,kvm=off",
  vmmArgs: ["-device", "vmbus-bridge"],
};

/**
 * Asks a VMM's control socket (`--control PATH`) one JSON-lines question and returns the reply.
 * Rejects when the socket is not there yet or the reply is not JSON.
 */
export async function askControl(path: string, req: unknown): Promise<Record<string, unknown>> {
  const conn = await Deno.connect({ transport: "unix", path });
  try {
    await conn.write(new TextEncoder().encode(JSON.stringify(req) + "\n"));
    let text = "";
    const buf = new Uint8Array(65536);
    while (!text.includes("\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return JSON.parse(text);
  } finally {
    conn.close();
  }
}

/** Base kernel command line of every guest test. */
export const BASE_CMDLINE = "console=ttyS0 panic=-1";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** Path of the VMM CLI. */
export const CLI_PATH = `${REPO}/cli.ts`;

/** The VMM command line for a boot. */
export function vmmCommand(
  vmm: Vmm,
  boot: {
    kernel: string;
    initrd: string;
    cmdline: string;
    memory: string;
    cpus: number;
    vmmArgs?: readonly string[];
    qemuCpu?: string;
    noReboot?: boolean;
  },
): string[] {
  const extra = boot.vmmArgs ?? [];
  const noReboot = boot.noReboot ?? true;
  if (vmm === "hyperdeno") {
    // `HYPERDENO_GUEST_VMM_ARGS="--display bochs"` runs every guest test with extra VMM flags
    // (the suite's A/B runs: with and without a display).
    const env = (Deno.env.get("HYPERDENO_GUEST_VMM_ARGS") ?? "").split(" ").filter((a) => a);
    return [
      Deno.execPath(),
      "run",
      "-A",
      CLI_PATH,
      "boot",
      "--kernel",
      boot.kernel,
      "--initrd",
      boot.initrd,
      "--cmdline",
      boot.cmdline,
      "--memory",
      boot.memory,
      "--cpus",
      String(boot.cpus),
      "--serial",
      "stdio",
      ...(noReboot && !extra.includes("--no-reboot") ? ["--no-reboot"] : []),
      // A test that sets one of these flags itself keeps its own.
      ...(env.some((a) => a.startsWith("--") && extra.includes(a)) ? [] : env),
      ...extra,
    ];
  }
  return [
    which("qemu-system-x86_64") ?? "qemu-system-x86_64",
    "-accel",
    "kvm",
    "-cpu",
    boot.qemuCpu ?? "host",
    "-m",
    boot.memory,
    "-smp",
    String(boot.cpus),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-nic",
    "none",
    "-serial",
    "stdio",
    ...(noReboot && !extra.includes("-no-reboot") ? ["-no-reboot"] : []),
    "-kernel",
    boot.kernel,
    "-initrd",
    boot.initrd,
    "-append",
    boot.cmdline,
    ...extra,
  ];
}

/** Whether this host can boot guests directly, and if not why. */
export function guestEnvironment(): { ok: true } | { ok: false; reason: string } {
  const mode = decideMachineMode(gatherMachineFacts());
  if (mode.kind === "direct") return { ok: true };
  return {
    ok: false,
    reason: mode.kind === "nested"
      ? `${mode.why}; run guest tests through the test machine: deno task test`
      : mode.why,
  };
}

function defaultVmm(spec: GuestSpec): Vmm {
  const v = spec.vmm ?? Deno.env.get("HYPERDENO_GUEST_VMM") ?? "hyperdeno";
  if (v !== "hyperdeno" && v !== "qemu") {
    throw new Error(`unknown VMM "${v}" (HYPERDENO_GUEST_VMM): use hyperdeno or qemu`);
  }
  return v;
}

/** Builds the initramfs, boots it under the VMM, waits for the VMM to exit, parses markers. */
export async function bootGuest(spec: GuestSpec): Promise<GuestRun> {
  const vmm = defaultVmm(spec);
  const kernel = spec.kernel ?? findHostKernel(spec.kernelVersion).path;
  const initrd = await initramfsFile({ ...spec, markerPrefix: GUEST_MARKER_PREFIX });
  const argv = vmmCommand(vmm, {
    kernel,
    initrd,
    cmdline: [BASE_CMDLINE, spec.verboseKernel ? "" : "quiet", spec.cmdline ?? ""]
      .filter((s) => s !== "").join(" "),
    memory: spec.memory ?? "512M",
    cpus: spec.cpus ?? 1,
    ...(spec.vmmArgs ? { vmmArgs: spec.vmmArgs } : {}),
    ...(spec.qemuCpu ? { qemuCpu: spec.qemuCpu } : {}),
    ...(spec.noReboot !== undefined ? { noReboot: spec.noReboot } : {}),
  });
  const echo = Deno.env.get("HYPERDENO_GUEST_ECHO") === "1";
  const start = performance.now();
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    cwd: REPO,
    ...(spec.env ? { env: { ...spec.env } } : {}),
    stdin: spec.input || spec.onMark ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  spec.onSpawn?.(child);
  let pendingInput = spec.input;
  const type = async (text: string): Promise<void> => {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(text));
    w.releaseLock();
  };
  const markArrivals = new Map<string, number>();
  const markRe = new RegExp(`${GUEST_MARKER_PREFIX}:mark ([^=\\s]+)=([^\\n]*)`, "g");
  let scanned = 0;
  let endAt: number | undefined;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }, spec.timeoutMs ?? 180_000);
  const stderrText = new Response(child.stderr).text();
  let serial = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    const s = decoder.decode(chunk, { stream: true });
    serial += s;
    if (echo) await Deno.stderr.write(new TextEncoder().encode(defangMarkers(s)));
    const lastNl = serial.lastIndexOf("\n");
    if (lastNl > scanned) {
      const lines = serial.slice(scanned, lastNl);
      scanned = lastNl;
      for (const m of lines.matchAll(markRe)) {
        if (!markArrivals.has(m[1]!)) markArrivals.set(m[1]!, (performance.now() - start) / 1000);
        const reply = await spec.onMark?.(m[1]!, m[2]!.replace(/\r$/, "").trim());
        if (typeof reply === "string" && reply !== "") await type(reply);
      }
    }
    if (pendingInput && serial.includes(pendingInput.after)) {
      await type(pendingInput.text);
      pendingInput = undefined;
    }
    if (endAt === undefined && serial.includes(`${GUEST_MARKER_PREFIX}:end`)) {
      endAt = performance.now();
    }
  }
  const status = await child.status;
  const exitAt = performance.now();
  if (spec.input || spec.onMark) await child.stdin.close().catch(() => {});
  clearTimeout(timer);
  return {
    ...parseSerial(serial, GUEST_MARKER_PREFIX),
    vmm,
    argv,
    code: status.code,
    signal: status.signal,
    timedOut,
    serial,
    stderr: await stderrText,
    seconds: (exitAt - start) / 1000,
    endToExitSeconds: endAt === undefined ? undefined : (exitAt - endAt) / 1000,
    markArrivals,
  };
}

/** Thrown by the assertions below; its message carries the tail of the guest console. */
export class GuestAssertionError extends Error {
  override name = "GuestAssertionError";
}

function tail(text: string, lines: number): string {
  const all = text.replaceAll("\r", "").trimEnd().split("\n");
  return all.slice(-lines).join("\n");
}

/** Formats a run for a failure message: command, exit, console and stderr tails (defanged). */
export function describeRun(run: GuestRun, lines = 60): string {
  return [
    `VMM: ${run.argv.join(" ")}`,
    `exit code ${run.code}${run.signal ? ` signal ${run.signal}` : ""}` +
    `${run.timedOut ? " (timed out)" : ""} after ${run.seconds.toFixed(1)} s`,
    `--- guest console (last ${lines} lines) ---`,
    defangMarkers(tail(run.serial, lines)),
    "--- VMM stderr (last 30 lines) ---",
    defangMarkers(tail(run.stderr, 30)),
  ].join("\n");
}

/** Problems that make a run not clean, empty when it is. */
export function runProblems(run: GuestRun): string[] {
  const p: string[] = [];
  if (run.timedOut) p.push("the VMM timed out");
  if (run.code !== 0) p.push(`the VMM exited with ${run.code ?? run.signal}`);
  if (run.bootedAtSeconds === undefined) p.push("the guest init never started");
  for (const m of run.moduleFailures) p.push(`module failed to load: ${m}`);
  if (run.begun && run.exitStatus === undefined) p.push("the test body did not finish");
  if (run.exitStatus !== undefined && run.exitStatus !== 0) {
    p.push(`the test body exited with ${run.exitStatus}`);
  }
  for (const c of run.checks) if (!c.ok) p.push(`check failed: ${c.description}`);
  if (run.exitStatus !== undefined && !run.ended) p.push("the init did not reach its end");
  return p;
}

/** Requires a clean run; throws `GuestAssertionError` with the console tail otherwise. */
export function assertGuestOk(run: GuestRun): void {
  const p = runProblems(run);
  if (p.length > 0) {
    throw new GuestAssertionError(`guest run failed: ${p.join("; ")}\n${describeRun(run)}`);
  }
}

/** Requires `hd_mark key …` to have reported `expected` (or matching it). */
export function assertMark(run: GuestRun, key: string, expected: string | RegExp): void {
  const v = run.marks.get(key);
  const ok = v !== undefined &&
    (typeof expected === "string" ? v === expected : expected.test(v));
  if (!ok) {
    throw new GuestAssertionError(
      `mark ${key}: expected ${expected}, got ${v === undefined ? "nothing" : JSON.stringify(v)}` +
        `\n${describeRun(run, 30)}`,
    );
  }
}

let reportedSkip = false;

/**
 * Registers a guest test: boot `spec`, require a clean run, then run `check` on it. Ignored (with
 * the reason printed once) when this host cannot run guests, or when the VMM is `qemu` and QEMU
 * is not installed.
 */
export function guestTest(
  name: string,
  spec: GuestSpec,
  check?: (run: GuestRun) => void | Promise<void>,
): void {
  const env = guestEnvironment();
  let ignoreWhy = env.ok ? undefined : env.reason;
  if (ignoreWhy === undefined && defaultVmm(spec) === "qemu" && !which("qemu-system-x86_64")) {
    ignoreWhy = "qemu-system-x86_64 is not installed";
  }
  if (ignoreWhy !== undefined && !reportedSkip) {
    reportedSkip = true;
    console.warn(`guest tests ignored: ${ignoreWhy}`);
  }
  Deno.test({
    name,
    ignore: ignoreWhy !== undefined,
    fn: async () => {
      const run = await bootGuest(spec);
      assertGuestOk(run);
      await check?.(run);
    },
  });
}

/** Runs the VMM CLI with `args` (for CLI-level tests: usage errors, exit codes). */
export async function runHyperdeno(
  args: readonly string[],
  options: { timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI_PATH, ...args],
    cwd: REPO,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }, options.timeoutMs ?? 120_000);
  const out = await child.output();
  clearTimeout(timer);
  const d = new TextDecoder();
  return {
    code: out.signal ? null : out.code,
    stdout: d.decode(out.stdout),
    stderr: d.decode(out.stderr),
  };
}
