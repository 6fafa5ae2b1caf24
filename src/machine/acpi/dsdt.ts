/**
 * The machine's DSDT, as the ASL it encodes:
 *
 * ```
 * Scope (\_SB) {
 *   Device (COM1) { _HID EISAID("PNP0501"), _UID 1, _CRS { IO 0x3F8/8, IRQNoFlags {4} } }
 *   Device (PS2K) { _HID EISAID("PNP0303"), _CRS { IO 0x60/1, IO 0x64/1, IRQNoFlags {1} } }
 *   Device (PWRB) { _HID EISAID("PNP0C0C"), _UID 0 }
 *   Device (VMOD) {                                   // only with VMBus
 *     _HID "ACPI0004", _UID 0,
 *     _CRS { DWordMemory (low window), QWordMemory (high window) }
 *     Device (VMBS) { _HID "VMBus", _UID 0, _STA 0x0F, _CRS {} }
 *   }
 * }
 * Name (\_S5, Package () { 5, 5, 0, 0 })              // SLP_TYP for soft-off
 * ```
 *
 * VMBus follows Hyper-V generation 2 and Linux's `vmbus_acpi_add()`: the driver matches _HID
 * "VMBus", walks the device's own _CRS (which must exist; it is empty here), then its ancestors'
 * _CRS for Address32/Address64 descriptors, which become the MMIO pool it allocates from.
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
  string,
} from "./aml.ts";
import { tableWithBody } from "./tables.ts";
import type { GpaRange } from "../memory_map.ts";

/** What the DSDT declares. */
export interface DsdtOptions {
  /** COM1: I/O base and ISA IRQ, or absent for none. */
  readonly com1?: { readonly port: number; readonly irq: number } | undefined;
  /** i8042 keyboard controller: data and command ports and keyboard IRQ, or absent. */
  readonly i8042?:
    | { readonly dataPort: number; readonly cmdPort: number; readonly irq: number }
    | undefined;
  /** Declare an ACPI power button device (PNP0C0C). */
  readonly powerButton?: boolean;
  /** SLP_TYP value for `\_S5` (soft-off). */
  readonly s5SlpTyp: number;
  /** VMBus MMIO windows (below 4 GiB first); absent for no VMBus node. */
  readonly vmbusMmio?: readonly GpaRange[] | undefined;
}

const FOUR_GIB = 0x1_0000_0000;

function vmbusNodes(windows: readonly GpaRange[]): Uint8Array {
  const ranges = windows.map((w) =>
    w.gpa + w.size <= FOUR_GIB ? dwordMemory(w.gpa, w.size) : qwordMemory(w.gpa, w.size)
  );
  return device(
    "VMOD",
    name("_HID", string("ACPI0004")),
    name("_UID", integer(0)),
    name("_CRS", resourceTemplate(...ranges)),
    device(
      "VMBS",
      name("_HID", string("VMBus")),
      name("_UID", integer(0)),
      name("_STA", integer(0x0f)),
      name("_CRS", resourceTemplate()),
    ),
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
  }
  if (o.powerButton) {
    sb.push(device("PWRB", name("_HID", eisaId("PNP0C0C")), name("_UID", integer(0))));
  }
  if (o.vmbusMmio && o.vmbusMmio.length > 0) sb.push(vmbusNodes(o.vmbusMmio));
  const s5 = pkg(integer(o.s5SlpTyp), integer(o.s5SlpTyp), integer(0), integer(0));
  return concat(scope("\\_SB", ...sb), name("\\_S5", s5));
}

/** The complete DSDT (revision 2: 64-bit AML integers). */
export function buildDsdt(o: DsdtOptions): Uint8Array {
  return tableWithBody("DSDT", 2, buildDsdtAml(o));
}
