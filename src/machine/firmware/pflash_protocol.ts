/**
 * The Intel/Sharp CFI command set of a parallel NOR flash (the subset OVMF's
 * `QemuFlashFvbServicesRuntimeDxe` and QEMU's `pflash_cfi01` use), the status bits, the CFI
 * query table, and the firmware-volume header that every OVMF variable store starts with.
 * Constants and layouts only; the device is `pflash.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** Program one unit (the next write is the data). */
export const CMD_PROGRAM = 0x10;
/** Program, alternate opcode. */
export const CMD_PROGRAM_ALT = 0x40;
/** Block erase setup (confirmed by `CMD_CONFIRM`). */
export const CMD_BLOCK_ERASE = 0x20;
/** Clear the status register (and return to read-array mode). */
export const CMD_CLEAR_STATUS = 0x50;
/** Block lock/unlock setup. */
export const CMD_LOCK_SETUP = 0x60;
/** Read the status register. */
export const CMD_READ_STATUS = 0x70;
/** Read the identifier codes. */
export const CMD_READ_ID = 0x90;
/** CFI query. */
export const CMD_CFI_QUERY = 0x98;
/** Erase / unlock confirm. */
export const CMD_CONFIRM = 0xd0;
/** Lock-bit set (after `CMD_LOCK_SETUP`). */
export const CMD_LOCK_SET = 0x01;
/** Read array (normal reads). */
export const CMD_READ_ARRAY = 0xff;
/** QEMU's model also takes 0x00 as read array. */
export const CMD_READ_ARRAY_ALT = 0x00;
/** AMD-style reset, also read array. */
export const CMD_AMD_RESET = 0xf0;

/** Status: write state machine ready. */
export const STATUS_READY = 0x80;
/** Status: erase error. */
export const STATUS_ERASE_ERROR = 0x20;
/** Status: program error. */
export const STATUS_PROGRAM_ERROR = 0x10;

/** Manufacturer code returned at offset 0 in read-ID mode (Intel). */
export const FLASH_MANUFACTURER_ID = 0x89;
/** Device code at offset 1 in read-ID mode. */
export const FLASH_DEVICE_ID = 0x18;

/** Erase block size: 4 KiB, QEMU's x86 flash sector and OVMF's `PcdOvmfFirmwareBlockSize`. */
export const FLASH_SECTOR_SIZE = 0x1000;

/** Bytes of the CFI query table. */
export const CFI_TABLE_SIZE = 0x40;

/**
 * The CFI query table of a uniform-sector x8 device of `size` bytes: "QRY", Intel command set
 * (primary table at 0x31), no buffered write, one erase region of `size / sectorSize` sectors.
 */
export function cfiTable(size: number, sectorSize: number = FLASH_SECTOR_SIZE): Uint8Array {
  const t = new Uint8Array(CFI_TABLE_SIZE);
  t.set([0x51, 0x52, 0x59], 0x10); // "QRY"
  t[0x13] = 0x01; // primary command set: Intel/Sharp extended
  t[0x15] = 0x31; // primary extended table address
  t[0x1b] = 0x45; // Vcc min 4.5 V
  t[0x1c] = 0x55; // Vcc max 5.5 V
  t[0x1f] = 0x07; // typical single-byte program: 2^7 us
  t[0x21] = 0x0a; // typical block erase: 2^10 ms
  t[0x23] = 0x04; // max program: 2^4 x typical
  t[0x25] = 0x04; // max block erase: 2^4 x typical
  t[0x27] = Math.round(Math.log2(size)); // device size 2^n bytes
  t[0x28] = 0x00; // x8 interface only
  t[0x2a] = 0x00; // no multi-byte (buffered) write
  t[0x2c] = 0x01; // one erase block region
  const blocks = Math.floor(size / sectorSize) - 1;
  t[0x2d] = blocks & 0xff;
  t[0x2e] = (blocks >> 8) & 0xff;
  t[0x2f] = (sectorSize >> 8) & 0xff;
  t[0x30] = (sectorSize >> 16) & 0xff;
  t.set([0x50, 0x52, 0x49, 0x31, 0x30], 0x31); // "PRI" version 1.0
  return t;
}

/** `EFI_FIRMWARE_VOLUME_HEADER` (PI spec vol. 3), followed by its block map. */
export const FV_HEADER = defineLayout("EFI_FIRMWARE_VOLUME_HEADER", 0x38, {
  zero_vector: { offset: 0x00, type: { bytes: 16 } },
  file_system_guid: { offset: 0x10, type: { bytes: 16 } },
  fv_length: { offset: 0x20, type: "u64" },
  signature: { offset: 0x28, type: { bytes: 4 } },
  attributes: { offset: 0x2c, type: "u32" },
  header_length: { offset: 0x30, type: "u16" },
  checksum: { offset: 0x32, type: "u16" },
  ext_header_offset: { offset: 0x34, type: "u16" },
  revision: { offset: 0x37, type: "u8" },
});

/** "_FVH". */
export const FV_SIGNATURE: Uint8Array = new TextEncoder().encode("_FVH");

/**
 * `EFI_SYSTEM_NV_DATA_FV_GUID` {FFF12B8D-7696-4C8B-A985-2747075B4F50}, the file system GUID of
 * an NV variable store volume, in on-disk byte order.
 */
export const SYSTEM_NV_DATA_FV_GUID: Uint8Array = Uint8Array.of(
  0x8d,
  0x2b,
  0xf1,
  0xff,
  0x96,
  0x76,
  0x8b,
  0x4c,
  0xa9,
  0x85,
  0x27,
  0x47,
  0x07,
  0x5b,
  0x4f,
  0x50,
);
