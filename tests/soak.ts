/**
 * `deno task soak [--minutes N]`: a 2-vCPU guest under mixed load for N minutes (default 10):
 * O_DIRECT and buffered disk I/O on a raw and a qcow2 disk (storvsc, sub-channels), the four ICs
 * (heartbeats every 2 s, a KVP write from the host every minute), timers (sleeps, the synthetic
 * timer clockevent), and a `reboot -f` every `--reboot-every` seconds (default 90). Every minute
 * it prints the VMM's resident memory and open file descriptors; it fails (exit 1) when either
 * grows without bound: RSS in the last third of the run more than 1.5 times the first sample
 * after the first reboot, or more fds than then plus 8.
 *
 * On a host whose /dev/kvm cannot run a stock guest it runs itself inside the nested test
 * machine (`tests/guest/machine`), like `deno task test`.
 * @module
 */
import { parseArgs } from "node:util";
import { askControl, bootGuest, guestEnvironment } from "./guest/harness.ts";
import { guestTool } from "./guest/kit/tools.ts";
import { decideMachineMode, gatherMachineFacts } from "./guest/machine/detect.ts";
import { runInTestMachine } from "./guest/machine/test_machine.ts";
import { createDisk } from "../src/devices/storage/backend/mod.ts";

/** One sample of the VMM process. */
export interface SoakSample {
  minute: number;
  rssKiB: number;
  fds: number;
  boots: number;
}

/** Why the samples show unbounded growth, or undefined when they do not. */
export function soakProblem(samples: readonly SoakSample[]): string | undefined {
  const base = samples.find((s) => s.boots >= 2) ?? samples[0];
  if (base === undefined || samples.length < 3) return undefined;
  const tail = samples.slice(Math.floor((samples.length * 2) / 3));
  const rss = Math.min(...tail.map((s) => s.rssKiB));
  if (rss > base.rssKiB * 1.5) {
    return `VMM RSS grew from ${base.rssKiB} KiB to at least ${rss} KiB in the last third`;
  }
  const fds = Math.min(...tail.map((s) => s.fds));
  if (fds > base.fds + 8) return `VMM open fds grew from ${base.fds} to ${fds}`;
  return undefined;
}

function sample(pid: number): { rssKiB: number; fds: number } | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? NaN);
    const fds = [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
    return { rssKiB, fds };
  } catch {
    return undefined;
  }
}

function usage(message: string): never {
  console.error(`soak: ${message}`);
  console.error("usage: deno task soak [--minutes N] [--reboot-every SECONDS]");
  Deno.exit(2);
}

