import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import type { IrqLine } from "../../../src/machine/irq.ts";
import {
  Serial,
  SERIAL_RX_CAPACITY,
  UART_IER,
  UART_IIR_FCR,
  UART_LCR,
  UART_LSR,
  UART_MCR,
  UART_MSR,
  UART_RBR_THR,
  UART_SCR,
} from "../../../src/machine/devices/serial.ts";

class FakeIrq implements IrqLine {
  levels: boolean[] = [];
  get level(): boolean {
    return this.levels.at(-1) ?? false;
  }
  set(level: boolean): void {
    this.levels.push(level);
  }
}

function makeUart(state = Serial.createState()) {
  const irq = new FakeIrq();
  const out: number[] = [];
  let spaceCalls = 0;
  const uart = new Serial(state, {
    irq,
    output: (b) => out.push(...b),
    onRxSpace: () => spaceCalls++,
  });
  const buf = new Uint8Array(1);
  const inb = (reg: number) => {
    uart.read(reg, buf);
    return buf[0]!;
  };
  const outb = (reg: number, value: number) => {
    buf[0] = value;
    uart.write(reg, buf);
  };
  return { uart, irq, out, inb, outb, state, spaces: () => spaceCalls };
}

type Port = ReturnType<typeof makeUart>;

/**
 * Linux 8250 `autoconfig()` + `autoconfig_16550a()` + `size_fifo()` register sequence
 * (drivers/tty/serial/8250/8250_port.c), reduced to what decides the detected type.
 */
function linuxAutoconfig({ inb, outb }: Port): string {
  // IER existence probe.
  const scratch = inb(UART_IER);
  outb(UART_IER, 0);
  const scratch2 = inb(UART_IER) & 0x0f;
  outb(UART_IER, 0x0f);
  const scratch3 = inb(UART_IER) & 0x0f;
  outb(UART_IER, scratch);
  if (scratch2 !== 0 || scratch3 !== 0x0f) return "none (IER test)";
  const saveMcr = inb(UART_MCR);
  const saveLcr = inb(UART_LCR);
  // Loopback test.
  outb(UART_MCR, 0x10 | 0x0a);
  const status1 = inb(UART_MSR) & 0xf0;
  outb(UART_MCR, saveMcr);
  if (status1 !== 0x90) return `none (LOOP test ${status1.toString(16)})`;
  // EFR clear, FIFO enable, IIR top bits.
  outb(UART_LCR, 0xbf);
  outb(2, 0);
  outb(UART_LCR, 0);
  outb(UART_IIR_FCR, 0x01);
  const kind = inb(UART_IIR_FCR) >> 6;
  let type = ["8250", "unknown", "16550", "16550A"][kind]!;
  if (kind === 3) {
    outb(UART_LCR, 0x80);
    if (inb(2) === 0) type = "16650 (EFR with DLAB)";
    outb(UART_LCR, 0xbf);
    if (type === "16550A" && inb(2) === 0) type = "16650V2 (EFR)";
    // NatSemi check.
    outb(UART_LCR, 0);
    let s1 = inb(UART_MCR);
    outb(UART_LCR, 0xe0);
    let s2 = inb(2);
    if (type === "16550A" && !((s2 ^ s1) & 0x10)) {
      outb(UART_LCR, 0);
      outb(UART_MCR, s1 ^ 0x10);
      outb(UART_LCR, 0xe0);
      s2 = inb(2);
      outb(UART_LCR, 0);
      outb(UART_MCR, s1);
      if ((s2 ^ s1) & 0x10) type = "NS16550A";
    }
    // TI16750.
    outb(UART_LCR, 0);
    outb(UART_IIR_FCR, 0x01 | 0x20);
    s1 = inb(UART_IIR_FCR) >> 5;
    outb(UART_IIR_FCR, 0x01);
    outb(UART_LCR, 0x80);
    outb(UART_IIR_FCR, 0x01 | 0x20);
    s2 = inb(UART_IIR_FCR) >> 5;
    outb(UART_IIR_FCR, 0x01);
    outb(UART_LCR, 0);
    if (type === "16550A" && s1 === 6 && s2 === 7) type = "16750";
    // XScale UUE bit.
    const iersave = inb(UART_IER);
    outb(UART_IER, iersave & ~0x40);
    if (!(inb(UART_IER) & 0x40)) {
      outb(UART_IER, iersave | 0x40);
      if (type === "16550A" && inb(UART_IER) & 0x40) type = "XScale";
    }
    outb(UART_IER, iersave);
    if (type === "16550A" && sizeFifo({ inb, outb } as Port) === 64) type = "U6_16550A";
  }
  outb(UART_LCR, saveLcr);
  outb(UART_MCR, saveMcr);
  outb(UART_IIR_FCR, 0x01 | 0x02 | 0x04); // serial8250_clear_fifos
  outb(UART_IIR_FCR, 0);
  inb(UART_RBR_THR);
  outb(UART_IER, 0);
  return type;
}

