/**
 * `deno task demo`: boots the host's Debian kernel with a kit initramfs that prints what the
 * guest found (hypervisor, Hyper-V features, clocksource, VMBus devices) and powers off. Runs
 * directly when this host's /dev/kvm can run a stock guest, else inside the nested test machine.
 * First installs what it needs, as `deno task test` does (`install.ts`: the Debian kernel,
 * busybox-static, and qemu-system-x86 when the test machine is needed), shows progress while
 * the test machine boots, and ends with where the time went and `demo succeeded in N s`.
 *
 * ```sh
 * deno task demo                 # our VMM: deno run -A cli.ts boot …
 * deno task demo --vmm qemu      # reference: QEMU/KVM with Hyper-V enlightenments and VMBus
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { bootGuest, describeRun, QEMU_HYPERV, runProblems, type Vmm } from "./harness.ts";
import { prepareGuestHost } from "./install.ts";
import { findHostKernel } from "./kit/host.ts";
import { runInTestMachine } from "./machine/test_machine.ts";

/** Hyper-V guest modules the demo loads (a failure to load is reported, not fatal). */
export const DEMO_MODULES = ["hv_vmbus", "hv_utils", "hv_balloon", "hv_storvsc", "hv_netvsc"];

/** The guest side of the demo. */
export const DEMO_SCRIPT = `
cs=/sys/devices/system/clocksource/clocksource0
echo "== kernel: $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "== hypervisor:"
dmesg | grep -i -E 'Hypervisor detected|Hyper-V' | sed 's/^/   /'
[ -r /sys/hypervisor/type ] && echo "   /sys/hypervisor/type: $(cat /sys/hypervisor/type)"
echo "== clocksource: $(cat $cs/current_clocksource) (available: $(cat $cs/available_clocksource))"
echo "== vmbus devices:"
n=0
for d in /sys/bus/vmbus/devices/*; do
  [ -e "$d" ] || continue
  n=$((n + 1))
  echo "   $(basename "$d") class $(cat "$d/class_id" 2>/dev/null) driver $(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)"
done
[ "$n" = 0 ] && echo "   (none$([ -d /sys/bus/vmbus ] || echo ': no vmbus bus'))"
echo "== modules loaded: $(lsmod | awk 'NR > 1 { printf "%s ", $1 }')"
hd_mark hypervisor "$(dmesg | sed -n 's/.*Hypervisor detected: //p' | head -n1)"
hd_mark clocksource "$(cat $cs/current_clocksource)"
hd_mark vmbus_devices "$n"
`;

/** The line the demo prints inside (and the host reads back) with the guest's own run time. */
export const GUEST_TIME_RE = /^guest: booted, ran the demo and powered off in ([\d.]+) s/;

/** Where a demo run's time went, seconds (undefined: that phase did not happen). */
export interface DemoTimings {
  readonly installing: number;
  /** QEMU spawned until the demo started inside the test machine (nested mode only). */
  readonly testMachine?: number;
  /** The test machine's kernel, until its init started (part of `testMachine`). */
  readonly testMachineKernel?: number;
  /** The guest: VMM start until it exited. */
  readonly guest?: number;
  readonly total: number;
}

/** The closing line that says where the time went. */
export function timingLine(t: DemoTimings): string {
  const s = (x: number) => `${x.toFixed(1)} s`;
  const parts = [`installing ${s(t.installing)}`];
  if (t.testMachine !== undefined) {
    parts.push(
      `starting the test machine ${s(t.testMachine)}` +
        (t.testMachineKernel !== undefined
          ? ` (its kernel ${s(t.testMachineKernel)}, then Deno in it ` +
            `${s(t.testMachine - t.testMachineKernel)})`
          : ""),
    );
  }
  if (t.guest !== undefined) parts.push(`booting and running the guest ${s(t.guest)}`);
  return `where the time went: ${parts.join(", ")}; total ${s(t.total)}`;
}

