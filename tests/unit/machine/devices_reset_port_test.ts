import { strictEqual } from "node:assert/strict";
import type { PowerControl } from "../../../src/machine/power.ts";
import { RESET_VALUE, ResetPort } from "../../../src/machine/devices/reset_port.ts";

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

function makePort(state = ResetPort.createState()) {
  const power = new FakePower();
  const port = new ResetPort(state, { power });
  const buf = new Uint8Array(1);
  const inb = () => {
    port.read(0, buf);
    return buf[0]!;
  };
  const outb = (value: number) => {
    buf[0] = value;
    port.write(0, buf);
  };
  return { port, power, inb, outb, state };
}

Deno.test("reset port: Linux reboot=pci sequence (0x02 then 0x06) resets once", () => {
  const { inb, outb, power } = makePort();
  strictEqual(inb(), 0);
  const cf9 = inb() & ~6;
  outb(cf9 | 2);
  strictEqual(power.resets, 0);
  strictEqual(inb(), 0x02);
  outb(cf9 | 6);
  strictEqual(power.resets, 1);
  strictEqual(inb(), 0x06);
  strictEqual(RESET_VALUE, 0x06);
});

Deno.test("reset port: full reset 0x0E resets; repeated writes ask again", () => {
  const { outb, power } = makePort();
  outb(0x0e);
  outb(0x0e);
  strictEqual(power.resets, 2);
  strictEqual(power.offs, 0);
});

Deno.test("reset port: other offsets float and ignore writes; state is shared", () => {
  const a = makePort();
  const b = makePort(a.state);
  const buf = Uint8Array.of(0x06);
  a.port.write(1, buf);
  strictEqual(a.power.resets, 0);
  a.port.read(1, buf);
  strictEqual(buf[0], 0xff);
  a.outb(0x02);
  strictEqual(b.inb(), 0x02);
});
