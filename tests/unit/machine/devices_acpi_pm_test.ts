import { deepStrictEqual, strictEqual } from "node:assert/strict";
import type { IrqLine } from "../../../src/machine/irq.ts";
import type { PowerControl } from "../../../src/machine/power.ts";
import {
  AcpiPm,
  PM1_CNT_OFFSET,
  PM1_CNT_SLP_EN,
  PM1_EN_OFFSET,
  PM1_PWRBTN,
  PM1_STS_OFFSET,
  S5_SLP_TYP,
} from "../../../src/machine/devices/acpi_pm.ts";

class FakeIrq implements IrqLine {
  levels: boolean[] = [];
  set(level: boolean): void {
    this.levels.push(level);
  }
}

class FakePower implements PowerControl {
  resets = 0;
  offs = 0;
  reset(): void {
    this.resets++;
  }
  powerOff(): void {
    this.offs++;
  }
}

function makePm(state = AcpiPm.createState()) {
  const power = new FakePower();
  const sci = new FakeIrq();
  const pm = new AcpiPm(state, { power, sci });
  const inw = (offset: number) => {
    const b = new Uint8Array(2);
    pm.read(offset, b);
    return b[0]! | (b[1]! << 8);
  };
  const outw = (offset: number, value: number) =>
    pm.write(offset, Uint8Array.of(value & 0xff, value >> 8));
  return { pm, power, sci, inw, outw, state };
}

Deno.test("acpi-pm: SLP_EN with SLP_TYP = S5 powers off", () => {
  const { outw, power } = makePm();
  // ACPICA writes SLP_TYP first, then SLP_TYP | SLP_EN.
  outw(PM1_CNT_OFFSET, (S5_SLP_TYP << 10) | 1);
  strictEqual(power.offs, 0);
  outw(PM1_CNT_OFFSET, (S5_SLP_TYP << 10) | PM1_CNT_SLP_EN | 1);
  strictEqual(power.offs, 1);
  strictEqual(power.resets, 0);
});

Deno.test("acpi-pm: a byte write of PM1_CNT's high byte is enough", () => {
  const { pm, power } = makePm();
  pm.write(PM1_CNT_OFFSET + 1, Uint8Array.of((S5_SLP_TYP << 2) | 0x20));
  strictEqual(power.offs, 1);
});

Deno.test("acpi-pm: other sleep types are ignored", () => {
  const { outw, power } = makePm();
  for (const typ of [1, 2, 3, 4, 6, 7]) outw(PM1_CNT_OFFSET, (typ << 10) | PM1_CNT_SLP_EN);
  strictEqual(power.offs, 0);
});

Deno.test("acpi-pm: SLP_TYP 0 with SLP_EN powers off too, as OVMF shuts an i440FX board down", () => {
  const { outw, power } = makePm();
  outw(PM1_CNT_OFFSET, 1); // SCI_EN, SLP_TYP 0, no SLP_EN: nothing
  strictEqual(power.offs, 0);
  outw(PM1_CNT_OFFSET, PM1_CNT_SLP_EN | 1);
  strictEqual(power.offs, 1);
});

Deno.test("acpi-pm: PM1_CNT reads SCI_EN and keeps SLP_TYP, never SLP_EN", () => {
  const { inw, outw } = makePm();
  strictEqual(inw(PM1_CNT_OFFSET), 0x0001);
  outw(PM1_CNT_OFFSET, 3 << 10);
  strictEqual(inw(PM1_CNT_OFFSET), (3 << 10) | 1);
  outw(PM1_CNT_OFFSET, (3 << 10) | PM1_CNT_SLP_EN);
  strictEqual(inw(PM1_CNT_OFFSET) & PM1_CNT_SLP_EN, 0);
});

Deno.test("acpi-pm: power button raises the SCI until its status is cleared", () => {
  const { pm, inw, outw, sci, power } = makePm();
  pm.pressPowerButton();
  deepStrictEqual(sci.levels, []); // not enabled yet
  strictEqual(inw(PM1_STS_OFFSET), PM1_PWRBTN);
  outw(PM1_EN_OFFSET, PM1_PWRBTN);
  strictEqual(inw(PM1_EN_OFFSET), PM1_PWRBTN);
  deepStrictEqual(sci.levels, [true]);
  outw(PM1_STS_OFFSET, 0x0001); // writing 0 to PWRBTN_STS keeps it
  strictEqual(inw(PM1_STS_OFFSET), PM1_PWRBTN);
  outw(PM1_STS_OFFSET, PM1_PWRBTN); // write-1-to-clear
  strictEqual(inw(PM1_STS_OFFSET), 0);
  deepStrictEqual(sci.levels, [true, false]);
  strictEqual(power.offs, 0); // the guest decides what the button does
});

Deno.test("acpi-pm: a dword read covers STS and EN; reads past the block float", () => {
  const { pm, outw } = makePm();
  outw(PM1_EN_OFFSET, 0x0120);
  const b = new Uint8Array(4);
  pm.read(0, b);
  deepStrictEqual([...b], [0, 0, 0x20, 0x01]);
  const c = new Uint8Array(2);
  pm.read(6, c);
  deepStrictEqual([...c], [0xff, 0xff]);
});

Deno.test("acpi-pm: two instances over one SAB share state", () => {
  const main = makePm();
  const vcpu = makePm(main.state);
  vcpu.outw(PM1_EN_OFFSET, PM1_PWRBTN);
  main.pm.pressPowerButton();
  deepStrictEqual(main.sci.levels, [true]);
  strictEqual(vcpu.inw(PM1_STS_OFFSET), PM1_PWRBTN);
  vcpu.outw(PM1_STS_OFFSET, PM1_PWRBTN);
  deepStrictEqual(vcpu.sci.levels, [false]);
});
