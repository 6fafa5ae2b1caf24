/**
 * AHCI 1.3.1 and SATA wire formats: HBA and port register offsets and bits, the command header,
 * the command table and its PRD entries, the FIS types the HBA exchanges (register host-to-device
 * and device-to-host, PIO setup, set device bits) and the received-FIS area. Constants and
 * layouts only; the HBA is `ahci.ts`, the ATA and ATAPI command sets `ata.ts` and `atapi.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** PCI identity of the controller (Intel ICH9 AHCI, as QEMU's `ich9-ahci`). */
export const AHCI_VENDOR_ID = 0x8086;
/** ICH9 AHCI device ID. */
export const AHCI_DEVICE_ID = 0x2922;
/** PCI class: mass storage, SATA, AHCI 1.0 programming interface. */
export const AHCI_CLASS_CODE = 0x010601;

/** Ports the HBA implements (ICH9 has six). */
export const AHCI_PORTS = 6;
/** Command slots per port. */
export const AHCI_SLOTS = 32;
/** Size of the ABAR (BAR5) register window. */
export const AHCI_ABAR_SIZE = 0x1000;

/** Generic host control registers. */
export const HBA_CAP = 0x00;
/** Global HBA control. */
export const HBA_GHC = 0x04;
/** Interrupt status, one bit per port (write 1 to clear). */
export const HBA_IS = 0x08;
/** Ports implemented. */
export const HBA_PI = 0x0c;
/** Version. */
export const HBA_VS = 0x10;
/** Command completion coalescing control (not supported: reads 0). */
export const HBA_CCC_CTL = 0x14;
/** Extended capabilities. */
export const HBA_CAP2 = 0x24;
/** BIOS/OS handoff control. */
export const HBA_BOHC = 0x28;

/** CAP: 64-bit addressing. */
export const CAP_S64A = 1 << 31;
/** CAP: native command queuing. */
export const CAP_SNCQ = 1 << 30;
/** CAP: command list override. */
export const CAP_SCLO = 1 << 24;
/** CAP: interface speed Gen3 (6 Gb/s). */
export const CAP_ISS_GEN3 = 3 << 20;
/** CAP: AHCI mode only. */
export const CAP_SAM = 1 << 18;

/** GHC: HBA reset. */
export const GHC_HR = 1 << 0;
/** GHC: interrupt enable. */
export const GHC_IE = 1 << 1;
/** GHC: AHCI enable. */
export const GHC_AE = 1 << 31;

/** AHCI version 1.0, what QEMU reports. */
export const AHCI_VERSION = 0x0001_0000;

/** First port's registers; each port has `PORT_STRIDE` bytes. */
export const PORT_BASE = 0x100;
/** Bytes per port register block. */
export const PORT_STRIDE = 0x80;

/** Port register offsets. */
export const PxCLB = 0x00;
/** Command list base, high half. */
export const PxCLBU = 0x04;
/** Received-FIS base. */
export const PxFB = 0x08;
/** Received-FIS base, high half. */
export const PxFBU = 0x0c;
/** Interrupt status (write 1 to clear). */
export const PxIS = 0x10;
/** Interrupt enable. */
export const PxIE = 0x14;
/** Command and status. */
export const PxCMD = 0x18;
/** Task file data: status (7:0), error (15:8). */
export const PxTFD = 0x20;
/** Device signature. */
export const PxSIG = 0x24;
/** SATA status (SStatus). */
export const PxSSTS = 0x28;
/** SATA control (SControl). */
export const PxSCTL = 0x2c;
/** SATA error (write 1 to clear). */
export const PxSERR = 0x30;
/** SATA active: NCQ tags outstanding. */
export const PxSACT = 0x34;
/** Command issue. */
export const PxCI = 0x38;
/** SATA notification. */
export const PxSNTF = 0x3c;

/** PxCMD: start (process the command list). */
export const CMD_ST = 1 << 0;
/** PxCMD: spin-up device. */
export const CMD_SUD = 1 << 1;
/** PxCMD: power on device. */
export const CMD_POD = 1 << 2;
/** PxCMD: command list override (clears BSY/DRQ; self-clearing). */
export const CMD_CLO = 1 << 3;
/** PxCMD: FIS receive enable. */
export const CMD_FRE = 1 << 4;
/** PxCMD: FIS receive running. */
export const CMD_FR = 1 << 14;
/** PxCMD: command list running. */
export const CMD_CR = 1 << 15;
/** PxCMD: the device is an ATAPI device (set by software). */
export const CMD_ATAPI = 1 << 24;
/** PxCMD bits software may write. */
export const CMD_WRITABLE = CMD_ST | CMD_SUD | CMD_POD | CMD_FRE | CMD_ATAPI | (0xf << 28) |
  (1 << 25) | (1 << 26) | (1 << 27);

