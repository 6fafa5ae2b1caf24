/**
 * Guest disk throughput end to end: the same kernel, initramfs and raw image booted under
 * hyperdeno (`--disk`, synthetic SCSI, hv_storvsc) and under
 * `qemu-system-x86_64 -accel kvm -cpu host` (`-drive if=virtio`, virtio-blk), alternating the two
 * in the same run. In the guest: sequential O_DIRECT write and read of N MiB with busybox `dd`
 * (1 MiB blocks), then random 4 KiB O_DIRECT reads over the whole disk
 * (`tests/guest/tools/odirect.c`), each repeated `--reps` times; medians are reported.
 *
 * ```sh
 * deno run -A bench/storage_e2e.ts [--mib 64] [--reads 500] [--reps 3] [--rounds 1]
 *   [--cache writeback|none] [--cpus 1]
 * ```
 *
 * `--cache writeback` (default) has both VMMs go through the host page cache (hyperdeno's raw
 * backend is buffered; QEMU `cache=writeback`); `--cache none` uses O_DIRECT on the image for both
 * (`direct=on`, `cache=none`), which needs a file system that supports it (tmpfs does not).
 * Where this host's /dev/kvm cannot run a stock guest (PVM), the measurement runs inside the
 * nested test machine, whose image lives on its tmpfs: both VMMs then run nested, so compare the
 * two figures, not their size.
 * @module
 */
import { parseArgs } from "node:util";
import { BASE_CMDLINE, type Vmm, vmmCommand } from "../tests/guest/harness.ts";
import { findHostKernel } from "../tests/guest/kit/host.ts";
import { initramfsFile } from "../tests/guest/kit/initramfs.ts";
import { GUEST_MARKER_PREFIX, parseSerial } from "../tests/guest/kit/markers.ts";
import { guestTool } from "../tests/guest/kit/tools.ts";
import { runGuestBench } from "./lib/nested.ts";
import { markdownRows } from "./report.ts";

const RESULT_PREFIX = "@@hyperdeno-storage-e2e:result ";
const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const MODULES = ["hv_vmbus", "hv_storvsc", "sd_mod", "virtio_pci", "virtio_blk"];

interface Options {
  mib: number;
  reads: number;
  reps: number;
  rounds: number;
  cache: "writeback" | "none";
  cpus: number;
}

/** Seconds per repetition of each figure in one boot. */
interface Sample {
  vmm: Vmm;
  round: number;
  seqWrite: number[];
  seqRead: number[];
  randRead: number[];
}

function guestScript(o: Options): string {
  return `
    for i in $(seq 1 30); do [ -b /dev/sda ] || [ -b /dev/vda ] && break; sleep 1; done
    d=/dev/sda; [ -b /dev/vda ] && d=/dev/vda
    hd_mark disk "$d"
    now() { cut -d' ' -f1 /proc/uptime; }
    took() { awk "BEGIN { print $2 - $1 }"; }
    for r in $(seq 1 ${o.reps}); do
      t0=$(now)
      dd if=/dev/zero of=$d bs=1M count=${o.mib} oflag=direct 2>/dev/null || hd_fail "dd write"
      t1=$(now)
      dd if=$d of=/dev/null bs=1M count=${o.mib} iflag=direct 2>/dev/null || hd_fail "dd read"
      t2=$(now)
      rand=$(/hd/odirect randread $d ${o.reads}) || hd_fail "random reads: $rand"
      hd_mark seqwrite$r "$(took $t0 $t1)"
      hd_mark seqread$r "$(took $t1 $t2)"
      hd_mark randread$r "\${rand#ok }"
    done
  `;
}

async function initramfs(o: Options): Promise<string> {
  const tool = await guestTool("odirect");
  if (!tool.ok) throw new Error(`cannot build the guest's random-read tool: ${tool.reason}`);
  return await initramfsFile({
    modules: MODULES,
    files: { "/hd/odirect": { data: tool.image, mode: 0o755 } },
    script: guestScript(o),
  });
}

function diskArgs(vmm: Vmm, image: string, o: Options): string[] {
  if (vmm === "hyperdeno") {
    return ["--disk", `path=${image},format=raw${o.cache === "none" ? ",direct=on" : ""}`];
  }
  return ["-drive", `file=${image},if=virtio,format=raw,cache=${o.cache}`];
}

/** Boots once and returns the guest's timings. */
async function bootOnce(
  vmm: Vmm,
  round: number,
  o: Options,
  paths: { kernel: string; initrd: string; image: string },
): Promise<Sample> {
  const argv = vmmCommand(vmm, {
    kernel: paths.kernel,
    initrd: paths.initrd,
    cmdline: `${BASE_CMDLINE} quiet`,
    memory: "512M",
    cpus: o.cpus,
    vmmArgs: diskArgs(vmm, paths.image, o),
  });
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    cwd: REPO,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 600_000);
  const out = await child.output();
  clearTimeout(timer);
  const serial = new TextDecoder().decode(out.stdout);
  const report = parseSerial(serial, GUEST_MARKER_PREFIX);
  const pick = (key: string) =>
    Array.from({ length: o.reps }, (_, i) => Number(report.marks.get(`${key}${i + 1}`)));
  const sample: Sample = {
    vmm,
    round,
    seqWrite: pick("seqwrite"),
    seqRead: pick("seqread"),
    randRead: pick("randread"),
  };
  const failed = report.checks.filter((c) => !c.ok).map((c) => c.description);
  const all = [...sample.seqWrite, ...sample.seqRead, ...sample.randRead];
  if (out.code !== 0 || failed.length > 0 || all.some((x) => !(x > 0))) {
    throw new Error(
      `${vmm} did not finish the disk benchmark (exit ${out.signal ?? out.code}` +
        `${failed.length ? `; ${failed.join("; ")}` : ""}):\n${argv.join(" ")}\n` +
        `${serial.slice(-2000)}\n${new TextDecoder().decode(out.stderr).slice(-2000)}`,
    );
  }
  return sample;
}

