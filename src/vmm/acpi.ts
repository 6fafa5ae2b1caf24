/**
 * Builds the machine's ACPI tables and writes them into guest RAM; returns the RSDP address.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import { buildAcpiTables } from "../machine/acpi/mod.ts";
import type { MemoryMap } from "../machine/memory_map.ts";

/** Writes the ACPI tables into `memory`; returns the RSDP's guest address. */
export function installAcpi(
  memory: GuestMemory,
  options: { cpus: number; map: MemoryMap; vmbus: boolean },
): number {
  const tables = buildAcpiTables({
    cpus: options.cpus,
    vmbusMmio: options.vmbus ? options.map.vmbusMmio : undefined,
  });
  memory.write(tables.gpa, tables.bytes);
  return tables.rsdpAddress;
}