/** PxIS: device-to-host register FIS received. */
export const IS_DHRS = 1 << 0;
/** PxIS: PIO setup FIS received. */
export const IS_PSS = 1 << 1;
/** PxIS: set device bits FIS received. */
export const IS_SDBS = 1 << 3;
/** PxIS: a PRD with the I bit was processed. */
export const IS_DPS = 1 << 5;
/** PxIS: port connect change. */
export const IS_PCS = 1 << 6;
/** PxIS: host bus data error (a PRD address that is not memory). */
export const IS_HBDS = 1 << 28;
/** PxIS: host bus fatal error (a command list or table that is not memory). */
export const IS_HBFS = 1 << 29;
/** PxIS: task file error (the device reported ERR). */
export const IS_TFES = 1 << 30;
/** PxIS bits that exist. */
export const IS_MASK = 0xfdc0_00ff;

/** ATA status: busy. */
export const ATA_BSY = 0x80;
/** ATA status: device ready. */
export const ATA_DRDY = 0x40;
/** ATA status: seek complete / deferred write fault (legacy). */
export const ATA_DSC = 0x10;
/** ATA status: data request. */
export const ATA_DRQ = 0x08;
/** ATA status: error. */
export const ATA_ERR = 0x01;
/** ATA error: command aborted. */
export const ATA_ABRT = 0x04;
/** ATA error: ID not found (address out of range). */
export const ATA_IDNF = 0x10;
/** ATA error: uncorrectable data. */
export const ATA_UNC = 0x40;

/** Signature of an ATA disk (PxSIG). */
export const SIG_ATA = 0x0000_0101;
/** Signature of an ATAPI device. */
export const SIG_ATAPI = 0xeb14_0101;

/** SStatus of an established Gen1 link with the device active: DET=3, SPD=1, IPM=1. */
export const SSTS_ONLINE = 0x113;
/** SControl DET field. */
export const SCTL_DET_MASK = 0xf;

/** FIS types. */
export const FIS_REG_H2D = 0x27;
/** Register FIS, device to host. */
export const FIS_REG_D2H = 0x34;
/** Set device bits FIS. */
export const FIS_SET_DEVICE_BITS = 0xa1;
/** PIO setup FIS. */
export const FIS_PIO_SETUP = 0x5f;

/** One command header of a port's command list (32 bytes, 32 of them). */
export const COMMAND_HEADER = defineLayout("ahci_cmd_hdr", 32, {
  flags: { offset: 0, type: "u16" },
  prdtl: { offset: 2, type: "u16" },
  prdbc: { offset: 4, type: "u32" },
  ctba: { offset: 8, type: "u32" },
  ctbau: { offset: 12, type: "u32" },
});

/** Command header flags: command FIS length in dwords. */
export const HDR_CFL_MASK = 0x1f;
/** Command header flags: ATAPI command (the ACMD holds a CDB). */
export const HDR_ATAPI = 1 << 5;
/** Command header flags: write (host to device). */
export const HDR_WRITE = 1 << 6;

/** Command table: the command FIS, the ATAPI command, then the PRD table. */
export const CT_CFIS = 0x00;
/** ATAPI command (12 or 16 bytes). */
export const CT_ACMD = 0x40;
/** First PRD entry. */
export const CT_PRDT = 0x80;

/** One physical region descriptor (16 bytes). */
export const PRD_ENTRY = defineLayout("ahci_prd", 16, {
  dba: { offset: 0, type: "u32" },
  dbau: { offset: 4, type: "u32" },
  flags: { offset: 12, type: "u32" },
});

/** PRD byte count minus one (bits 21:0). */
export const PRD_DBC_MASK = 0x3f_ffff;
/** PRD: interrupt when this region is done. */
export const PRD_I = 1 << 31;

