/**
 * Disk backends behind the SCSI target: the `DiskBackend` interface, raw files, qcow2 images,
 * new images (`createDisk`) and the `--disk` option (`parseDiskSpec`, `openDisk`).
 * @module
 */
export * from "./backend.ts";
export { AsyncFile, type AsyncFileOptions } from "./aio.ts";
export { alignedBuffer, RawFileBackend, type RawFileOptions } from "./raw.ts";
export { Segments, totalLength } from "./segments.ts";
export { Qcow2Backend, type Qcow2Options } from "./qcow2.ts";
export { Qcow2FormatError, type Qcow2Header } from "./qcow2_format.ts";
export { createDisk, type CreateDiskOptions, type DiskFormat, parseSize } from "./create.ts";
export { type DiskSpec, MAX_LUN, openDisk, parseDiskSpec } from "./disk_spec.ts";
