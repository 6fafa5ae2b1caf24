/**
 * Builds the machine's ACPI tables and writes them into guest RAM; returns the RSDP address.
 * @module
 */
import type { GuestMemory } from "../kvm/guest_memory.ts";
import type { MemoryMap } from "../machine/memory_map.ts";

/** Writes the ACPI tables; returns the RSDP's guest address (undefined: no ACPI). */
export function installAcpi(
  _memory: GuestMemory,
  _options: { cpus: number; map: MemoryMap },
): number | undefined {
  return undefined;
}
