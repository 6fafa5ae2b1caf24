/**
 * The one line `boot` prints on stderr once the VM is built and before its vCPUs start, so a user
 * knows it runs (and where its console and control socket are) before the guest prints anything:
 *
 * ```text
 * hyperdeno: starting kernel bzImage, initrd init.img; 512 MiB, 2 vCPUs; devices: COM1, RTC,
 * i8042, i440FX/PIIX (ACPI PM), VMBus (shutdown, timesync, heartbeat, KVP, file copy, VSS, dynamic
 * memory, keyboard, mouse, video, SCSI 1 disk); Hyper-V: all; console: stdio; control:
 * /tmp/vm.sock
 * ```
 * (one line; wrapped here).
 * @module
 */
import { hasFeature, type HvFeatures } from "../hyperv/mod.ts";
import type { VmConfig } from "./config.ts";

/** Devices every VM has (`attachPcDevices`). */
const PC_DEVICES = ["COM1", "RTC", "i8042", "i440FX/PIIX (ACPI PM)"];

/**
 * The VMBus devices every VM with the SynIC gets: the ICs (`createIntegrationComponents`), then
 * what the builder's VMBus step adds to every boot.
 */
const VMBUS_DEVICES = [
  "shutdown",
  "timesync",
  "heartbeat",
  "KVP",
  "file copy",
  "VSS",
  "dynamic memory",
  "keyboard",
  "mouse",
  "video",
];

/** A user's path as it goes in the line: control characters escaped, so it stays one line. */
function shown(path: string): string {
  return path.replace(
    // deno-lint-ignore no-control-regex
    /[\x00-\x1f\x7f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

function mib(bytes: number): string {
  if (bytes >= 2 ** 30 && bytes % 2 ** 30 === 0) return `${bytes / 2 ** 30} GiB`;
  return `${Math.round(bytes / 2 ** 20)} MiB`;
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function consoleAddress(serial: VmConfig["serial"]): string {
  switch (serial.kind) {
    case "stdio":
      return "stdio";
    case "file":
      return `file ${shown(serial.path)}`;
    case "none":
      return "none";
  }
}

/** The start line for `config` with its parsed enlightenments (no trailing newline). */
export function startSummary(
  config: Pick<
    VmConfig,
    | "kernelPath"
    | "initrdPath"
    | "firmware"
    | "memoryBytes"
    | "cpus"
    | "disks"
    | "cdroms"
    | "nets"
    | "display"
    | "hv"
    | "serial"
    | "controlPath"
    | "vnc"
    | "web"
    | "vsockPath"
  >,
  features: HvFeatures,
): string {
  const devices = [...PC_DEVICES];
  if (config.display.kind === "bochs") {
    devices.push(`bochs display ${config.display.width}x${config.display.height}`);
  }
  const sata = config.disks.filter((d) => d.bus === "sata").length;
  const scsi = config.disks.length - sata;
  const cdroms = config.cdroms?.length ?? 0;
  if (sata + cdroms > 0) {
    const drives = [sata > 0 ? plural(sata, "disk") : "", cdroms > 0 ? plural(cdroms, "CD") : ""];
    devices.push(`AHCI (${drives.filter((d) => d !== "").join(", ")})`);
  }
  if (hasFeature(features, "synic")) {
    const vmbus = [...VMBUS_DEVICES];
    if (scsi > 0) vmbus.push(`SCSI ${plural(scsi, "disk")}`);
    for (const n of config.nets ?? []) vmbus.push(`NIC on ${shown(n.tap)}`);
    if (config.vsockPath !== undefined) vmbus.push(`hv_sock ${shown(config.vsockPath)}`);
    devices.push(`VMBus (${vmbus.join(", ")})`);
  }
  const payload = config.firmware
    ? `firmware ${shown(config.firmware.codePath)}, vars ${
      config.firmware.varsPath !== undefined ? shown(config.firmware.varsPath) : "(this run only)"
    }`
    : `kernel ${shown(config.kernelPath)}` +
      (config.initrdPath !== undefined ? `, initrd ${shown(config.initrdPath)}` : "");
  const screens = [
    config.vnc
      ? `VNC ${
        config.vnc.kind === "unix"
          ? `unix:${shown(config.vnc.path)}`
          : `${config.vnc.hostname}:${config.vnc.port}`
      }`
      : "",
    config.web ? `web ${config.web.hostname}:${config.web.port}` : "",
  ].filter((x) => x !== "");
  return [
    `hyperdeno: starting ${payload}`,
    `${mib(config.memoryBytes)}, ${plural(config.cpus, "vCPU")}`,
    `devices: ${devices.join(", ")}`,
    `Hyper-V: ${config.hv}`,
    `console: ${consoleAddress(config.serial)}${screens.length ? `, ${screens.join(", ")}` : ""}`,
    `control: ${config.controlPath !== undefined ? shown(config.controlPath) : "none"}`,
  ].join("; ");
}
