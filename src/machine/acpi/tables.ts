/**
 * ACPI table encoders (ACPI 6.5 chapter 5): the common header with its checksum, RSDP (rev 2),
 * RSDT, XSDT, FADT (rev 6), FACS and MADT. Each structure is one `defineLayout`; its size is
 * pinned by a unit test. The DSDT body comes from `dsdt.ts`; placement from `build.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** OEM ID written in every table header (6 characters). */
export const OEM_ID = "HYPDNO";
/** OEM table ID written in every table header (8 characters). */
export const OEM_TABLE_ID = "HYPERDNO";
/** OEM revision of every table. */
export const OEM_REVISION = 1;
/** Creator ID ("ASL compiler ID") of every table. */
export const CREATOR_ID = "HDNO";
/** Creator revision of every table. */
export const CREATOR_REVISION = 1;

/** The 36-byte System Description Table header. */
export const ACPI_HEADER = defineLayout("acpi_table_header", 36, {
  signature: { offset: 0, type: { bytes: 4 } },
  length: { offset: 4, type: "u32" },
  revision: { offset: 8, type: "u8" },
  checksum: { offset: 9, type: "u8" },
  oem_id: { offset: 10, type: { bytes: 6 } },
  oem_table_id: { offset: 16, type: { bytes: 8 } },
  oem_revision: { offset: 24, type: "u32" },
  creator_id: { offset: 28, type: { bytes: 4 } },
  creator_revision: { offset: 32, type: "u32" },
});

/** Root System Description Pointer, revision 2. */
export const RSDP = defineLayout("acpi_table_rsdp", 36, {
  signature: { offset: 0, type: { bytes: 8 } },
  checksum: { offset: 8, type: "u8" },
  oem_id: { offset: 9, type: { bytes: 6 } },
  revision: { offset: 15, type: "u8" },
  rsdt_address: { offset: 16, type: "u32" },
  length: { offset: 20, type: "u32" },
  xsdt_address: { offset: 24, type: "u64" },
  extended_checksum: { offset: 32, type: "u8" },
});

/** Generic Address Structure. */
export const GAS = defineLayout("acpi_generic_address", 12, {
  space_id: { offset: 0, type: "u8" },
  bit_width: { offset: 1, type: "u8" },
  bit_offset: { offset: 2, type: "u8" },
  access_size: { offset: 3, type: "u8" },
  address: { offset: 4, type: "u64" },
});

/** GAS address space: system I/O. */
export const GAS_SYSTEM_IO = 1;

