/**
 * SMBIOS 2.8 structures (DMTF DSP0134 3.x, fields as in version 2.8) as typed layouts: the
 * 32-bit entry point and the structure types the machine describes (0, 1, 3, 4, 16, 17, 19, 32,
 * 127). Each formatted area is followed in the table by its string set (NUL-terminated strings,
 * then one more NUL; two NULs when there are none). Constants and layouts only.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** SMBIOS version the tables follow. */
export const SMBIOS_MAJOR = 2;
/** Minor version. */
export const SMBIOS_MINOR = 8;

/** The 32-bit ("_SM_") entry point. */
export const SMBIOS_ENTRY_POINT = defineLayout("smbios_21_entry_point", 31, {
  anchor: { offset: 0, type: { bytes: 4 } },
  checksum: { offset: 4, type: "u8" },
  length: { offset: 5, type: "u8" },
  major: { offset: 6, type: "u8" },
  minor: { offset: 7, type: "u8" },
  max_structure_size: { offset: 8, type: "u16" },
  revision: { offset: 10, type: "u8" },
  formatted_area: { offset: 11, type: { bytes: 5 } },
  intermediate_anchor: { offset: 16, type: { bytes: 5 } },
  intermediate_checksum: { offset: 21, type: "u8" },
  table_length: { offset: 22, type: "u16" },
  table_address: { offset: 24, type: "u32" },
  structure_count: { offset: 28, type: "u16" },
  bcd_revision: { offset: 30, type: "u8" },
});

/** Type 0: BIOS Information. */
export const SMBIOS_TYPE0 = defineLayout("smbios_type_0", 24, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  vendor: { offset: 4, type: "u8" },
  version: { offset: 5, type: "u8" },
  start_segment: { offset: 6, type: "u16" },
  release_date: { offset: 8, type: "u8" },
  rom_size: { offset: 9, type: "u8" },
  characteristics: { offset: 10, type: "u64" },
  characteristics_ext1: { offset: 18, type: "u8" },
  characteristics_ext2: { offset: 19, type: "u8" },
  bios_major: { offset: 20, type: "u8" },
  bios_minor: { offset: 21, type: "u8" },
  ec_major: { offset: 22, type: "u8" },
  ec_minor: { offset: 23, type: "u8" },
});

/** Type 0 characteristics bit 3: "BIOS characteristics not supported". */
export const BIOS_CHARACTERISTICS_NOT_SUPPORTED = 1n << 3n;
/** Type 0 extension byte 2: targeted content distribution. */
export const BIOS_EXT2_TCD = 1 << 2;
/** Type 0 extension byte 2: UEFI is supported. */
export const BIOS_EXT2_UEFI = 1 << 3;
/** Type 0 extension byte 2: the SMBIOS table describes a virtual machine. */
export const BIOS_EXT2_VM = 1 << 4;

/** Type 1: System Information. */
export const SMBIOS_TYPE1 = defineLayout("smbios_type_1", 27, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  manufacturer: { offset: 4, type: "u8" },
  product: { offset: 5, type: "u8" },
  version: { offset: 6, type: "u8" },
  serial: { offset: 7, type: "u8" },
  uuid: { offset: 8, type: { bytes: 16 } },
  wakeup_type: { offset: 24, type: "u8" },
  sku: { offset: 25, type: "u8" },
  family: { offset: 26, type: "u8" },
});

/** Type 1 wake-up type: power switch. */
export const WAKEUP_POWER_SWITCH = 6;

/** Type 3: System Enclosure or Chassis. */
export const SMBIOS_TYPE3 = defineLayout("smbios_type_3", 22, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  manufacturer: { offset: 4, type: "u8" },
  chassis_type: { offset: 5, type: "u8" },
  version: { offset: 6, type: "u8" },
  serial: { offset: 7, type: "u8" },
  asset_tag: { offset: 8, type: "u8" },
  bootup_state: { offset: 9, type: "u8" },
  power_supply_state: { offset: 10, type: "u8" },
  thermal_state: { offset: 11, type: "u8" },
  security_status: { offset: 12, type: "u8" },
  oem_defined: { offset: 13, type: "u32" },
  height: { offset: 17, type: "u8" },
  power_cords: { offset: 18, type: "u8" },
  contained_count: { offset: 19, type: "u8" },
  contained_length: { offset: 20, type: "u8" },
  sku: { offset: 21, type: "u8" },
});

/** Type 3 chassis type: other. */
export const CHASSIS_OTHER = 0x01;
/** Type 3 state: safe. */
export const STATE_SAFE = 0x03;
/** Type 3 security status: unknown. */
export const SECURITY_UNKNOWN = 0x02;

