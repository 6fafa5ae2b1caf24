/**
 * Builds the machine's ACPI tables and writes them into guest RAM; returns the RSDP address.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { buildAcpiTables } from "../machine/acpi/mod.ts";
import { PCI_IO_WINDOWS } from "../machine/layout.ts";
import type { MemoryMap } from "../machine/memory_map.ts";
import { PIRQ_GSI_BASE } from "../machine/pci/piix.ts";
import { vmbusAcpiNode } from "../vmbus/acpi.ts";

/** Writes the ACPI tables into `memory`; returns the RSDP's guest address. */
export function installAcpi(
  memory: GuestMemory,
  options: { cpus: number; map: MemoryMap; vmbus: boolean },
): number {
  const tables = buildAcpiTables({
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
  });
  memory.write(tables.gpa, tables.bytes);
  return tables.rsdpAddress;
}
