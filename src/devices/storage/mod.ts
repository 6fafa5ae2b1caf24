/**
 * Storage: the synthetic SCSI controller (storvsp) on VMBus. Three parts kept apart, as in
 * OpenVMM (`storvsp_protocol` / `storvsp` + `scsidisk` / `disk_backend`):
 *
 * - `protocol.ts`: the vstor wire format (layouts and constants, no I/O);
 * - `scsi/`: the SCSI target (CDB parsing, sense, INQUIRY/VPD/mode pages) over a `DiskBackend`;
 * - `backend/`: raw files and qcow2 images with async positional I/O, `createDisk`, and the
 *   `--disk` option parser;
 * - `storvsp.ts`: the `VmbusDevice` that runs the storvsc protocol and moves SRB data between
 *   guest memory and the target.
 *
 * Wiring (one controller, disks at LUN 0, 1, …):
 *
 * ```ts
 * const controller = new ScsiController();
 * const spec = parseDiskSpec("path=disk.qcow2,format=qcow2");
 * const backend = await openDisk(spec);
 * controller.attach(spec.lun ?? controller.freeLun(), new ScsiDisk(backend, { serial: "d0" }));
 * server.addDevice(new StorvspDevice(controller, { maxSubChannels: vcpus - 1 }));
 * ```
 * @module
 */
export * from "./protocol.ts";
export * from "./scsi/mod.ts";
export * from "./backend/mod.ts";
export {
  StorvspDevice,
  storvspInstanceId,
  type StorvspOptions,
  type StorvspState,
  type StorvspStats,
} from "./storvsp.ts";
