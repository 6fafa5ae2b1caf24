/**
 * Guest network throughput and latency end to end: the same kernel and initramfs booted under
 * hyperdeno (`--net tap=…`, synthetic NIC, hv_netvsc) and under
 * `qemu-system-x86_64 -accel kvm -cpu host` (`-netdev tap,vhost=off` + virtio-net-pci, and
 * `vhost=on` when /dev/vhost-net exists), alternating in the same run, all on one tap in a
 * network namespace made for the run (addresses exist only there). In the guest: busybox
 * `ping` round trips to the tap side, then TCP guest→host (`dd if=/dev/zero | nc`) and
 * host→guest (`nc > /dev/null`) of N MiB against a Deno peer in the namespace.
 *
 * ```sh
 * deno run -A bench/net_e2e.ts [--mib 64] [--pings 20] [--rounds 1]
 * ```
 *
 * Needs root (namespaces, taps). Where this host's /dev/kvm cannot run a stock guest, it runs
 * inside the nested test machine: both VMMs then run nested, so compare the figures, not their
 * size.
 * @module
 */
import { parseArgs } from "node:util";
import { BASE_CMDLINE, type Vmm, vmmCommand } from "../tests/guest/harness.ts";
import { findHostKernel } from "../tests/guest/kit/host.ts";
import { initramfsFile } from "../tests/guest/kit/initramfs.ts";
import { GUEST_MARKER_PREFIX, parseSerial } from "../tests/guest/kit/markers.ts";
import { runGuestBench } from "./lib/nested.ts";
import { markdownRows } from "./report.ts";

const RESULT_PREFIX = "@@hyperdeno-net-e2e:result ";
const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const PEER = `${REPO}/tests/guest/cases/net_peer.ts`;
const MODULES = ["hv_vmbus", "hv_netvsc", "virtio_pci", "virtio_net"];
const NS = `hdbench${Deno.pid}`;
const TAP = "hdbtap0";
const HOST_IP = "10.78.0.1";
const GUEST_IP = "10.78.0.2";
const MAC = "52:54:00:be:0c:01";

interface Options {
  mib: number;
  pings: number;
  rounds: number;
}

/** A VMM configuration measured. */
type Variant = "hyperdeno" | "qemu-vhost-off" | "qemu-vhost-on";

interface Sample {
  variant: Variant;
  round: number;
  /** Seconds for N MiB guest→host and host→guest. */
  up: number;
  down: number;
  /** Average ping round trip, ms. */
  rttMs: number;
}

function guestScript(o: Options): string {
  return `
    for i in $(seq 1 60); do D=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); [ -n "$D" ] && break; sleep 1; done
    ip addr add ${GUEST_IP}/24 dev $D; ip link set $D up
    for i in $(seq 1 30); do [ "$(cat /sys/class/net/$D/carrier)" = 1 ] && break; sleep 1; done
    ping -c 2 -W 5 ${HOST_IP} >/dev/null || hd_fail "ping"
    rtt=$(ping -c ${o.pings} -i 0.2 -W 5 ${HOST_IP} | sed -n 's/.*= [0-9.]*\\/\\([0-9.]*\\)\\/.*/\\1/p')
    hd_mark rtt "$rtt"
    hd_mark peer ready
    read -t 300 -r reply
    now() { cut -d' ' -f1 /proc/uptime; }
    t0=$(now)
    dd if=/dev/zero bs=65536 count=${
    o.mib * 16
  } 2>/dev/null | nc ${HOST_IP} 5001 || hd_fail "upload"
    t1=$(now)
    nc ${HOST_IP} 5002 < /dev/null > /dev/null || hd_fail "download"
    t2=$(now)
    hd_mark up "$(awk "BEGIN { print $t1 - $t0 }")"
    hd_mark down "$(awk "BEGIN { print $t2 - $t1 }")"
  `;
}

