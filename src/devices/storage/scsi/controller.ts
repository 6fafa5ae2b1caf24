/**
 * A SCSI controller: logical units by address, REPORT LUNS, and the answers for addresses with
 * no unit (INQUIRY with peripheral qualifier 3, anything else "invalid LUN"). Units sit at path
 * 0, target 0, LUN n, as on Hyper-V; they can come and go while the guest runs (the transport
 * tells the guest to rescan).
 * @module
 */
import { SrbStatus } from "../protocol.ts";
import { cdbLengthOf, ScsiOp } from "./constants.ts";
import type { ScsiDisk, ScsiRequest } from "./disk.ts";
import { missingLunInquiry } from "./pages.ts";
import { adapterError, good, invalidField, type ScsiResult } from "./sense.ts";

/** A SCSI address as carried by an SRB. */
export interface ScsiAddress {
  readonly pathId: number;
  readonly targetId: number;
  readonly lun: number;
}

/** Highest LUN (single-level peripheral addressing, what storvsc scans). */
export const MAX_CONTROLLER_LUN = 254;

/** The logical units of one controller. */
export class ScsiController {
  readonly #luns = new Map<number, ScsiDisk>();
  readonly #listeners: (() => void)[] = [];

  /** Adds `disk` at LUN `lun`. Throws `RangeError` for a bad or used LUN. */
  attach(lun: number, disk: ScsiDisk): void {
    if (!Number.isInteger(lun) || lun < 0 || lun > MAX_CONTROLLER_LUN) {
      throw new RangeError(`LUN ${lun} is outside 0..${MAX_CONTROLLER_LUN}`);
    }
    if (this.#luns.has(lun)) throw new RangeError(`LUN ${lun} is already in use`);
    this.#luns.set(lun, disk);
    this.#changed();
  }

  /** Removes the unit at `lun` and returns it (its in-flight commands still complete). */
  detach(lun: number): ScsiDisk | undefined {
    const d = this.#luns.get(lun);
    if (!d) return undefined;
    this.#luns.delete(lun);
    this.#changed();
    return d;
  }

  /** The unit at `lun`. */
  get(lun: number): ScsiDisk | undefined {
    return this.#luns.get(lun);
  }

  /** The lowest free LUN, or -1. */
  freeLun(): number {
    for (let i = 0; i <= MAX_CONTROLLER_LUN; i++) if (!this.#luns.has(i)) return i;
    return -1;
  }

  /** Used LUNs, ascending. */
  luns(): number[] {
    return [...this.#luns.keys()].sort((a, b) => a - b);
  }

  /** Calls `fn` whenever a unit is attached or detached. */
  onChange(fn: () => void): () => void {
    this.#listeners.push(fn);
    return () => {
      const i = this.#listeners.indexOf(fn);
      if (i >= 0) this.#listeners.splice(i, 1);
    };
  }

  #changed(): void {
    for (const fn of [...this.#listeners]) fn();
  }

  /** Runs a command addressed to `addr`. Never rejects. */
  execute(addr: ScsiAddress, req: ScsiRequest): Promise<ScsiResult> | ScsiResult {
    const op = req.cdb[0];
    if (op === undefined) return adapterError(SrbStatus.INVALID_REQUEST);
    const home = addr.pathId === 0 && addr.targetId === 0;
    if (op === ScsiOp.REPORT_LUNS) return this.#reportLuns(req, home);
    const disk = home ? this.#luns.get(addr.lun) : undefined;
    if (disk) return disk.execute(req);
    if (op === ScsiOp.INQUIRY && req.cdb.length >= 6) {
      if (req.cdb[1]! & 0x03 || req.cdb[2] !== 0) return invalidField(2);
      const data = missingLunInquiry();
      const n = Math.min(data.length, (req.cdb[3]! << 8) | req.cdb[4]!, req.dataLength);
      if (n > 0) req.data.write(0, data.subarray(0, n));
      return good(n);
    }
    return adapterError(SrbStatus.INVALID_LUN);
  }

  #reportLuns(req: ScsiRequest, home: boolean): ScsiResult {
    const cdb = req.cdb;
    if (cdb.length < cdbLengthOf(ScsiOp.REPORT_LUNS)) return invalidField(0);
    const select = cdb[2]!;
    if (select > 2 && select !== 0x10 && select !== 0x11 && select !== 0x12) {
      return invalidField(2);
    }
    const alloc = ((cdb[6]! << 24) >>> 0) + (cdb[7]! << 16) + (cdb[8]! << 8) + cdb[9]!;
    if (alloc < 16) return invalidField(6);
    const luns = home && select !== 0x01 ? this.luns() : [];
    const data = new Uint8Array(8 + luns.length * 8);
    new DataView(data.buffer).setUint32(0, luns.length * 8, false);
    luns.forEach((lun, i) => {
      data[8 + i * 8] = (lun >> 8) & 0x3f;
      data[9 + i * 8] = lun & 0xff;
    });
    const n = Math.min(data.length, alloc, req.dataLength);
    if (n > 0) req.data.write(0, data.subarray(0, n));
    return good(n);
  }
}
