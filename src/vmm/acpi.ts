/**
 * The machine's ACPI description (one set of options for both boot routes) and, for direct
 * boot, writing the tables into guest RAM. Firmware boot hands the same options to fw_cfg.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { type AcpiOptions, buildAcpiTables } from "../machine/acpi/mod.ts";
import { PCI_IO_WINDOWS } from "../machine/layout.ts";
import type { MemoryMap } from "../machine/memory_map.ts";
import { PIRQ_GSI_BASE } from "../machine/pci/piix.ts";
import { vmbusAcpiNode } from "../vmbus/acpi.ts";

/** What the machine's ACPI tables describe. */
export interface MachineAcpi {
  cpus: number;
  map: MemoryMap;
  vmbus: boolean;
}

/** The ACPI options of the machine: PM timer, PCI root with its windows and `_PRT`, VMBus. */
export function machineAcpiOptions(options: MachineAcpi): AcpiOptions {
  return {
    cpus: options.cpus,
    devices: options.vmbus ? [vmbusAcpiNode(options.map.vmbusMmio)] : [],
    pmTimer: true,
    pci: {
      ioWindows: PCI_IO_WINDOWS,
      mmio32: options.map.pciMmio.low,
      mmio64: options.map.pciMmio.high,
      // The PIIX swizzle: slot S pin P (0 = INTA) reaches PIRQ (S + P) mod 4.
      gsiOf: (slot, pin) => PIRQ_GSI_BASE + ((slot + pin) & 3),
    },
  };
}

/** Writes the ACPI tables into `memory`; returns the RSDP's guest address. */
export function installAcpi(memory: GuestMemory, options: MachineAcpi): number {
  const tables = buildAcpiTables(machineAcpiOptions(options));
  memory.write(tables.gpa, tables.bytes);
  return tables.rsdpAddress;
}
