/** The DSDT declares the PS/2 mouse next to the keyboard (Linux's i8042 PNP probe needs both). */
import { ok } from "node:assert/strict";
import { eisaId } from "../../../src/machine/acpi/aml.ts";
import { buildDsdtAml } from "../../../src/machine/acpi/dsdt.ts";

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  outer: for (let i = 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

Deno.test("DSDT: PS2M (PNP0F13, IRQ 12) beside PS2K when the i8042 has an AUX IRQ", () => {
  const i8042 = { dataPort: 0x60, cmdPort: 0x64, irq: 1 };
  const withMouse = buildDsdtAml({ i8042: { ...i8042, auxIrq: 12 }, s5SlpTyp: 5 });
  const without = buildDsdtAml({ i8042, s5SlpTyp: 5 });
  const pnp0f13 = eisaId("PNP0F13");
  ok(contains(withMouse, pnp0f13) && contains(withMouse, new TextEncoder().encode("PS2M")));
  ok(contains(withMouse, Uint8Array.of(0x22, 0x00, 0x10)), "IRQNoFlags {12}");
  ok(!contains(without, pnp0f13));
});
