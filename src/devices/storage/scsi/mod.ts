/**
 * The SCSI target: logical units over disk backends (`ScsiDisk`), a controller that addresses
 * them (`ScsiController`), CDB constants, INQUIRY/VPD/mode pages and sense data. It talks to a
 * `DiskBackend` and to the initiator's data buffer, and knows nothing of VMBus.
 * @module
 */
export * from "./constants.ts";
export * from "./controller.ts";
export * from "./disk.ts";
export * from "./pages.ts";
export * from "./sense.ts";
