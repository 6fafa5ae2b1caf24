/**
 * The AHCI controller with a stock Debian 6.1 guest (issue: firmware boot, AHCI part), direct
 * Linux boot: Linux's `ahci` driver binds to 00:03.0 (8086:2922) with MSI, finds a SATA disk
 * (`--disk …,bus=sata`) and an ATAPI CD-ROM (`--cdrom`), reads the bytes the host put in both,
 * and a write through `sd` is in the image after the VMM exits.
 */
import assert from "node:assert/strict";
import { assertMark, describeRun, guestTest } from "../harness.ts";

const DIR = await Deno.makeTempDir({ prefix: "hyperdeno-ahci-" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const DISK = `${DIR}/sata.raw`;
const ISO = `${DIR}/cd.iso`;
const DISK_SIZE = 16 << 20;
const ISO_BLOCKS = 1024;
const HEAD = "host-wrote-this-on-the-sata-disk";
const CD_MARK = "cd-block-five-marker";
const GUEST = "guest-wrote-this-through-ahci";

function prepare(): void {
  const disk = new Uint8Array(DISK_SIZE);
  disk.set(new TextEncoder().encode(HEAD), 0);
  Deno.writeFileSync(DISK, disk);
  const iso = new Uint8Array(ISO_BLOCKS * 2048);
  iso.set(new TextEncoder().encode(CD_MARK), 5 * 2048);
  Deno.writeFileSync(ISO, iso);
}
prepare();

const SCRIPT = `
  for i in $(seq 1 100); do [ -b /dev/sda ] && [ -b /dev/sr0 ] && break; sleep 0.2; done
  for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/device)" = "0x2922" ]; then
      hd_mark ahci_pci "$(basename $d) $(cat $d/vendor) $(cat $d/class) $(basename $(readlink $d/driver))"
    fi
  done
  hd_mark sda_size "$(cat /sys/block/sda/size)"
  hd_mark sr0_size "$(cat /sys/block/sr0/size)"
  hd_mark sda_model "$(cat /sys/block/sda/device/model)"
  hd_mark sr0_model "$(cat /sys/block/sr0/device/model)"
  hd_mark head "$(dd if=/dev/sda bs=512 count=1 2>/dev/null | head -c ${HEAD.length})"
  hd_mark cd "$(dd if=/dev/sr0 bs=2048 skip=5 count=1 2>/dev/null | head -c ${CD_MARK.length})"
  echo -n "${GUEST}" | dd of=/dev/sda bs=512 seek=100 conv=sync,fsync 2>/dev/null
  hd_mark wrote "$?"
  hd_mark irq "$(grep -i ahci /proc/interrupts | tr -s ' ' | head -1)"
`;

guestTest(
  "AHCI: Linux's ahci driver finds the SATA disk and the CD-ROM, reads and writes them",
  {
    modules: ["ahci", "sd_mod", "sr_mod"],
    vmmArgs: ["--disk", `path=${DISK},bus=sata`, "--cdrom", ISO, "--hv", "none"],
    script: SCRIPT,
  },
  (run) => {
    const ctx = describeRun(run, 40);
    assert.match(run.marks.get("ahci_pci") ?? "", /^0000:00:03\.0 0x8086 0x010601 ahci$/, ctx);
    assertMark(run, "sda_size", String(DISK_SIZE / 512));
    assertMark(run, "sr0_size", String(ISO_BLOCKS * 4));
    // SCSI's 16-character model field: the start of the ATA model.
    assertMark(run, "sda_model", /^hyperdeno SATA d/);
    assertMark(run, "sr0_model", /Virtual CD-ROM/);
    assertMark(run, "head", HEAD);
    assertMark(run, "cd", CD_MARK);
    assertMark(run, "wrote", "0");
    assert.match(run.marks.get("irq") ?? "", /PCI-MSI.*ahci/, `MSI in use${ctx}`);
    const image = Deno.readFileSync(DISK);
    const got = new TextDecoder().decode(image.subarray(100 * 512, 100 * 512 + GUEST.length));
    assert.equal(got, GUEST, "the guest's write is in the image after exit");
  },
);
