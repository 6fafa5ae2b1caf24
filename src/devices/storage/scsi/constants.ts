/**
 * SCSI numbers the target uses (SPC-4 / SBC-3): operation codes, status, sense keys and
 * additional sense codes. Constants only.
 * @module
 */

/** Operation codes. */
export const ScsiOp = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  SEND_DIAGNOSTIC: 0x1d,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  WRITE_VERIFY_10: 0x2e,
  VERIFY_10: 0x2f,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SELECT_10: 0x55,
  MODE_SENSE_10: 0x5a,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  VERIFY_16: 0x8f,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  MAINTENANCE_IN: 0xa3,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
  VERIFY_12: 0xaf,
} as const;

/** SERVICE ACTION IN(16) service action: READ CAPACITY(16). */
export const SAI_READ_CAPACITY_16 = 0x10;

/** SCSI status byte values. */
export const ScsiStatus = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
} as const;

/** Sense keys. */
export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
  MISCOMPARE: 0xe,
} as const;

/** Additional sense code (high byte) and qualifier (low byte), as `asc << 8 | ascq`. */
export const Asc = {
  NONE: 0x0000,
  WRITE_ERROR: 0x0c00,
  UNRECOVERED_READ_ERROR: 0x1100,
  MISCOMPARE_DURING_VERIFY: 0x1d00,
  PARAMETER_LIST_LENGTH_ERROR: 0x1a00,
  INVALID_COMMAND_OPERATION_CODE: 0x2000,
  LBA_OUT_OF_RANGE: 0x2100,
  INVALID_FIELD_IN_CDB: 0x2400,
  LOGICAL_UNIT_NOT_SUPPORTED: 0x2500,
  INVALID_FIELD_IN_PARAMETER_LIST: 0x2600,
  WRITE_PROTECTED: 0x2700,
  SPACE_ALLOCATION_FAILED_WRITE_PROTECT: 0x2707,
  SAVING_PARAMETERS_NOT_SUPPORTED: 0x3900,
  INTERNAL_TARGET_FAILURE: 0x4400,
} as const;

/** Peripheral device type: direct-access block device. */
export const PERIPHERAL_DISK = 0x00;
/** INQUIRY byte 0 for a LUN that does not exist (qualifier 011b, type 1Fh). */
export const PERIPHERAL_NOT_PRESENT = 0x7f;

/** Mode pages. */
export const ModePage = {
  CACHING: 0x08,
  CONTROL: 0x0a,
  ALL: 0x3f,
} as const;

/** VPD pages. */
export const VpdPage = {
  SUPPORTED: 0x00,
  SERIAL: 0x80,
  DEVICE_ID: 0x83,
  BLOCK_LIMITS: 0xb0,
  BLOCK_CHARACTERISTICS: 0xb1,
  LOGICAL_BLOCK_PROVISIONING: 0xb2,
} as const;

/** CDB length implied by an operation code's group (0 when the group has no fixed length). */
export function cdbLengthOf(opcode: number): number {
  switch (opcode >> 5) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return 0;
  }
}
