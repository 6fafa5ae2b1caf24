import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { Bus } from "../../../src/machine/bus.ts";
import type { PowerControl } from "../../../src/machine/power.ts";
import { PCI_HOST_PORT_COUNT, PciHost } from "../../../src/machine/devices/pci_host.ts";
import { PciFunction } from "../../../src/machine/pci/function.ts";
import { I440FX_SPEC } from "../../../src/machine/pci/piix.ts";
import { DeviceRegistry } from "../../../src/machine/registry.ts";

const HOST_BRIDGE_VENDOR_ID = 0x8086;
const HOST_BRIDGE_DEVICE_ID = 0x1237;
import { ResetPort } from "../../../src/machine/devices/reset_port.ts";
import { DebugPort } from "../../../src/machine/devices/debug_port.ts";

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

/** The PC wiring: the window at 0xCF8 on a port bus, 0xCF9 forwarded to the reset register. */
function makeMachine(
  state = { host: PciHost.createState(), bridge: PciFunction.createState(I440FX_SPEC) },
) {
  const power = new FakePower();
  const reset = new ResetPort(ResetPort.createState(), { power });
  const bus = new Bus("pio");
  const bridge = new PciFunction(state.bridge, I440FX_SPEC, { registry: DeviceRegistry.create() });
  bus.insert(
    0xcf8,
    PCI_HOST_PORT_COUNT,
    new PciHost(state.host, { resetControl: reset, functions: new Map([[0, bridge]]) }),
    "pci-cfg",
  );
  const io = (port: number, size: number, value?: number): number => {
    const b = new Uint8Array(size);
    if (value !== undefined) {
      for (let i = 0; i < size; i++) b[i] = (value >>> (8 * i)) & 0xff;
      bus.write(port, b);
      return 0;
    }
    bus.read(port, b);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  };
  const cfgRead = (bdf: number, reg: number, size: number) => {
    io(0xcf8, 4, (0x8000_0000 | (bdf << 8) | (reg & 0xfc)) >>> 0);
    return io(0xcfc + (reg & 3), size);
  };
  const cfgWrite = (bdf: number, reg: number, size: number, value: number) => {
    io(0xcf8, 4, (0x8000_0000 | (bdf << 8) | (reg & 0xfc)) >>> 0);
    io(0xcfc + (reg & 3), size, value);
  };
  return { bus, io, cfgRead, cfgWrite, power, state };
}

const bdf = (bus: number, dev: number, fn: number) => (bus << 8) | (dev << 3) | fn;

Deno.test("pci-host: host bridge IDs through CF8/CFC", () => {
  const { cfgRead } = makeMachine();
  strictEqual(cfgRead(0, 0x00, 4), (HOST_BRIDGE_DEVICE_ID << 16) | HOST_BRIDGE_VENDOR_ID);
  strictEqual(cfgRead(0, 0x00, 2), 0x8086);
  strictEqual(cfgRead(0, 0x02, 2), 0x1237); // word at CFE
  strictEqual(cfgRead(0, 0x01, 1), 0x80); // byte at CFD
  strictEqual(cfgRead(0, 0x03, 1), 0x12); // byte at CFF
  strictEqual(cfgRead(0, 0x08, 4) >>> 8, 0x060000); // class: host bridge
  strictEqual(cfgRead(0, 0x0a, 2), 0x0600); // what Linux's pci_sanity_check reads
  strictEqual(cfgRead(0, 0x0e, 1), 0x00); // header type 0
  strictEqual(cfgRead(0, 0x10, 4), 0); // no BARs
  strictEqual(cfgRead(0, 0x2c, 4), 0x1100_1af4); // subsystem, as SeaBIOS expects
  strictEqual(cfgRead(0, 0xfc, 4), 0);
});

