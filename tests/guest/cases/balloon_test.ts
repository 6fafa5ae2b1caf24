/**
 * Dynamic Memory with a stock Debian 6.1 guest (`hv_balloon`): the guest first touches 400 MiB
 * (so the host really backs it), then `{"cmd":"balloon","target":"768M"}` takes 256 MiB: the
 * guest's MemTotal drops by that much and the VMM's RSS drops with it (measured, printed);
 * balloon back to 1G restores MemTotal. `{"cmd":"memory"}` shows the guest's status reports.
 */
import assert from "node:assert/strict";
import { askControl, describeRun, type GuestRun, guestTest } from "../harness.ts";

const DIR = await Deno.makeTempDir({ prefix: "hyperdeno-balloon-" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const CONTROL = `${DIR}/control.sock`;
const host: Record<string, Record<string, unknown>> = {};
const MIB = 2 ** 20;

function memTotalKb(line: string | undefined): number {
  return Number(/MemTotal:\s+(\d+)/.exec(line ?? "")?.[1] ?? NaN);
}

guestTest("balloon: 256 MiB taken (MemTotal and VMM RSS drop) and given back", {
  modules: ["hv_vmbus", "hv_balloon"],
  memory: "1G",
  timeoutMs: 600_000,
  vmmArgs: ["--control", CONTROL],
  script: `
    for i in $(seq 1 60); do dmesg | grep -q 'Dynamic Memory protocol' && break; sleep 1; done
    hd_mark dm "$(dmesg | grep -o 'Dynamic Memory protocol version [0-9.]*')"
    # Status reports start after pressure_report_delay (45 s); busybox insmod ignores the
    # command line's hv_balloon.pressure_report_delay, so set it here.
    echo 0 > /sys/module/hv_balloon/parameters/pressure_report_delay
    # Touch 400 MiB, then free it: the host now backs pages the guest does not use.
    mkdir -p /fill && mount -t tmpfs -o size=500m tmpfs /fill
    dd if=/dev/zero of=/fill/x bs=1M count=400 2>/dev/null; rm /fill/x; umount /fill
    sleep 3
    hd_mark before "$(grep MemTotal /proc/meminfo)"
    hd_mark inflate 1
    read -t 300 -r reply
    hd_mark after_inflate "$(grep MemTotal /proc/meminfo)"
    hd_mark deflate 1
    read -t 300 -r reply
    hd_mark after_deflate "$(grep MemTotal /proc/meminfo)"
  `,
  onMark: async (key) => {
    if (key === "inflate") {
      host.before = await askControl(CONTROL, { cmd: "memory" });
      host.inflate = await askControl(CONTROL, { cmd: "balloon", target: "768M" });
      host.inflated = await askControl(CONTROL, { cmd: "memory" });
      return "go\n";
    }
    if (key === "deflate") {
      host.deflate = await askControl(CONTROL, { cmd: "balloon", target: "1G" });
      host.deflated = await askControl(CONTROL, { cmd: "memory" });
      return "go\n";
    }
  },
}, (r: GuestRun) => {
  const ctx = `host ${JSON.stringify(host)}\n${describeRun(r, 30)}`;
  assert.match(r.marks.get("dm") ?? "", /version 2\.0/, ctx);
  assert.equal(host.inflate?.ok, true, ctx);
  assert.equal(host.inflate?.changedBytes, -256 * MIB, ctx);
  const before = memTotalKb(r.marks.get("before"));
  const inflated = memTotalKb(r.marks.get("after_inflate"));
  const deflated = memTotalKb(r.marks.get("after_deflate"));
  assert.equal(before - inflated, 256 * 1024, `MemTotal ${before} -> ${inflated} kB\n${ctx}`);
  assert.equal(deflated, before, `MemTotal back to ${before}: ${deflated}\n${ctx}`);
  assert.equal(host.deflate?.changedBytes, 256 * MIB, ctx);
  const rssBefore = host.before?.hostRssBytes as number;
  const rssAfter = host.inflated?.hostRssBytes as number;
  assert.ok(
    rssBefore - rssAfter > 200 * MIB,
    `VMM RSS ${rssBefore / MIB} -> ${rssAfter / MIB} MiB\n${ctx}`,
  );
  assert.equal(host.deflated?.balloonedBytes, 0);
  assert.ok((host.inflated?.statusReports as number) > 0, "the guest sent status reports");
  console.log(
    `balloon: MemTotal ${before} -> ${inflated} -> ${deflated} kB; VMM RSS ${
      (rssBefore / MIB).toFixed(0)
    } -> ${(rssAfter / MIB).toFixed(0)} MiB after taking 256 MiB`,
  );
});
