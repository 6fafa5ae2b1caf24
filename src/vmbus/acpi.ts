/**
 * The VMBus device node the DSDT carries (AML terms for `\_SB`):
 *
 * ```
 * Device (VMOD) {
 *   _HID "ACPI0004", _UID 0,
 *   _CRS { DWordMemory (low window), QWordMemory (high window) }
 *   Device (VMBS) { _HID "VMBus", _UID 0, _STA 0x0F, _CRS {} }
 * }
 * ```
 *
 * VMBus follows Hyper-V generation 2 and Linux's `vmbus_acpi_add()`: the driver matches _HID
 * "VMBus", walks the device's own _CRS (which must exist; it is empty here), then its ancestors'
 * _CRS for Address32/Address64 descriptors, which become the MMIO pool it allocates from.
 * @module
 */
import {
  device,
  dwordMemory,
  integer,
  name,
  qwordMemory,
  resourceTemplate,
  string,
} from "../machine/acpi/aml.ts";
import type { GpaRange } from "../machine/memory_map.ts";

const FOUR_GIB = 0x1_0000_0000;

/** The VMBus module and bus device over `windows` (MMIO the guest's driver may allocate). */
export function vmbusAcpiNode(windows: readonly GpaRange[]): Uint8Array {
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
