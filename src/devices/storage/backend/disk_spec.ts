/**
 * `--disk path=FILE[,readonly=on][,format=raw|qcow2][,serial=STR][,lun=N][,direct=on][,bus=scsi|sata]`: the
 * parser for the CLI option and `openDisk`, which turns a spec into an open backend. Every
 * problem is a `UsageError` that names the option, the value and what to do.
 * @module
 */
import { UsageError } from "../../../util/errors.ts";
import type { DiskBackend } from "./backend.ts";
import type { DiskFormat } from "./create.ts";
import { Qcow2Backend } from "./qcow2.ts";
import { RawFileBackend } from "./raw.ts";

/** A parsed `--disk` option. */
export interface DiskSpec {
  /** Image path. */
  readonly path: string;
  /** Present the disk read-only (WP bit, writes fail with DATA PROTECT). */
  readonly readOnly: boolean;
  /** Image format; `undefined` means raw, after checking the file is not qcow2. */
  readonly format: DiskFormat | undefined;
  /** Serial number (INQUIRY VPD 0x80 / 0x83); `undefined` derives one from the path. */
  readonly serial: string | undefined;
  /** LUN on the controller; `undefined` takes the next free one. */
  readonly lun: number | undefined;
  /** O_DIRECT for raw images. */
  readonly direct: boolean;
  /** Logical sector size (512 or 4096). */
  readonly sectorSize: number;
  /** Where the disk sits: synthetic SCSI over VMBus (default) or a SATA port of the AHCI HBA. */
  readonly bus: "scsi" | "sata";
}

const KEYS = ["path", "readonly", "format", "serial", "lun", "direct", "sector", "bus"] as const;

/** Largest LUN a controller offers (storvsc scans 0..254; we keep to single-level LUNs). */
export const MAX_LUN = 254;

function parseBool(key: string, value: string): boolean {
  switch (value.toLowerCase()) {
    case "on":
    case "true":
    case "yes":
    case "1":
      return true;
    case "off":
    case "false":
    case "no":
    case "0":
      return false;
  }
  throw new UsageError(`--disk ${key}=${value}: expected on or off`);
}

/** Splits at single commas; `,,` is a literal comma (QEMU's convention). */
function splitOptions(text: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === ",") {
      if (text[i + 1] === ",") {
        cur += ",";
        i++;
        continue;
      }
      out.push(cur);
      cur = "";
    } else cur += ch;
  }
  out.push(cur);
  return out;
}

/**
 * Parses one `--disk` value. A bare first item is the path (`--disk disk.img,readonly=on`).
 * Checks syntax only; `openDisk` checks the file. Throws `UsageError`.
 */
export function parseDiskSpec(text: string): DiskSpec {
  if (text.trim() === "") throw new UsageError("--disk needs a value: --disk path=FILE");
  const seen = new Map<string, string>();
  splitOptions(text).forEach((item, i) => {
    const eq = item.indexOf("=");
    let key: string;
    let value: string;
    if (eq < 0) {
      if (i !== 0) {
        throw new UsageError(`--disk: '${item}' is not key=value (keys: ${KEYS.join(", ")})`);
      }
      key = "path";
      value = item;
    } else {
      key = item.slice(0, eq).trim().toLowerCase();
      value = item.slice(eq + 1);
    }
    if (!(KEYS as readonly string[]).includes(key)) {
      throw new UsageError(`--disk: unknown key '${key}' (keys: ${KEYS.join(", ")})`);
    }
    if (seen.has(key)) throw new UsageError(`--disk: '${key}' is given twice`);
    seen.set(key, value);
  });
  const path = seen.get("path");
  if (path === undefined || path === "") {
    throw new UsageError("--disk needs path=FILE");
  }
  const fmt = seen.get("format");
  if (fmt !== undefined && fmt !== "raw" && fmt !== "qcow2") {
    throw new UsageError(`--disk format=${fmt}: unknown format; use raw or qcow2`);
  }
  const serial = seen.get("serial");
  if (serial !== undefined && !/^[\x21-\x7e]{1,20}$/.test(serial)) {
    throw new UsageError(
      `--disk serial=${serial}: use 1 to 20 printable ASCII characters without spaces`,
    );
  }
  let lun: number | undefined;
  const lunText = seen.get("lun");
  if (lunText !== undefined) {
    lun = Number(lunText);
    if (!/^\d+$/.test(lunText) || lun > MAX_LUN) {
      throw new UsageError(`--disk lun=${lunText}: use a number from 0 to ${MAX_LUN}`);
    }
  }
  const sectorText = seen.get("sector") ?? "512";
  if (sectorText !== "512" && sectorText !== "4096") {
    throw new UsageError(`--disk sector=${sectorText}: use 512 or 4096`);
  }
  const direct = seen.has("direct") ? parseBool("direct", seen.get("direct")!) : false;
  const bus = seen.get("bus") ?? "scsi";
  if (bus !== "scsi" && bus !== "sata") {
    throw new UsageError(`--disk bus=${bus}: use scsi (synthetic SCSI over VMBus) or sata (AHCI)`);
  }
  if (bus === "sata" && lun !== undefined) {
    throw new UsageError("--disk lun= is for bus=scsi; SATA disks take AHCI ports in order");
  }
  if (direct && fmt === "qcow2") {
    throw new UsageError("--disk direct=on works with raw images only");
  }
  return {
    path,
    readOnly: seen.has("readonly") ? parseBool("readonly", seen.get("readonly")!) : false,
    format: fmt as DiskFormat | undefined,
    serial,
    lun,
    direct,
    sectorSize: Number(sectorText),
    bus,
  };
}

/**
 * Opens the image a spec names. Without `format`, a file that starts with the qcow2 magic is
 * refused (guessing would let a guest that wrote those bytes into a raw disk turn it into a
 * qcow2 image with a backing file of its choice). Throws `UsageError`.
 */
export async function openDisk(spec: DiskSpec): Promise<DiskBackend> {
  try {
    const st = Deno.statSync(spec.path);
    if (st.isDirectory) throw new UsageError(`--disk ${spec.path}: is a directory, not an image`);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(
      `--disk ${spec.path}: file not found (create one with 'hyperdeno create-disk ${spec.path} 10G')`,
    );
  }
  if (spec.format === "qcow2") {
    return await Qcow2Backend.open(spec.path, {
      readOnly: spec.readOnly,
      sectorSize: spec.sectorSize,
    });
  }
  if (spec.format === undefined) {
    const head = new Uint8Array(4);
    try {
      using f = await Deno.open(spec.path);
      await f.read(head);
    } catch (e) {
      throw new UsageError(`--disk ${spec.path}: cannot read it: ${(e as Error).message}`);
    }
    if (head[0] === 0x51 && head[1] === 0x46 && head[2] === 0x49 && head[3] === 0xfb) {
      throw new UsageError(
        `--disk ${spec.path}: the file looks like a qcow2 image; add format=qcow2 ` +
          `(or format=raw to use the bytes as they are)`,
      );
    }
  }
  return RawFileBackend.open(spec.path, {
    readOnly: spec.readOnly,
    direct: spec.direct,
    sectorSize: spec.sectorSize,
  });
}
