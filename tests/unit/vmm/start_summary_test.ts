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
      "devices: COM1, RTC, i8042, ACPI PM, PCI host, " +
      "VMBus (shutdown, timesync, heartbeat, KVP, SCSI 2 disks); " +
      "Hyper-V: all; console: stdio; control: /tmp/vm.sock",
  );
});

Deno.test("start summary: defaults, no Hyper-V (no VMBus), serial to a file", () => {
  assert.equal(
    summaryOf(["--kernel", "bzImage", "--hv", "none", "--serial", "file=/tmp/c.log"]),
    "hyperdeno: starting kernel bzImage; 512 MiB, 1 vCPU; " +
      "devices: COM1, RTC, i8042, ACPI PM, PCI host; Hyper-V: none; console: file /tmp/c.log; " +
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
