/**
 * Fuzz target (`tests/fuzz/mod.ts`) for the board as the vCPU threads see it: `attachPcDevices`
 * over fresh shared state (COM1, CMOS/RTC, i8042, POST, the PIIX4 PM block and timer, PCI
 * configuration mechanism #1 with the reset control and the i440FX/PIIX functions behind it),
 * driven through the registry's dispatcher with random port and MMIO accesses of 1, 2, 4 and 8
 * bytes on the devices, their neighbours and anywhere else, and config cycles to every function,
 * register and lane (BAR sizing patterns included). Invariants: no exception escapes the
 * dispatcher or a device; an unclaimed read floats (all-ones); every hit has an owner in the
 * registry; COM1 output never exceeds what was written to its data port; interrupt lines only
 * take booleans; the host bridge still answers at the end.
 * @module
 */
import {
  attachPcDevices,
  createPcDeviceState,
  type PcDevices,
} from "../../../src/vmm/pc_devices.ts";
import { prng } from "../../unit/prng.ts";
import type { FuzzTarget } from "../target.ts";

/** Port ranges of the devices, widened by a few ports either side. */
const RANGES: [number, number][] = [
  [0x3f8 - 4, 0x3ff + 4],
  [0x70 - 2, 0x71 + 2],
  [0x60 - 2, 0x64 + 2],
  [0x80 - 1, 0x80 + 1],
  [0x600 - 4, 0x600 + 16],
  [0xcf8 - 4, 0xcff + 4],
];
const VALUES = [0, 1, 2, 0x80, 0xaa, 0xad, 0xae, 0xd1, 0xd4, 0xf0, 0xfe, 0xff, 0x80000000];

function fuzzPorts(seed: number, inputs: number): number {
  const rng = prng(seed);
  let serialBytes = 0;
  let comWrites = 0;
  const power = {
    resets: 0,
    powerOffs: 0,
    reset() {
      this.resets++;
    },
    powerOff() {
      this.powerOffs++;
    },
  };
  const irq = (gsi: number) => ({
    set(level: boolean) {
      if (typeof level !== "boolean") throw new Error(`GSI ${gsi} set to ${level}`);
    },
  });
  const build = (): PcDevices =>
    attachPcDevices(
      createPcDeviceState({
        ramBelow4G: rng.pick([512 << 20, 3 << 30]),
        ramAbove4G: rng.pick([0, 1 << 30]),
        rtcOffsetMs: rng.int(2) ? 0 : -3600_000,
      }),
      { irq, power, serialOutput: (b) => serialBytes += b.length, nowNs: () => BigInt(i) * 997n },
    );
  let i = 0;
  let devices = build();
  const buffers = [new Uint8Array(1), new Uint8Array(2), new Uint8Array(4), new Uint8Array(8)];
  const pio = (port: number, data: Uint8Array, write: boolean) =>
    devices.dispatch.access("pio", port, write, data);
  const config = new Uint8Array(4);
  const cfgAddress = (devfn: number, reg: number) => {
    const a = (0x8000_0000 | (devfn << 8) | (reg & 0xfc)) >>> 0;
    for (let k = 0; k < 4; k++) config[k] = (a >>> (8 * k)) & 0xff;
    pio(0xcf8, config, true);
  };
  for (; i < inputs; i++) {
    if (rng.chance(0.0005)) devices = build();
    if (rng.chance(0.2)) {
      // A config cycle: any function, register and lane; all-ones (BAR sizing) often.
      cfgAddress(rng.pick([0x00, 0x08, 0x0b, 0x10, rng.int(256)]), rng.int(256));
      const data = rng.pick(buffers.slice(0, 3));
      const v = rng.chance(0.3) ? 0xffff_ffff : rng.int(0x1_0000_0000);
      for (let k = 0; k < data.length; k++) data[k] = (v >>> (8 * k)) & 0xff;
      pio(0xcfc + rng.int(4), data, rng.chance(0.5));
      continue;
    }
    const space = rng.chance(0.85) ? "pio" : "mmio";
    const [lo, hi] = rng.pick(RANGES);
    const addr = space === "mmio"
      ? rng.pick([0xc000_0000, 0xfec0_0000, 0xfee0_0000, 0xfed0_0000]) + rng.int(0x2000)
      : rng.chance(0.95)
      ? lo + rng.int(hi - lo + 1)
      : rng.int(0x10000);
    const data = rng.pick(buffers);
    const write = rng.chance(0.5);
    if (write) {
      const v = rng.chance(0.5) ? rng.pick(VALUES) : rng.int(0x1_0000_0000);
      for (let k = 0; k < data.length; k++) data[k] = (v >>> (8 * (k & 3))) & 0xff;
      if (space === "pio" && addr === 0x3f8) comWrites += data.length;
    } else {
      data.fill(0x5a);
    }
    const hit = devices.dispatch.access(space, addr, write, data);
    if (typeof hit !== "boolean") throw new Error(`input ${i}: access returned ${hit}`);
    if (hit && devices.registry.find(space, addr) === undefined) {
      throw new Error(`input ${i}: ${space} 0x${addr.toString(16)} dispatched without an owner`);
    }
    if (!hit && !write && !data.every((b) => b === 0xff)) {
      throw new Error(
        `input ${i}: unclaimed ${space} read at 0x${addr.toString(16)} did not float`,
      );
    }
  }
  cfgAddress(0x00, 0);
  pio(0xcfc, config, false);
  const id = (config[0]! | (config[1]! << 8) | (config[2]! << 16) | (config[3]! << 24)) >>> 0;
  if (id !== 0x1237_8086) throw new Error(`the host bridge answers 0x${id.toString(16)}`);
  if (serialBytes > comWrites) {
    throw new Error(`COM1 put out ${serialBytes} bytes for ${comWrites} written to its data port`);
  }
  return inputs;
}

/** The board through the registry's dispatcher: ports, MMIO and PCI config space. */
export const PC_PORTS: FuzzTarget = {
  name: "pc-ports",
  what: "the board: legacy ports, PIIX4 PM and timer, MMIO, PCI config of i440FX/PIIX",
  unitInputs: 50_000,
  batch: 100_000,
  run: fuzzPorts,
};
