/**
 * QEMU's firmware configuration interface (fw_cfg) as OVMF and SeaBIOS read it on x86: the port
 * layout, the item keys, the DMA descriptor, the file directory and QEMU's ACPI linker/loader
 * commands (`etc/table-loader`). Constants and typed layouts only; the device is `fw_cfg.ts`.
 *
 * Reference: QEMU `docs/specs/fw_cfg.rst`, `hw/nvram/fw_cfg.c`, `hw/acpi/bios-linker-loader.c`;
 * edk2 `OvmfPkg/Include/IndustryStandard/QemuFwCfg.h`, `QemuLoader.h`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** I/O port of the selector register (16-bit write). */
export const FW_CFG_PORT_SELECTOR = 0x510;
/** I/O port of the data register (8-bit read). */
export const FW_CFG_PORT_DATA = 0x511;
/** I/O port of the DMA address register: high half at +0, low half (the trigger) at +4. */
export const FW_CFG_PORT_DMA = 0x514;
/** Ports the device answers, from the selector to the end of the DMA register. */
export const FW_CFG_PORT_COUNT = 0x0c;

/** Offsets into the device's port range (what the device sees). */
export const FW_CFG_OFFSET_SELECTOR = 0;
/** Data register offset. */
export const FW_CFG_OFFSET_DATA = 1;
/** DMA address, high 32 bits (big-endian). */
export const FW_CFG_OFFSET_DMA_HIGH = 4;
/** DMA address, low 32 bits (big-endian); writing it starts the transfer. */
export const FW_CFG_OFFSET_DMA_LOW = 8;

/** Item keys (selector values). */
export const FW_CFG_SIGNATURE = 0x0000;
/** Feature bitmap (u32 LE): bit 0 traditional interface, bit 1 DMA. */
export const FW_CFG_ID = 0x0001;
/** Machine UUID (16 bytes, SMBIOS byte order). */
export const FW_CFG_UUID = 0x0002;
/** RAM size (u64 LE), legacy. */
export const FW_CFG_RAM_SIZE = 0x0003;
/** Number of boot CPUs (u16 LE). */
export const FW_CFG_NB_CPUS = 0x0005;
/** Whether to show a boot menu (u16 LE). */
export const FW_CFG_BOOT_MENU = 0x000e;
/** Highest possible CPU count (u16 LE). */
export const FW_CFG_MAX_CPUS = 0x000f;
/** The file directory. */
export const FW_CFG_FILE_DIR = 0x0019;
/** First key handed to named files. */
export const FW_CFG_FILE_FIRST = 0x0020;
/** Keys this machine hands out at most (QEMU's default `x-file-slots`). */
export const FW_CFG_FILE_SLOTS = 0x20;
/** Selector bit that once meant "write channel"; masked off when selecting. */
export const FW_CFG_WRITE_CHANNEL = 0x4000;

/** `FW_CFG_ID` bit: the traditional port interface. */
export const FW_CFG_VERSION = 0x01;
/** `FW_CFG_ID` bit: the DMA interface. */
export const FW_CFG_VERSION_DMA = 0x02;

/** Bytes of `FW_CFG_SIGNATURE`. */
export const FW_CFG_SIGNATURE_BYTES: Uint8Array = new TextEncoder().encode("QEMU");
/** What a read of the DMA register returns: "QEMU CFG", big-endian. */
export const FW_CFG_DMA_SIGNATURE: Uint8Array = new TextEncoder().encode("QEMU CFG");

/** DMA control bits (big-endian u32 in the descriptor). */
export const FW_CFG_DMA_CTL_ERROR = 0x01;
/** Copy item bytes into guest memory. */
export const FW_CFG_DMA_CTL_READ = 0x02;
/** Advance the item offset without copying. */
export const FW_CFG_DMA_CTL_SKIP = 0x04;
/** Select the item in bits 31:16 first. */
export const FW_CFG_DMA_CTL_SELECT = 0x08;
/** Copy guest memory into the item (only writable items; none here). */
export const FW_CFG_DMA_CTL_WRITE = 0x10;

/** The DMA descriptor the guest points the DMA register at (all fields big-endian). */
export const FW_CFG_DMA_ACCESS = defineLayout("FWCfgDmaAccess", 16, {
  control: { offset: 0, type: "u32be" },
  length: { offset: 4, type: "u32be" },
  address: { offset: 8, type: "u64be" },
});