/** Register FIS, host to device (the command FIS). */
export const FIS_H2D = defineLayout("fis_reg_h2d", 20, {
  type: { offset: 0, type: "u8" },
  flags: { offset: 1, type: "u8" },
  command: { offset: 2, type: "u8" },
  feature_lo: { offset: 3, type: "u8" },
  lba0: { offset: 4, type: "u8" },
  lba1: { offset: 5, type: "u8" },
  lba2: { offset: 6, type: "u8" },
  device: { offset: 7, type: "u8" },
  lba3: { offset: 8, type: "u8" },
  lba4: { offset: 9, type: "u8" },
  lba5: { offset: 10, type: "u8" },
  feature_hi: { offset: 11, type: "u8" },
  count_lo: { offset: 12, type: "u8" },
  count_hi: { offset: 13, type: "u8" },
  icc: { offset: 14, type: "u8" },
  control: { offset: 15, type: "u8" },
});

/** H2D flags: this FIS carries a command (not a control register update). */
export const H2D_C = 0x80;

/** Register FIS, device to host. */
export const FIS_D2H = defineLayout("fis_reg_d2h", 20, {
  type: { offset: 0, type: "u8" },
  flags: { offset: 1, type: "u8" },
  status: { offset: 2, type: "u8" },
  error: { offset: 3, type: "u8" },
  lba0: { offset: 4, type: "u8" },
  lba1: { offset: 5, type: "u8" },
  lba2: { offset: 6, type: "u8" },
  device: { offset: 7, type: "u8" },
  lba3: { offset: 8, type: "u8" },
  lba4: { offset: 9, type: "u8" },
  lba5: { offset: 10, type: "u8" },
  count_lo: { offset: 12, type: "u8" },
  count_hi: { offset: 13, type: "u8" },
});

/** PIO setup FIS. */
export const FIS_PIO = defineLayout("fis_pio_setup", 20, {
  type: { offset: 0, type: "u8" },
  flags: { offset: 1, type: "u8" },
  status: { offset: 2, type: "u8" },
  error: { offset: 3, type: "u8" },
  count_lo: { offset: 12, type: "u8" },
  count_hi: { offset: 13, type: "u8" },
  e_status: { offset: 15, type: "u8" },
  transfer_count: { offset: 16, type: "u16" },
});

/** Set device bits FIS (NCQ completions). */
export const FIS_SDB = defineLayout("fis_set_device_bits", 8, {
  type: { offset: 0, type: "u8" },
  flags: { offset: 1, type: "u8" },
  status: { offset: 2, type: "u8" },
  error: { offset: 3, type: "u8" },
  sactive: { offset: 4, type: "u32" },
});

/** FIS flags: interrupt bit. */
export const FIS_I = 0x40;
/** PIO setup flags: data direction device to host. */
export const FIS_PIO_D = 0x20;

/** Received-FIS area (256 bytes): where the HBA copies the FISes the device sends. */
export const RFIS_SIZE = 0x100;
/** PIO setup FIS offset in the received-FIS area. */
export const RFIS_PSFIS = 0x20;
/** D2H register FIS offset. */
export const RFIS_RFIS = 0x40;
/** Set device bits FIS offset. */
export const RFIS_SDBFIS = 0x58;

/** ATA commands the device answers. */
export const AtaCmd = {
  READ_SECTORS: 0x20,
  READ_SECTORS_EXT: 0x24,
  READ_DMA_EXT: 0x25,
  READ_LOG_EXT: 0x2f,
  WRITE_SECTORS: 0x30,
  WRITE_SECTORS_EXT: 0x34,
  WRITE_DMA_EXT: 0x35,
  READ_VERIFY: 0x40,
  READ_VERIFY_EXT: 0x42,
  READ_FPDMA_QUEUED: 0x60,
  WRITE_FPDMA_QUEUED: 0x61,
  DEVICE_RESET: 0x08,
  INITIALIZE_DEVICE_PARAMETERS: 0x91,
  PACKET: 0xa0,
  IDENTIFY_PACKET_DEVICE: 0xa1,
  READ_DMA: 0xc8,
  WRITE_DMA: 0xca,
  SET_MULTIPLE: 0xc6,
  STANDBY_IMMEDIATE: 0xe0,
  IDLE_IMMEDIATE: 0xe1,
  CHECK_POWER_MODE: 0xe5,
  FLUSH_CACHE: 0xe7,
  IDENTIFY_DEVICE: 0xec,
  FLUSH_CACHE_EXT: 0xea,
  SET_FEATURES: 0xef,
} as const;