Deno.test("pci-host: every other function reads all-ones", () => {
  const { cfgRead, io } = makeMachine();
  for (const f of [bdf(0, 0, 1), bdf(0, 1, 0), bdf(0, 31, 7), bdf(1, 0, 0), bdf(255, 31, 7)]) {
    strictEqual(cfgRead(f, 0, 4), 0xffff_ffff, `bdf ${f.toString(16)}`);
    strictEqual(cfgRead(f, 2, 2), 0xffff);
  }
  // Enable bit clear: no config cycle.
  io(0xcf8, 4, 0x0000_0000);
  strictEqual(io(0xcfc, 4), 0xffff_ffff);
  // Reserved (AMD extended register) bits set: not our config space.
  io(0xcf8, 4, 0x8100_0000);
  strictEqual(io(0xcfc, 4), 0xffff_ffff);
});

Deno.test("pci-host: CONFIG_ADDRESS is dword-only and reads back (Linux type 1 probe)", () => {
  const { io } = makeMachine();
  io(0xcfb, 1, 0x01); // pci_check_type1's outb(0x01, 0xCFB): not CONFIG_ADDRESS
  const saved = io(0xcf8, 4);
  io(0xcf8, 4, 0x8000_0000);
  strictEqual(io(0xcf8, 4), 0x8000_0000);
  io(0xcf8, 4, saved);
  io(0xcf8, 4, 0x8000_0803);
  strictEqual(io(0xcf8, 4), 0x8000_0800); // bits 1:0 read 0
  // Type 2 probe: byte writes of 0 to CF8/CFA, reads must not come back 0.
  io(0xcf8, 1, 0);
  io(0xcfa, 1, 0);
  strictEqual(io(0xcf8, 1), 0xff);
  strictEqual(io(0xcfa, 1), 0xff);
  strictEqual(io(0xcf8, 2), 0xffff);
});

Deno.test("pci-host: only defined registers are writable", () => {
  const { cfgRead, cfgWrite } = makeMachine();
  cfgWrite(0, 0x00, 4, 0x1234_5678);
  strictEqual(cfgRead(0, 0x00, 4), 0x1237_8086);
  cfgWrite(0, 0x04, 2, 0xffff);
  strictEqual(cfgRead(0, 0x04, 2), 0x0407);
  cfgWrite(0, 0x04, 2, 0x0000);
  strictEqual(cfgRead(0, 0x04, 2), 0x0000);
  cfgWrite(0, 0x3c, 1, 0x0b);
  strictEqual(cfgRead(0, 0x3c, 1), 0x0b);
  cfgWrite(0, 0x10, 4, 0xffff_ffff); // BAR sizing: nothing there
  strictEqual(cfgRead(0, 0x10, 4), 0);
  cfgWrite(bdf(0, 3, 0), 0x3c, 1, 0x0b); // absent: dropped
  strictEqual(cfgRead(bdf(0, 3, 0), 0x3c, 1), 0xff);
});

Deno.test("pci-host: byte at 0xCF9 reaches the reset register", () => {
  const { io, power } = makeMachine();
  io(0xcf9, 1, 0x02);
  strictEqual(io(0xcf9, 1), 0x02);
  strictEqual(power.resets, 0);
  io(0xcf9, 1, 0x06);
  strictEqual(power.resets, 1);
  // A dword at CF8 still is CONFIG_ADDRESS.
  io(0xcf8, 4, 0x8000_0000);
  strictEqual(io(0xcf8, 4), 0x8000_0000);
  strictEqual(power.resets, 1);
});

Deno.test("pci-host: address latch and config space are shared across instances", () => {
  const a = makeMachine();
  const b = makeMachine(a.state);
  a.io(0xcf8, 4, 0x8000_003c);
  a.io(0xcfc, 1, 0x05);
  strictEqual(b.io(0xcf8, 4), 0x8000_003c);
  strictEqual(b.io(0xcfc, 1), 0x05);
});

Deno.test("debug port: writes vanish, reads float", () => {
  const bus = new Bus("pio");
  bus.insert(0x80, 1, new DebugPort(), "post");
  ok(bus.write(0x80, Uint8Array.of(0x12)));
  const b = new Uint8Array(1);
  ok(bus.read(0x80, b));
  deepStrictEqual([...b], [0xff]);
});