/** Fixed ACPI Description Table, revision 6 (ACPI 6.x, 276 bytes). */
export const FADT = defineLayout("acpi_table_fadt", 276, {
  firmware_ctrl: { offset: 36, type: "u32" },
  dsdt: { offset: 40, type: "u32" },
  preferred_pm_profile: { offset: 45, type: "u8" },
  sci_int: { offset: 46, type: "u16" },
  smi_cmd: { offset: 48, type: "u32" },
  acpi_enable: { offset: 52, type: "u8" },
  acpi_disable: { offset: 53, type: "u8" },
  pm1a_evt_blk: { offset: 56, type: "u32" },
  pm1b_evt_blk: { offset: 60, type: "u32" },
  pm1a_cnt_blk: { offset: 64, type: "u32" },
  pm1b_cnt_blk: { offset: 68, type: "u32" },
  pm2_cnt_blk: { offset: 72, type: "u32" },
  pm_tmr_blk: { offset: 76, type: "u32" },
  gpe0_blk: { offset: 80, type: "u32" },
  gpe1_blk: { offset: 84, type: "u32" },
  pm1_evt_len: { offset: 88, type: "u8" },
  pm1_cnt_len: { offset: 89, type: "u8" },
  pm2_cnt_len: { offset: 90, type: "u8" },
  pm_tmr_len: { offset: 91, type: "u8" },
  gpe0_blk_len: { offset: 92, type: "u8" },
  gpe1_blk_len: { offset: 93, type: "u8" },
  gpe1_base: { offset: 94, type: "u8" },
  cst_cnt: { offset: 95, type: "u8" },
  p_lvl2_lat: { offset: 96, type: "u16" },
  p_lvl3_lat: { offset: 98, type: "u16" },
  flush_size: { offset: 100, type: "u16" },
  flush_stride: { offset: 102, type: "u16" },
  duty_offset: { offset: 104, type: "u8" },
  duty_width: { offset: 105, type: "u8" },
  day_alrm: { offset: 106, type: "u8" },
  mon_alrm: { offset: 107, type: "u8" },
  century: { offset: 108, type: "u8" },
  iapc_boot_arch: { offset: 109, type: "u16" },
  flags: { offset: 112, type: "u32" },
  reset_reg: { offset: 116, type: { bytes: 12 } },
  reset_value: { offset: 128, type: "u8" },
  arm_boot_arch: { offset: 129, type: "u16" },
  minor_revision: { offset: 131, type: "u8" },
  x_firmware_ctrl: { offset: 132, type: "u64" },
  x_dsdt: { offset: 140, type: "u64" },
  x_pm1a_evt_blk: { offset: 148, type: { bytes: 12 } },
  x_pm1b_evt_blk: { offset: 160, type: { bytes: 12 } },
  x_pm1a_cnt_blk: { offset: 172, type: { bytes: 12 } },
  x_pm1b_cnt_blk: { offset: 184, type: { bytes: 12 } },
  x_pm2_cnt_blk: { offset: 196, type: { bytes: 12 } },
  x_pm_tmr_blk: { offset: 208, type: { bytes: 12 } },
  x_gpe0_blk: { offset: 220, type: { bytes: 12 } },
  x_gpe1_blk: { offset: 232, type: { bytes: 12 } },
  sleep_control_reg: { offset: 244, type: { bytes: 12 } },
  sleep_status_reg: { offset: 256, type: { bytes: 12 } },
  hypervisor_id: { offset: 268, type: { bytes: 8 } },
});

/** FADT flags (ACPI 5.2.9 table 5.10). */
export const FADT_WBINVD = 1 << 0;
/** C1 is supported on all processors. */
export const FADT_PROC_C1 = 1 << 2;
/** The power button is a control-method device (no fixed-feature button) when set. */
export const FADT_PWR_BUTTON = 1 << 4;
/** No fixed-feature sleep button when set. */
export const FADT_SLP_BUTTON = 1 << 5;
/** RTC wake status is not in the fixed register space when set. */
export const FADT_FIX_RTC = 1 << 6;
/** The PM timer is 32 bits wide when set. */
export const FADT_TMR_VAL_EXT = 1 << 8;
/** RESET_REG is supported. */
export const FADT_RESET_REG_SUP = 1 << 10;
/** HW-reduced ACPI: no fixed hardware (not used by hyperdeno). */
export const FADT_HW_REDUCED_ACPI = 1 << 20;

/** IA-PC boot architecture flags (FADT IAPC_BOOT_ARCH). */
export const IAPC_LEGACY_DEVICES = 1 << 0;
/** An 8042 keyboard controller is present. */
export const IAPC_8042 = 1 << 1;
/** VGA is not present. */
export const IAPC_VGA_NOT_PRESENT = 1 << 2;
/** The CMOS RTC is not present. */
export const IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5;

/** Firmware ACPI Control Structure (no checksum; 64-byte aligned). */
export const FACS = defineLayout("acpi_table_facs", 64, {
  signature: { offset: 0, type: { bytes: 4 } },
  length: { offset: 4, type: "u32" },
  hardware_signature: { offset: 8, type: "u32" },
  firmware_waking_vector: { offset: 12, type: "u32" },
  global_lock: { offset: 16, type: "u32" },
  flags: { offset: 20, type: "u32" },
  x_firmware_waking_vector: { offset: 24, type: "u64" },
  version: { offset: 32, type: "u8" },
  ospm_flags: { offset: 36, type: "u32" },
});