function sizeFifo({ inb, outb }: Port): number {
  const oldLcr = inb(UART_LCR);
  outb(UART_LCR, 0);
  const oldFcr = inb(UART_IIR_FCR);
  const oldMcr = inb(UART_MCR);
  outb(UART_IIR_FCR, 0x07);
  outb(UART_MCR, 0x10);
  outb(UART_LCR, 0x80);
  const oldDl = inb(0) | (inb(1) << 8);
  outb(0, 1);
  outb(1, 0);
  outb(UART_LCR, 0x03);
  for (let i = 0; i < 256; i++) outb(UART_RBR_THR, i);
  let count = 0;
  while (inb(UART_LSR) & 0x01 && count < 256) {
    inb(UART_RBR_THR);
    count++;
  }
  outb(UART_IIR_FCR, oldFcr);
  outb(UART_MCR, oldMcr);
  outb(UART_LCR, 0x80);
  outb(0, oldDl & 0xff);
  outb(1, oldDl >> 8);
  outb(UART_LCR, oldLcr);
  return count;
}

Deno.test("serial: power-on registers", () => {
  const { inb, irq } = makeUart();
  strictEqual(inb(UART_IER), 0);
  strictEqual(inb(UART_IIR_FCR), 0x01); // no interrupt, FIFOs off
  strictEqual(inb(UART_LCR), 0x03);
  strictEqual(inb(UART_MCR), 0x08);
  strictEqual(inb(UART_LSR), 0x60); // THRE | TEMT
  strictEqual(inb(UART_MSR), 0xb0); // DCD | DSR | CTS
  strictEqual(inb(8), 0xff); // past the UART
  deepStrictEqual(irq.levels, []);
});

Deno.test("serial: Linux 8250 autoconfig detects a 16550A", () => {
  const port = makeUart();
  strictEqual(linuxAutoconfig(port), "16550A");
  // Probing leaves nothing pending, no stray output, the IRQ low.
  deepStrictEqual(port.out, []);
  strictEqual(port.irq.level, false);
  strictEqual(port.inb(UART_LSR) & 0x01, 0);
  strictEqual(sizeFifo(port), 16);
});

Deno.test("serial: scratch register and IER keeps only bits 3:0", () => {
  const { inb, outb } = makeUart();
  outb(UART_SCR, 0xa5);
  strictEqual(inb(UART_SCR), 0xa5);
  outb(UART_SCR, 0x5a);
  strictEqual(inb(UART_SCR), 0x5a);
  outb(UART_IER, 0xff);
  strictEqual(inb(UART_IER), 0x0f);
});

Deno.test("serial: THRE interrupt on IER write, acked by IIR read, re-armed by THR write", () => {
  const { inb, outb, irq, out } = makeUart();
  outb(UART_IIR_FCR, 0x01);
  outb(UART_IER, 0x02);
  strictEqual(irq.level, true);
  strictEqual(inb(UART_IIR_FCR), 0xc2);
  strictEqual(irq.level, false);
  strictEqual(inb(UART_IIR_FCR), 0xc1);
  // 8250 startup's THRE re-assert test: IER 0 then THRI again raises it again.
  outb(UART_IER, 0);
  outb(UART_IER, 0x02);
  strictEqual(inb(UART_IIR_FCR), 0xc2);
  // Writing THR transmits and leaves THR empty: THRE pending again.
  outb(UART_RBR_THR, 0x41);
  deepStrictEqual(out, [0x41]);
  strictEqual(irq.level, true);
  strictEqual(inb(UART_LSR) & 0x60, 0x60);
  // Disabling ETBEI drops it.
  outb(UART_IER, 0);
  strictEqual(irq.level, false);
  deepStrictEqual(irq.levels, [true, false, true, false, true, false]);
});