function run(cmd: string[]): void {
  const r = new Deno.Command(cmd[0]!, { args: cmd.slice(1), stdout: "null", stderr: "piped" })
    .outputSync();
  if (!r.success) {
    throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

function netArgs(variant: Variant): string[] {
  if (variant === "hyperdeno") return ["--net", `tap=${TAP},mac=${MAC}`];
  const vhost = variant === "qemu-vhost-on" ? "on" : "off";
  return [
    "-netdev",
    `tap,id=n0,ifname=${TAP},script=no,downscript=no,vhost=${vhost}`,
    "-device",
    `virtio-net-pci,netdev=n0,mac=${MAC}`,
  ];
}

async function bootOnce(
  variant: Variant,
  round: number,
  o: Options,
  paths: { kernel: string; initrd: string },
): Promise<Sample> {
  const vmm: Vmm = variant === "hyperdeno" ? "hyperdeno" : "qemu";
  const argv = [
    "ip",
    "netns",
    "exec",
    NS,
    ...vmmCommand(vmm, {
      kernel: paths.kernel,
      initrd: paths.initrd,
      cmdline: `${BASE_CMDLINE} quiet`,
      memory: "512M",
      cpus: 1,
      vmmArgs: netArgs(variant),
    }),
  ];
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    cwd: REPO,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 900_000);
  const stderr = new Response(child.stderr).text();
  let serial = "";
  let peer: Deno.ChildProcess | undefined;
  const dec = new TextDecoder();
  for await (const chunk of child.stdout) {
    serial += dec.decode(chunk, { stream: true });
    if (!peer && serial.includes(`${GUEST_MARKER_PREFIX}:mark peer=`)) {
      peer = new Deno.Command("ip", {
        args: [
          "netns",
          "exec",
          NS,
          Deno.execPath(),
          "run",
          "-A",
          PEER,
          HOST_IP,
          "5001",
          String(o.mib << 20),
          "-",
          "5002",
          `zero:${o.mib << 20}`,
        ],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const r = peer.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let text = "";
      while (!text.includes("listening")) {
        const { value, done } = await r.read();
        if (done) break;
        text += value;
      }
      r.releaseLock();
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode("go\n"));
      w.releaseLock();
    }
  }
  const status = await child.status;
  clearTimeout(timer);
  await child.stdin.close().catch(() => {});
  try {
    peer?.kill("SIGKILL");
  } catch { /* done */ }
  await peer?.status;
  const report = parseSerial(serial, GUEST_MARKER_PREFIX);
  const s: Sample = {
    variant,
    round,
    up: Number(report.marks.get("up")),
    down: Number(report.marks.get("down")),
    rttMs: Number(report.marks.get("rtt")),
  };
  const failed = report.checks.filter((c) => !c.ok).map((c) => c.description);
  if (status.code !== 0 || failed.length > 0 || !(s.up > 0 && s.down > 0 && s.rttMs > 0)) {
    throw new Error(
      `${variant} did not finish the network benchmark (exit ${status.code}` +
        `${failed.length ? `; ${failed.join("; ")}` : ""}):\n${argv.join(" ")}\n` +
        `${serial.slice(-2000)}\n${(await stderr).slice(-2000)}`,
    );
  }
  return s;
}

async function initramfs(o: Options): Promise<string> {
  return await initramfsFile({ modules: MODULES, script: guestScript(o) });
}

async function measureHere(o: Options): Promise<Sample[]> {
  const kernel = findHostKernel().path;
  const initrd = await initramfs(o);
  run(["ip", "netns", "add", NS]);
  try {
    run(["ip", "-n", NS, "link", "set", "lo", "up"]);
    run(["ip", "netns", "exec", NS, "ip", "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"]);
    run(["ip", "-n", NS, "addr", "add", `${HOST_IP}/24`, "dev", TAP]);
    run(["ip", "-n", NS, "link", "set", TAP, "up"]);
    const variants: Variant[] = ["hyperdeno", "qemu-vhost-off"];
    try {
      Deno.statSync("/dev/vhost-net");
      variants.push("qemu-vhost-on");
    } catch { /* no vhost-net here */ }
    const samples: Sample[] = [];
    for (let r = 0; r < o.rounds; r++) {
      const order = r % 2 === 0 ? variants : [...variants].reverse();
      for (const v of order) {
        const s = await bootOnce(v, r, o, { kernel, initrd });
        console.error(
          `round ${r + 1}/${o.rounds} ${v}: up ${s.up.toFixed(2)} s, down ${
            s.down.toFixed(2)
          } s, ` +
            `rtt ${s.rttMs} ms`,
        );
        samples.push(s);
      }
    }
    return samples;
  } finally {
    new Deno.Command("ip", { args: ["netns", "del", NS] }).outputSync();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function table(samples: Sample[], where: string, o: Options): string {
  const refs = [...new Set(samples.map((s) => s.variant))].filter((v) => v !== "hyperdeno");
  const pick = (v: Variant, k: "up" | "down" | "rttMs") =>
    median(samples.filter((s) => s.variant === v).map((s) => s[k]));
  const mbps = (secs: number) => (o.mib * 1.048576) / secs;
  const rows = refs.flatMap((ref) => {
    const qemu = `qemu -accel kvm, virtio-net ${ref.replace("qemu-", "")}`;
    return [
      ["guest→host TCP, busybox nc", mbps(pick("hyperdeno", "up")), mbps(pick(ref, "up")), "MB/s"],
      [
        "host→guest TCP, busybox nc",
        mbps(pick("hyperdeno", "down")),
        mbps(pick(ref, "down")),
        "MB/s",
      ],
      ["ping round trip (avg)", pick("hyperdeno", "rttMs"), pick(ref, "rttMs"), "ms"],
    ].map(([figure, ours, theirs, unit]) => ({
      figure: figure as string,
      hyperdeno: `${(ours as number).toFixed(unit === "ms" ? 3 : 1)} ${unit}`,
      floor: qemu,
      floorValue: `${(theirs as number).toFixed(unit === "ms" ? 3 : 1)} ${unit}`,
      ratio: unit === "ms"
        ? `${((ours as number) / (theirs as number)).toFixed(2)}× the time`
        : `${((ours as number) / (theirs as number)).toFixed(2)}× the rate`,
      target: unit === "ms" ? "" : ref === "qemu-vhost-off" ? "≥ 0.7×" : "",
    }));
  });
  return `Debian ${findHostKernel().version} guest, 1 vCPU, 512 MiB, one tap in a private ` +
    `namespace; hyperdeno synthetic NIC (hv_netvsc) vs QEMU virtio-net; ${o.mib} MiB each way, ` +
    `${o.pings} pings; ${where}; medians of ${o.rounds} alternating round(s).\n\n` +
    markdownRows(rows);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      mib: { type: "string", default: "64" },
      pings: { type: "string", default: "20" },
      rounds: { type: "string", default: "1" },
      inner: { type: "boolean", default: false },
    },
  });
  const o: Options = {
    mib: Math.max(1, Number(values.mib)),
    pings: Math.max(1, Number(values.pings)),
    rounds: Math.max(1, Number(values.rounds)),
  };
  return await runGuestBench({
    title: "network end-to-end benchmark",
    script: "bench/net_e2e.ts",
    args: Object.entries(o).map(([k, v]) => `--${k}=${v}`),
    inner: values.inner,
    resultPrefix: RESULT_PREFIX,
    measure: () => measureHere(o),
    prepare: () => initramfs(o),
    render: (samples, where) => table(samples, where, o),
  });
}

if (import.meta.main) Deno.exit(await main());
