/**
 * Command results and fixed-format sense data (SPC-4 4.5.3): 18 bytes, response code 70h.
 * @module
 */
import { SrbStatus } from "../protocol.ts";
import { Asc, ScsiStatus, SenseKey } from "./constants.ts";

/** Size of the fixed-format sense data we build. */
export const FIXED_SENSE_SIZE = 18;

/** What a command produced. */
export interface ScsiResult {
  /** SCSI status byte (`ScsiStatus`). */
  readonly scsiStatus: number;
  /** Adapter-level status (`SrbStatus`, low 6 bits). */
  readonly srbStatus: number;
  /** Bytes moved to or from the data buffer. */
  readonly transferred: number;
  /** Sense data when `scsiStatus` is CHECK CONDITION. */
  readonly sense?: Uint8Array;
}

/** GOOD with `transferred` bytes moved. */
export function good(transferred = 0): ScsiResult {
  return { scsiStatus: ScsiStatus.GOOD, srbStatus: SrbStatus.SUCCESS, transferred };
}

/** Where the bad field of an ILLEGAL REQUEST is (sense-key specific field pointer). */
export interface FieldPointer {
  /** True when the field is in the CDB, false when in the parameter list. */
  readonly inCdb: boolean;
  /** Byte of the field. */
  readonly byte: number;
  /** Bit of the field (0-7), when known. */
  readonly bit?: number;
}

/** Fixed-format sense data. */
export function fixedSense(
  key: number,
  asc: number,
  options: { info?: number; field?: FieldPointer } = {},
): Uint8Array {
  const s = new Uint8Array(FIXED_SENSE_SIZE);
  s[0] = 0x70;
  s[2] = key & 0x0f;
  if (options.info !== undefined && options.info <= 0xffff_ffff) {
    s[0] |= 0x80; // VALID: INFORMATION holds the LBA
    new DataView(s.buffer).setUint32(3, options.info, false);
  }
  s[7] = FIXED_SENSE_SIZE - 8;
  s[12] = (asc >> 8) & 0xff;
  s[13] = asc & 0xff;
  const f = options.field;
  if (f) {
    s[15] = 0x80 | (f.inCdb ? 0x40 : 0) | (f.bit !== undefined ? 0x08 | (f.bit & 7) : 0);
    s[16] = (f.byte >> 8) & 0xff;
    s[17] = f.byte & 0xff;
  }
  return s;
}

/** CHECK CONDITION with fixed-format sense. */
export function checkCondition(
  key: number,
  asc: number,
  options: { info?: number; field?: FieldPointer; transferred?: number } = {},
): ScsiResult {
  return {
    scsiStatus: ScsiStatus.CHECK_CONDITION,
    srbStatus: SrbStatus.ERROR,
    transferred: options.transferred ?? 0,
    sense: fixedSense(key, asc, options),
  };
}

/** ILLEGAL REQUEST / INVALID FIELD IN CDB at `byte` (and `bit`). */
export function invalidField(byte: number, bit?: number): ScsiResult {
  return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, {
    field: bit === undefined ? { inCdb: true, byte } : { inCdb: true, byte, bit },
  });
}

/** ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST at `byte`. */
export function invalidParameter(byte: number): ScsiResult {
  return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST, {
    field: { inCdb: false, byte },
  });
}

/** ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE. */
export function invalidOpcode(): ScsiResult {
  return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE, {
    field: { inCdb: true, byte: 0, bit: 7 },
  });
}

/** ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE. */
export function lbaOutOfRange(lba: number): ScsiResult {
  return checkCondition(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE, { info: lba });
}

/** DATA PROTECT / WRITE PROTECTED. */
export function writeProtected(): ScsiResult {
  return checkCondition(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED);
}

/** Adapter-level failure without sense (bad buffer, missing LUN). */
export function adapterError(srbStatus: number): ScsiResult {
  return { scsiStatus: ScsiStatus.GOOD, srbStatus, transferred: 0 };
}

/** Sense key and ASC of fixed sense data, for tests and logs. */
export function decodeSense(sense: Uint8Array): { key: number; asc: number } {
  return { key: (sense[2] ?? 0) & 0x0f, asc: ((sense[12] ?? 0) << 8) | (sense[13] ?? 0) };
}
