/**
 * File copy and VSS ICs with a stock Debian 6.1 guest and Debian's `hv_fcopy_daemon` and
 * `hv_vss_daemon` (hyperv-daemons), in one boot:
 *
 * - File copy: `{"cmd":"copy-to-guest"}` of a random file arrives with the same SHA-256 (the guest
 *   hashes it); `status` shows the progress while it runs; copying onto the existing file without
 *   `overwrite` gives the guest's ERROR_ALREADY_EXISTS, named in the error.
 * - VSS: while the guest writes to two ext4 file systems in a loop (LUN 0 raw, LUN 1 qcow2),
 *   `{"cmd":"snapshot"}` of each freezes, copies and thaws; the copies pass `e2fsck -fn` (and
 *   `qemu-img check` for qcow2), the reported frozen time is printed, and the guest's syslog
 *   shows the daemon's freeze and thaw.
 *
 * The copy size defaults to 100 MiB (`GUEST_SERVICES_COPY_MIB` to change it).
 */
import assert from "node:assert/strict";
import { askControl, assertMark, describeRun, type GuestRun, guestTest } from "../harness.ts";

const FCOPY = "/usr/sbin/hv_fcopy_daemon";
const VSS = "/usr/sbin/hv_vss_daemon";
const haveDaemons = [FCOPY, VSS, "/usr/sbin/mkfs.ext4", "/usr/sbin/e2fsck"].every((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});
if (!haveDaemons) {
  console.warn(
    `skipped: guest services test (${FCOPY} or ${VSS} missing: apt-get install hyperv-daemons)`,
  );
}

