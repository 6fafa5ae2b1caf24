/**
 * Builds the machine's ACPI tables once, as a relocatable image, and places that image in one
 * of two ways:
 *
 * - **Direct boot** ({@linkcode buildAcpiTables}): the VMM writes the tables into the ACPI area
 *   of `layout.ts` itself:
 *
 *   ```
 *   ACPI_START + 0x00  RSDP (rev 2) -> XSDT, RSDT
 *              + 0x40  FACS (64-byte aligned)           <- the "tables" part starts here
 *              + 0x80  DSDT, FADT, MADT, XSDT, RSDT (each 16-byte aligned)
 *   ```
 *
 * - **Firmware boot** ({@linkcode buildAcpiImage}): the RSDP and the tables stay two separate
 *   blobs whose pointer fields hold offsets into the tables blob, with the list of those pointer
 *   fields and of every checksum; `../firmware/table_loader.ts` turns that into QEMU's
 *   linker/loader script, and the firmware allocates, relocates and checksums the blobs.
 *
 * Both come from the same encoders, so the tables a UEFI guest sees are the ones a direct-boot
 * guest sees.
 * @module
 */
import {
  ACPI_MAX_SIZE,
  ACPI_S5_SLP_TYP,
  ACPI_START,
  COM1_IRQ,
  COM1_PORT,
  I8042_AUX_IRQ,
  I8042_CMD_PORT,
  I8042_DATA_PORT,
  I8042_KBD_IRQ,
  IOAPIC_START,
  LAPIC_START,
  PM1A_CNT_PORT,
  PM1A_EVT_PORT,
  PM_TMR_PORT,
  RESET_PORT,
  RESET_VALUE,
  RSDP_ADDR,
  SCI_IRQ,
} from "../layout.ts";
import { buildDsdt, type PciRootOptions } from "./dsdt.ts";
import {
  ACPI_HEADER,
  buildFacs,
  buildFadt,
  buildMadt,
  buildRsdp,
  buildRsdt,
  buildXsdt,
  checksum,
  FADT,
  IAPC_8042,
  IAPC_CMOS_RTC_NOT_PRESENT,
  IAPC_LEGACY_DEVICES,
  IAPC_VGA_NOT_PRESENT,
  RSDP,
} from "./tables.ts";

/** What the machine has, as far as ACPI tells the guest. */
export interface AcpiOptions {
  /** Number of vCPUs (1-255). */
  readonly cpus: number;
  /** More `\_SB` device nodes as AML, from the layers that own them (VMBus). */
  readonly devices?: readonly Uint8Array[] | undefined;
  /** COM1 at 0x3F8/IRQ 4 in the DSDT (default true). */
  readonly serial?: boolean;
  /** i8042 at 0x60/0x64/IRQ 1 (mouse IRQ 12): FADT 8042 flag, PNP0303 and PNP0F13 nodes
   * (default true). */
  readonly i8042?: boolean;
  /** The machine emulates the CMOS RTC at 0x70 (default true; false sets "CMOS RTC not present"). */
  readonly rtc?: boolean;
  /** The PCI root bridge (`PNP0A03` with `_CRS` and `_PRT`); absent for none. */
  readonly pci?: PciRootOptions | undefined;
  /** The machine emulates the ACPI PM timer at `PM_TMR_PORT` (default false). */
  readonly pmTimer?: boolean;
  /** ACPI power button device PNP0C0C in the DSDT (default true). */
  readonly powerButton?: boolean;
  /**
   * Declare ISA IRQ 0 -> GSI 2 in the MADT (default false). Only right when the VM routes the
   * PIT's GSI 0 to IOAPIC pin 2 as QEMU does; KVM's default routing keeps IRQ 0 on pin 0.
   */
  readonly irq0ToGsi2?: boolean;
}

/** One table of the blob, for logs and tests. */
export interface AcpiTableInfo {
  /** Table signature ("RSD PTR " for the RSDP). */
  readonly signature: string;
  /** Guest physical address. */
  readonly gpa: number;
  /** Length in bytes. */
  readonly length: number;
}

/** The ACPI tables laid out for guest RAM. */
export interface AcpiTables {
  /** Where `bytes` goes: `ACPI_START`. */
  readonly gpa: number;
  /** All tables, at their offsets from `gpa`. */
  readonly bytes: Uint8Array;
  /** Guest address of the RSDP. */
  readonly rsdpAddress: number;
  /** Each table and where it is. */
  readonly tables: readonly AcpiTableInfo[];
}

