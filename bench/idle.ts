/**
 * Idle cost: host CPU the VMM process burns while its guest sits idle (Linux at its shell, no
 * work), hyperdeno beside `qemu-system-x86_64 -accel kvm` with the same kernel and initramfs.
 * Measured as user+system CPU time of the VMM process (all its threads, from /proc/PID/stat)
 * over a fixed window that starts `--settle` seconds after the guest reports it is idle: the VMM's
 * boot-time work must be over first (hyperdeno's main isolate collects its boot garbage in the
 * first ~10 s after the guest is up; per-thread samples show its main thread at zero after that).
 *
 * ```sh
 * deno run -A bench/idle.ts [--seconds 20] [--cpus 2] [--settle 15]
 * ```
 *
 * On hosts whose /dev/kvm cannot run a stock guest it runs inside the nested test machine, where
 * both VMMs run nested: compare the two numbers, not their size.
 * @module
 */
import { parseArgs } from "node:util";
import { BASE_CMDLINE, type Vmm, vmmCommand } from "../tests/guest/harness.ts";
import { findHostKernel } from "../tests/guest/kit/host.ts";
import { initramfsFile } from "../tests/guest/kit/initramfs.ts";
import { decideMachineMode, gatherMachineFacts } from "../tests/guest/machine/detect.ts";
import { runInTestMachine } from "../tests/guest/machine/test_machine.ts";

const RESULT = "@@hyperdeno-idle:result ";
const CLK_TCK = 100;

/** User+system CPU seconds of process `pid` (all threads). */
function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime (fields 14, 15)
}

async function measure(
  vmm: Vmm,
  window: { seconds: number; settle: number },
  cpus: number,
  kernel: string,
  initrd: string,
) {
  const { seconds, settle } = window;
  const argv = vmmCommand(vmm, {
    kernel,
    initrd,
    cmdline: `${BASE_CMDLINE} quiet`,
    memory: "512M",
    cpus,
  });
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  })
    .spawn();
  let text = "";
  let result: number | undefined;
  const dec = new TextDecoder();
  for await (const chunk of child.stdout) {
    text += dec.decode(chunk, { stream: true });
    if (result === undefined && text.includes("idle-now")) {
      await new Promise((r) => setTimeout(r, settle * 1000)); // let boot-time work settle
      const a = cpuSeconds(child.pid);
      await new Promise((r) => setTimeout(r, seconds * 1000));
      result = (cpuSeconds(child.pid) - a) / seconds;
      child.kill("SIGKILL");
    }
  }
  await child.status;
  return result;
}

async function inMachine(window: { seconds: number; settle: number }, cpus: number) {
  const kernel = findHostKernel().path;
  const initrd = await initramfsFile({ script: "echo idle-now; sleep 3600" });
  for (const vmm of ["hyperdeno", "qemu"] as const) {
    const r = await measure(vmm, window, cpus, kernel, initrd);
    console.log(`${RESULT}${JSON.stringify({ vmm, cpuPerSecond: r })}`);
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      seconds: { type: "string", default: "20" },
      cpus: { type: "string", default: "2" },
      settle: { type: "string", default: "15" },
    },
  });
  const seconds = Number(values.seconds);
  const settle = Number(values.settle);
  const cpus = Number(values.cpus);
  if (
    Deno.env.get("HYPERDENO_IN_TEST_MACHINE") === "1" ||
    decideMachineMode(gatherMachineFacts()).kind === "direct"
  ) {
    await inMachine({ seconds, settle }, cpus);
  } else {
    const results: Record<string, number | undefined> = {};
    const run = await runInTestMachine(
      [
        "deno",
        "run",
        "-A",
        "bench/idle.ts",
        ...["--seconds", String(seconds), "--cpus", String(cpus), "--settle", String(settle)],
      ],
      {
        onLine: (l) => {
          const i = l.indexOf(RESULT);
          if (i >= 0) {
            const r = JSON.parse(l.slice(i + RESULT.length));
            results[r.vmm] = r.cpuPerSecond;
          }
        },
      },
    );
    if (run.problem) console.error(`test machine: ${run.problem}`);
    const fmt = (v: number | undefined) =>
      v === undefined ? "n/a" : `${(v * 100).toFixed(2)} % of a CPU`;
    console.log(
      `| VMM | host CPU while the guest idles (${cpus} vCPUs, ${seconds} s after ${settle} s) |`,
    );
    console.log("| --- | --- |");
    console.log(`| hyperdeno | ${fmt(results.hyperdeno)} |`);
    console.log(`| qemu -accel kvm | ${fmt(results.qemu)} |`);
    if (results.hyperdeno !== undefined && results.qemu) {
      console.log(`ratio hyperdeno/qemu: ${(results.hyperdeno / results.qemu).toFixed(2)}`);
    }
  }
}
