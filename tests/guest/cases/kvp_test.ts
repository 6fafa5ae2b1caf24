/**
 * KVP through the guest's own `hv_kvp_daemon` (Debian hyperv-daemons): a key the host sets on the
 * control socket lands in the guest's pool file, and the host reads it back by enumeration.
 */
import assert from "node:assert/strict";
import { askControl, bootGuest, describeRun, guestEnvironment } from "../harness.ts";

const DAEMON = "/usr/sbin/hv_kvp_daemon";
const haveDaemon = (() => {
  try {
    return Deno.statSync(DAEMON).isFile;
  } catch {
    return false;
  }
})();
if (!haveDaemon) {
  console.warn(`skipped: KVP guest test (${DAEMON} missing: apt-get install hyperv-daemons)`);
}

/** The daemon and what its dynamic loader needs, as initramfs files. */
function daemonFiles() {
  const files: Record<string, { data: Uint8Array; mode: number }> = {};
  for (
    const p of [DAEMON, "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
  ) files[p] = { data: Deno.readFileSync(Deno.realPathSync(p)), mode: 0o755 };
  return files;
}

Deno.test({
  name: "KVP: a key set on the control socket reaches hv_kvp_daemon's pool and reads back",
  ignore: !guestEnvironment().ok || !haveDaemon,
  async fn() {
    const dir = await Deno.makeTempDir();
    const sock = `${dir}/control.sock`;
    let set: Record<string, unknown> | undefined;
    let got: Record<string, unknown> | undefined;
    const running = bootGuest({
      modules: ["hv_vmbus", "hv_utils"],
      vmmArgs: ["--control", sock],
      timeoutMs: 240_000,
      files: daemonFiles(),
      script: `
        mkdir -p /var/lib/hyperv
        # hv_utils creates /dev/vmbus/hv_kvp when the KVP channel is probed, after insmod returns.
        for i in $(seq 1 60); do [ -e /dev/vmbus/hv_kvp ] && break; sleep 1; done
        ${DAEMON} -n >/dev/null 2>&1 &
        for i in $(seq 1 120); do
          grep -q hyperdeno-value /var/lib/hyperv/.kvp_pool_0 2>/dev/null && break
          sleep 1
        done
        hd_mark pool0 "$(grep -c hyperdeno-value /var/lib/hyperv/.kvp_pool_0 2>/dev/null)"
        sleep 5
      `,
    });
    let done = false;
    running.finally(() => done = true);
    for (let i = 0; i < 150 && !done; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      set = await askControl(sock, {
        cmd: "kvp-set",
        key: "hyperdeno-key",
        value: "hyperdeno-value",
      })
        .catch((e) => ({ ok: false, error: String(e) }));
      if (set.ok) break;
    }
    for (let i = 0; i < 30 && !done && set?.ok; i++) {
      got = await askControl(sock, { cmd: "kvp-get", key: "hyperdeno-key", pool: 0 })
        .catch((e) => ({ ok: false, error: String(e) }));
      if (got.ok) break;
      await new Promise((r) => setTimeout(r, 1000));
    }
    const run = await running;
    const ctx = `set ${JSON.stringify(set)} get ${JSON.stringify(got)}\n${describeRun(run, 30)}`;
    assert.equal(set?.ok, true, ctx);
    assert.equal(got?.value, "hyperdeno-value", ctx);
    assert.equal(run.marks.get("pool0"), "1", ctx);
    assert.equal(run.code, 0, ctx);
  },
});
