/**
 * ACPI for the hyperdeno machine: an AML encoder (`aml.ts`), table encoders (`tables.ts`), the
 * DSDT (`dsdt.ts`) and `build.ts`, which builds them once as a relocatable image and places it
 * in the ACPI area of `../layout.ts` (direct boot) or hands it to the firmware's loader.
 * @module
 */
export {
  type AcpiBlob,
  type AcpiChecksum,
  type AcpiImage,
  type AcpiImageEntry,
  type AcpiOptions,
  type AcpiPointer,
  type AcpiTableInfo,
  type AcpiTables,
  buildAcpiImage,
  buildAcpiTables,
  relocateAcpiImage,
} from "./build.ts";
