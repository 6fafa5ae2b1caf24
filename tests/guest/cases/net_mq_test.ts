/**
 * Synthetic NIC with two queues and guest IP reporting (issue 16, part 2), on a stock Debian 6.1
 * guest with 2 vCPUs: the tap (multi_queue, in a namespace of the test's own) is opened with
 * `queues=2`; hv_netvsc opens a sub-channel, so the guest shows rx-0, rx-1, tx-0, tx-1; several
 * TCP connections spread over both channels, and `status` shows packets received and sent on
 * both queues. With `hv_kvp_daemon` running, `{"cmd":"guest-ip"}` reports the address the guest
 * configured on the NIC with the CLI's MAC.
 */
import assert from "node:assert/strict";
import { askControl, bootGuest, describeRun, guestEnvironment } from "../harness.ts";

const NS = `hdnetmq${Deno.pid}`;
const TAP = "hdtap1";
const HOST_IP = "10.77.1.1";
const GUEST_IP = "10.77.1.2";
const MAC = "52:54:00:ab:cd:03";
const FLOWS = 8;
const DAEMON = "/usr/sbin/hv_kvp_daemon";

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

function missing(): string | undefined {
  if (Deno.uid() !== 0) return "not root";
  if (!run(["ip", "-V"]).ok) return "no ip command";
  try {
    Deno.statSync(DAEMON);
  } catch {
    return `${DAEMON} missing (apt-get install hyperv-daemons)`;
  }
  return undefined;
}

