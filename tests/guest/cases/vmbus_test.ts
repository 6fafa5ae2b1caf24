/**
 * VMBus and integration components with a stock Debian 6.1 guest (issue: VMBus host + ICs):
 * protocol 5.3, the four IC class ids, hv_utils binding them, time sync correcting a clock
 * started an hour wrong, SIGTERM shutting the guest down through the shutdown IC, a reboot that
 * reconnects, and a guest panic reported through the crash MSRs.
 */
import assert from "node:assert/strict";
import {
  askControl,
  assertMark,
  bootGuest,
  describeRun,
  guestEnvironment,
  guestTest,
} from "../harness.ts";
import { findHostKernel } from "../kit/host.ts";
import { readModule } from "../kit/modules.ts";

const IC_CLASSES = {
  shutdown: "{0e0b6031-5213-4934-818b-38d90ced39db}",
  timesync: "{9527e630-d0ae-497b-adce-e80ab0175caf}",
  heartbeat: "{57164f39-9115-4e78-ab55-382f3bd5422d}",
  kvp: "{a9a0f4e7-5a45-4d96-b827-8a841e8c03e6}",
};

/** hv_utils, put in the initramfs as a plain file: the body loads it after reading the clock. */
async function hvUtilsFile(): Promise<Uint8Array | undefined> {
  let k;
  try {
    k = findHostKernel();
  } catch {
    return undefined; // no kernel: the guest tests are skipped anyway
  }
  const dep = Deno.readTextFileSync(`${k.modulesDir}/modules.dep`);
  const line = dep.split("\n").find((l) => /(^|\/)hv_utils\.ko(\.[a-z]+)?:/.test(l));
  if (!line) throw new Error(`hv_utils is not in ${k.modulesDir}/modules.dep`);
  return await readModule(`${k.modulesDir}/${line.slice(0, line.indexOf(":"))}`);
}

const HV_UTILS = await hvUtilsFile();
const TIMESYNC_DIR = await Deno.makeTempDir({ prefix: "hyperdeno-vmbus-" });
const TIMESYNC_SOCK = `${TIMESYNC_DIR}/control.sock`;
let heartbeat: Record<string, unknown> | undefined;

guestTest("VMBus 5.3 with the four integration components; time sync fixes a clock an hour off", {
  cpus: 2,
  modules: ["hv_vmbus"],
  vmmArgs: ["--rtc-offset=-3600", "--control", TIMESYNC_SOCK],
  files: HV_UTILS ? { "/hd/hv_utils.ko": { data: HV_UTILS, mode: 0o644 } } : {},
  script: `
    # Before hv_utils: the kernel clock is what it read from the RTC, an hour behind.
    hd_mark clock_before_sync "$(date -u +%s)"
    insmod /hd/hv_utils.ko || hd_fail "insmod hv_utils"
    for i in $(seq 1 30); do
      [ "$(ls -d /sys/bus/vmbus/drivers/hv_utils/*-* 2>/dev/null | wc -l)" = 4 ] && break; sleep 1
    done
    hd_mark version "$(dmesg | grep -o 'Vmbus version:[0-9.]*' | head -1)"
    hd_mark classes "$(cat /sys/bus/vmbus/devices/*/class_id | sort | tr '\\n' ' ')"
    hd_mark bound "$(ls -d /sys/bus/vmbus/drivers/hv_utils/*-* 2>/dev/null | wc -l)"
    hd_mark ic_versions "$(dmesg | grep -o -E '(Shutdown|TimeSync|Heartbeat) IC version [0-9.]*' | sort | tr '\\n' ';')"
    # The time sync IC's SYNC sets the kernel clock; the RTC stays an hour behind it.
    sleep 3
    hd_mark epoch "$(date -u +%s)"
    hd_mark rtc_minus_clock "$(( $(cat /sys/class/rtc/rtc0/since_epoch) - $(date -u +%s) ))"
    # Heartbeats every 2 s: by now the host has seen answers.
    sleep 4
    hd_mark heartbeat 1
    read -t 60 -r reply
  `,
  onMark: async (key) => {
    if (key !== "heartbeat") return;
    const status = await askControl(TIMESYNC_SOCK, { cmd: "status" }).catch(() => undefined);
    heartbeat = status?.heartbeat as Record<string, unknown> | undefined;
    return "go\n";
  },
}, (run) => {
  assertMark(run, "version", "Vmbus version:5.3");
  const classes = run.marks.get("classes") ?? "";
  for (const [name, id] of Object.entries(IC_CLASSES)) {
    assert.ok(
      classes.includes(id),
      `${name} class ${id} offered: ${classes}\n${describeRun(run, 20)}`,
    );
  }
  assertMark(run, "bound", "6"); // shutdown, time sync, heartbeat, KVP, file copy, VSS
  assertMark(
    run,
    "ic_versions",
    /Heartbeat IC version 3\.0;.*Shutdown IC version 3\.2;.*TimeSync IC version 4\.0;/,
  );
  // Host wall time at which each mark arrived (marks reach the host within a second or two).
  const hostStart = Date.now() / 1000 - run.seconds;
  const hostAt = (key: string) => hostStart + (run.markArrivals.get(key) ?? NaN);
  const before = Number(run.marks.get("clock_before_sync")) - hostAt("clock_before_sync");
  const after = Number(run.marks.get("epoch")) - hostAt("epoch");
  const ctx = `clock - host: ${before.toFixed(1)} s before time sync, ${after.toFixed(1)} s after` +
    `\n${describeRun(run, 20)}`;
  assert.ok(Math.abs(before + 3600) < 30, `the guest clock did not start an hour behind: ${ctx}`);
  assert.ok(Math.abs(after) < 30, `time sync did not correct the clock: ${ctx}`);
  const rtcMinusClock = Number(run.marks.get("rtc_minus_clock"));
  assert.ok(Math.abs(rtcMinusClock + 3600) <= 2, `RTC - clock ${rtcMinusClock} s: ${ctx}`);
  console.log(
    `guest clock - host clock: ${before.toFixed(1)} s before time sync, ` +
      `${after.toFixed(1)} s after; heartbeat ${JSON.stringify(heartbeat)}`,
  );
  // Heartbeat traffic: the guest answered the host's heartbeats (every 2 s) and is healthy.
  assert.equal(heartbeat?.status, "healthy", `heartbeat ${JSON.stringify(heartbeat)}\n${ctx}`);
  assert.ok(
    Number(heartbeat?.answered) >= 2,
    `heartbeat answers: ${JSON.stringify(heartbeat)}\n${ctx}`,
  );
});