/** The two blobs of a relocatable image. */
export type AcpiBlob = "rsdp" | "tables";

/** A pointer field whose value is an offset into the tables blob until the image is placed. */
export interface AcpiPointer {
  /** The blob holding the pointer field. */
  readonly blob: AcpiBlob;
  /** Offset of the field in that blob. */
  readonly offset: number;
  /** Field width in bytes (little-endian). */
  readonly size: 4 | 8;
}

/** A checksum byte that makes `[start, start+length)` of its blob sum to zero. */
export interface AcpiChecksum {
  /** The blob holding the checksummed range. */
  readonly blob: AcpiBlob;
  /** Offset of the checksum byte. */
  readonly offset: number;
  /** First byte covered. */
  readonly start: number;
  /** Bytes covered. */
  readonly length: number;
}

/** One table of a relocatable image. */
export interface AcpiImageEntry {
  /** Table signature. */
  readonly signature: string;
  /** Offset in the tables blob. */
  readonly offset: number;
  /** Length in bytes. */
  readonly length: number;
}

/**
 * The tables before placement: pointer fields hold offsets into `tables`, checksums are
 * computed for that state (so an image placed at 0 is already consistent).
 */
export interface AcpiImage {
  /** The RSDP (36 bytes). */
  readonly rsdp: Uint8Array;
  /** FACS first (64-byte aligned), then every other table, 16-byte aligned. */
  readonly tables: Uint8Array;
  /** Every pointer field, in both blobs; all of them point into `tables`. */
  readonly pointers: readonly AcpiPointer[];
  /** Every checksum, to recompute after the pointers are relocated (in this order). */
  readonly checksums: readonly AcpiChecksum[];
  /** The tables in `tables`. */
  readonly entries: readonly AcpiImageEntry[];
}

/** Alignment the tables blob needs (the FACS is its first structure). */
export const ACPI_TABLES_ALIGN = 64;
/** Offset of the tables blob after the RSDP in the direct-boot ACPI area. */
const DIRECT_TABLES_OFFSET = 0x40;

const alignUp = (v: number, a: number) => Math.ceil(v / a) * a;

/** Builds RSDP, XSDT, RSDT, FADT, FACS, MADT and DSDT as a relocatable image. */
export function buildAcpiImage(options: AcpiOptions): AcpiImage {
  const i8042 = options.i8042 ?? true;
  const rtc = options.rtc ?? true;
  const pieces: { signature: string; bytes: Uint8Array; offset: number }[] = [];
  const pointers: AcpiPointer[] = [];
  let end = 0;
  // Offsets double as addresses: everything is placed as if the tables blob sat at 0.
  const place = (signature: string, bytes: Uint8Array, align: number) => {
    const offset = alignUp(end, align);
    pieces.push({ signature, bytes, offset });
    end = offset + bytes.length;
    return offset;
  };
  const pointerAt = (table: number, field: number, size: 4 | 8) =>
    pointers.push({ blob: "tables", offset: table + field, size });

  const facs = place("FACS", buildFacs(), ACPI_TABLES_ALIGN);
  const dsdt = place(
    "DSDT",
    buildDsdt({
      com1: (options.serial ?? true) ? { port: COM1_PORT, irq: COM1_IRQ } : undefined,
      i8042: i8042
        ? {
          dataPort: I8042_DATA_PORT,
          cmdPort: I8042_CMD_PORT,
          irq: I8042_KBD_IRQ,
          auxIrq: I8042_AUX_IRQ,
        }
        : undefined,
      powerButton: options.powerButton ?? true,
      s5SlpTyp: ACPI_S5_SLP_TYP,
      devices: options.devices,
      pci: options.pci,
    }),
    16,
  );
  let iapc = IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT;
  if (i8042) iapc |= IAPC_8042;
  if (!rtc) iapc |= IAPC_CMOS_RTC_NOT_PRESENT;
  const fadt = place(
    "FACP",
    buildFadt({
      dsdt,
      facs,
      sciIrq: SCI_IRQ,
      pm1aEvtPort: PM1A_EVT_PORT,
      pm1aCntPort: PM1A_CNT_PORT,
      pmTimerPort: options.pmTimer ? PM_TMR_PORT : 0,
      reset: { port: RESET_PORT, value: RESET_VALUE },
      iapcBootArch: iapc,
      century: rtc ? 0x32 : 0,
    }),
    16,
  );
  pointerAt(fadt, FADT.fields.firmware_ctrl.offset, 4);
  pointerAt(fadt, FADT.fields.dsdt.offset, 4);
  pointerAt(fadt, FADT.fields.x_dsdt.offset, 8);
  const madt = place(
    "APIC",
    buildMadt({
      cpus: options.cpus,
      lapicAddress: LAPIC_START,
      ioapicAddress: IOAPIC_START,
      sciIrq: SCI_IRQ,
      irq0ToGsi2: options.irq0ToGsi2 ?? false,
    }),
    16,
  );
  const listed = [fadt, madt];
  const xsdt = place("XSDT", buildXsdt(listed), 16);
  listed.forEach((_, i) => pointerAt(xsdt, ACPI_HEADER.size + 8 * i, 8));
  const rsdt = place("RSDT", buildRsdt(listed), 16);
  listed.forEach((_, i) => pointerAt(rsdt, ACPI_HEADER.size + 4 * i, 4));

  const rsdp = buildRsdp(xsdt, rsdt);
  pointers.push({ blob: "rsdp", offset: RSDP.fields.rsdt_address.offset, size: 4 });
  pointers.push({ blob: "rsdp", offset: RSDP.fields.xsdt_address.offset, size: 8 });

  const tables = new Uint8Array(end);
  for (const p of pieces) tables.set(p.bytes, p.offset);
  // The FACS has no checksum; every other table has one in its header. The RSDP's two: the
  // ACPI 1.0 one over 20 bytes first, then the extended one over all 36, which covers it.
  const checksums: AcpiChecksum[] = pieces.filter((p) => p.signature !== "FACS").map((p) => ({
    blob: "tables",
    offset: p.offset + ACPI_HEADER.fields.checksum.offset,
    start: p.offset,
    length: p.bytes.length,
  }));
  checksums.push({ blob: "rsdp", offset: RSDP.fields.checksum.offset, start: 0, length: 20 });
  checksums.push({
    blob: "rsdp",
    offset: RSDP.fields.extended_checksum.offset,
    start: 0,
    length: RSDP.size,
  });
  return {
    rsdp,
    tables,
    pointers,
    checksums,
    entries: pieces.map((p) => ({
      signature: p.signature,
      offset: p.offset,
      length: p.bytes.length,
    })),
  };
}

