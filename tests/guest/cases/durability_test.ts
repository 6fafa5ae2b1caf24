/**
 * Nothing acknowledged is lost (issue 19): the guest writes 4 KiB records with O_DIRECT|O_SYNC
 * (`tests/guest/tools/odirect.c`, which also reads each back) to a raw and a qcow2 disk in turn,
 * and prints each record on the serial console once the write returned. After a random number of
 * acknowledgements the host kills the VMM with SIGKILL at a random moment. Every acknowledged
 * record must be in the image files afterwards, and `qemu-img check` must find no corruption in
 * the qcow2 image. The same when the guest resets itself (sysrq b) mid-write instead.
 */
import assert from "node:assert/strict";
import { bootGuest, describeRun, guestEnvironment } from "../harness.ts";
import { guestTool } from "../kit/tools.ts";
import { createDisk } from "../../../src/devices/storage/backend/mod.ts";

const odirect = await guestTool("odirect");
if (!odirect.ok) {
  console.warn(`odirect cannot be built, the durability test will fail: ${odirect.reason}`);
}
const RECORD = 4096;
const SEED = 0x5100;
const DISK_SIZE = 16 << 20;

/** The guest tool's pattern: the top byte of an LCG per byte, from `seed`. */
function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

function qemuImg(args: string[]): { code: number; out: string } {
  const r = new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" }).outputSync();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

/** How the run is cut short: the host kills the VMM, or the guest resets itself. */
type Cut = "sigkill" | "reset";

async function durability(cut: Cut): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-durability-" });
  const raw = `${dir}/a.raw`;
  const qcow = `${dir}/b.qcow2`;
  await createDisk(raw, DISK_SIZE);
  await createDisk(qcow, DISK_SIZE, { format: "qcow2" });
  // Cut after 20-60 acknowledgements, 0-300 ms after the one that triggers it.
  const cutAfter = 20 + Math.floor(Math.random() * 41);
  const cutDelayMs = Math.floor(Math.random() * 300);
  const acked: { lun: number; k: number }[] = [];
  let child: Deno.ChildProcess | undefined;
  let cutAt: number | undefined;
  const run = await bootGuest({
    cpus: 2,
    modules: ["hv_vmbus", "hv_storvsc", "sd_mod"],
    vmmArgs: ["--disk", `path=${raw},lun=0`, "--disk", `path=${qcow},format=qcow2,lun=1`],
    files: odirect.ok ? { "/hd/odirect": { data: odirect.image, mode: 0o755 } } : {},
    timeoutMs: 300_000,
    script: `
      [ -x /hd/odirect ] || hd_fail "odirect was not built"
      for i in $(seq 1 30); do [ -b /dev/sdb ] && break; sleep 1; done
      for d in /sys/block/sd*; do
        lun=$(basename "$(readlink $d/device)" | cut -d: -f4)
        ln -s /dev/$(basename $d) /dev/lun$lun
      done
      echo 1 > /proc/sys/kernel/sysrq
      k=0
      while [ $k -lt 1000 ]; do
        for l in 0 1; do
          /hd/odirect write $(readlink -f /dev/lun$l) $((k * ${RECORD})) ${RECORD} \\
            $((${SEED} + l * 4096 + k)) >/dev/null || { hd_fail "write $l:$k"; break 2; }
          hd_mark ack "$l:$k"
        done
        k=$((k + 1))
      done &
      # The host answers "reset" when it wants the guest to reset itself, mid-write.
      read -t 240 -r reply
      [ "$reply" = reset ] && echo b > /proc/sysrq-trigger
      wait
    `,
    onSpawn: (c) => child = c,
    onMark: (key, value) => {
      if (key !== "ack") return;
      const [lun, k] = value.split(":").map(Number) as [number, number];
      acked.push({ lun, k });
      if (acked.length !== cutAfter) return;
      if (cut === "sigkill") {
        setTimeout(() => {
          cutAt = acked.length;
          child?.kill("SIGKILL");
        }, cutDelayMs);
        return;
      }
      cutAt = acked.length;
      return "reset\n";
    },
  });
  const ctx = `${cut} after ${cutAt} acknowledgements (trigger ${cutAfter}` +
    `${cut === "sigkill" ? ` + ${cutDelayMs} ms` : ""})\n${describeRun(run, 20)}`;
  if (cut === "sigkill") assert.equal(run.signal, "SIGKILL", `the VMM was not killed: ${ctx}`);
  else {
    // --no-reboot: the guest's reset ends the VMM with 0, before the init's end marker.
    assert.equal(run.code, 0, `the VMM did not exit on the reset: ${ctx}`);
    assert.equal(run.ended, false, `the guest finished instead of resetting: ${ctx}`);
  }
  assert.ok(acked.length >= cutAfter, `only ${acked.length} acknowledgements: ${ctx}`);

  const check = qemuImg(["check", qcow]);
  // 0: clean; 3: only leaked clusters (allocated, unreferenced: space, never data, is lost).
  assert.ok(check.code === 0 || check.code === 3, `qemu-img check: ${check.out}\n${ctx}`);
  const qcowRaw = `${dir}/b.converted.raw`;
  const conv = qemuImg(["convert", "-f", "qcow2", "-O", "raw", qcow, qcowRaw]);
  assert.equal(conv.code, 0, conv.out);
  const images = [Deno.readFileSync(raw), Deno.readFileSync(qcowRaw)];
  const lost = acked.filter(({ lun, k }) => {
    const got = images[lun]!.subarray(k * RECORD, (k + 1) * RECORD);
    const want = pattern(SEED + lun * 4096 + k, RECORD);
    return got.length !== RECORD || got.some((b, i) => b !== want[i]);
  });
  console.log(
    `${cut} after ${acked.length} acknowledged records (raw ${
      acked.filter((a) => a.lun === 0).length
    }, qcow2 ${acked.filter((a) => a.lun === 1).length}); lost ${lost.length}; qemu-img ` +
      `check exit ${check.code}: ${check.out.trim().split("\n").pop()}`,
  );
  assert.deepEqual(lost, [], `acknowledged records missing from the images: ${ctx}`);
  await Deno.remove(dir, { recursive: true });
}

Deno.test({
  name: "SIGKILL of the VMM mid-write: every acknowledged O_SYNC write is in the raw and qcow2 " +
    "images, qemu-img check finds no corruption",
  ignore: !guestEnvironment().ok,
  fn: () => durability("sigkill"),
});

Deno.test({
  name: "guest reset mid-write (sysrq b): every acknowledged O_SYNC write is in the raw and " +
    "qcow2 images, qemu-img check finds no corruption",
  ignore: !guestEnvironment().ok,
  fn: () => durability("reset"),
});