Deno.test("serial: RX ring wraps, drives the IRQ level and reports space", () => {
  const { uart, inb, outb, irq, spaces } = makeUart();
  outb(UART_IER, 0x01);
  strictEqual(irq.level, false);
  const chunk = Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff);
  strictEqual(uart.pushInput(chunk), 1000);
  strictEqual(irq.level, true);
  strictEqual(inb(UART_IIR_FCR), 0x04);
  strictEqual(inb(UART_LSR), 0x61);
  for (let i = 0; i < 1000; i++) strictEqual(inb(UART_RBR_THR), i & 0xff);
  strictEqual(irq.level, false);
  strictEqual(inb(UART_LSR), 0x60);
  strictEqual(inb(UART_RBR_THR), 999 & 0xff); // empty RBR repeats the last byte

  // Now the ring starts near its end: fill it completely across the wrap, then overfill.
  const big = Uint8Array.from({ length: SERIAL_RX_CAPACITY + 10 }, (_, i) => (i * 7) & 0xff);
  strictEqual(uart.pushInput(big), SERIAL_RX_CAPACITY);
  strictEqual(uart.rxSpace(), 0);
  strictEqual(uart.pushInput(Uint8Array.of(1)), 0);
  strictEqual(spaces(), 0);
  for (let i = 0; i < SERIAL_RX_CAPACITY; i++) {
    strictEqual(inb(UART_RBR_THR), (i * 7) & 0xff, `byte ${i}`);
    if (i + 1 < SERIAL_RX_CAPACITY / 2) strictEqual(spaces(), 0);
  }
  strictEqual(spaces(), 1); // once, when the ring fell to half
  strictEqual(irq.level, false);
  deepStrictEqual(irq.levels, [true, false, true, false]);
});

Deno.test("serial: received data interrupt outranks THRE", () => {
  const { uart, inb, outb } = makeUart();
  outb(UART_IIR_FCR, 0x01);
  outb(UART_IER, 0x03);
  uart.pushInput(Uint8Array.of(0x31));
  strictEqual(inb(UART_IIR_FCR), 0xc4);
  strictEqual(inb(UART_IIR_FCR), 0xc4); // RX does not clear on IIR read
  strictEqual(inb(UART_RBR_THR), 0x31);
  strictEqual(inb(UART_IIR_FCR), 0xc2);
  strictEqual(inb(UART_IIR_FCR), 0xc1);
});

Deno.test("serial: DLAB switches offsets 0/1 to the divisor latch", () => {
  const { uart, inb, outb, out } = makeUart();
  outb(UART_IER, 0x05);
  outb(UART_LCR, 0x83);
  strictEqual(inb(0), 0x0c); // default divisor: 9600 baud
  strictEqual(inb(1), 0x00);
  outb(0, 0x01); // 115200 baud
  outb(1, 0x00);
  uart.pushInput(Uint8Array.of(0x99));
  strictEqual(inb(0), 0x01); // DLL, not RBR
  strictEqual(inb(1), 0x00); // DLM, not IER
  deepStrictEqual(out, []); // the DLL write did not transmit
  outb(UART_LCR, 0x03);
  strictEqual(inb(UART_IER), 0x05);
  strictEqual(inb(UART_RBR_THR), 0x99);
  outb(UART_LCR, 0x80);
  strictEqual(inb(0), 0x01);
});

Deno.test("serial: loopback routes THR to RBR and MCR to MSR", () => {
  const { inb, outb, out, irq } = makeUart();
  outb(UART_IER, 0x01);
  outb(UART_MCR, 0x10);
  strictEqual(inb(UART_MSR), 0x0b); // loopback, MCR outputs off: CTS, DSR, DCD all dropped
  outb(UART_RBR_THR, 0x55);
  deepStrictEqual(out, []);
  strictEqual(irq.level, true);
  strictEqual(inb(UART_LSR) & 0x01, 0x01);
  strictEqual(inb(UART_RBR_THR), 0x55);
  // FIFO off: a 1-byte holding register; a second byte overruns.
  outb(UART_RBR_THR, 1);
  outb(UART_RBR_THR, 2);
  strictEqual(inb(UART_LSR) & 0x03, 0x03); // DR | OE
  strictEqual(inb(UART_LSR) & 0x02, 0); // OE clears on read
  strictEqual(inb(UART_RBR_THR), 1);
  outb(UART_MCR, 0x10 | 0x0f);
  strictEqual(inb(UART_MSR), 0xf0 | 0x0b); // all lines up; deltas CTS, DSR, DCD
  outb(UART_MCR, 0x10 | 0x0b);
  strictEqual(inb(UART_MSR), 0xb0 | 0x04); // RI trailing edge
  outb(UART_MCR, 0x08);
  strictEqual(inb(UART_MSR) & 0xf0, 0xb0);
  outb(UART_RBR_THR, 0x42);
  deepStrictEqual(out, [0x42]);
});