/** Runs the rounds on this host (it can run stock guests). */
async function measureHere(o: Options): Promise<Sample[]> {
  const kernel = findHostKernel().path;
  const initrd = await initramfs(o);
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-storage-e2e-" });
  const image = `${dir}/disk.raw`;
  try {
    // Real data on the whole disk (no holes), twice the transfer size.
    const f = await Deno.open(image, { create: true, write: true });
    const chunk = new Uint8Array(1 << 20).fill(0xa5);
    for (let i = 0; i < 2 * o.mib; i++) await f.write(chunk);
    f.close();
    const samples: Sample[] = [];
    for (let r = 0; r < o.rounds; r++) {
      const order: Vmm[] = r % 2 === 0 ? ["hyperdeno", "qemu"] : ["qemu", "hyperdeno"];
      for (const vmm of order) {
        const s = await bootOnce(vmm, r, o, { kernel, initrd, image });
        console.error(
          `round ${r + 1}/${o.rounds} ${vmm}: write ${s.seqWrite.join("/")} s, read ` +
            `${s.seqRead.join("/")} s, ${o.reads} random reads ${s.randRead.join("/")} s`,
        );
        samples.push(s);
      }
    }
    return samples;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function table(samples: Sample[], where: string, o: Options): string {
  type Key = "seqWrite" | "seqRead" | "randRead";
  const secs = (vmm: Vmm, k: Key, round?: number) =>
    median(
      samples.filter((s) => s.vmm === vmm && (round === undefined || s.round === round))
        .flatMap((s) => s[k]),
    );
  const mbps = (s: number) => (o.mib * 1.048576) / s;
  const iops = (s: number) => o.reads / s;
  const rows = [
    [`sequential O_DIRECT write, ${o.mib} MiB in 1 MiB blocks (dd)`, "seqWrite", mbps, "MB/s"],
    [`sequential O_DIRECT read, ${o.mib} MiB in 1 MiB blocks (dd)`, "seqRead", mbps, "MB/s"],
    [`random 4 KiB O_DIRECT reads, ${o.reads} at queue depth 1`, "randRead", iops, "IOPS"],
  ] as const;
  const rounds = [...new Set(samples.map((s) => s.round))];
  const qemu = `qemu -accel kvm, virtio-blk cache=${o.cache}`;
  return `Debian ${findHostKernel().version} guest, ${o.cpus} vCPU, 512 MiB, raw image; ` +
    `hyperdeno synthetic SCSI (hv_storvsc${o.cache === "none" ? ", direct=on" : ""}) vs ` +
    `${qemu}; ${where}; figures are medians of ${o.rounds} alternating round(s) × ${o.reps} ` +
    `repetitions, the ratio the median of per-round ratios (range in brackets).\n\n` +
    markdownRows(rows.map(([name, k, f, unit]) => {
      const ours = f(secs("hyperdeno", k));
      const ref = f(secs("qemu", k));
      const ratios = rounds.map((r) => f(secs("hyperdeno", k, r)) / f(secs("qemu", k, r)));
      const range = ratios.length > 1
        ? ` [${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}]`
        : "";
      const digits = unit === "IOPS" ? 0 : 1;
      return {
        figure: name,
        hyperdeno: `${ours.toFixed(digits)} ${unit}`,
        floor: qemu,
        floorValue: `${ref.toFixed(digits)} ${unit}`,
        ratio: `${median(ratios).toFixed(2)}× the rate${range}`,
        target: "",
      };
    }));
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      mib: { type: "string", default: "64" },
      reads: { type: "string", default: "500" },
      reps: { type: "string", default: "3" },
      rounds: { type: "string", default: "1" },
      cache: { type: "string", default: "writeback" },
      cpus: { type: "string", default: "1" },
      inner: { type: "boolean", default: false },
    },
  });
  if (values.cache !== "writeback" && values.cache !== "none") {
    console.error(`--cache ${values.cache}: expected writeback or none`);
    return 2;
  }
  const o: Options = {
    mib: Math.max(1, Number(values.mib)),
    reads: Math.max(1, Number(values.reads)),
    reps: Math.max(1, Number(values.reps)),
    rounds: Math.max(1, Number(values.rounds)),
    cache: values.cache,
    cpus: Math.max(1, Number(values.cpus)),
  };
  return await runGuestBench({
    title: "storage end-to-end benchmark",
    script: "bench/storage_e2e.ts",
    args: Object.entries(o).map(([k, v]) => `--${k}=${v}`),
    inner: values.inner,
    resultPrefix: RESULT_PREFIX,
    measure: () => measureHere(o),
    prepare: () => initramfs(o), // and the O_DIRECT tool compiled
    render: (samples, where) => table(samples, where, o),
  });
}

if (import.meta.main) Deno.exit(await main());
