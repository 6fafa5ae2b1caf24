/** The start line `boot` prints before the guest runs: what it names, on one line. */
import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { hvFeaturesOf } from "../../../src/vmm/config.ts";
import { startSummary } from "../../../src/vmm/start_summary.ts";

function summaryOf(args: string[]): string {
  const config = parseBootArgs(args);
  return startSummary(config, hvFeaturesOf(config));
}

Deno.test("start summary: kernel, initrd, memory, vCPUs, devices, console and control", () => {
  assert.equal(
    summaryOf([
      "--kernel",
      "/boot/vmlinuz",
      "--initrd",
      "/tmp/init.img",
      "--memory",
      "2G",
      "--cpus",
      "2",
      "--disk",
      "path=/tmp/a.raw",
      "--disk",
      "path=/tmp/b.qcow2,format=qcow2",
      "--control",
      "/tmp/vm.sock",
    ]),
    "hyperdeno: starting kernel /boot/vmlinuz, initrd /tmp/init.img; 2 GiB, 2 vCPUs; " +
      "devices: COM1, RTC, i8042, i440FX/PIIX (ACPI PM), " +
      "VMBus (shutdown, timesync, heartbeat, KVP, file copy, VSS, dynamic memory, keyboard, " +
      "mouse, video, SCSI 2 disks); " +
      "Hyper-V: all; console: stdio; control: /tmp/vm.sock",
  );
});

Deno.test("start summary: defaults, no Hyper-V (no VMBus), serial to a file", () => {
  assert.equal(
    summaryOf(["--kernel", "bzImage", "--hv", "none", "--serial", "file=/tmp/c.log"]),
    "hyperdeno: starting kernel bzImage; 512 MiB, 1 vCPU; " +
      "devices: COM1, RTC, i8042, i440FX/PIIX (ACPI PM); Hyper-V: none; " +
      "console: file /tmp/c.log; " +
      "control: none",
  );
  assert.match(summaryOf(["--kernel", "k", "--memory", "1536M"]), /; 1536 MiB, 1 vCPU;/);
  assert.match(summaryOf(["--kernel", "k", "--serial", "none"]), /; console: none;/);
  assert.match(summaryOf(["--kernel", "k", "--disk", "path=/d"]), /SCSI 1 disk\)/);
});

Deno.test("start summary: a path with newlines cannot break the one line", () => {
  const line = summaryOf(["--kernel", "evil\nkernel"]);
  assert.equal(line.includes("\n"), false, line);
  assert.match(line, /starting kernel evil\\x0akernel;/);
});

Deno.test("start summary: firmware, SATA and CD, display, NIC, hv_sock, VNC and web", () => {
  const line = summaryOf([
    "--firmware",
    "uefi",
    "--efi-vars",
    "/tmp/vm.vars",
    "--disk",
    "path=/tmp/a.raw,bus=sata",
    "--cdrom",
    "/tmp/x.iso",
    "--disk",
    "path=/tmp/b.raw",
    "--net",
    "tap=tap0",
    "--display",
    "bochs,800x600",
    "--vsock",
    "/tmp/v.sock",
    "--vnc",
    "127.0.0.1:5901",
    "--web",
    "127.0.0.1:8080",
  ]);
  assert.match(line, /^hyperdeno: starting firmware \S+OVMF_CODE_4M\.fd, vars \/tmp\/vm\.vars;/);
  assert.match(line, /bochs display 800x600, AHCI \(1 disk, 1 CD\)/);
  assert.match(line, /video, SCSI 1 disk, NIC on tap0, hv_sock \/tmp\/v\.sock\)/);
  assert.match(line, /console: stdio, VNC 127\.0\.0\.1:5901, web 127\.0\.0\.1:8080;/);
  assert.equal(line.includes("\n"), false);
});
