/**
 * `deno task demo`: boots the host's Debian kernel with a kit initramfs that prints what the
 * guest found (hypervisor, Hyper-V features, clocksource, VMBus devices) and powers off. Runs
 * directly when this host's /dev/kvm can run a stock guest, else inside the nested test machine.
 *
 * ```sh
 * deno task demo                 # our VMM: deno run -A cli.ts boot …
 * deno task demo --vmm qemu      # reference: QEMU/KVM with Hyper-V enlightenments and VMBus
 * ```
 * @module
 */
import { parseArgs } from "node:util";
import { bootGuest, describeRun, QEMU_HYPERV, runProblems, type Vmm } from "./harness.ts";
import { decideMachineMode, gatherMachineFacts } from "./machine/detect.ts";
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

async function demoHere(vmm: Vmm): Promise<number> {
  console.log(`booting /boot/vmlinuz-* under ${vmm} with the demo initramfs...`);
  const run = await bootGuest({
    vmm,
    modules: DEMO_MODULES,
    script: DEMO_SCRIPT,
    memory: "512M",
    cpus: 1,
    ...(vmm === "qemu" ? QEMU_HYPERV : {}),
  });
  for (const l of run.bodyLines) console.log(l);
  for (const m of run.moduleFailures) console.log(`   (module did not load: ${m})`);
  console.log(
    `\nsummary: hypervisor=${run.marks.get("hypervisor") || "?"} ` +
      `clocksource=${run.marks.get("clocksource") ?? "?"} ` +
      `vmbus_devices=${run.marks.get("vmbus_devices") ?? "?"}; ${vmm} exit ${run.code}, ` +
      `${run.seconds.toFixed(1)} s`,
  );
  // Module failures are findings here, not errors: judge the rest.
  const problems = runProblems(run).filter((p) => !p.startsWith("module failed"));
  if (problems.length > 0) {
    console.log(`\ndemo failed: ${problems.join("; ")}\n${describeRun(run)}`);
    return 1;
  }
  return 0;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { vmm: { type: "string", default: "hyperdeno" } },
  });
  const vmm = values.vmm;
  if (vmm !== "hyperdeno" && vmm !== "qemu") {
    console.error(`--vmm must be hyperdeno or qemu, not ${vmm}`);
    Deno.exit(2);
  }
  const mode = decideMachineMode(gatherMachineFacts());
  if (mode.kind === "direct") Deno.exit(await demoHere(vmm));
  if (mode.kind === "skip" || mode.install.length > 0) {
    console.error(
      `demo cannot run: ${mode.why}` +
        (mode.kind === "nested" ? `; install ${mode.install.join(" ")} first` : ""),
    );
    Deno.exit(1);
  }
  console.log(`this host cannot boot the guest directly (${mode.why});`);
  console.log("running the demo inside the nested test machine (QEMU TCG + nested SVM)...");
  const result = await runInTestMachine(
    [Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname, `--vmm=${vmm}`],
    {
      onLine: (l) => console.log(l),
      ...(Deno.stdout.isTerminal() ? {} : { env: { NO_COLOR: "1" } }),
    },
  );
  if (result.problem !== undefined) {
    console.error(`test machine failed: ${result.problem}`);
    Deno.exit(1);
  }
  Deno.exit(result.status ?? 1);
}
