/**
 * Synthetic SCSI with a stock Debian 6.1 guest (issue: storvsc), in one boot with five LUNs:
 *
 * - LUN 0 raw and LUN 1 qcow2 (converted from the same host-written raw layout): exact sizes; the
 *   host's text at offset 0 and in the last sector and its seeded pattern read back (the pattern
 *   with O_DIRECT); an O_DIRECT|O_SYNC write from a buffer that starts inside a page, and a
 *   buffered write, found in the image after the VMM exits; discard frees the range (a hole in
 *   the raw file, unallocated qcow2 clusters).
 * - LUN 2 raw, `readonly=on`: writes fail and the bytes stay.
 * - LUN 3 raw and LUN 4 qcow2: mke2fs, mount, write; a guest `sync` returns only once the bytes
 *   are in the host file and a flush reached the backend (the host looks at the files and at
 *   `{"cmd":"disks"}` on the control socket while the guest waits, before and after the sync);
 *   remount and read back.
 *
 * Afterwards every qcow2 image passes `qemu-img check`. The O_DIRECT parts need a C compiler
 * (`tests/guest/tools/odirect.c`, built static): without one the test fails with the reason
 * (`deno task test` installs gcc and libc6-dev), rather than pass with those checks left out.
 */
import assert from "node:assert/strict";
import { askControl, assertMark, describeRun, type GuestRun, guestTest } from "../harness.ts";
import { guestTool } from "../kit/tools.ts";