async function soak(minutes: number, rebootEvery: number): Promise<number> {
  const odirect = await guestTool("odirect");
  if (!odirect.ok) usage(`tests/guest/tools/odirect.c cannot be built: ${odirect.reason}`);
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-soak-" });
  const sock = `${dir}/control.sock`;
  await createDisk(`${dir}/a.raw`, 64 << 20);
  await createDisk(`${dir}/b.qcow2`, 64 << 20, { format: "qcow2" });
  const samples: SoakSample[] = [];
  let child: Deno.ChildProcess | undefined;
  let boots = 0;
  let shutdownTries = 0;
  let stopping = false;
  const started = performance.now();
  const deadline = started + minutes * 60_000;
  const timer = setInterval(async () => {
    if (!child) return;
    const s = sample(child.pid);
    const minute = Math.round((performance.now() - started) / 60_000);
    if (s) {
      samples.push({ minute, boots, ...s });
      console.log(`minute ${minute}: VMM RSS ${s.rssKiB} KiB, ${s.fds} open fds, boot ${boots}`);
    }
    if (performance.now() < deadline) {
      await askControl(sock, { cmd: "kvp-set", key: "soak", value: String(minute) })
        .catch(() => {});
      return;
    }
    // The end: ask the guest to power off through the shutdown IC (it may be rebooting, so try
    // again next minute); after three tries, kill the VMM.
    const r = await askControl(sock, { cmd: "shutdown" }).catch(() => undefined);
    if (!r?.ok && ++shutdownTries >= 3) {
      stopping = true;
      child.kill("SIGKILL");
    }
  }, 60_000);
  const run = await bootGuest({
    cpus: 2,
    noReboot: false,
    modules: ["hv_vmbus", "hv_utils", "hv_storvsc", "sd_mod", "ext4", "crc32c_generic"],
    vmmArgs: [
      "--control",
      sock,
      "--disk",
      `path=${dir}/a.raw,lun=0`,
      "--disk",
      `path=${dir}/b.qcow2,format=qcow2,lun=1`,
    ],
    files: {
      "/hd/odirect": { data: odirect.image, mode: 0o755 },
      "/sbin/poweroff": { data: "#!/bin/sh\nexec /bin/busybox poweroff -f\n", mode: 0o755 },
    },
    timeoutMs: (minutes + 10) * 60_000,
    onSpawn: (c) => child = c,
    onMark: (key) => {
      if (key === "boot") boots++;
    },
    script: `
      hd_mark boot 1
      for i in $(seq 1 30); do [ -b /dev/sdb ] && break; sleep 1; done
      a=$(readlink -f /dev/sda); b=$(readlink -f /dev/sdb)
      end=$(( $(cut -d. -f1 /proc/uptime) + ${rebootEvery} ))
      n=0
      while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do
        for d in $a $b; do
          /hd/odirect write $d $(( (n % 1000) * 65536 )) 65536 $n >/dev/null || echo "soak: write failed"
          dd if=$d of=/dev/null bs=64k count=16 skip=$(( n % 900 )) 2>/dev/null
        done
        (sleep 0.2; date > /tmp/t) &
        n=$((n + 1))
      done
      wait
      echo "soak: rebooting after $n rounds"
      reboot -f; sleep 30
    `,
  });
  clearInterval(timer);
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  console.log(
    `soak: ${boots} boots in ${((performance.now() - started) / 60_000).toFixed(1)} min, ` +
      `VMM exit ${run.code ?? run.signal}`,
  );
  const problem = soakProblem(samples) ??
    (run.timedOut ? "the VMM did not stop at the end" : undefined) ??
    (run.code !== 0 && !stopping ? `the VMM exited with ${run.code ?? run.signal}` : undefined) ??
    (boots < 2 ? `only ${boots} boot(s): the guest did not reboot` : undefined);
  if (problem !== undefined) {
    console.log(`FAILED: ${problem}`);
    return 1;
  }
  console.log(`soak: no unbounded growth (${samples.length} samples)`);
  return 0;
}

async function main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: Deno.args,
      options: { minutes: { type: "string" }, "reboot-every": { type: "string" } },
      strict: true,
    }).values;
  } catch (e) {
    usage((e as Error).message);
  }
  const minutes = Number(values.minutes ?? 10);
  const rebootEvery = Number(values["reboot-every"] ?? 90);
  if (!(Number.isInteger(minutes) && minutes >= 1)) usage("--minutes must be a whole number ≥ 1");
  if (!(Number.isInteger(rebootEvery) && rebootEvery >= 20)) {
    usage("--reboot-every must be a whole number of seconds ≥ 20");
  }
  if (guestEnvironment().ok) return await soak(minutes, rebootEvery);
  const mode = decideMachineMode(gatherMachineFacts());
  if (mode.kind !== "nested") usage(`cannot run a guest here: ${mode.why}`);
  console.log(`soak: ${mode.why}; running inside the nested test machine`);
  const result = await runInTestMachine(
    [Deno.execPath(), "run", "-A", new URL(import.meta.url).pathname, ...Deno.args],
    {
      cwd: new URL("../", import.meta.url).pathname,
      timeoutMs: (minutes + 20) * 60_000,
      onLine: (l) => console.log(l),
    },
  );
  if (result.problem !== undefined) {
    console.log(`FAILED: the test machine: ${result.problem}`);
    return 1;
  }
  return result.status ?? 1;
}

if (import.meta.main) Deno.exit(await main());