async function demoHere(vmm: Vmm): Promise<{ code: number; guestSeconds: number }> {
  console.log(`booting ${findHostKernel().path} under ${vmm} with the demo initramfs...`);
  const run = await bootGuest({
    vmm,
    modules: DEMO_MODULES,
    script: DEMO_SCRIPT,
    memory: "512M",
    cpus: 1,
    ...(vmm === "qemu" ? QEMU_HYPERV : {}),
  });
  const startLine = run.stderr.split("\n")[0] ?? "";
  if (startLine.startsWith("hyperdeno: starting ")) console.log(startLine);
  for (const l of run.bodyLines) console.log(l);
  for (const m of run.moduleFailures) console.log(`   (module did not load: ${m})`);
  console.log(
    `\nsummary: hypervisor=${run.marks.get("hypervisor") || "?"} ` +
      `clocksource=${run.marks.get("clocksource") ?? "?"} ` +
      `vmbus_devices=${run.marks.get("vmbus_devices") ?? "?"}; ${vmm} exit ${run.code}`,
  );
  console.log(`guest: booted, ran the demo and powered off in ${run.seconds.toFixed(1)} s`);
  // Module failures are findings here, not errors: judge the rest.
  const problems = runProblems(run).filter((p) => !p.startsWith("module failed"));
  if (problems.length > 0) {
    console.log(`\ndemo failed: ${problems.join("; ")}\n${describeRun(run)}`);
    return { code: 1, guestSeconds: run.seconds };
  }
  return { code: 0, guestSeconds: run.seconds };
}

/** Runs the demo inside the nested test machine, with progress while it boots. */
async function demoNested(
  vmm: Vmm,
  why: string,
): Promise<{ code: number; timings: Omit<DemoTimings, "installing" | "total"> }> {
  say(
    `this host cannot boot the guest directly (${why}); running the demo inside the nested ` +
      "test machine (QEMU TCG with nested SVM). Expect a few minutes: QEMU emulates every " +
      "instruction of the test machine.",
  );
  const spawned = performance.now();
  const since = () => (performance.now() - spawned) / 1000;
  let phase = "starting the test machine (QEMU TCG)";
  let lastOutput = performance.now();
  let testMachineKernel: number | undefined;
  let testMachine: number | undefined;
  let guest: number | undefined;
  // No output for a while is expected here; say so instead of looking hung.
  const ticker = setInterval(() => {
    if (performance.now() - lastOutput < 20_000) return;
    console.log(`   ... still ${phase} (${since().toFixed(0)} s)`);
    lastOutput = performance.now();
  }, 5_000);
  try {
    const result = await runInTestMachine(
      [Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname, `--vmm=${vmm}`],
      {
        onLine: (l) => {
          lastOutput = performance.now();
          if (l.startsWith("booting ") && testMachine === undefined) {
            testMachine = since();
            phase = "booting the guest (nested: about a minute)";
          }
          const m = GUEST_TIME_RE.exec(l);
          if (m) {
            guest = Number(m[1]);
            phase = "powering off the test machine";
          }
          console.log(l);
        },
        onPhase: (p, seconds) => {
          lastOutput = performance.now();
          if (p === "booted") {
            testMachineKernel = seconds;
            phase = "starting Deno and the demo in the test machine";
            say(`test machine booted in ${seconds.toFixed(1)} s; starting the demo in it`);
          }
        },
        ...(Deno.stdout.isTerminal() ? {} : { env: { NO_COLOR: "1" } }),
      },
    );
    const timings = {
      ...(testMachine !== undefined ? { testMachine } : {}),
      ...(testMachineKernel !== undefined ? { testMachineKernel } : {}),
      ...(guest !== undefined ? { guest } : {}),
    };
    if (result.problem !== undefined) {
      console.log(`test machine failed: ${result.problem}`);
      console.log(result.report.lines.slice(-40).join("\n"));
      return { code: 1, timings };
    }
    return { code: result.status ?? 1, timings };
  } finally {
    clearInterval(ticker);
  }
}

function say(line: string): void {
  console.log(`\n==> ${line}`);
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { vmm: { type: "string", default: "hyperdeno" } },
  });
  const vmm = values.vmm;
  if (vmm !== "hyperdeno" && vmm !== "qemu") {
    console.error(`--vmm must be hyperdeno or qemu, not ${vmm}`);
    return 2;
  }
  // Inside the test machine: the host prepared everything; just boot the guest.
  if (Deno.env.get("HYPERDENO_IN_TEST_MACHINE") === "1") return (await demoHere(vmm)).code;

  const started = performance.now();
  const prepared = await prepareGuestHost("demo", say);
  const mode = prepared.mode;
  if (prepared.problem !== undefined || mode.kind === "skip") {
    console.error(`demo cannot run: ${prepared.problem ?? mode.why}`);
    return 1;
  }
  let code: number;
  let timings: Omit<DemoTimings, "installing" | "total">;
  if (mode.kind === "direct") {
    const r = await demoHere(vmm);
    code = r.code;
    timings = { guest: r.guestSeconds };
  } else {
    ({ code, timings } = await demoNested(vmm, mode.why));
  }
  const total = (performance.now() - started) / 1000;
  console.log(`\n${timingLine({ installing: prepared.installSeconds, ...timings, total })}`);
  console.log(
    code === 0 ? `demo succeeded in ${total.toFixed(0)} s` : `demo failed (exit ${code})`,
  );
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