const DIR = await Deno.makeTempDir({ prefix: "hyperdeno-storage-" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const SOCK = `${DIR}/control.sock`;
const RAW = `${DIR}/a.raw`;
const QCOW = `${DIR}/b.qcow2`;
const RO = `${DIR}/c.raw`;
const FS_RAW = `${DIR}/d.raw`;
const FS_QCOW = `${DIR}/e.qcow2`;
const RAW_SIZE = 64 << 20;
const QCOW_SIZE = 32 << 20;
const RO_SIZE = 8 << 20;
const FS_SIZE = 32 << 20;
const HEAD = "host-wrote-this-at-offset-0";
const TAIL = "host-wrote-this-in-the-last-sector";
/** The host's seeded pattern (LUNs 0 and 1), read by the guest with O_DIRECT. */
const PAT = { at: 8 << 20, length: 128 << 10, seed: 11 };
/** The guest's O_DIRECT write: sector-aligned, not page-aligned, seed 20 + LUN. */
const DIRECT = { at: (3 << 20) + 512, length: 192 << 10, seed: 20 };
/** A fully allocated MiB that the guest discards. */
const DISCARD = { at: 16 << 20, length: 1 << 20 };
const BUFFERED_AT = 2048 * 512;
const DURABLE = "durable-after-guest-sync";

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

function qemuImg(args: string[]): { ok: boolean; out: string } {
  const r = new Deno.Command("qemu-img", { args, stdout: "piped", stderr: "piped" }).outputSync();
  const d = new TextDecoder();
  return { ok: r.success, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

/** A raw image of `size` with the host's layout: text at 0 and in the last sector, the seeded
 * pattern, and the MiB to discard filled. */
function writeLayout(path: string, size: number): void {
  const f = Deno.openSync(path, { create: true, write: true, truncate: true });
  f.truncate(size);
  const at = (offset: number, data: Uint8Array) => {
    f.seekSync(offset, Deno.SeekMode.Start);
    f.writeSync(data);
  };
  at(0, new TextEncoder().encode(HEAD));
  at(size - 512, new TextEncoder().encode(TAIL));
  at(PAT.at, pattern(PAT.seed, PAT.length));
  at(DISCARD.at, new Uint8Array(DISCARD.length).fill(0x5a));
  f.close();
}

function prepare(): void {
  writeLayout(RAW, RAW_SIZE);
  writeLayout(`${DIR}/b.template.raw`, QCOW_SIZE);
  const convert = qemuImg(["convert", "-f", "raw", "-O", "qcow2", `${DIR}/b.template.raw`, QCOW]);
  if (!convert.ok) throw new Error(`qemu-img convert failed: ${convert.out}`);
  const r = Deno.openSync(RO, { create: true, write: true, truncate: true });
  r.truncate(RO_SIZE);
  r.writeSync(new TextEncoder().encode("read-only-original"));
  r.close();
  Deno.writeFileSync(FS_RAW, new Uint8Array(0));
  Deno.truncateSync(FS_RAW, FS_SIZE);
  const q = qemuImg(["create", "-q", "-f", "qcow2", FS_QCOW, String(FS_SIZE)]);
  if (!q.ok) throw new Error(`qemu-img create failed: ${q.out}`);
}

const haveQemuImg = (() => {
  try {
    return new Deno.Command("qemu-img", { args: ["--version"], stdout: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
})();
if (haveQemuImg) prepare();
const odirect = await guestTool("odirect");
if (!odirect.ok) console.warn(`storage O_DIRECT checks cannot run: ${odirect.reason}`);

function blocks(path: string): number {
  return Deno.statSync(path).blocks ?? -1;
}

const rawBlocksBefore = haveQemuImg ? blocks(RAW) : 0;

/** Offset of `needle` in `hay`, or -1. */
function indexOf(hay: Uint8Array, needle: Uint8Array): number {
  for (let i = hay.indexOf(needle[0]!); i >= 0; i = hay.indexOf(needle[0]!, i + 1)) {
    if (i + needle.length > hay.length) return -1;
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

/** What the host sees of the filesystem LUNs while the guest waits. */
interface Snapshot {
  /** Whether the guest's file text is in the image file, by LUN. */
  found: Map<number, boolean>;
  /** Flushes the backend counted, by LUN. */
  flushes: Map<number, number>;
  disks: Record<string, unknown>;
  /** `status`'s doorbells (completed in KVM) and hypercall exits summed over the vCPUs. */
  doorbells?: number;
  hypercallExits?: number;
  doorbellExits?: number;
}

async function snapshot(): Promise<Snapshot> {
  const found = new Map<number, boolean>();
  for (const [lun, path] of [[3, FS_RAW], [4, FS_QCOW]] as const) {
    const needle = new TextEncoder().encode(`${DURABLE}-${lun}`);
    found.set(lun, indexOf(await Deno.readFile(path), needle) >= 0);
  }
  const disks: Record<string, unknown> = await askControl(SOCK, { cmd: "disks" })
    .catch((e) => ({ ok: false, error: String(e) }));
  const flushes = new Map<number, number>();
  for (const d of Array.isArray(disks.disks) ? disks.disks : []) {
    if (typeof d?.lun === "number" && typeof d?.flushes === "number") flushes.set(d.lun, d.flushes);
  }
  const status: Record<string, unknown> = await askControl(SOCK, { cmd: "status" })
    .catch(() => ({}));
  const exits = Array.isArray(status.exits) ? status.exits : [];
  return {
    found,
    flushes,
    disks,
    ...(typeof status.doorbells === "number" ? { doorbells: status.doorbells } : {}),
    hypercallExits: exits.reduce((n: number, e) => n + (Number(e?.hypercall) || 0), 0),
    doorbellExits: exits.reduce((n: number, e) => n + (Number(e?.doorbell) || 0), 0),
  };
}

const seen: { written?: Snapshot; synced?: Snapshot } = {};

function bytesAt(path: string, offset: number, length: number): Uint8Array {
  const f = Deno.openSync(path);
  const buf = new Uint8Array(length);
  f.seekSync(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < length) {
    const n = f.readSync(buf.subarray(done));
    if (n === null) break;
    done += n;
  }
  f.close();
  return buf.subarray(0, done);
}

function assertBytes(run: GuestRun, what: string, got: Uint8Array, want: Uint8Array): void {
  const at = got.findIndex((b, i) => b !== want[i]);
  assert.ok(
    got.length === want.length && at < 0,
    `${what}: ${got.length} bytes read, first difference at ${at}\n${describeRun(run, 10)}`,
  );
}

/** Checks the image at `path` (raw, or a raw conversion of LUN `lun`) after the VMM exited. */
function checkDataDisk(run: GuestRun, lun: number, path: string): void {
  if (odirect.ok) {
    const seed = DIRECT.seed + lun;
    assertBytes(
      run,
      `LUN ${lun}: the guest's O_DIRECT write`,
      bytesAt(path, DIRECT.at, DIRECT.length),
      pattern(seed, DIRECT.length),
    );
  }
  const buffered = new TextDecoder().decode(bytesAt(path, BUFFERED_AT, 16));
  assert.equal(buffered, "guest-wrote-this", `LUN ${lun}\n${describeRun(run, 10)}`);
  const discarded = bytesAt(path, DISCARD.at, DISCARD.length);
  assert.ok(discarded.every((b) => b === 0), `LUN ${lun}: the discarded MiB does not read as 0`);
}

/** The synthetic SCSI controller's VMBus class id, as /sys/bus/vmbus/devices/x/class_id shows it. */
const STORVSC_CLASS = "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}";

function guestScript(): string {
  const direct = odirect.ok
    ? `
    hd_check "lun$1: O_DIRECT read of the host's pattern" \\
      /hd/odirect read $d ${PAT.at} ${PAT.length} ${PAT.seed}
    hd_check "lun$1: O_DIRECT|O_SYNC write, read back with O_DIRECT" \\
      /hd/odirect write $d ${DIRECT.at} ${DIRECT.length} $((${DIRECT.seed} + $1))`
    : "";
  return `
    for i in $(seq 1 30); do [ -b /dev/sde ] && break; sleep 1; done
    # Disks probe in parallel: name them by LUN (H:C:T:L of the SCSI device), as given on the CLI.
    for d in /sys/block/sd*; do
      lun=$(basename "$(readlink $d/device)" | cut -d: -f4)
      ln -s /dev/$(basename $d) /dev/lun$lun
    done
    size() { echo $(( $(cat /sys/block/$(basename $(readlink $1))/size) * 512 )); }
    data_disk() { # LUN SIZE
      d=$(readlink -f /dev/lun$1)
      hd_mark size$1 "$(size /dev/lun$1)"
      hd_mark head$1 "$(dd if=$d bs=512 count=1 2>/dev/null | head -c ${HEAD.length})"
      hd_mark tail$1 "$(dd if=$d bs=512 skip=$(( $2 / 512 - 1 )) count=1 2>/dev/null | head -c ${TAIL.length})"${direct}
      echo guest-wrote-this | dd of=$d bs=512 seek=${BUFFERED_AT / 512} conv=fsync 2>/dev/null
      blkdiscard -o ${DISCARD.at} -l ${DISCARD.length} $d && hd_mark discard$1 ok
    }
    data_disk 0 ${RAW_SIZE}
    data_disk 1 ${QCOW_SIZE}
    hd_mark size2 "$(size /dev/lun2)"
    hd_mark ro_write "$(echo x | dd of=/dev/lun2 bs=512 count=1 conv=fsync 2>/dev/null && echo allowed || echo refused)"
    hd_mark cache3 "$(cat /sys/block/$(basename $(readlink /dev/lun3))/device/scsi_disk/*/cache_type)"

    # Sub-channels: storvsc sends a request on the channel of the CPU that issues it, so direct
    # reads from each CPU must move completions on more than one channel of the controller.
    for c in 0 1; do
      taskset -c $c dd if=$(readlink -f /dev/lun0) of=/dev/null bs=64k count=32 iflag=direct 2>/dev/null
    done
    for dev in /sys/bus/vmbus/devices/*; do
      [ "$(cat $dev/class_id)" = "${STORVSC_CLASS}" ] || continue
      hd_mark storvsc_channels "$(for ch in $dev/channels/*; do
        echo "relid=$(basename $ch),cpu=$(cat $ch/cpu),interrupts=$(cat $ch/interrupts),events=$(cat $ch/events)"
      done | tr '\\n' ' ')"
    done

    # Durability: no periodic writeback, so written data stays in the guest until the sync.
    echo 0 > /proc/sys/vm/dirty_writeback_centisecs
    for l in 3 4; do
      q=$(readlink -f /dev/lun$l); mkdir -p /mnt/$l
      mke2fs -q $q >/dev/null && mount -t ext4 $q /mnt/$l || hd_fail "lun$l: mke2fs and mount"
    done
    sync
    for l in 3 4; do echo "${DURABLE}-$l" | dd of=/mnt/$l/durable bs=4096 2>/dev/null; done
    hd_mark written 1
    read -t 120 -r reply # the host looks at the images and the flush counts
    sync
    hd_mark synced 1
    read -t 120 -r reply
    for l in 3 4; do
      q=$(readlink -f /dev/lun$l)
      umount /mnt/$l && mount -t ext4 $q /mnt/$l && hd_mark fs$l "$(cat /mnt/$l/durable)" &&
        umount /mnt/$l
    done
    sync
  `;
}

guestTest("storvsc: raw and qcow2 data, O_DIRECT, read-only, discard, ext2, sync durability", {
  cpus: 2,
  modules: ["hv_vmbus", "hv_storvsc", "sd_mod", "ext4", "crc32c_generic"],
  timeoutMs: 540_000, // ~2.5 min on a quiet host, twice that on a loaded one
  vmmArgs: [
    "--control",
    SOCK,
    "--disk",
    `path=${RAW},serial=rawdisk,lun=0`,
    "--disk",
    `path=${QCOW},format=qcow2,lun=1`,
    "--disk",
    `path=${RO},readonly=on,lun=2`,
    "--disk",
    `path=${FS_RAW},lun=3`,
    "--disk",
    `path=${FS_QCOW},format=qcow2,lun=4`,
  ],
  files: odirect.ok ? { "/hd/odirect": { data: odirect.image, mode: 0o755 } } : {},
  script: guestScript(),
  onMark: async (key) => {
    if (key !== "written" && key !== "synced") return;
    seen[key] = await snapshot();
    return "go\n";
  },
}, (run) => {
  assert.ok(
    odirect.ok,
    `the O_DIRECT checks need tests/guest/tools/odirect.c built: ${
      odirect.ok ? "" : odirect.reason
    }`,
  );
  for (const [lun, size] of [[0, RAW_SIZE], [1, QCOW_SIZE], [2, RO_SIZE]]) {
    assertMark(run, `size${lun}`, String(size));
  }
  for (const lun of [0, 1]) {
    assertMark(run, `head${lun}`, HEAD);
    assertMark(run, `tail${lun}`, TAIL);
    assertMark(run, `discard${lun}`, "ok");
  }
  assertMark(run, "ro_write", "refused");
  assertMark(run, "cache3", "write back");
  // Two vCPUs: the primary channel and one sub-channel, both carrying I/O (host interrupts for
  // completions, guest signals for requests).
  const channels = (run.marks.get("storvsc_channels") ?? "").split(" ").filter((c) => c !== "")
    .map((c) => Object.fromEntries(c.split(",").map((kv) => kv.split("=") as [string, string])));
  console.log(`storvsc channels: ${run.marks.get("storvsc_channels")}`);
  assert.equal(channels.length, 2, `storvsc channels: ${run.marks.get("storvsc_channels")}`);
  const busy = channels.filter((c) => Number(c.interrupts) > 0 && Number(c.events) > 0);
  assert.equal(busy.length, 2, `channels without I/O: ${run.marks.get("storvsc_channels")}`);
  assertMark(run, "fs3", `${DURABLE}-3`);
  assertMark(run, "fs4", `${DURABLE}-4`);

  // LUN 0, raw: the guest's bytes are in the file, the discarded MiB is a hole.
  checkDataDisk(run, 0, RAW);
  assert.ok(
    blocks(RAW) < rawBlocksBefore,
    `discard punched no hole: ${rawBlocksBefore} -> ${blocks(RAW)} blocks`,
  );
  // LUN 1, qcow2: consistent, the guest's bytes in a raw conversion, discarded clusters freed.
  for (const path of [QCOW, FS_QCOW]) {
    const check = qemuImg(["check", path]);
    assert.ok(check.ok, `qemu-img check ${path}: ${check.out}`);
  }
  const converted = `${DIR}/b.converted.raw`;
  const conv = qemuImg(["convert", "-f", "qcow2", "-O", "raw", QCOW, converted]);
  assert.ok(conv.ok, conv.out);
  checkDataDisk(run, 1, converted);
  assert.equal(new TextDecoder().decode(bytesAt(converted, 0, HEAD.length)), HEAD);
  const map = JSON.parse(qemuImg(["map", "--output=json", QCOW]).out) as {
    start: number;
    length: number;
    data: boolean;
  }[];
  const stillData = map.filter((e) =>
    e.data && e.start < DISCARD.at + DISCARD.length && e.start + e.length > DISCARD.at
  );
  assert.deepEqual(stillData, [], "discarded qcow2 clusters are still allocated");
  // LUN 2, read-only: unchanged.
  assert.equal(new TextDecoder().decode(bytesAt(RO, 0, 18)), "read-only-original");

  // LUNs 3 and 4: not in the file before the guest's sync, in it (and flushed) once sync returned.
  const ctx = `written ${JSON.stringify(seen.written?.disks)}\nsynced ${
    JSON.stringify(seen.synced?.disks)
  }\n${describeRun(run, 20)}`;
  assert.ok(seen.written && seen.synced, `the host never saw the written/synced marks\n${ctx}`);
  for (const lun of [3, 4]) {
    assert.equal(seen.written.found.get(lun), false, `LUN ${lun}: in the file before sync\n${ctx}`);
    assert.equal(
      seen.synced.found.get(lun),
      true,
      `LUN ${lun}: not in the file after sync\n${ctx}`,
    );
  }
  assert.equal(seen.synced.disks.ok, true, `{"cmd":"disks"} failed\n${ctx}`);
  for (const lun of [3, 4]) {
    const before = seen.written.flushes.get(lun);
    const after = seen.synced.flushes.get(lun);
    assert.ok(
      before !== undefined && after !== undefined && after > before,
      `LUN ${lun}: flushes ${before} before sync, ${after} after\n${ctx}`,
    );
  }
  // Channel doorbells from the long-mode hypercall page complete in KVM (ioeventfd): hundreds
  // of requests went by, so some must have; none is the vCPU-exit path taking them all.
  assert.ok(
    (seen.synced.doorbells ?? 0) > 0,
    `no doorbell completed through an eventfd (status doorbells ${seen.synced.doorbells}, ` +
      `hypercall exits ${seen.synced.hypercallExits})\n${ctx}`,
  );
  // Every channel's relid is well inside the bound window: no doorbell should exit.
  assert.equal(seen.synced.doorbellExits, 0, `doorbells that exited to a vCPU\n${ctx}`);
  console.log(
    `doorbells through eventfds ${seen.synced.doorbells}, doorbell exits ` +
      `${seen.synced.doorbellExits}, other hypercall exits ${seen.synced.hypercallExits} ` +
      "(by the guest's sync)",
  );
  console.log(
    `flushes before/after the guest's sync: LUN 3 ${seen.written.flushes.get(3)}/` +
      `${seen.synced.flushes.get(3)}, LUN 4 ${seen.written.flushes.get(4)}/` +
      `${seen.synced.flushes.get(4)}`,
  );
});