/** Type 4: Processor Information (version 2.6+ fields). */
export const SMBIOS_TYPE4 = defineLayout("smbios_type_4", 42, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  socket: { offset: 4, type: "u8" },
  processor_type: { offset: 5, type: "u8" },
  family: { offset: 6, type: "u8" },
  manufacturer: { offset: 7, type: "u8" },
  processor_id: { offset: 8, type: "u64" },
  version: { offset: 16, type: "u8" },
  voltage: { offset: 17, type: "u8" },
  external_clock: { offset: 18, type: "u16" },
  max_speed: { offset: 20, type: "u16" },
  current_speed: { offset: 22, type: "u16" },
  status: { offset: 24, type: "u8" },
  upgrade: { offset: 25, type: "u8" },
  l1_cache: { offset: 26, type: "u16" },
  l2_cache: { offset: 28, type: "u16" },
  l3_cache: { offset: 30, type: "u16" },
  serial: { offset: 32, type: "u8" },
  asset_tag: { offset: 33, type: "u8" },
  part_number: { offset: 34, type: "u8" },
  core_count: { offset: 35, type: "u8" },
  core_enabled: { offset: 36, type: "u8" },
  thread_count: { offset: 37, type: "u8" },
  characteristics: { offset: 38, type: "u16" },
  family2: { offset: 40, type: "u16" },
});

/** Type 4 processor type: central processor. */
export const PROCESSOR_CENTRAL = 0x03;
/** Type 4 family: other. */
export const PROCESSOR_FAMILY_OTHER = 0x01;
/** Type 4 status: socket populated, CPU enabled. */
export const PROCESSOR_ENABLED = 0x41;
/** Type 4 characteristics: 64-bit capable. */
export const PROCESSOR_64BIT = 0x04;
/** "No cache structure" handle. */
export const NO_HANDLE = 0xffff;
/** "Information not provided" handle. */
export const NOT_PROVIDED = 0xfffe;

/** Type 16: Physical Memory Array. */
export const SMBIOS_TYPE16 = defineLayout("smbios_type_16", 23, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  location: { offset: 4, type: "u8" },
  use: { offset: 5, type: "u8" },
  error_correction: { offset: 6, type: "u8" },
  maximum_capacity: { offset: 7, type: "u32" },
  error_info_handle: { offset: 11, type: "u16" },
  device_count: { offset: 13, type: "u16" },
  extended_maximum_capacity: { offset: 15, type: "u64" },
});

/** Type 16 location: other. */
export const MEMORY_LOCATION_OTHER = 0x01;
/** Type 16 use: system memory. */
export const MEMORY_USE_SYSTEM = 0x03;
/** Type 16 error correction: none. */
export const MEMORY_ECC_NONE = 0x03;
/** Type 16 maximum capacity value meaning "see the extended field". */
export const CAPACITY_EXTENDED = 0x8000_0000;

/** Type 17: Memory Device (version 2.8 fields). */
export const SMBIOS_TYPE17 = defineLayout("smbios_type_17", 40, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  array_handle: { offset: 4, type: "u16" },
  error_info_handle: { offset: 6, type: "u16" },
  total_width: { offset: 8, type: "u16" },
  data_width: { offset: 10, type: "u16" },
  size: { offset: 12, type: "u16" },
  form_factor: { offset: 14, type: "u8" },
  device_set: { offset: 15, type: "u8" },
  device_locator: { offset: 16, type: "u8" },
  bank_locator: { offset: 17, type: "u8" },
  memory_type: { offset: 18, type: "u8" },
  type_detail: { offset: 19, type: "u16" },
  speed: { offset: 21, type: "u16" },
  manufacturer: { offset: 23, type: "u8" },
  serial: { offset: 24, type: "u8" },
  asset_tag: { offset: 25, type: "u8" },
  part_number: { offset: 26, type: "u8" },
  attributes: { offset: 27, type: "u8" },
  extended_size: { offset: 28, type: "u32" },
  configured_speed: { offset: 32, type: "u16" },
  minimum_voltage: { offset: 34, type: "u16" },
  maximum_voltage: { offset: 36, type: "u16" },
  configured_voltage: { offset: 38, type: "u16" },
});

/** Type 17 size value meaning "see the extended size field (MiB)". */
export const MEMORY_SIZE_EXTENDED = 0x7fff;
/** Type 17 form factor: DIMM. */
export const FORM_FACTOR_DIMM = 0x09;
/** Type 17 memory type: RAM. */
export const MEMORY_TYPE_RAM = 0x07;
/** Type 17 type detail: other. */
export const TYPE_DETAIL_OTHER = 0x02;
/** Unknown width. */
export const WIDTH_UNKNOWN = 0xffff;

/** Type 19: Memory Array Mapped Address. */
export const SMBIOS_TYPE19 = defineLayout("smbios_type_19", 31, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  starting_address: { offset: 4, type: "u32" },
  ending_address: { offset: 8, type: "u32" },
  array_handle: { offset: 12, type: "u16" },
  partition_width: { offset: 14, type: "u8" },
  extended_starting_address: { offset: 15, type: "u64" },
  extended_ending_address: { offset: 23, type: "u64" },
});

/** Type 32: System Boot Information. */
export const SMBIOS_TYPE32 = defineLayout("smbios_type_32", 11, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
  reserved: { offset: 4, type: { bytes: 6 } },
  boot_status: { offset: 10, type: "u8" },
});

/** Type 127: End-of-Table. */
export const SMBIOS_TYPE127 = defineLayout("smbios_type_127", 4, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  handle: { offset: 2, type: "u16" },
});
