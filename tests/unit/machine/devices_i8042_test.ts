import { deepStrictEqual, strictEqual } from "node:assert/strict";
import type { IrqLine } from "../../../src/machine/irq.ts";
import type { PowerControl } from "../../../src/machine/power.ts";
import {
  CTR_AUXDIS,
  CTR_AUXINT,
  CTR_KBDINT,
  I8042,
  STATUS_AUXDATA,
  STATUS_OBF,
} from "../../../src/machine/devices/i8042.ts";

class FakeIrq implements IrqLine {
  levels: boolean[] = [];
  get level(): boolean {
    return this.levels.at(-1) ?? false;
  }
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

function makeKbc(state = I8042.createState()) {
  const power = new FakePower();
  const kbdIrq = new FakeIrq();
  const auxIrq = new FakeIrq();
  const kbc = new I8042(state, { power, kbdIrq, auxIrq });
  const buf = new Uint8Array(1);
  const status = () => {
    kbc.read(4, buf);
    return buf[0]!;
  };
  const readData = () => {
    kbc.read(0, buf);
    return buf[0]!;
  };
  const command = (cmd: number) => {
    buf[0] = cmd;
    kbc.write(4, buf);
  };
  const writeData = (value: number) => {
    buf[0] = value;
    kbc.write(0, buf);
  };
  /** Linux `i8042_command`: wait for IBF clear, send, read results after OBF. */
  const i8042Command = (cmd: number, params: number[], results: number): number[] | "timeout" => {
    if (status() & 0x02) return "timeout";
    command(cmd);
    for (const p of params) {
      if (status() & 0x02) return "timeout";
      writeData(p);
    }
    const out: number[] = [];
    for (let i = 0; i < results; i++) {
      if (!(status() & STATUS_OBF)) return "timeout";
      out.push(readData());
    }
    return out;
  };
  return { kbc, power, kbdIrq, auxIrq, status, readData, command, writeData, i8042Command, state };
}

Deno.test("i8042: command 0xFE pulses the reset line", () => {
  const { command, power } = makeKbc();
  command(0xfe);
  strictEqual(power.resets, 1);
  command(0xff); // pulse nothing
  command(0xf1); // bit 0 kept high
  strictEqual(power.resets, 1);
});

Deno.test("i8042: output-port write with bit 0 low resets, A20 writes do not", () => {
  const { command, writeData, power, i8042Command } = makeKbc();
  command(0xd1);
  writeData(0xdf); // A20 on, reset line high
  strictEqual(power.resets, 0);
  deepStrictEqual(i8042Command(0xd0, [], 1), [0xdf]);
  command(0xd1);
  writeData(0xde);
  strictEqual(power.resets, 1);
});

Deno.test("i8042: Linux controller probe completes without timeouts", () => {
  const { i8042Command, status, readData, auxIrq, kbdIrq } = makeKbc();
  // i8042_flush: nothing buffered.
  strictEqual(status() & STATUS_OBF, 0);
  strictEqual(status() & 0x10, 0x10); // keylock off
  // i8042_controller_selftest.
  deepStrictEqual(i8042Command(0xaa, [], 1), [0x55]);
  strictEqual(status() & 0x04, 0x04); // system flag
  // i8042_controller_init: two stable CTR reads, then write it back with the keyboard off.
  const ctr1 = i8042Command(0x20, [], 1);
  const ctr2 = i8042Command(0x20, [], 1);
  deepStrictEqual(ctr1, ctr2);
  const ctr = (ctr1 as number[])[0]!;
  const newCtr = (ctr | 0x10) & ~CTR_KBDINT;
  deepStrictEqual(i8042Command(0x60, [newCtr], 0), []);
  deepStrictEqual(i8042Command(0x20, [], 1), [newCtr]);
  // i8042_check_aux: AUX loopback echoes with AUXDATA.
  strictEqual(i8042Command(0xd3, [0x5a], 0).length, 0);
  strictEqual(status() & (STATUS_OBF | STATUS_AUXDATA), STATUS_OBF | STATUS_AUXDATA);
  strictEqual(readData(), 0x5a);
  strictEqual(status() & STATUS_OBF, 0);
  deepStrictEqual(i8042Command(0xa9, [], 1), [0x00]);
  // AUX disable/enable are visible in the CTR.
  i8042Command(0xa7, [], 0);
  strictEqual((i8042Command(0x20, [], 1) as number[])[0]! & CTR_AUXDIS, CTR_AUXDIS);
  i8042Command(0xa8, [], 0);
  strictEqual((i8042Command(0x20, [], 1) as number[])[0]! & CTR_AUXDIS, 0);
  // AUX IRQ delivery test: with AUXINT set, the loopback byte raises IRQ 12.
  i8042Command(0x60, [newCtr | CTR_AUXINT], 0);
  auxIrq.levels.length = 0;
  i8042Command(0xd3, [0xa5], 0);
  strictEqual(auxIrq.level, true);
  strictEqual(readData(), 0xa5);
  strictEqual(auxIrq.level, false);
  // Controller replies count as keyboard-port data (IRQ 1 while enabled), never IRQ 12.
  strictEqual(kbdIrq.level, false);
  // Keyboard interface test.
  deepStrictEqual(i8042Command(0xab, [], 1), [0x00]);
});

Deno.test("i8042: bytes to the absent keyboard and mouse are NAKed with an interrupt", () => {
  const { i8042Command, writeData, status, readData, kbdIrq, auxIrq } = makeKbc();
  writeData(0xf2); // keyboard GETID
  strictEqual(status() & (STATUS_OBF | STATUS_AUXDATA), STATUS_OBF);
  strictEqual(kbdIrq.level, true);
  strictEqual(readData(), 0xfe);
  strictEqual(kbdIrq.level, false);
  i8042Command(0xd4, [0xf2], 0); // mouse GETID
  strictEqual(status() & (STATUS_OBF | STATUS_AUXDATA), STATUS_OBF | STATUS_AUXDATA);
  strictEqual(auxIrq.level, true);
  strictEqual(readData(), 0xfe);
  strictEqual(auxIrq.level, false);
});

Deno.test("i8042: interrupts follow the CTR enable bits", () => {
  const { i8042Command, writeData, readData, kbdIrq } = makeKbc();
  i8042Command(0x60, [0x44], 0); // KBDINT off
  writeData(0xee);
  deepStrictEqual(kbdIrq.levels, []);
  i8042Command(0x60, [0x45], 0); // enabling with a byte waiting raises the line
  deepStrictEqual(kbdIrq.levels, [true]);
  strictEqual(readData(), 0xfe);
  deepStrictEqual(kbdIrq.levels, [true, false]);
});

Deno.test("i8042: status CMD bit tracks the last port written; odd offsets float", () => {
  const { kbc, command, writeData, status } = makeKbc();
  command(0xa8);
  strictEqual(status() & 0x08, 0x08);
  writeData(0x00);
  strictEqual(status() & 0x08, 0);
  const buf = new Uint8Array(1);
  kbc.read(1, buf);
  strictEqual(buf[0], 0xff);
  kbc.write(2, buf); // ignored
});

Deno.test("i8042: two instances over one SAB share the output buffer", () => {
  const a = makeKbc();
  const b = makeKbc(a.state);
  a.command(0xaa);
  strictEqual(b.status() & STATUS_OBF, STATUS_OBF);
  strictEqual(b.readData(), 0x55);
  strictEqual(a.status() & STATUS_OBF, 0);
});
