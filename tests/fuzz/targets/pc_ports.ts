/**
 * Fuzz target (`tests/fuzz/mod.ts`) for the legacy port devices as the vCPU threads see them:
 * `attachPcDevices` over fresh shared state (COM1, CMOS/RTC, i8042, POST, ACPI PM, PCI
 * configuration mechanism #1 with the reset control), driven with random `in`/`out` of 1, 2 and
 * 4 bytes on their ports, their neighbours and anywhere else. Invariants: no exception escapes
 * the bus or a device, reads answer true or false, COM1 output never exceeds what was written
 * to its data port, interrupt lines only take booleans.
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
      { irq, power, serialOutput: (b) => serialBytes += b.length },
    );
  let devices = build();
  const buffers = [new Uint8Array(1), new Uint8Array(2), new Uint8Array(4)];
  for (let i = 0; i < inputs; i++) {
    if (rng.chance(0.0005)) devices = build();
    const [lo, hi] = rng.pick(RANGES);
    const port = rng.chance(0.95) ? lo + rng.int(hi - lo + 1) : rng.int(0x10000);
    const data = rng.pick(buffers);
    const write = rng.chance(0.5);
    if (write) {
      const v = rng.chance(0.5) ? rng.pick(VALUES) : rng.int(0x1_0000_0000);
      for (let k = 0; k < data.length; k++) data[k] = (v >>> (8 * k)) & 0xff;
      if (port === 0x3f8) comWrites += data.length;
      devices.pio.write(port, data);
    } else {
      data.fill(0x5a);
      const hit = devices.pio.read(port, data);
      if (!hit) data.fill(0xff); // what the vCPU loop does for an unclaimed port
      if (typeof hit !== "boolean") throw new Error(`input ${i}: read returned ${hit}`);
    }
  }
  if (serialBytes > comWrites) {
    throw new Error(`COM1 put out ${serialBytes} bytes for ${comWrites} written to its data port`);
  }
  return inputs;
}

/** Legacy port devices through the PIO bus. */
export const PC_PORTS: FuzzTarget = {
  name: "pc-ports",
  what: "legacy port devices (COM1, CMOS/RTC, i8042, POST, ACPI PM, PCI config + reset)",
  unitInputs: 50_000,
  batch: 100_000,
  run: fuzzPorts,
};