/**
 * Relocates an image for a tables blob at guest address `tablesGpa`: adds it to every pointer
 * field and recomputes every checksum, in place on copies of both blobs. The same steps the
 * firmware takes when it runs the linker/loader script.
 */
export function relocateAcpiImage(
  image: AcpiImage,
  tablesGpa: number,
): { rsdp: Uint8Array; tables: Uint8Array } {
  const blobs = { rsdp: image.rsdp.slice(), tables: image.tables.slice() };
  for (const p of image.pointers) {
    const b = blobs[p.blob];
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (p.size === 4) dv.setUint32(p.offset, dv.getUint32(p.offset, true) + tablesGpa, true);
    else {
      dv.setBigUint64(p.offset, dv.getBigUint64(p.offset, true) + BigInt(tablesGpa), true);
    }
  }
  for (const c of image.checksums) {
    const b = blobs[c.blob];
    b[c.offset] = 0;
    b[c.offset] = checksum(b.subarray(c.start, c.start + c.length));
  }
  return blobs;
}

/**
 * Builds the tables for direct boot: the RSDP at `RSDP_ADDR` (the start of the ACPI area, where
 * OSes also scan for it) and the tables blob right after it.
 */
export function buildAcpiTables(options: AcpiOptions): AcpiTables {
  const image = buildAcpiImage(options);
  const tablesGpa = ACPI_START + DIRECT_TABLES_OFFSET;
  const { rsdp, tables } = relocateAcpiImage(image, tablesGpa);
  const size = DIRECT_TABLES_OFFSET + tables.length;
  if (size > ACPI_MAX_SIZE) {
    throw new RangeError(`ACPI tables need ${size} bytes; the ACPI area holds ${ACPI_MAX_SIZE}`);
  }
  if (RSDP_ADDR !== ACPI_START) throw new Error("RSDP must be the first ACPI structure");
  const bytes = new Uint8Array(size);
  bytes.set(rsdp, 0);
  bytes.set(tables, DIRECT_TABLES_OFFSET);
  return {
    gpa: ACPI_START,
    bytes,
    rsdpAddress: RSDP_ADDR,
    tables: [
      { signature: "RSD PTR ", gpa: RSDP_ADDR, length: rsdp.length },
      ...image.entries.map((e) => ({
        signature: e.signature,
        gpa: tablesGpa + e.offset,
        length: e.length,
      })),
    ],
  };
}
