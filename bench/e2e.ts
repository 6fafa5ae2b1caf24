/**
 * End to end: wall time from launching the VMM to the guest's init, for the host's Debian kernel
 * and a kit initramfs (no modules, an empty test body, then power-off), hyperdeno beside
 * `qemu-system-x86_64 -accel kvm -cpu host` with the same kernel, initramfs, command line,
 * memory and vCPUs, alternating the two in the same run.
 *
 * ```sh
 * deno run -A bench/e2e.ts [--rounds 3] [--memory 512M] [--cpus 1] [--hv LIST]
 * ```
 *
 * Where this host's /dev/kvm cannot run a stock 64-bit guest (PVM, no KVM), the measurement runs
 * inside the nested test machine (`tests/guest/machine`, QEMU TCG with nested SVM): both VMMs
 * then run nested, so the absolute times are far above bare metal but the ratio still compares
 * the two under the same conditions. Reported per VMM: the median time to the init's `booted`
 * marker on the serial console, and to the VMM's exit after power-off.
 * @module
 */
import { parseArgs } from "node:util";
import { BASE_CMDLINE, CLI_PATH, type Vmm, vmmCommand } from "../tests/guest/harness.ts";
import { findHostKernel } from "../tests/guest/kit/host.ts";
import { initramfsFile } from "../tests/guest/kit/initramfs.ts";
import { GUEST_MARKER_PREFIX } from "../tests/guest/kit/markers.ts";
import { which } from "../tests/guest/machine/detect.ts";
import { runGuestBench } from "./lib/nested.ts";
import { markdownRows } from "./report.ts";

const RESULT_PREFIX = "@@hyperdeno-e2e:result ";
const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

interface Options {
  rounds: number;
  memory: string;
  cpus: number;
  hv: string;
}

/** One boot's wall times (seconds from spawn), and the VMM's bare process start. */
interface Boot {
  vmm: Vmm;
  toInit: number;
  toExit: number;
  start: number;
}

function initramfsSpec() {
  return { script: "true" };
}

/** Boots once and times the `booted` marker and the exit. */
async function bootOnce(vmm: Vmm, o: Options, kernel: string, initrd: string): Promise<Boot> {
  const argv = vmmCommand(vmm, {
    kernel,
    initrd,
    cmdline: `${BASE_CMDLINE} quiet`,
    memory: o.memory,
    cpus: o.cpus,
    ...(vmm === "hyperdeno" ? { vmmArgs: ["--hv", o.hv] } : {}),
  });
  const start = performance.now();
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    cwd: REPO,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
  const stderr = new Response(child.stderr).text();
  const booted = `${GUEST_MARKER_PREFIX}:booted`;
  let toInit: number | undefined;
  let serial = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    serial += decoder.decode(chunk, { stream: true });
    if (toInit === undefined && serial.includes(booted)) {
      toInit = (performance.now() - start) / 1000;
    }
  }
  const status = await child.status;
  const toExit = (performance.now() - start) / 1000;
  clearTimeout(timer);
  if (toInit === undefined || status.code !== 0) {
    throw new Error(
      `${vmm} did not boot to init and power off (exit ${status.code ?? status.signal}):\n` +
        `${argv.join(" ")}\n${serial.slice(-2000)}\n${(await stderr).slice(-2000)}`,
    );
  }
  await stderr;
  return { vmm, toInit, toExit, start: await processStart(vmm) };
}

/** Seconds to start the VMM process and have it exit at once (`--version`). */
async function processStart(vmm: Vmm): Promise<number> {
  const argv = vmm === "hyperdeno"
    ? [Deno.execPath(), "run", "-A", CLI_PATH, "--version"]
    : [which("qemu-system-x86_64") ?? "qemu-system-x86_64", "-version"];
  const start = performance.now();
  const out = await new Deno.Command(argv[0]!, { args: argv.slice(1), cwd: REPO, stdin: "null" })
    .output();
  if (!out.success) throw new Error(`${argv.join(" ")} failed`);
  return (performance.now() - start) / 1000;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Runs the rounds here (this host can run stock guests) and returns the boots. */
async function measureHere(o: Options): Promise<Boot[]> {
  const kernel = findHostKernel().path;
  const initrd = await initramfsFile(initramfsSpec());
  const boots: Boot[] = [];
  for (let r = 0; r < o.rounds; r++) {
    const order: Vmm[] = r % 2 === 0 ? ["hyperdeno", "qemu"] : ["qemu", "hyperdeno"];
    for (const vmm of order) {
      const b = await bootOnce(vmm, o, kernel, initrd);
      console.error(
        `round ${r + 1}/${o.rounds} ${vmm}: init after ${b.toInit.toFixed(2)} s, ` +
          `exit after ${b.toExit.toFixed(2)} s, bare process ${b.start.toFixed(2)} s`,
      );
      boots.push(b);
    }
  }
  return boots;
}

/** The figures table of a set of boots, under a line saying what was booted where. */
function table(boots: Boot[], where: string, o: Options): string {
  const pick = (vmm: Vmm, k: "toInit" | "toExit" | "start") =>
    median(boots.filter((b) => b.vmm === vmm).map((b) => b[k]));
  const qemu = "qemu-system-x86_64 -accel kvm -cpu host";
  const rows = [
    ["boot: launch to init", "toInit"],
    ["boot: launch to exit (init powers off at once)", "toExit"],
    ["process start and exit (--version / -version)", "start"],
  ] as const;
  return `Debian ${findHostKernel().version} with a kit initramfs, ${o.cpus} vCPU, ${o.memory}, ` +
    `hyperdeno --hv ${o.hv}, ${where}; medians of ${o.rounds} alternating rounds.\n\n` +
    markdownRows(
      rows.map(([name, k]) => {
        const ours = pick("hyperdeno", k);
        const floor = pick("qemu", k);
        return {
          figure: name,
          hyperdeno: `${ours.toFixed(2)} s`,
          floor: qemu,
          floorValue: `${floor.toFixed(2)} s`,
          ratio: `${(ours / floor).toFixed(2)}× the time`,
          target: "",
        };
      }),
    );
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: "3" },
      memory: { type: "string", default: "512M" },
      cpus: { type: "string", default: "1" },
      hv: { type: "string", default: "all" },
      inner: { type: "boolean", default: false },
    },
  });
  const o: Options = {
    rounds: Math.max(1, Number(values.rounds)),
    memory: values.memory,
    cpus: Math.max(1, Number(values.cpus)),
    hv: values.hv,
  };
  return await runGuestBench({
    title: "end-to-end boot benchmark",
    script: "bench/e2e.ts",
    args: [`--rounds=${o.rounds}`, `--memory=${o.memory}`, `--cpus=${o.cpus}`, `--hv=${o.hv}`],
    inner: values.inner,
    resultPrefix: RESULT_PREFIX,
    measure: () => measureHere(o),
    prepare: () => initramfsFile(initramfsSpec()),
    render: (boots, where) => table(boots, where, o),
  });
}

if (import.meta.main) Deno.exit(await main());
