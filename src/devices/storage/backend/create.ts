/**
 * `create-disk FILE SIZE [--format raw|qcow2]`: new empty images. Raw images are sparse files;
 * qcow2 images are minimal version 3 images (header, refcount table and block, L1 table) that
 * `qemu-img check` accepts.
 * @module
 */
import { UsageError } from "../../../util/errors.ts";
import { MAX_VIRTUAL_SIZE, newQcow2Image } from "./qcow2_format.ts";

/** Image formats this VMM reads and writes. */
export type DiskFormat = "raw" | "qcow2";

/** Options of `createDisk`. */
export interface CreateDiskOptions {
  /** Image format (default raw). */
  readonly format?: DiskFormat;
  /** Replace an existing file (default false: refuse). */
  readonly overwrite?: boolean;
  /** qcow2 cluster size in bytes, a power of two from 512 to 2 MiB (default 64 KiB). */
  readonly clusterSize?: number;
}

const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
};

/**
 * Parses a size: bytes, or a number with a binary suffix (`512`, `64K`, `10G`, `1.5T`, `2GiB`).
 * Throws `UsageError`.
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) {
    throw new UsageError(`size '${text}' is not a size; use bytes or a suffix like 512M, 10G, 1T`);
  }
  const bytes = Math.ceil(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new UsageError(`size '${text}' must be a positive number of bytes`);
  }
  return bytes;
}

/**
 * Creates an empty disk image of `size` bytes (rounded up to 512) at `path`. Throws
 * `UsageError` when the file exists (unless `overwrite`), the size is bad, or the file cannot be
 * written. Returns the size actually used.
 */
export async function createDisk(
  path: string,
  size: number | string,
  options: CreateDiskOptions = {},
): Promise<number> {
  const format = options.format ?? "raw";
  if (format !== "raw" && format !== "qcow2") {
    throw new UsageError(`disk format '${format}' is not supported; use raw or qcow2`);
  }
  let bytes = typeof size === "string" ? parseSize(size) : size;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new UsageError(`disk size ${size} must be a positive number of bytes`);
  }
  bytes = Math.ceil(bytes / 512) * 512;
  if (bytes > MAX_VIRTUAL_SIZE) {
    throw new UsageError(`disk size ${bytes} is larger than the 4 PiB limit`);
  }
  if (!options.overwrite) {
    try {
      Deno.lstatSync(path);
      throw new UsageError(`'${path}' already exists; remove it first or pick another name`);
    } catch (e) {
      if (e instanceof UsageError) throw e;
    }
  }
  let image: Uint8Array | undefined;
  if (format === "qcow2") {
    const cs = options.clusterSize ?? 65536;
    const bits = Math.log2(cs);
    if (!Number.isInteger(bits) || bits < 9 || bits > 21) {
      throw new UsageError(`cluster size ${cs} must be a power of two from 512 to 2M`);
    }
    try {
      image = newQcow2Image(bytes, { clusterBits: bits });
    } catch (e) {
      throw new UsageError(`cannot create a ${bytes}-byte qcow2 image: ${(e as Error).message}`);
    }
  }
  try {
    using f = await Deno.open(path, { write: true, create: true, truncate: true });
    if (image) {
      let done = 0;
      while (done < image.length) done += await f.write(image.subarray(done));
    } else {
      await f.truncate(bytes);
    }
  } catch (e) {
    throw new UsageError(`cannot create '${path}': ${(e as Error).message}`);
  }
  return bytes;
}