Deno.test({
  name: "control socket lists the six open IC channels; SIGTERM shuts the guest down via the " +
    "shutdown IC; with no doorbell eventfds, doorbells exit to the vCPU and still work",
  ignore: !guestEnvironment().ok,
  async fn() {
    const dir = await Deno.makeTempDir();
    const sock = `${dir}/control.sock`;
    let child: Deno.ChildProcess | undefined;
    let channels: { state: string; device: string }[] = [];
    let status: Record<string, unknown> = {};
    const running = bootGuest({
      modules: ["hv_vmbus", "hv_utils"],
      vmmArgs: ["--control", sock],
      // Every doorbell takes the path that exits to the vCPU thread (the other tests use
      // eventfds): the ICs still open and the shutdown IC still answers through it.
      env: { HYPERDENO_DOORBELL_EVENTFDS: "0" },
      // The body idles until the host's shutdown request powers the guest off.
      script: `echo ics-up; sleep 600`,
      // orderly_poweroff() runs /sbin/poweroff; the kit's init is a shell, so make it act.
      files: {
        "/sbin/poweroff": { data: "#!/bin/sh\nexec /bin/busybox poweroff -f\n", mode: 0o755 },
      },
      onSpawn: (c) => child = c,
    });
    let done = false;
    running.finally(() => done = true);
    // Wait for the guest's hv_utils to open all six IC channels, then send SIGTERM.
    for (let i = 0; i < 240 && !done; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      const r = await askControl(sock, { cmd: "channels" }).catch(() => undefined);
      channels = (r?.channels as typeof channels) ?? [];
      if (channels.filter((c) => c.state === "open").length === 6) break;
    }
    status = await askControl(sock, { cmd: "status" }).catch(() => ({}));
    child?.kill("SIGTERM");
    const run = await running;
    const ctx = describeRun(run, 30);
    assert.equal(
      channels.filter((c) => c.state === "open").length,
      6,
      JSON.stringify(channels) + ctx,
    );
    const exits = Array.isArray(status.exits) ? status.exits : [];
    const doorbellExits = exits.reduce((n: number, e) => n + (Number(e?.doorbell) || 0), 0);
    assert.equal(status.doorbells, 0, `eventfd doorbells with none bound\n${ctx}`);
    assert.ok(doorbellExits > 0, `no doorbell exited to a vCPU: ${JSON.stringify(status)}${ctx}`);
    console.log(`doorbells that exited to the vCPU before SIGTERM: ${doorbellExits}`);
    assert.equal(run.code, 0, ctx);
    assert.match(run.stderr, /asking the guest to shut down/, ctx);
    assert.match(run.serial, /reboot: Power down|Power down/, ctx);
  },
});

Deno.test({
  name: "reboot -f with hv_vmbus loaded: the guest comes back and reconnects to VMBus",
  ignore: !guestEnvironment().ok,
  async fn() {
    const run = await bootGuest({
      modules: ["hv_vmbus"],
      noReboot: false,
      script: `
        cmos() { printf "\\\\$(printf %o $1)" | dd of=/dev/port bs=1 seek=112 count=1 2>/dev/null; }
        cmos 65; n=$(dd if=/dev/port bs=1 skip=113 count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
        n=$((n + 1)); cmos 65; printf "\\\\$(printf %o $n)" | dd of=/dev/port bs=1 seek=113 count=1 2>/dev/null
        hd_mark boot "$n"
        hd_mark vmbus_devices "$(ls /sys/bus/vmbus/devices | wc -l)"
        if [ "$n" -lt 2 ]; then reboot -f; sleep 30; fi`,
    });
    const ctx = describeRun(run, 40);
    assert.equal(run.code, 0, ctx);
    assert.equal(run.marks.get("boot"), "2", ctx);
    // Six ICs (shutdown, time sync, heartbeat, KVP, file copy, VSS), dynamic memory, the
    // synthetic keyboard, mouse and video: the same ten after the reboot.
    assert.equal(run.serial.match(/@@hyperdeno:mark vmbus_devices=10/g)?.length, 2, ctx);
    assertMark(run, "vmbus_devices", "10");
  },
});

Deno.test({
  name: "a guest panic is reported through the Hyper-V crash MSRs and ends the VMM with 1",
  ignore: !guestEnvironment().ok,
  async fn() {
    const run = await bootGuest({
      modules: ["hv_vmbus"],
      cmdline: "panic=0",
      script: `echo c > /proc/sysrq-trigger; sleep 60`,
    });
    const ctx = describeRun(run, 30);
    assert.equal(run.code, 1, ctx);
    assert.match(run.stderr, /hyperdeno: guest crash: guest panic \(linux\)/, ctx);
  },
});
