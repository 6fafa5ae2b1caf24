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

Deno.test("i8042: keyboard and mouse answer identify with an interrupt each byte", () => {
  const { i8042Command, writeData, status, readData, kbdIrq, auxIrq } = makeKbc();
  writeData(0xf2); // keyboard GETID
  strictEqual(status() & (STATUS_OBF | STATUS_AUXDATA), STATUS_OBF);
  strictEqual(kbdIrq.level, true);
  strictEqual(readData(), 0xfa);
  strictEqual(kbdIrq.level, true, "the next byte moved in");
  strictEqual(readData(), 0xab);
  strictEqual(readData(), 0x41, "MF2 id, translated");
  strictEqual(kbdIrq.level, false);
  i8042Command(0xd4, [0xf2], 0); // mouse GETID
  strictEqual(status() & (STATUS_OBF | STATUS_AUXDATA), STATUS_OBF | STATUS_AUXDATA);
  strictEqual(auxIrq.level, true);
  strictEqual(readData(), 0xfa);
  strictEqual(readData(), 0x00);
  strictEqual(auxIrq.level, false);
});

Deno.test("i8042: interrupts follow the CTR enable bits", () => {
  const { i8042Command, writeData, readData, kbdIrq } = makeKbc();
  i8042Command(0x60, [0x44], 0); // KBDINT off
  writeData(0xee); // echo
  deepStrictEqual(kbdIrq.levels, []);
  i8042Command(0x60, [0x45], 0); // enabling with a byte waiting raises the line
  deepStrictEqual(kbdIrq.levels, [true]);
  strictEqual(readData(), 0xee);
  deepStrictEqual(kbdIrq.levels, [true, false]);
});

/** Reads every byte the controller has, as Linux's interrupt handler would. */
function drain(k: ReturnType<typeof makeKbc>): { byte: number; aux: boolean }[] {
  const out = [];
  while (k.status() & STATUS_OBF) {
    const aux = (k.status() & STATUS_AUXDATA) !== 0;
    out.push({ byte: k.readData(), aux });
  }
  return out;
}
const bytes = (xs: { byte: number }[]) => xs.map((x) => x.byte);

Deno.test("PS/2 keyboard: host keys are set 1 while translating, set 2 with F0 breaks without", () => {
  const k = makeKbc();
  k.kbc.ps2Key(0x1e, 0x1c, true); // a
  k.kbc.ps2Key(0x1e, 0x1c, false);
  k.kbc.ps2Key(0xe053, 0xe071, true); // delete
  k.kbc.ps2Key(0xe053, 0xe071, false);
  deepStrictEqual(bytes(drain(k)), [0x1e, 0x9e, 0xe0, 0x53, 0xe0, 0xd3]);
  k.i8042Command(0x60, [0x07], 0); // translation off
  k.kbc.ps2Key(0x1e, 0x1c, true);
  k.kbc.ps2Key(0x1e, 0x1c, false);
  k.kbc.ps2Key(0xe053, 0xe071, false);
  deepStrictEqual(bytes(drain(k)), [0x1c, 0xf0, 0x1c, 0xe0, 0xf0, 0x71]);
});

Deno.test("PS/2 keyboard: LEDs, typematic, scan set query, disable drops keys, reset", () => {
  const k = makeKbc();
  k.writeData(0xed);
  k.writeData(0x04); // caps lock
  k.writeData(0xf3);
  k.writeData(0x20);
  deepStrictEqual(bytes(drain(k)), [0xfa, 0xfa, 0xfa, 0xfa]);
  strictEqual(k.kbc.keyboard.leds, 4);
  strictEqual(k.kbc.keyboard.typematic, 0x20);
  k.writeData(0xf0);
  k.writeData(0x00);
  deepStrictEqual(bytes(drain(k)), [0xfa, 0xfa, 0x41], "set 2, translated");
  k.writeData(0xf5);
  drain(k);
  strictEqual(k.kbc.ps2Key(0x1e, 0x1c, true), false);
  deepStrictEqual(drain(k), []);
  k.writeData(0xff);
  deepStrictEqual(bytes(drain(k)), [0xfa, 0xaa]);
  strictEqual(k.kbc.keyboard.leds, 0);
  strictEqual(k.kbc.ps2Key(0x1e, 0x1c, true), true, "reset enables scanning");
});

Deno.test("PS/2 keyboard: bytes wait while the port is disabled in the command byte", () => {
  const k = makeKbc();
  k.i8042Command(0xad, [], 0); // keyboard port off
  k.kbc.ps2Key(0x1e, 0x1c, true);
  deepStrictEqual(drain(k), []);
  k.i8042Command(0xae, [], 0);
  deepStrictEqual(bytes(drain(k)), [0x1e]);
});

Deno.test("PS/2 mouse: reset, reporting, 3-byte packets, IntelliMouse knock gives wheel bytes", () => {
  const k = makeKbc();
  const mouse = (b: number) => k.i8042Command(0xd4, [b], 0);
  strictEqual(k.kbc.ps2Mouse(1, 1, 0, 0), false, "reporting off after power-on");
  mouse(0xff);
  deepStrictEqual(drain(k), [
    { byte: 0xfa, aux: true },
    { byte: 0xaa, aux: true },
    { byte: 0x00, aux: true },
  ]);
  mouse(0xf4);
  drain(k);
  strictEqual(k.kbc.ps2Mouse(5, 3, 0, 1), true);
  deepStrictEqual(bytes(drain(k)), [0x08 | 0x01 | 0x20, 5, 0xfd], "y up is positive");
  k.kbc.ps2Mouse(-300, 0, 0, 0);
  deepStrictEqual(bytes(drain(k)), [0x18, 0x01, 0, 0x18, 0xd3, 0], "split at 255");
  for (const r of [200, 100, 80]) {
    mouse(0xf3);
    mouse(r);
  }
  mouse(0xf2);
  deepStrictEqual(bytes(drain(k)).slice(-2), [0xfa, 0x03]);
  k.kbc.ps2Mouse(0, 0, 1, 0);
  deepStrictEqual(bytes(drain(k)), [0x08, 0, 0, 0xff], "wheel up is -1 in the IntelliMouse byte");
  mouse(0xe9);
  deepStrictEqual(bytes(drain(k)), [0xfa, 0x20, 2, 80]);
});

Deno.test("PS/2: waiting keyboard bytes go first; hostile byte streams never throw", () => {
  const k = makeKbc();
  k.i8042Command(0xd4, [0xf4], 0);
  drain(k);
  k.kbc.ps2Mouse(1, 0, 0, 0); // its first byte takes the empty output buffer
  k.kbc.ps2Key(0x1e, 0x1c, true);
  deepStrictEqual(drain(k), [
    { byte: 0x08, aux: true },
    { byte: 0x1e, aux: false },
    { byte: 0x01, aux: true },
    { byte: 0x00, aux: true },
  ]);
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8;
  for (let i = 0; i < 20000; i++) {
    const v = rnd() & 0xff;
    switch (rnd() % 5) {
      case 0:
        k.command(v);
        break;
      case 1:
        k.writeData(v);
        break;
      case 2:
        k.readData();
        break;
      case 3:
        k.kbc.ps2Key(0x1e, 0x1c, (v & 1) === 0);
        break;
      default:
        k.kbc.ps2Mouse((v % 600) - 300, v - 128, v % 3, v);
    }
  }
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
