/**
 * ACPI for the hyperdeno machine: an AML encoder (`aml.ts`), table encoders (`tables.ts`), the
 * DSDT (`dsdt.ts`) and `buildAcpiTables` (`build.ts`), which lays them all out in the ACPI area
 * of `../layout.ts`.
 * @module
 */
export { type AcpiOptions, type AcpiTableInfo, type AcpiTables, buildAcpiTables } from "./build.ts";
