/**
 * Synthetic NIC with a stock Debian 6.1 guest (issue 16). Inside the test machine the test makes
 * a network namespace with a tap whose address (10.77.0.1/24) exists only there, and runs the VMM
 * in it with `--net tap=…,mac=…,mtu=1400`. The guest checks:
 *
 * - hv_netvsc binds: one netdev whose address is the CLI's MAC and whose MTU is 1400 (lowered
 *   through OID_GEN_MAXIMUM_FRAME_SIZE); after `ip link set up` the carrier is on;
 * - it pings the tap side;
 * - TCP both ways with busybox nc (`TRANSFER_MIB` each way): the host compares SHA-256 of what
 *   arrived with the sender's; the control socket's `status` shows the link up and the bytes
 *   counted on the queue;
 * - `rmmod hv_netvsc` + `insmod` brings the NIC back with the same MAC and it pings again.
 */
import assert from "node:assert/strict";
import { askControl, bootGuest, describeRun, guestEnvironment } from "../harness.ts";

/**
 * MiB moved each way. Nested (TCG running nested SVM) moves 1-5 MiB/s, so the default keeps the
 * suite inside CI's time; `HYPERDENO_NET_TEST_MIB=256` moves a few hundred, as a user's copy would.
 */
const TRANSFER_MIB = Number(Deno.env.get("HYPERDENO_NET_TEST_MIB") ?? "16");
const NS = `hdnet${Deno.pid}`;
const TAP = "hdtap0";
const HOST_IP = "10.77.0.1";
const GUEST_IP = "10.77.0.2";
const MAC = "52:54:00:ab:cd:02";
const MTU = 1400;

