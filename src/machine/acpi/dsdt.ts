/**
 * The machine's DSDT, as the ASL it encodes:
 *
 * ```
 * Scope (\_SB) {
 *   Device (COM1) { _HID EISAID("PNP0501"), _UID 1, _CRS { IO 0x3F8/8, IRQNoFlags {4} } }
 *   Device (PS2K) { _HID EISAID("PNP0303"), _CRS { IO 0x60/1, IO 0x64/1, IRQNoFlags {1} } }
 *   Device (PS2M) { _HID EISAID("PNP0F13"), _CRS { IRQNoFlags {12} } }   // with an AUX IRQ
 *   Device (PWRB) { _HID EISAID("PNP0C0C"), _UID 0 }
 *   Device (PCI0) {                                   // with a PCI root
 *     _HID EISAID("PNP0A03"), _UID 0, _ADR 0, _BBN 0,
 *     _CRS { WordBusNumber 0-255, IO 0xCF8/8, WordIO (each I/O window),
 *            DWordMemory (32-bit window), QWordMemory (64-bit window) }
 *     _PRT { Package { 0xDDDDFFFF, pin, 0, gsi } ... }  // every slot x INTA-D
 *   }
 *   ...                                               // `devices` from upper layers
 * }
 * Name (\_S5, Package () { 5, 5, 0, 0 })              // SLP_TYP for soft-off
 * ```
 *
 * Devices of upper layers (the VMBus node: `src/vmbus/acpi.ts`) come in as AML terms, so this
 * layer knows nothing about them.
 * @module
 */
import {
  concat,
  device,
  dwordMemory,
  eisaId,
  integer,
  io,
  irqNoFlags,
  name,
  pkg,
  qwordMemory,
  resourceTemplate,
  scope,
  wordBusNumber,
  wordIo,
} from "./aml.ts";
import { tableWithBody } from "./tables.ts";
import type { GpaRange } from "../memory_map.ts";

/** What the DSDT declares. */
export interface DsdtOptions {
  /** COM1: I/O base and ISA IRQ, or absent for none. */
  readonly com1?: { readonly port: number; readonly irq: number } | undefined;
  /** i8042 keyboard controller: data and command ports and keyboard IRQ, or absent. */
  readonly i8042?:
    | {
      readonly dataPort: number;
      readonly cmdPort: number;
      readonly irq: number;
      /** The PS/2 mouse's IRQ: a PNP0F13 node (Linux's i8042 skips the AUX port without one). */
      readonly auxIrq?: number;
    }
    | undefined;
  /** Declare an ACPI power button device (PNP0C0C). */
  readonly powerButton?: boolean;
  /** SLP_TYP value for `\_S5` (soft-off). */
  readonly s5SlpTyp: number;
  /** The PCI root bridge; absent for none. */
  readonly pci?: PciRootOptions | undefined;
  /** More `\_SB` devices, as AML, from the layers that own them (the VMBus node). */
  readonly devices?: readonly Uint8Array[] | undefined;
}

/** What the PCI root's `_CRS` and `_PRT` say. */
export interface PciRootOptions {
  /** I/O port windows, inclusive ends. */
  readonly ioWindows: readonly { readonly start: number; readonly end: number }[];
  /** The 32-bit MMIO window. */
  readonly mmio32: GpaRange;
  /** The 64-bit MMIO window. */
  readonly mmio64: GpaRange;
  /** IOAPIC GSI of slot `slot`'s pin `pin` (0 = INTA): the board's PIRQ swizzle. */
  readonly gsiOf: (slot: number, pin: number) => number;
}

function pciRoot(o: PciRootOptions): Uint8Array {
  const prt: Uint8Array[] = [];
  for (let slot = 0; slot < 32; slot++) {
    for (let pin = 0; pin < 4; pin++) {
      prt.push(
        pkg(
          integer(slot * 0x1_0000 + 0xffff),
          integer(pin),
          integer(0),
          integer(o.gsiOf(slot, pin)),
        ),
      );
    }
  }
  return device(
    "PCI0",
    name("_HID", eisaId("PNP0A03")),
    name("_UID", integer(0)),
    name("_ADR", integer(0)),
    name("_BBN", integer(0)),
    name(
      "_CRS",
      resourceTemplate(
        wordBusNumber(0, 256),
        io(0xcf8, 0xcf8, 1, 8),
        ...o.ioWindows.map((w) => wordIo(w.start, w.end - w.start + 1)),
        dwordMemory(o.mmio32.gpa, o.mmio32.size, { cacheable: "noncacheable" }),
        qwordMemory(o.mmio64.gpa, o.mmio64.size, { cacheable: "noncacheable" }),
      ),
    ),
    name("_PRT", pkg(...prt)),
  );
}

/** The AML body of the DSDT (without the table header). */
export function buildDsdtAml(o: DsdtOptions): Uint8Array {
  const sb: Uint8Array[] = [];
  if (o.com1) {
    sb.push(device(
      "COM1",
      name("_HID", eisaId("PNP0501")),
      name("_UID", integer(1)),
      name("_CRS", resourceTemplate(io(o.com1.port, o.com1.port, 1, 8), irqNoFlags(o.com1.irq))),
    ));
  }
  if (o.i8042) {
    const k = o.i8042;
    sb.push(device(
      "PS2K",
      name("_HID", eisaId("PNP0303")),
      name(
        "_CRS",
        resourceTemplate(
          io(k.dataPort, k.dataPort, 1, 1),
          io(k.cmdPort, k.cmdPort, 1, 1),
          irqNoFlags(k.irq),
        ),
      ),
    ));
    if (k.auxIrq !== undefined) {
      sb.push(device(
        "PS2M",
        name("_HID", eisaId("PNP0F13")),
        name("_CRS", resourceTemplate(irqNoFlags(k.auxIrq))),
      ));
    }
  }
  if (o.powerButton) {
    sb.push(device("PWRB", name("_HID", eisaId("PNP0C0C")), name("_UID", integer(0))));
  }
  if (o.pci) sb.push(pciRoot(o.pci));
  for (const d of o.devices ?? []) sb.push(d);
  const s5 = pkg(integer(o.s5SlpTyp), integer(o.s5SlpTyp), integer(0), integer(0));
  return concat(scope("\\_SB", ...sb), name("\\_S5", s5));
}

/** The complete DSDT (revision 2: 64-bit AML integers). */
export function buildDsdt(o: DsdtOptions): Uint8Array {
  return tableWithBody("DSDT", 2, buildDsdtAml(o));
}