const DIR = await Deno.makeTempDir({ prefix: "hyperdeno-guestsvc-" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const CONTROL = `${DIR}/control.sock`;
const SRC = `${DIR}/src.bin`;
const RAW = `${DIR}/a.raw`;
const QCOW = `${DIR}/b.qcow2`;
const SNAP_RAW = `${DIR}/a.snap.raw`;
const SNAP_QCOW = `${DIR}/b.snap.qcow2`;
const COPY_BYTES = Number(Deno.env.get("GUEST_SERVICES_COPY_MIB") ?? 100) * 2 ** 20;
const DISK_BYTES = 64 << 20;

function run(cmd: string, args: string[]): { ok: boolean; out: string; code: number } {
  const r = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  const d = new TextDecoder();
  return { ok: r.success, code: r.code, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

function sha256(path: string): string {
  const r = run("sha256sum", [path]);
  return r.out.split(" ")[0]!;
}

function daemonFiles() {
  const files: Record<string, { data: Uint8Array; mode: number }> = {};
  for (const p of [FCOPY, VSS, "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]) {
    files[p] = { data: Deno.readFileSync(Deno.realPathSync(p)), mode: 0o755 };
  }
  return files;
}

/** Host-side results, filled while the guest waits. */
const host: Record<string, unknown> = {};

async function prepare(): Promise<void> {
  // Random content in 1 MiB blocks (getRandomValues takes at most 64 KiB per call).
  const f = await Deno.open(SRC, { create: true, write: true, truncate: true });
  const block = new Uint8Array(1 << 20);
  for (let left = COPY_BYTES; left > 0; left -= block.length) {
    for (let i = 0; i < block.length; i += 65536) {
      crypto.getRandomValues(block.subarray(i, i + 65536));
    }
    await f.write(block.subarray(0, Math.min(left, block.length)));
  }
  f.close();
  host.srcSha = sha256(SRC);
  // Journaled ext4 made on the host (busybox mke2fs makes ext2 only); the qcow2 from it.
  const raw = await Deno.open(RAW, { create: true, write: true, truncate: true });
  await raw.truncate(DISK_BYTES);
  raw.close();
  const mk = run("mkfs.ext4", ["-q", "-F", RAW]);
  if (!mk.ok) throw new Error(`mkfs.ext4: ${mk.out}`);
  const q = run("qemu-img", ["convert", "-O", "qcow2", RAW, QCOW]);
  if (!q.ok) throw new Error(`qemu-img convert: ${q.out}`);
}

/** Runs the host side while the guest waits at its mark. */
async function hostSide(): Promise<void> {
  // 1. File copy with progress sampled from status.
  const progress: unknown[] = [];
  let copying = true;
  const sampler = (async () => {
    while (copying) {
      await new Promise((r) => setTimeout(r, 2000));
      const s = await askControl(CONTROL, { cmd: "status" }).catch(() => undefined);
      if (s?.fcopy) progress.push(s.fcopy);
    }
  })();
  const t0 = performance.now();
  host.copy = await askControl(CONTROL, { cmd: "copy-to-guest", src: SRC, dst: "/root/copy.bin" });
  host.copySeconds = (performance.now() - t0) / 1000;
  copying = false;
  await sampler;
  host.progress = progress;
  host.again = await askControl(CONTROL, {
    cmd: "copy-to-guest",
    src: SRC,
    dst: "/root/copy.bin",
    overwrite: false,
  });
  // 2. Snapshots while the guest writes.
  host.snapRaw = await askControl(CONTROL, { cmd: "snapshot", disk: 0, path: SNAP_RAW });
  host.snapQcow = await askControl(CONTROL, { cmd: "snapshot", disk: 1, path: SNAP_QCOW });
}

if (haveDaemons) await prepare();

if (haveDaemons) {
  guestTest("file copy (SHA-256 intact, ALREADY_EXISTS) and VSS snapshots while the guest writes", {
    modules: ["hv_vmbus", "hv_utils", "hv_storvsc", "sd_mod", "ext4", "crc32c_generic"],
    memory: "1G",
    timeoutMs: 1_200_000,
    vmmArgs: [
      "--control",
      CONTROL,
      "--disk",
      `path=${RAW},lun=0`,
      "--disk",
      `path=${QCOW},format=qcow2,lun=1`,
    ],
    files: daemonFiles(),
    script: `
      syslogd -n -O /tmp/syslog &
      for i in $(seq 1 60); do [ -e /dev/vmbus/hv_fcopy ] && [ -e /dev/vmbus/hv_vss ] && break; sleep 1; done
      for i in $(seq 1 60); do [ -b /dev/sda ] && [ -b /dev/sdb ] && break; sleep 1; done
      mkdir -p /mnt/a /mnt/b /root
      for d in a b; do mount -t ext4 /dev/sd$d /mnt/$d || hd_fail "mount $d"; done
      ${FCOPY} -n >/dev/null 2>&1 &
      ${VSS} -n >/dev/null 2>&1 &
      sleep 2
      writer() {
        i=0
        while [ ! -e /tmp/stop ]; do
          i=$((i + 1))
          echo "$i" > /mnt/$1/counter
          dd if=/dev/zero of=/mnt/$1/f$((i % 8)) bs=4k count=16 conv=fsync 2>/dev/null
        done
      }
      writer a & wa=$!
      writer b & wb=$!
      hd_mark services-ready 1
      read -t 1100 -r reply
      touch /tmp/stop
      wait $wa $wb
      hd_mark copy_sha "$(sha256sum /root/copy.bin | cut -d' ' -f1)"
      hd_mark copy_size "$(stat -c %s /root/copy.bin)"
      hd_mark counters "$(cat /mnt/a/counter) $(cat /mnt/b/counter)"
      hd_mark vss_log "$(grep -o 'VSS: op=[A-Z ]*: [a-z]*' /tmp/syslog | sort | uniq -c | tr -s ' ' | tr '\\n' ';')"
      hd_mark fcopy_log "$(grep -c 'exists' /tmp/syslog)"
      umount /mnt/a && umount /mnt/b || hd_fail "umount"
      true
    `,
    onMark: async (key) => {
      if (key !== "services-ready") return;
      try {
        await hostSide();
      } catch (e) {
        host.error = String(e);
      }
      return "go\n";
    },
  }, (r: GuestRun) => {
    const ctx = `host ${JSON.stringify(host)}\n${describeRun(r, 40)}`;
    assert.equal(host.error, undefined, ctx);
    // File copy.
    const copy = host.copy as Record<string, unknown>;
    assert.equal(copy?.ok, true, ctx);
    assert.equal(copy.bytes, COPY_BYTES, ctx);
    assertMark(r, "copy_size", String(COPY_BYTES));
    assertMark(r, "copy_sha", host.srcSha as string);
    const progress = host.progress as { bytes: number; total: number; state: string }[];
    assert.ok(
      progress.some((p) => p.state === "copying" && p.bytes > 0 && p.bytes < p.total) ||
        (host.copySeconds as number) < 4,
      `status showed the copy in progress: ${JSON.stringify(progress)}`,
    );
    const again = host.again as Record<string, unknown>;
    assert.equal(again?.ok, false, ctx);
    assert.match(String(again.error), /already exists.*0x80070050/, ctx);
    // VSS snapshots.
    for (
      const [name, snap, path, qcow] of [
        ["raw", host.snapRaw, SNAP_RAW, false],
        ["qcow2", host.snapQcow, SNAP_QCOW, true],
      ] as const
    ) {
      const s = snap as Record<string, unknown>;
      assert.equal(s?.ok, true, `${name} snapshot: ${JSON.stringify(s)}\n${ctx}`);
      assert.equal(typeof s.frozenMs, "number");
      let image = path;
      if (qcow) {
        const check = run("qemu-img", ["check", path]);
        assert.ok(check.ok, `qemu-img check ${name}: ${check.out}`);
        image = `${path}.raw`;
        const conv = run("qemu-img", ["convert", "-O", "raw", path, image]);
        assert.ok(conv.ok, conv.out);
      }
      const fsck = run("e2fsck", ["-fn", image]);
      assert.equal(fsck.code, 0, `e2fsck -fn of the ${name} snapshot: ${fsck.out}`);
    }
    const log = r.marks.get("vss_log") ?? "";
    assert.match(log, /VSS: op=FREEZE: succeeded/, ctx);
    assert.match(log, /VSS: op=THAW: succeeded/, ctx);
    const counters = (r.marks.get("counters") ?? "").split(" ").map(Number);
    assert.ok(counters.every((n) => n > 0), `the guest kept writing: ${counters}`);
    console.log(
      `file copy: ${COPY_BYTES >> 20} MiB in ${(host.copySeconds as number).toFixed(1)} s ` +
        `(${((COPY_BYTES / 2 ** 20) / (host.copySeconds as number)).toFixed(2)} MiB/s); ` +
        `VSS frozen ${(host.snapRaw as Record<string, unknown>).frozenMs} ms (raw ${
          DISK_BYTES >> 20
        } MiB copy), ` +
        `${
          (host.snapQcow as Record<string, unknown>).frozenMs
        } ms (qcow2); writer iterations ${counters}`,
    );
  });
}
