/**
 * Assembles the machine's ACPI tables into one blob for the ACPI area of `layout.ts`:
 *
 * ```
 * ACPI_START + 0x00  RSDP (rev 2) -> XSDT, RSDT
 *            + 0x40  FACS (64-byte aligned)
 *            + 0x80  DSDT, FADT, MADT, XSDT, RSDT (each 16-byte aligned)
 * ```
 *
 * Every table carries its checksum; the caller writes `bytes` at `gpa` and hands `rsdpAddress`
 * to the kernel (boot_params.acpi_rsdp_addr). The RSDP also sits where OSes scan for it.
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
  buildFacs,
  buildFadt,
  buildMadt,
  buildRsdp,
  buildRsdt,
  buildXsdt,
  IAPC_8042,
  IAPC_CMOS_RTC_NOT_PRESENT,
  IAPC_LEGACY_DEVICES,
  IAPC_VGA_NOT_PRESENT,
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

const alignUp = (v: number, a: number) => Math.ceil(v / a) * a;

/** Builds RSDP, XSDT, RSDT, FADT, FACS, MADT and DSDT for the ACPI area. */
export function buildAcpiTables(options: AcpiOptions): AcpiTables {
  const i8042 = options.i8042 ?? true;
  const rtc = options.rtc ?? true;
  const pieces: { signature: string; bytes: Uint8Array; offset: number }[] = [];
  let end = 0;
  const place = (signature: string, bytes: Uint8Array, align: number) => {
    const offset = alignUp(end, align);
    pieces.push({ signature, bytes, offset });
    end = offset + bytes.length;
    return ACPI_START + offset;
  };

  // The RSDP comes first, at RSDP_ADDR; its contents are filled in last.
  const rsdpSlot = place("RSD PTR ", new Uint8Array(36), 16);
  if (rsdpSlot !== RSDP_ADDR) throw new Error("RSDP must be the first ACPI structure");
  const facs = place("FACS", buildFacs(), 64);
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
  const xsdt = place("XSDT", buildXsdt([fadt, madt]), 16);
  const rsdt = place("RSDT", buildRsdt([fadt, madt]), 16);
  pieces[0]!.bytes = buildRsdp(xsdt, rsdt);

  if (end > ACPI_MAX_SIZE) {
    throw new RangeError(`ACPI tables need ${end} bytes; the ACPI area holds ${ACPI_MAX_SIZE}`);
  }
  const bytes = new Uint8Array(end);
  for (const p of pieces) bytes.set(p.bytes, p.offset);
  return {
    gpa: ACPI_START,
    bytes,
    rsdpAddress: RSDP_ADDR,
    tables: pieces.map((p) => ({
      signature: p.signature,
      gpa: ACPI_START + p.offset,
      length: p.bytes.length,
    })),
  };
}