/** MADT fixed part after the header. */
export const MADT = defineLayout("acpi_table_madt", 44, {
  local_apic_address: { offset: 36, type: "u32" },
  flags: { offset: 40, type: "u32" },
});

/** MADT flag: the machine also has dual 8259 PICs. */
export const MADT_PCAT_COMPAT = 1;

/** MADT type 0: Processor Local APIC. */
export const MADT_LOCAL_APIC = defineLayout("acpi_madt_local_apic", 8, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  processor_uid: { offset: 2, type: "u8" },
  apic_id: { offset: 3, type: "u8" },
  flags: { offset: 4, type: "u32" },
});

/** MADT type 1: I/O APIC. */
export const MADT_IO_APIC = defineLayout("acpi_madt_io_apic", 12, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  id: { offset: 2, type: "u8" },
  address: { offset: 4, type: "u32" },
  gsi_base: { offset: 8, type: "u32" },
});

/** MADT type 2: Interrupt Source Override. */
export const MADT_INTERRUPT_OVERRIDE = defineLayout("acpi_madt_interrupt_override", 10, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  bus: { offset: 2, type: "u8" },
  source: { offset: 3, type: "u8" },
  gsi: { offset: 4, type: "u32" },
  flags: { offset: 8, type: "u16" },
});

/** MADT type 4: Local APIC NMI. */
export const MADT_LOCAL_APIC_NMI = defineLayout("acpi_madt_local_apic_nmi", 6, {
  type: { offset: 0, type: "u8" },
  length: { offset: 1, type: "u8" },
  processor_uid: { offset: 2, type: "u8" },
  flags: { offset: 3, type: "u16" },
  lint: { offset: 5, type: "u8" },
});

/** MPS INTI flags: active high polarity. */
export const MPS_ACTIVE_HIGH = 0x1;
/** MPS INTI flags: active low polarity. */
export const MPS_ACTIVE_LOW = 0x3;
/** MPS INTI flags: edge trigger. */
export const MPS_EDGE = 0x1 << 2;
/** MPS INTI flags: level trigger. */
export const MPS_LEVEL = 0x3 << 2;

const ascii = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