/** Longest file name, NUL included. */
export const FW_CFG_MAX_FILE_PATH = 56;

/** One file directory entry (big-endian); the directory starts with a big-endian u32 count. */
export const FW_CFG_FILE = defineLayout("FWCfgFile", 64, {
  size: { offset: 0, type: "u32be" },
  select: { offset: 4, type: "u16be" },
  reserved: { offset: 6, type: "u16be" },
  name: { offset: 8, type: { bytes: FW_CFG_MAX_FILE_PATH } },
});

/** One `etc/e820` entry (little-endian, packed). */
export const FW_CFG_E820_ENTRY = defineLayout("e820_entry", 20, {
  address: { offset: 0, type: "u64" },
  length: { offset: 8, type: "u64" },
  type: { offset: 16, type: "u32" },
});

/** Linker/loader command: allocate guest memory for a file and copy it there. */
export const LOADER_ALLOCATE = 1;
/** Add the address of one file to a pointer field in another. */
export const LOADER_ADD_POINTER = 2;
/** Recompute a checksum byte over a range of a file. */
export const LOADER_ADD_CHECKSUM = 3;
/** Write a file's address back into a writable fw_cfg file (unused here). */
export const LOADER_WRITE_POINTER = 4;

/** ALLOCATE zone: anywhere (below 4 GiB for OVMF). */
export const LOADER_ZONE_HIGH = 1;
/** ALLOCATE zone: the 0xF0000 segment (where BIOSes scan for the RSDP). */
export const LOADER_ZONE_FSEG = 2;

/** Longest file name in a loader command, NUL included. */
export const LOADER_FILE_NAME_SIZE = 56;
/** Size of every loader command. */
export const LOADER_ENTRY_SIZE = 128;

/** ALLOCATE command. */
export const LOADER_ALLOCATE_ENTRY = defineLayout("BiosLinkerLoaderAllocate", LOADER_ENTRY_SIZE, {
  command: { offset: 0, type: "u32" },
  file: { offset: 4, type: { bytes: LOADER_FILE_NAME_SIZE } },
  align: { offset: 60, type: "u32" },
  zone: { offset: 64, type: "u8" },
});

/** ADD_POINTER command: `pointer_file[offset..+size] += address of pointee_file`. */
export const LOADER_ADD_POINTER_ENTRY = defineLayout(
  "BiosLinkerLoaderAddPointer",
  LOADER_ENTRY_SIZE,
  {
    command: { offset: 0, type: "u32" },
    pointer_file: { offset: 4, type: { bytes: LOADER_FILE_NAME_SIZE } },
    pointee_file: { offset: 60, type: { bytes: LOADER_FILE_NAME_SIZE } },
    offset: { offset: 116, type: "u32" },
    size: { offset: 120, type: "u8" },
  },
);

/** ADD_CHECKSUM command: `file[offset] = checksum of file[start..+length]`. */
export const LOADER_ADD_CHECKSUM_ENTRY = defineLayout(
  "BiosLinkerLoaderAddChecksum",
  LOADER_ENTRY_SIZE,
  {
    command: { offset: 0, type: "u32" },
    file: { offset: 4, type: { bytes: LOADER_FILE_NAME_SIZE } },
    offset: { offset: 60, type: "u32" },
    start: { offset: 64, type: "u32" },
    length: { offset: 68, type: "u32" },
  },
);

/** fw_cfg file names the firmware looks for. */
export const FILE_TABLE_LOADER = "etc/table-loader";
/** The RSDP blob. */
export const FILE_ACPI_RSDP = "etc/acpi/rsdp";
/** Every other ACPI table. */
export const FILE_ACPI_TABLES = "etc/acpi/tables";
/** RAM map for the firmware. */
export const FILE_E820 = "etc/e820";
/** Which sleep states the firmware may advertise (6 bytes, S0-S5). */
export const FILE_SYSTEM_STATES = "etc/system-states";
/** Boot device order: OpenFirmware paths, one per line. */
export const FILE_BOOTORDER = "bootorder";
/** Milliseconds to wait before rebooting when nothing boots (u32 LE, -1 = never). */
export const FILE_BOOT_FAIL_WAIT = "etc/boot-fail-wait";
/** SMBIOS entry point. */
export const FILE_SMBIOS_ANCHOR = "etc/smbios/smbios-anchor";
/** SMBIOS structure table. */
export const FILE_SMBIOS_TABLES = "etc/smbios/smbios-tables";
