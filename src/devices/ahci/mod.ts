/**
 * AHCI (Intel ICH9 8086:2922): the HBA register model and command engine (`ahci.ts`), the wire
 * formats (`protocol.ts`), IDENTIFY answers (`identify.ts`), the ATAPI CD-ROM target
 * (`atapi.ts`) and the guest's scatter-gather lists (`sg.ts`), over the storage backends that
 * storvsc uses too. PCI function and interrupt wiring live with the machine builder.
 * @module
 */
export { AhciController, type AhciDeps, type AhciDrive, type AhciPortStats } from "./ahci.ts";
export { CD_BLOCK, CdTarget } from "./atapi.ts";
export * from "./protocol.ts";