/** Sum of `bytes` modulo 256. */
export function sum8(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

/** The checksum byte that makes `bytes` (with that byte at 0) sum to zero. */
export function checksum(bytes: Uint8Array): number {
  return (0x100 - sum8(bytes)) & 0xff;
}

/**
 * Finishes a System Description Table: writes the header into the first 36 bytes of `table`
 * (signature, length = `table.length`, revision, OEM fields) and sets the checksum.
 */
export function sealTable(signature: string, revision: number, table: Uint8Array): Uint8Array {
  if (signature.length !== 4) throw new RangeError(`ACPI signature "${signature}" is not 4 chars`);
  ACPI_HEADER.set(table, 0, "signature", ascii(signature));
  ACPI_HEADER.set(table, 0, "length", table.length);
  ACPI_HEADER.set(table, 0, "revision", revision);
  ACPI_HEADER.set(table, 0, "checksum", 0);
  ACPI_HEADER.set(table, 0, "oem_id", ascii(OEM_ID));
  ACPI_HEADER.set(table, 0, "oem_table_id", ascii(OEM_TABLE_ID));
  ACPI_HEADER.set(table, 0, "oem_revision", OEM_REVISION);
  ACPI_HEADER.set(table, 0, "creator_id", ascii(CREATOR_ID));
  ACPI_HEADER.set(table, 0, "creator_revision", CREATOR_REVISION);
  ACPI_HEADER.set(table, 0, "checksum", checksum(table));
  return table;
}

/** A table whose body (after the header) is `body`, e.g. the DSDT's AML. */
export function tableWithBody(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const t = new Uint8Array(ACPI_HEADER.size + body.length);
  t.set(body, ACPI_HEADER.size);
  return sealTable(signature, revision, t);
}

/** RSDP revision 2 pointing at the XSDT (and the RSDT, for ACPI 1.0 readers). */
export function buildRsdp(xsdtAddress: number, rsdtAddress: number): Uint8Array {
  const t = RSDP.encode({
    signature: ascii("RSD PTR "),
    oem_id: ascii(OEM_ID),
    revision: 2,
    rsdt_address: rsdtAddress,
    length: RSDP.size,
    xsdt_address: BigInt(xsdtAddress),
  });
  RSDP.set(t, 0, "checksum", checksum(t.subarray(0, 20)));
  RSDP.set(t, 0, "extended_checksum", checksum(t));
  return t;
}

/** XSDT: 64-bit pointers to the other tables (FADT first, by convention). */
export function buildXsdt(tables: readonly number[]): Uint8Array {
  const t = new Uint8Array(ACPI_HEADER.size + 8 * tables.length);
  const dv = new DataView(t.buffer);
  tables.forEach((a, i) => dv.setBigUint64(ACPI_HEADER.size + 8 * i, BigInt(a), true));
  return sealTable("XSDT", 1, t);
}

/** RSDT: 32-bit pointers to the other tables. */
export function buildRsdt(tables: readonly number[]): Uint8Array {
  const t = new Uint8Array(ACPI_HEADER.size + 4 * tables.length);
  const dv = new DataView(t.buffer);
  tables.forEach((a, i) => dv.setUint32(ACPI_HEADER.size + 4 * i, a, true));
  return sealTable("RSDT", 1, t);
}

/** FACS version 2 (64-bit waking vector field present); the waking vectors stay 0. */
export function buildFacs(): Uint8Array {
  return FACS.encode({ signature: ascii("FACS"), length: FACS.size, version: 2 });
}

function gas(port: number, length: number, accessSize: number): Uint8Array {
  if (port === 0) return new Uint8Array(GAS.size);
  return GAS.encode({
    space_id: GAS_SYSTEM_IO,
    bit_width: length * 8,
    access_size: accessSize,
    address: BigInt(port),
  });
}

/** The fixed hardware the FADT describes. */
export interface FadtOptions {
  /** Guest address of the DSDT. */
  readonly dsdt: number;
  /** Guest address of the FACS. */
  readonly facs: number;
  /** SCI interrupt (ISA IRQ). */
  readonly sciIrq: number;
  /** PM1a event block port (4 bytes). */
  readonly pm1aEvtPort: number;
  /** PM1a control block port (2 bytes). */
  readonly pm1aCntPort: number;
  /** PM timer port (4 bytes, 24-bit timer), or 0 for none. */
  readonly pmTimerPort: number;
  /** Reset register I/O port and the value that resets. */
  readonly reset: { readonly port: number; readonly value: number };
  /** IAPC_BOOT_ARCH flags. */
  readonly iapcBootArch: number;
  /** CMOS RTC index of the century byte, or 0. */
  readonly century: number;
}

/**
 * FADT revision 6, not HW-reduced: PM1a event/control blocks and an optional PM timer in I/O
 * space, the reset register, no SMI command port (the machine is always in ACPI mode), C1
 * only, a fixed-feature power button, no sleep button.
 */
export function buildFadt(o: FadtOptions): Uint8Array {
  const flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC | FADT_RESET_REG_SUP;
  // The PM timer is 24 bits wide (PIIX4): TMR_VAL_EXT stays clear.
  const t = FADT.encode({
    firmware_ctrl: o.facs,
    dsdt: o.dsdt,
    sci_int: o.sciIrq,
    pm1a_evt_blk: o.pm1aEvtPort,
    pm1a_cnt_blk: o.pm1aCntPort,
    pm_tmr_blk: o.pmTimerPort,
    pm1_evt_len: 4,
    pm1_cnt_len: 2,
    pm_tmr_len: o.pmTimerPort ? 4 : 0,
    // Latencies above 100/1000 us mean C2/C3 are not supported.
    p_lvl2_lat: 101,
    p_lvl3_lat: 1001,
    century: o.century,
    iapc_boot_arch: o.iapcBootArch,
    flags,
    reset_reg: gas(o.reset.port, 1, 1),
    reset_value: o.reset.value,
    minor_revision: 5,
    x_dsdt: BigInt(o.dsdt),
    x_pm1a_evt_blk: gas(o.pm1aEvtPort, 4, 0),
    x_pm1a_cnt_blk: gas(o.pm1aCntPort, 2, 0),
    x_pm_tmr_blk: gas(o.pmTimerPort, 4, 3),
    hypervisor_id: ascii("hyprdeno"),
  });
  return sealTable("FACP", 6, t);
}

/** What the MADT describes. */
export interface MadtOptions {
  /** Number of vCPUs: local APIC IDs and processor UIDs 0 .. cpus-1, all enabled. */
  readonly cpus: number;
  /** Local APIC base address. */
  readonly lapicAddress: number;
  /** IOAPIC base address (GSI base 0, ID 0). */
  readonly ioapicAddress: number;
  /** SCI ISA IRQ: overridden to a level-triggered, active-high GSI of the same number. */
  readonly sciIrq: number;
  /** Also override ISA IRQ 0 to GSI 2 (only when the PIT is routed to IOAPIC pin 2). */
  readonly irq0ToGsi2?: boolean;
}

/** Largest vCPU count the MADT can describe with xAPIC IDs (0xFF is the broadcast ID). */
export const MAX_CPUS = 255;

/**
 * MADT (revision 5): local APIC address, PC-AT compatible (dual 8259), one enabled Processor
 * Local APIC per vCPU, one IOAPIC, the SCI override (and optionally IRQ0 -> GSI2), and LINT1
 * as NMI on every processor.
 */
export function buildMadt(o: MadtOptions): Uint8Array {
  if (!Number.isInteger(o.cpus) || o.cpus < 1 || o.cpus > MAX_CPUS) {
    throw new RangeError(`vCPU count ${o.cpus} is outside 1-${MAX_CPUS}`);
  }
  const parts: Uint8Array[] = [];
  for (let i = 0; i < o.cpus; i++) {
    parts.push(MADT_LOCAL_APIC.encode({
      type: 0,
      length: MADT_LOCAL_APIC.size,
      processor_uid: i,
      apic_id: i,
      flags: 1,
    }));
  }
  parts.push(MADT_IO_APIC.encode({
    type: 1,
    length: MADT_IO_APIC.size,
    id: 0,
    address: o.ioapicAddress,
    gsi_base: 0,
  }));
  if (o.irq0ToGsi2) {
    parts.push(MADT_INTERRUPT_OVERRIDE.encode({
      type: 2,
      length: MADT_INTERRUPT_OVERRIDE.size,
      bus: 0,
      source: 0,
      gsi: 2,
      flags: 0,
    }));
  }
  parts.push(MADT_INTERRUPT_OVERRIDE.encode({
    type: 2,
    length: MADT_INTERRUPT_OVERRIDE.size,
    bus: 0,
    source: o.sciIrq,
    gsi: o.sciIrq,
    flags: MPS_ACTIVE_HIGH | MPS_LEVEL,
  }));
  parts.push(MADT_LOCAL_APIC_NMI.encode({
    type: 4,
    length: MADT_LOCAL_APIC_NMI.size,
    processor_uid: 0xff,
    flags: 0,
    lint: 1,
  }));
  const bodyLength = parts.reduce((n, p) => n + p.length, 0);
  const t = new Uint8Array(MADT.size + bodyLength);
  MADT.set(t, 0, "local_apic_address", o.lapicAddress);
  MADT.set(t, 0, "flags", MADT_PCAT_COMPAT);
  let at = MADT.size;
  for (const p of parts) {
    t.set(p, at);
    at += p.length;
  }
  return sealTable("APIC", 5, t);
}
