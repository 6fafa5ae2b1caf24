/**
 * The PC platform under the VMM (issue: PC platform): the Debian kernel finds the i440FX/PIIX
 * board's PCI functions through the ACPI PCI root and config mechanism #1, and the PIIX4 ACPI
 * PM timer is an available clocksource that keeps time when selected.
 */
import assert from "node:assert/strict";
import { describeRun, type GuestRun, guestTest } from "../harness.ts";

/** `bdf vendor device class` for every PCI function the guest enumerated, one per line. */
const LIST_PCI = `
  for d in /sys/bus/pci/devices/*; do
    echo "$(basename $d) $(cat $d/vendor) $(cat $d/device) $(cat $d/class)"
  done | tr '\\n' ';'
`;

/** The guest's clock through acpi_pm, measured against the host's arrival times of two marks. */
const PM_TIMER_SCRIPT = `
  hd_mark available "$(cat /sys/devices/system/clocksource/clocksource0/available_clocksource)"
  echo acpi_pm > /sys/devices/system/clocksource/clocksource0/current_clocksource
  hd_mark current "$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
  hd_mark t0 "$(cut -d" " -f1 /proc/uptime)"
  sleep 6
  hd_mark t1 "$(cut -d" " -f1 /proc/uptime)"
  hd_mark pci "$(${LIST_PCI})"
  hd_mark pci_root "$(ls /sys/bus/acpi/devices | grep -c PNP0A03)"
  hd_mark pm_ports "$(grep -i 'ACPI PM_TMR\\|0600-063f' /proc/ioports | tr -s ' ' | tr '\\n' ';')"
`;

function checkBoard(run: GuestRun): void {
  const ctx = describeRun(run, 40);
  const pci = (run.marks.get("pci") ?? "").split(";").filter((l) => l.trim());
  const has = (bdf: string, vendor: string, device: string, cls: string) =>
    assert.ok(
      pci.some((l) => l.trim() === `0000:${bdf} ${vendor} ${device} ${cls}`),
      `no ${bdf} ${vendor}:${device} class ${cls} in ${JSON.stringify(pci)}${ctx}`,
    );
  has("00:00.0", "0x8086", "0x1237", "0x060000");
  has("00:01.0", "0x8086", "0x7000", "0x060100");
  has("00:01.3", "0x8086", "0x7113", "0x068000");
  assert.equal(run.marks.get("pci_root"), "1", `PNP0A03 nodes${ctx}`);

  assert.match(run.marks.get("available") ?? "", /\bacpi_pm\b/, ctx);
  assert.equal(run.marks.get("current"), "acpi_pm", ctx);
  // Six seconds of guest time on acpi_pm against the host's clock (mark arrival times).
  const guest = Number(run.marks.get("t1")) - Number(run.marks.get("t0"));
  const host = run.markArrivals.get("t1")! - run.markArrivals.get("t0")!;
  console.log(`acpi_pm: guest ${guest.toFixed(3)} s, host ${host.toFixed(3)} s`);
  assert.ok(guest > 5.5 && Math.abs(guest - host) < 0.6, `guest ${guest} s, host ${host} s${ctx}`);
}

guestTest(
  "i440FX/PIIX board: PCI functions enumerated, acpi_pm keeps time (--hv none)",
  { vmmArgs: ["--hv", "none"], script: PM_TIMER_SCRIPT },
  checkBoard,
);

guestTest(
  "i440FX/PIIX board with the Hyper-V enlightenments: same functions, acpi_pm available",
  { modules: ["hv_vmbus"], script: PM_TIMER_SCRIPT },
  checkBoard,
);