function run(cmd: string[]): { ok: boolean; out: string } {
  const r = new Deno.Command(cmd[0]!, { args: cmd.slice(1), stdout: "piped", stderr: "piped" })
    .outputSync();
  const d = new TextDecoder();
  return { ok: r.success, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

function must(cmd: string[]): void {
  const r = run(cmd);
  if (!r.ok) throw new Error(`${cmd.join(" ")} failed: ${r.out}`);
}

/** Whether this environment can make namespaces and taps (root with `ip` and the tun driver). */
function netnsSupport(): string | undefined {
  if (Deno.uid() !== 0) return "not root";
  if (!run(["ip", "-V"]).ok) return "no ip command";
  try {
    Deno.statSync("/dev/net/tun");
  } catch {
    return "no /dev/net/tun";
  }
  return undefined;
}

async function sha256(path: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const env = guestEnvironment();
const why = env.ok ? netnsSupport() : env.reason;
if (env.ok && why) console.warn(`skipped: network guest test (${why})`);

Deno.test({
  name:
    "net: hv_netvsc binds with the CLI's MAC and MTU, pings, moves TCP both ways intact, reloads",
  ignore: why !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "hyperdeno-net-" });
    const sock = `${dir}/control.sock`;
    const down = `${dir}/down.bin`;
    const up = `${dir}/up.bin`;
    const bytes = TRANSFER_MIB << 20;
    const data = new Uint8Array(bytes);
    for (let at = 0; at < bytes; at += 65536) crypto.getRandomValues(data.subarray(at, at + 65536));
    await Deno.writeFile(down, data);
    const downSha = await sha256(down);

    must(["ip", "netns", "add", NS]);
    let peer: Deno.ChildProcess | undefined;
    let peerOut = "";
    let status: Record<string, unknown> | undefined;
    try {
      must(["ip", "-n", NS, "link", "set", "lo", "up"]);
      must(["ip", "netns", "exec", NS, "ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
      must(["ip", "-n", NS, "addr", "add", `${HOST_IP}/24`, "dev", TAP]);
      must(["ip", "-n", NS, "link", "set", TAP, "up"]);
      const startPeer = async (): Promise<void> => {
        peer = new Deno.Command("ip", {
          args: [
            "netns",
            "exec",
            NS,
            Deno.execPath(),
            "run",
            "-A",
            new URL("./net_peer.ts", import.meta.url).pathname,
            HOST_IP,
            "5001",
            String(bytes),
            up,
            "5002",
            down,
          ],
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        const reader = peer.stdout.pipeThrough(new TextDecoderStream()).getReader();
        while (!peerOut.includes("listening")) {
          const { value, done } = await reader.read();
          if (done) throw new Error(`peer ended: ${peerOut}`);
          peerOut += value;
        }
        (async () => {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) return;
            peerOut += value;
          }
        })();
      };
      const guest = await bootGuest({
        wrapper: ["ip", "netns", "exec", NS],
        modules: ["hv_vmbus", "hv_netvsc"],
        memory: `${512 + 3 * TRANSFER_MIB}M`,
        vmmArgs: [
          "--net",
          `tap=${TAP},mac=${MAC},mtu=${MTU}`,
          "--control",
          sock,
        ],
        timeoutMs: 900_000,
        onMark: async (key, value) => {
          console.error(`net test: guest mark ${key}=${value}`);
          if (key === "peer") {
            await startPeer();
            return "go\n";
          }
          if (key === "status") {
            status = await askControl(sock, { cmd: "status" }).catch((e) => ({ error: String(e) }));
            return "go\n";
          }
        },
        script: `
          dev() { for i in $(seq 1 60); do
            d=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); [ -n "$d" ] && { echo $d; return; }
            sleep 1; done; }
          up() {
            ip addr add ${GUEST_IP}/24 dev $1 && ip link set $1 up || return 1
            for i in $(seq 1 30); do [ "$(cat /sys/class/net/$1/carrier 2>/dev/null)" = 1 ] && return 0; sleep 1; done
            return 1
          }
          D=$(dev)
          hd_mark ifname "$D"
          hd_mark mac "$(cat /sys/class/net/$D/address)"
          hd_mark mtu "$(cat /sys/class/net/$D/mtu)"
          hd_check "link comes up with carrier" up "$D"
          hd_mark operstate "$(cat /sys/class/net/$D/operstate)"
          hd_check "ping the tap side" ping -c 3 -W 5 ${HOST_IP}
          dd if=/dev/urandom of=/tmp/up bs=1048576 count=${TRANSFER_MIB} 2>/dev/null
          hd_mark up_sha "$(sha256sum /tmp/up | cut -d' ' -f1)"
          hd_mark peer ready
          read -t 300 -r reply
          t0=$(cut -d' ' -f1 /proc/uptime)
          hd_check "nc guest to host" nc ${HOST_IP} 5001 < /tmp/up
          t1=$(cut -d' ' -f1 /proc/uptime)
          nc ${HOST_IP} 5002 < /dev/null > /tmp/down
          t2=$(cut -d' ' -f1 /proc/uptime)
          hd_mark down_sha "$(sha256sum /tmp/down | cut -d' ' -f1)"
          hd_mark seconds "$t0 $t1 $t2"
          rm -f /tmp/up /tmp/down
          hd_mark status ready
          read -t 120 -r reply
          ip link set "$D" down
          hd_check "rmmod hv_netvsc" rmmod hv_netvsc
          hd_mark after_rmmod "$(ls /sys/class/net | grep -vc '^lo$')"
          hd_check "insmod hv_netvsc" insmod "/lib/modules/$(grep hv_netvsc /hd/modules)"
          D2=$(dev)
          hd_mark mac2 "$(cat /sys/class/net/$D2/address)"
          hd_check "link comes up again" up "$D2"
          hd_check "ping after reload" ping -c 2 -W 5 ${HOST_IP}
        `,
      });
      await peer?.status;
      const ctx = `peer: ${peerOut}\nstatus: ${JSON.stringify(status)}\n${describeRun(guest, 60)}`;
      assert.equal(guest.code, 0, ctx);
      for (const c of guest.checks) assert.ok(c.ok, `${c.description}\n${ctx}`);
      assert.equal(guest.exitStatus, 0, ctx);
      assert.equal(guest.marks.get("mac"), MAC, ctx);
      assert.equal(guest.marks.get("mtu"), String(MTU), ctx);
      assert.equal(guest.marks.get("operstate"), "up", ctx);
      assert.equal(guest.marks.get("after_rmmod"), "0", ctx);
      assert.equal(guest.marks.get("mac2"), MAC, ctx);
      assert.match(peerOut, new RegExp(`received ${bytes}`), ctx);
      assert.equal(await sha256(up), guest.marks.get("up_sha"), `guest→host data\n${ctx}`);
      assert.equal(guest.marks.get("down_sha"), downSha, `host→guest data\n${ctx}`);
      const net = (status?.net as Record<string, unknown>[] | undefined)?.[0];
      assert.equal(net?.link, "up", ctx);
      assert.equal(net?.mac, MAC, ctx);
      const q = (net?.queues as { rxBytes: number; txBytes: number }[])[0]!;
      assert.ok(q.rxBytes >= bytes && q.txBytes >= bytes, ctx);
      const [t0, t1, t2] = guest.marks.get("seconds")!.split(" ").map(Number);
      console.log(
        `net: ${TRANSFER_MIB} MiB guest→host in ${(t1! - t0!).toFixed(1)} s ` +
          `(${(TRANSFER_MIB / (t1! - t0!)).toFixed(1)} MiB/s), host→guest in ` +
          `${(t2! - t1!).toFixed(1)} s (${(TRANSFER_MIB / (t2! - t1!)).toFixed(1)} MiB/s); ` +
          `status ${JSON.stringify(net)}`,
      );
    } finally {
      try {
        peer?.kill("SIGKILL");
      } catch { /* exited */ }
      run(["ip", "netns", "exec", NS, "ip", "link", "del", TAP]);
      run(["ip", "netns", "del", NS]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
