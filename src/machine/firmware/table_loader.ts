/**
 * ACPI for firmware: the machine's relocatable ACPI image (`../acpi/build.ts`) as the three
 * fw_cfg files OVMF and SeaBIOS expect, `etc/acpi/rsdp`, `etc/acpi/tables` and the
 * linker/loader script `etc/table-loader` that tells the firmware to allocate both blobs, add the
 * tables blob's address to every pointer field, and recompute every checksum.
 *
 * OVMF then installs each table that an ADD_POINTER points at (skipping RSDP, RSDT and XSDT,
 * which it builds itself), so every table must be reachable through a pointer: the FADT and MADT
 * through the XSDT, the FACS and DSDT through the FADT.
 * @module
 */
import { ACPI_TABLES_ALIGN, type AcpiBlob, type AcpiImage } from "../acpi/build.ts";
import {
  FILE_ACPI_RSDP,
  FILE_ACPI_TABLES,
  FILE_TABLE_LOADER,
  LOADER_ADD_CHECKSUM,
  LOADER_ADD_CHECKSUM_ENTRY,
  LOADER_ADD_POINTER,
  LOADER_ADD_POINTER_ENTRY,
  LOADER_ALLOCATE,
  LOADER_ALLOCATE_ENTRY,
  LOADER_ENTRY_SIZE,
  LOADER_ZONE_FSEG,
  LOADER_ZONE_HIGH,
} from "./fw_cfg_protocol.ts";

/** A named fw_cfg file. */
export interface FwCfgFile {
  readonly name: string;
  readonly data: Uint8Array;
}

const FILE_OF: Record<AcpiBlob, string> = { rsdp: FILE_ACPI_RSDP, tables: FILE_ACPI_TABLES };
const name = (s: string) => new TextEncoder().encode(s);

/** The RSDP, tables and loader script for `image`, in the order to add them. */
export function acpiFirmwareFiles(image: AcpiImage): FwCfgFile[] {
  const commands: Uint8Array[] = [
    LOADER_ALLOCATE_ENTRY.encode({
      command: LOADER_ALLOCATE,
      file: name(FILE_ACPI_RSDP),
      align: 16,
      zone: LOADER_ZONE_FSEG,
    }),
    LOADER_ALLOCATE_ENTRY.encode({
      command: LOADER_ALLOCATE,
      file: name(FILE_ACPI_TABLES),
      align: ACPI_TABLES_ALIGN,
      zone: LOADER_ZONE_HIGH,
    }),
  ];
  for (const p of image.pointers) {
    commands.push(LOADER_ADD_POINTER_ENTRY.encode({
      command: LOADER_ADD_POINTER,
      pointer_file: name(FILE_OF[p.blob]),
      pointee_file: name(FILE_ACPI_TABLES),
      offset: p.offset,
      size: p.size,
    }));
  }
  for (const c of image.checksums) {
    commands.push(LOADER_ADD_CHECKSUM_ENTRY.encode({
      command: LOADER_ADD_CHECKSUM,
      file: name(FILE_OF[c.blob]),
      offset: c.offset,
      start: c.start,
      length: c.length,
    }));
  }
  const script = new Uint8Array(commands.length * LOADER_ENTRY_SIZE);
  commands.forEach((c, i) => script.set(c, i * LOADER_ENTRY_SIZE));
  // The firmware computes each checksum over its whole range, the checksum byte included
  // (OVMF: `Base[ResultOffset] = CalculateCheckSum8 (Base + Start, Length)`), so every byte an
  // ADD_CHECKSUM writes must be 0 in the blob, as QEMU leaves it.
  const blobs = { rsdp: image.rsdp.slice(), tables: image.tables.slice() };
  for (const c of image.checksums) blobs[c.blob][c.offset] = 0;
  return [
    { name: FILE_ACPI_RSDP, data: blobs.rsdp },
    { name: FILE_ACPI_TABLES, data: blobs.tables },
    { name: FILE_TABLE_LOADER, data: script },
  ];
}
