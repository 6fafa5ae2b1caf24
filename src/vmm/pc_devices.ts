/**
 * The PC's legacy devices and where they sit: the one place that knows ports and GSIs. Shared
 * state is created once on the main thread (`createPcDeviceState`); every thread that handles
 * exits builds its own device objects over it (`attachPcDevices`).
 * @module
 */
import { Bus } from "../machine/bus.ts";
import type { IrqLine } from "../machine/irq.ts";
import { COM1_IRQ, COM1_PORT, COM_PORT_LEN } from "../machine/layout.ts";
import type { PowerControl } from "../machine/power.ts";
import { Serial } from "../machine/devices/serial.ts";

/** Shared state of every legacy device (structured-cloneable: SharedArrayBuffers only). */
export interface PcDeviceState {
  com1: SharedArrayBuffer;
}

/** Options fixed at VM creation. */
export interface PcDeviceOptions {
  ramBytes: number;
  lowRamEnd: number;
  ramEnd: number;
}

/** Creates the shared state of all legacy devices. */
export function createPcDeviceState(_options: PcDeviceOptions): PcDeviceState {
  return { com1: Serial.createState() };
}

/** What a thread needs to build its device objects. */
export interface PcDeviceDeps {
  irq(gsi: number): IrqLine;
  power: PowerControl;
  /** COM1 output sink (this thread's). */
  serialOutput: (bytes: Uint8Array) => void;
}

/** This thread's devices and the PIO bus that routes to them. */
export interface PcDevices {
  pio: Bus;
  com1: Serial;
}

/** Builds this thread's device objects over `state` and maps them on a PIO bus. */
export function attachPcDevices(state: PcDeviceState, deps: PcDeviceDeps): PcDevices {
  const pio = new Bus("pio");
  const com1 = new Serial(state.com1, { irq: deps.irq(COM1_IRQ), output: deps.serialOutput });
  pio.insert(COM1_PORT, COM_PORT_LEN, com1, "com1");
  return { pio, com1 };
}
