/**
 * The one line `boot` prints on stderr once the VM is built and before its vCPUs start, so a user
 * knows it runs (and where its console and control socket are) before the guest prints anything:
 *
 * ```text
 * hyperdeno: starting kernel bzImage, initrd init.img; 512 MiB, 2 vCPUs; devices: COM1, RTC,
 * i8042, ACPI PM, PCI host, VMBus (shutdown, timesync, heartbeat, KVP, SCSI 1 disk); Hyper-V:
 * all; console: stdio; control: /tmp/vm.sock
 * ```
 * (one line; wrapped here).
 * @module
 */
import { hasFeature, type HvFeatures } from "../hyperv/mod.ts";
import type { VmConfig } from "./config.ts";

/** Devices every VM has (`attachPcDevices`). */
const PC_DEVICES = ["COM1", "RTC", "i8042", "ACPI PM", "PCI host"];

/** The VMBus devices every VM with the SynIC gets (`createIntegrationComponents`). */
const VMBUS_ICS = ["shutdown", "timesync", "heartbeat", "KVP"];

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
    "kernelPath" | "initrdPath" | "memoryBytes" | "cpus" | "disks" | "hv" | "serial" | "controlPath"
  >,
  features: HvFeatures,
): string {
  const devices = [...PC_DEVICES];
  if (hasFeature(features, "synic")) {
    const vmbus = [...VMBUS_ICS];
    if (config.disks.length > 0) vmbus.push(`SCSI ${plural(config.disks.length, "disk")}`);
    devices.push(`VMBus (${vmbus.join(", ")})`);
  }
  return [
    `hyperdeno: starting kernel ${shown(config.kernelPath)}` +
    (config.initrdPath !== undefined ? `, initrd ${shown(config.initrdPath)}` : ""),
    `${mib(config.memoryBytes)}, ${plural(config.cpus, "vCPU")}`,
    `devices: ${devices.join(", ")}`,
    `Hyper-V: ${config.hv}`,
    `console: ${consoleAddress(config.serial)}`,
    `control: ${config.controlPath !== undefined ? shown(config.controlPath) : "none"}`,
  ].join("; ");
}