Deno.test("serial: modem status interrupt from loopback line changes", () => {
  const { inb, outb, irq } = makeUart();
  outb(UART_MCR, 0x10);
  inb(UART_MSR);
  outb(UART_IER, 0x08);
  strictEqual(irq.level, false);
  outb(UART_MCR, 0x12); // RTS → CTS
  strictEqual(irq.level, true);
  strictEqual(inb(UART_IIR_FCR), 0x00);
  strictEqual(inb(UART_MSR), 0x11);
  strictEqual(irq.level, false);
});

Deno.test("serial: FCR enables FIFOs and clears the receiver", () => {
  const { uart, inb, outb, spaces } = makeUart();
  outb(UART_IIR_FCR, 0xc1);
  strictEqual(inb(UART_IIR_FCR), 0xc1);
  strictEqual(uart.pushInput(new Uint8Array(SERIAL_RX_CAPACITY + 1)), SERIAL_RX_CAPACITY);
  outb(UART_IIR_FCR, 0xc3);
  strictEqual(inb(UART_LSR) & 0x01, 0);
  strictEqual(uart.rxSpace(), SERIAL_RX_CAPACITY);
  strictEqual(spaces(), 1);
  outb(UART_IIR_FCR, 0x00);
  strictEqual(inb(UART_IIR_FCR), 0x01);
  outb(UART_IIR_FCR, 0x21); // the 64-byte bit does not stick on a 16550A
  strictEqual(inb(UART_IIR_FCR) & 0x20, 0);
});

Deno.test("serial: two instances over one SAB share every register and the IRQ level", () => {
  const main = makeUart();
  const vcpu = makeUart(main.state);
  vcpu.outb(UART_IER, 0x01);
  vcpu.outb(UART_SCR, 0x77);
  vcpu.outb(UART_LCR, 0x80);
  vcpu.outb(0, 0x03);
  vcpu.outb(UART_LCR, 0x03);
  strictEqual(main.inb(UART_SCR), 0x77);
  strictEqual(main.inb(UART_IER), 0x01);
  main.outb(UART_LCR, 0x80);
  strictEqual(main.inb(0), 0x03);
  main.outb(UART_LCR, 0x03);
  // Main thread pushes: its line rises. The vCPU drains: its line falls.
  main.uart.pushInput(new TextEncoder().encode("hi"));
  strictEqual(main.irq.level, true);
  strictEqual(vcpu.inb(UART_RBR_THR), 0x68);
  strictEqual(vcpu.inb(UART_RBR_THR), 0x69);
  deepStrictEqual(vcpu.irq.levels, [false]);
  // Level already low: the main instance does not drive it again.
  main.inb(UART_LSR);
  deepStrictEqual(main.irq.levels, [true]);
  vcpu.outb(UART_RBR_THR, 0x21);
  deepStrictEqual(vcpu.out, [0x21]);
  deepStrictEqual(main.out, []);
});

Deno.test("serial: a worker draining RBR while the main thread pushes loses nothing", async () => {
  const state = Serial.createState();
  const uart = new Serial(state, { irq: { set() {} }, output() {} });
  const total = 50_000;
  const serialUrl = new URL("../../../src/machine/devices/serial.ts", import.meta.url).href;
  const src = `
    import { Serial } from ${JSON.stringify(serialUrl)};
    self.onmessage = (e) => {
      const { state, total } = e.data;
      const uart = new Serial(state, { irq: { set() {} }, output() {} });
      const b = new Uint8Array(1);
      let got = 0, bad = -1;
      while (got < total) {
        uart.read(5, b);
        if (!(b[0] & 1)) continue;
        uart.read(0, b);
        if (b[0] !== (got * 31 & 0xff) && bad < 0) bad = got;
        got++;
      }
      self.postMessage({ got, bad });
    };`;
  const url = `data:application/javascript;base64,${btoa(src)}`;
  const worker = new Worker(url, { type: "module" });
  const done = new Promise<{ got: number; bad: number }>((resolve, reject) => {
    worker.onmessage = (e) => resolve(e.data);
    worker.onerror = (e) => reject(e);
  });
  worker.postMessage({ state, total });
  const bytes = Uint8Array.from({ length: total }, (_, i) => (i * 31) & 0xff);
  let sent = 0;
  while (sent < total) {
    const n = uart.pushInput(bytes.subarray(sent, Math.min(total, sent + 700)));
    sent += n;
    if (n === 0) await new Promise((r) => setTimeout(r, 0));
  }
  const result = await done;
  worker.terminate();
  deepStrictEqual(result, { got: total, bad: -1 });
  ok(uart.rxSpace() === SERIAL_RX_CAPACITY);
});