/** The daemon and what its dynamic loader needs, as initramfs files. */
function daemonFiles() {
  const files: Record<string, { data: Uint8Array; mode: number }> = {};
  for (const p of [DAEMON, "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]) {
    files[p] = { data: Deno.readFileSync(Deno.realPathSync(p)), mode: 0o755 };
  }
  return files;
}

const env = guestEnvironment();
const why = env.ok ? missing() : env.reason;
if (env.ok && why) console.warn(`skipped: multi-queue network guest test (${why})`);

Deno.test({
  name: "net: queues=2 gives the guest two channels that both carry traffic; guest-ip reports " +
    "the guest's address",
  ignore: why !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "hyperdeno-netmq-" });
    const sock = `${dir}/control.sock`;
    let before: Record<string, unknown> | undefined;
    let after: Record<string, unknown> | undefined;
    let guestIp: Record<string, unknown> | undefined;
    const servers: Deno.ChildProcess[] = [];
    must(["ip", "netns", "add", NS]);
    try {
      must(["ip", "-n", NS, "link", "set", "lo", "up"]);
      must([
        "ip",
        "netns",
        "exec",
        NS,
        "ip",
        "tuntap",
        "add",
        "dev",
        TAP,
        "mode",
        "tap",
        "multi_queue",
      ]);
      must(["ip", "-n", NS, "addr", "add", `${HOST_IP}/24`, "dev", TAP]);
      must(["ip", "-n", NS, "link", "set", TAP, "up"]);
      const peer = new URL("./net_peer.ts", import.meta.url).pathname;
      const guest = await bootGuest({
        wrapper: ["ip", "netns", "exec", NS],
        modules: ["hv_vmbus", "hv_netvsc", "hv_utils"],
        cpus: 2,
        memory: "512M",
        files: daemonFiles(),
        vmmArgs: ["--net", `tap=${TAP},mac=${MAC},queues=2`, "--control", sock],
        timeoutMs: 900_000,
        onMark: async (key, value) => {
          console.error(`net mq test: guest mark ${key}=${value}`);
          if (key === "peers") {
            // FLOWS receivers (guest → host) and FLOWS senders (host → guest), 1 MiB each.
            const p = new Deno.Command("ip", {
              args: [
                "netns",
                "exec",
                NS,
                Deno.execPath(),
                "run",
                "-A",
                peer,
                HOST_IP,
                "6000",
                String(1 << 20),
                "-",
                "7000",
                `zero:${1 << 20}`,
                String(FLOWS),
              ],
              stdout: "piped",
              stderr: "inherit",
            }).spawn();
            servers.push(p);
            const r = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
            let text = "";
            while (!text.includes("listening")) {
              const { value: v, done } = await r.read();
              if (done) break;
              text += v;
            }
            r.releaseLock();
            before = await askControl(sock, { cmd: "status" }).catch((e) => ({ e: String(e) }));
            return "go\n";
          }
          if (key === "status") {
            after = await askControl(sock, { cmd: "status" }).catch((e) => ({ e: String(e) }));
            for (let i = 0; i < 60 && !(guestIp?.ok); i++) {
              guestIp = await askControl(sock, { cmd: "guest-ip" })
                .catch((e) => ({ ok: false, error: String(e) }));
              const a = (guestIp?.adapters as { addresses: string[] }[] | undefined)?.[0];
              if (guestIp?.ok && a?.addresses.includes(GUEST_IP)) break;
              guestIp = { ...guestIp, ok: false };
              await new Promise((r) => setTimeout(r, 1000));
            }
            return "go\n";
          }
        },
        script: `
          mkdir -p /var/lib/hyperv
          for i in $(seq 1 60); do D=$(ls /sys/class/net | grep -v '^lo$' | head -n 1); [ -n "$D" ] && break; sleep 1; done
          ip addr add ${GUEST_IP}/24 dev $D
          ip link set $D up
          for i in $(seq 1 30); do [ "$(cat /sys/class/net/$D/carrier)" = 1 ] && break; sleep 1; done
          # vRSS opens the sub-channel after register_netdev: wait for the second queue.
          for i in $(seq 1 30); do [ -e /sys/class/net/$D/queues/rx-1 ] && break; sleep 1; done
          hd_mark queues "$(ls /sys/class/net/$D/queues | tr '\\n' ' ')"
          hd_check "ping" ping -c 2 -W 5 ${HOST_IP}
          for i in $(seq 1 60); do [ -e /dev/vmbus/hv_kvp ] && break; sleep 1; done
          ${DAEMON} -n >/dev/null 2>&1 &
          hd_mark peers ready
          read -t 300 -r reply
          for i in $(seq 0 ${FLOWS - 1}); do
            dd if=/dev/zero bs=65536 count=16 2>/dev/null | nc ${HOST_IP} $((6000 + i)) || hd_fail "upload $i"
            nc ${HOST_IP} $((7000 + i)) < /dev/null | wc -c > /tmp/n; [ "$(cat /tmp/n)" = 1048576 ] || hd_fail "download $i: $(cat /tmp/n)"
          done
          hd_mark status ready
          read -t 300 -r reply
        `,
      });
      const ctx = `before ${JSON.stringify(before)}\nafter ${JSON.stringify(after)}\nguest-ip ` +
        `${JSON.stringify(guestIp)}\n${describeRun(guest, 60)}`;
      assert.equal(guest.code, 0, ctx);
      for (const c of guest.checks) assert.ok(c.ok, `${c.description}\n${ctx}`);
      assert.equal(guest.marks.get("queues"), "rx-0 rx-1 tx-0 tx-1", ctx);
      type Q = { queue: number; rxPackets: number; txPackets: number };
      const queues = (after?.net as { queues: Q[] }[] | undefined)?.[0]?.queues ?? [];
      assert.equal(queues.length, 2, ctx);
      for (const q of queues) {
        assert.ok(q.rxPackets > 0, `queue ${q.queue} received nothing\n${ctx}`);
        assert.ok(q.txPackets > 0, `queue ${q.queue} sent nothing\n${ctx}`);
      }
      const adapters = guestIp?.adapters as { mac: string; addresses: string[] }[] | undefined;
      assert.equal(adapters?.[0]?.mac, MAC, ctx);
      assert.ok(adapters?.[0]?.addresses.includes(GUEST_IP), ctx);
      console.log(`net mq: queues ${JSON.stringify(queues)}; guest-ip ${JSON.stringify(adapters)}`);
    } finally {
      for (const s of servers) {
        try {
          s.kill("SIGKILL");
        } catch { /* exited */ }
      }
      run(["ip", "netns", "exec", NS, "ip", "link", "del", TAP]);
      run(["ip", "netns", "del", NS]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});
