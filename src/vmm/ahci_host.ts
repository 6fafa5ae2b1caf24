/**
 * The AHCI controller on the board: SATA disks (`--disk …,bus=sata`) and CD-ROMs (`--cdrom`) on
 * its ports in command-line order, as PCI function 00:03.0 (8086:2922, BAR5 = the ABAR, INTA#
 * and one MSI vector). The controller answers on the main thread (its backends are async): the
 * ABAR is a main-thread device in the registry, reached from the vCPUs through their request
 * slots. Drives are opened once per VMM run and outlive guest resets; the controller's registers
 * are rebuilt with each boot.
 * @module
 */
import { AhciController, type AhciDrive } from "../devices/ahci/ahci.ts";
import {
  AHCI_ABAR_SIZE,
  AHCI_CLASS_CODE,
  AHCI_DEVICE_ID,
  AHCI_PORTS,
  AHCI_VENDOR_ID,
} from "../devices/ahci/protocol.ts";
import type { DiskBackend } from "../devices/storage/backend/mod.ts";
import { type DiskSpec, openDisk } from "../devices/storage/backend/disk_spec.ts";
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { PciFunction } from "../machine/pci/function.ts";
import { DeviceRegistry } from "../machine/registry.ts";
import { UsageError } from "../util/errors.ts";
import type { PcDevices, PcDeviceState } from "./pc_devices.ts";
import { getLogger, rateLimited } from "../util/log.ts";

const log = getLogger("dev", "ahci");
const traced = rateLimited(200, 1000);

/** PCI slot of the AHCI controller (00:03.0, where OVMF's QEMU reference runs had it). */
export const AHCI_DEVFN = 0x18;
/** Registry name of the ABAR. */
export const AHCI_DEVICE = "ahci-abar";

/** The drives of one VMM run. */
export interface AhciHost {
  readonly drives: readonly AhciDrive[];
  /** Flushes nothing, waits for nothing: callers drained the controller first. */
  close(): void;
}

/**
 * Opens the SATA disks and CD images and puts them on ports in command-line `order` (default:
 * disks, then CD-ROMs); undefined when there are none.
 */
export async function openAhciDrives(
  disks: readonly DiskSpec[],
  cdroms: readonly string[],
  order?: readonly ("disk" | "cdrom")[],
): Promise<AhciHost | undefined> {
  const sata = disks.filter((d) => d.bus === "sata");
  if (sata.length + cdroms.length === 0) return undefined;
  if (sata.length + cdroms.length > AHCI_PORTS) {
    throw new UsageError(
      `the AHCI controller has ${AHCI_PORTS} ports; ${sata.length} SATA disks and ` +
        `${cdroms.length} CD-ROMs do not fit`,
    );
  }
  const backends: DiskBackend[] = [];
  const drives: AhciDrive[] = [];
  try {
    for (const [i, spec] of sata.entries()) {
      const backend = await openDisk(spec);
      backends.push(backend);
      drives.push({ kind: "disk", backend, serial: spec.serial ?? `hyperdeno-sata${i}` });
    }
    for (const [i, path] of cdroms.entries()) {
      let backend: DiskBackend;
      try {
        backend = await openDisk({
          path,
          readOnly: true,
          format: "raw",
          serial: undefined,
          lun: undefined,
          direct: false,
          sectorSize: 512,
          bus: "sata",
        });
      } catch (e) {
        throw new UsageError(
          `--cdrom ${path}: ${(e as Error).message.replace(/^--disk \S+: /, "")}`,
        );
      }
      backends.push(backend);
      drives.push({ kind: "cdrom", backend, serial: `hyperdeno-cd${i}` });
    }
  } catch (e) {
    for (const b of backends) b.close();
    throw e;
  }
  // Interleave as on the command line: the i-th "disk" is the i-th SATA disk, and so on.
  const wanted = order && order.length === drives.length
    ? order
    : [...sata.map(() => "disk" as const), ...cdroms.map(() => "cdrom" as const)];
  const queues = {
    disk: drives.filter((d) => d.kind === "disk"),
    cdrom: drives.filter((d) => d.kind === "cdrom"),
  };
  const ordered = wanted.map((k) => queues[k].shift()!);
  return { drives: ordered, close: () => backends.forEach((b) => b.close()) };
}

/**
 * The firmware's boot order for `host`'s ports: OpenFirmware paths as QEMU writes them for an
 * ICH9 AHCI controller, which OVMF's QemuBootOrderLib turns into `Sata(port,0xFFFF,0)`.
 */
export function ahciBootOrder(host: AhciHost): string[] {
  const slot = (AHCI_DEVFN >> 3).toString(16);
  return host.drives.map((_, port) => `/pci@i0cf8/pci8086,2922@${slot}/drive@${port}/disk@0`);
}

/** Registers the ABAR and the PCI function on the board (before any thread attaches). */
export function registerAhci(state: PcDeviceState): void {
  const registry = new DeviceRegistry(state.registry);
  const abar = registry.add(
    "mmio",
    undefined,
    AHCI_ABAR_SIZE,
    registry.addDevice(AHCI_DEVICE, "main"),
  );
  const spec = {
    vendor: AHCI_VENDOR_ID,
    device: AHCI_DEVICE_ID,
    classCode: AHCI_CLASS_CODE,
    revision: 2,
    subsystemVendor: 0x1af4,
    subsystem: 0x1100,
    bars: [undefined, undefined, undefined, undefined, undefined, {
      kind: "mem32" as const,
      size: AHCI_ABAR_SIZE,
      handle: abar,
    }],
    interruptPin: 1,
    msiVectors: 1,
  };
  state.pciSlots.push({
    devfn: AHCI_DEVFN,
    name: "ahci",
    spec,
    state: PciFunction.createState(spec),
  });
}

/** Builds this boot's controller on the main thread and hangs it on the ABAR. */
export function attachAhci(
  main: PcDevices,
  memory: GuestMemory,
  host: AhciHost,
): AhciController {
  const fn = main.pci.get(AHCI_DEVFN);
  if (!fn) throw new Error("The AHCI function is not on this board (registerAhci first).");
  const controller = new AhciController(host.drives, {
    memory,
    setInterrupt: (level) => {
      if (!fn.msiEnabled) fn.setIntx(level);
    },
    pulse: () => {
      if (fn.msiEnabled) fn.signalMsi(0);
    },
    trace: (port, command, packet, tfd, bytes) =>
      traced(() =>
        log.debug("ahci port {port}: command {cmd}{pkt} -> status {tfd}, {bytes} bytes", {
          port,
          cmd: "0x" + command.toString(16),
          pkt: packet === undefined ? "" : ` (cdb 0x${packet.toString(16)})`,
          tfd: "0x" + tfd.toString(16),
          bytes,
        })
      ),
  });
  main.mainThread[main.registry.deviceId(AHCI_DEVICE)] = controller;
  return controller;
}

/** Logs each port's command counts (at the end of a boot). */
export function logAhciStats(controller: AhciController, host: AhciHost): void {
  host.drives.forEach((d, i) => {
    const s = controller.stats(i);
    log.info(
      "ahci port {i} ({kind}): {commands} commands, {errors} errors, {read} B read, {written} B written",
      {
        i,
        kind: d.kind,
        commands: s.commands,
        errors: s.errors,
        read: s.bytesRead,
        written: s.bytesWritten,
      },
    );
  });
}
