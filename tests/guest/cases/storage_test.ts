/**
 * Synthetic SCSI with a stock Debian 6.1 guest (issue: storvsc): two disks of exact sizes, a
 * host-written pattern read at offset 0 and in the last sector, guest writes found in the file
 * after the VMM exits, ext2 on a qcow2 disk that `qemu-img check` accepts afterwards, a
 * read-only disk that refuses writes, and discard punching holes in a raw image.
 */
import assert from "node:assert/strict";
import { assertMark, describeRun, guestTest } from "../harness.ts";

const DIR = await Deno.makeTempDir({ prefix: "hyperdeno-storage-" });
const RAW = `${DIR}/a.raw`;
const QCOW = `${DIR}/b.qcow2`;
const RO = `${DIR}/c.raw`;
const RAW_SIZE = 64 << 20;
const QCOW_SIZE = 32 << 20;
const RO_SIZE = 8 << 20;
const HEAD = "host-wrote-this-at-offset-0";
const TAIL = "host-wrote-this-in-the-last-sector";

function prepare(): void {
  const f = Deno.openSync(RAW, { create: true, write: true, truncate: true });
  f.truncate(RAW_SIZE);
  f.writeSync(new TextEncoder().encode(HEAD));
  f.seekSync(RAW_SIZE - 512, Deno.SeekMode.Start);
  f.writeSync(new TextEncoder().encode(TAIL));
  // A fully allocated MiB at 16 MiB for the discard check.
  f.seekSync(16 << 20, Deno.SeekMode.Start);
  f.writeSync(new Uint8Array(1 << 20).fill(0x5a));
  f.close();
  const r = Deno.openSync(RO, { create: true, write: true, truncate: true });
  r.truncate(RO_SIZE);
  r.writeSync(new TextEncoder().encode("read-only-original"));
  r.close();
  const q = new Deno.Command("qemu-img", {
    args: ["create", "-q", "-f", "qcow2", QCOW, String(QCOW_SIZE)],
  })
    .outputSync();
  if (!q.success) throw new Error("qemu-img create failed");
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

function blocks(path: string): number {
  return Deno.statSync(path).blocks ?? -1;
}

const rawBlocksBefore = haveQemuImg ? blocks(RAW) : 0;

guestTest("storvsc: sizes, host pattern, guest writes, ext2 on qcow2, read-only, discard", {
  cpus: 2,
  modules: ["hv_vmbus", "hv_storvsc", "sd_mod", "ext4", "crc32c_generic"],
  timeoutMs: 300_000,
  vmmArgs: [
    "--disk",
    `path=${RAW},serial=rawdisk`,
    "--disk",
    `path=${QCOW},format=qcow2`,
    "--disk",
    `path=${RO},readonly=on`,
  ],
  script: `
    for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/sdc ] && break; sleep 1; done
    # Disks probe in parallel: name them by LUN (H:C:T:L of the SCSI device), as given on the CLI.
    for d in /sys/block/sd*; do
      lun=$(basename "$(readlink $d/device)" | cut -d: -f4)
      ln -s /dev/$(basename $d) /dev/lun$lun
    done
    size() { echo $(( $(cat /sys/block/$(basename $(readlink $1))/size) * 512 )); }
    hd_mark sda_size "$(size /dev/lun0)"
    hd_mark sdb_size "$(size /dev/lun1)"
    hd_mark sdc_size "$(size /dev/lun2)"
    hd_mark head "$(dd if=/dev/lun0 bs=512 count=1 2>/dev/null | head -c ${HEAD.length})"
    hd_mark tail "$(dd if=/dev/lun0 bs=512 skip=$(( ${RAW_SIZE} / 512 - 1 )) count=1 2>/dev/null | head -c ${TAIL.length})"
    echo guest-wrote-this | dd of=/dev/lun0 bs=512 seek=2048 conv=fsync 2>/dev/null
    hd_mark ro_write "$(echo x | dd of=/dev/lun2 bs=512 count=1 conv=fsync 2>/dev/null && echo allowed || echo refused)"
    blkdiscard -o $((16 << 20)) -l $((1 << 20)) /dev/lun0 && hd_mark discard ok
    q=$(readlink -f /dev/lun1); mke2fs -q $q && mkdir -p /mnt && mount -t ext4 $q /mnt &&
      echo "on qcow2" > /mnt/file && sync && umount /mnt && mount -t ext4 $q /mnt &&
      hd_mark fs "$(cat /mnt/file)" && umount /mnt
    sync
  `,
}, async (run) => {
  assertMark(run, "sda_size", String(RAW_SIZE));
  assertMark(run, "sdb_size", String(QCOW_SIZE));
  assertMark(run, "sdc_size", String(RO_SIZE));
  assertMark(run, "head", HEAD);
  assertMark(run, "tail", TAIL);
  assertMark(run, "ro_write", "refused");
  assertMark(run, "discard", "ok");
  assertMark(run, "fs", "on qcow2");
  const f = await Deno.open(RAW);
  await f.seek(2048 * 512, Deno.SeekMode.Start);
  const buf = new Uint8Array(16);
  await f.read(buf);
  f.close();
  assert.equal(new TextDecoder().decode(buf), "guest-wrote-this", describeRun(run, 10));
  const ro = new TextDecoder().decode(Deno.readFileSync(RO).subarray(0, 18));
  assert.equal(ro, "read-only-original");
  assert.ok(
    blocks(RAW) < rawBlocksBefore,
    `discard punched no hole: ${rawBlocksBefore} -> ${blocks(RAW)}`,
  );
  const check = await new Deno.Command("qemu-img", {
    args: ["check", QCOW],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  assert.ok(
    check.success,
    new TextDecoder().decode(check.stdout) + new TextDecoder().decode(check.stderr),
  );
});
