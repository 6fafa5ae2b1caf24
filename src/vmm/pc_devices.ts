/**
 * The PC's legacy devices and where they sit: the one place that knows their ports and GSIs.
 * Shared state is created once on the main thread (`createPcDeviceState`); every thread that
 * handles exits builds its own device objects over it (`attachPcDevices`).
 * @module
 */
import { Bus } from "../machine/bus.ts";
import { ACPI_PM_PORT_COUNT, AcpiPm } from "../machine/devices/acpi_pm.ts";
import { DebugPort } from "../machine/devices/debug_port.ts";
import { I8042, I8042_PORT_COUNT } from "../machine/devices/i8042.ts";
import { PCI_HOST_PORT_COUNT, PciHost } from "../machine/devices/pci_host.ts";
import { ResetPort } from "../machine/devices/reset_port.ts";
import { Rtc } from "../machine/devices/rtc.ts";
import { Serial, UART_PORT_COUNT } from "../machine/devices/serial.ts";
import type { IrqLine } from "../machine/irq.ts";
import {
  COM1_IRQ,
  COM1_PORT,
  I8042_DATA_PORT,
  I8042_KBD_IRQ,
  PM1A_EVT_PORT,
  SCI_IRQ,
} from "../machine/layout.ts";
import type { PowerControl } from "../machine/power.ts";

/** PCI configuration mechanism #1 (0xCF8..0xCFF; 0xCF9 is the reset control inside it). */
const PCI_CONFIG_PORT = 0xcf8;
/** CMOS index/data ports. */
const RTC_PORT = 0x70;
/** POST code port; Linux's io_delay writes it constantly. */
const POST_PORT = 0x80;
/** PS/2 mouse interrupt, needed so Linux's AUX probe does not wait for it. */
const I8042_AUX_IRQ = 12;

/** Shared state of every legacy device (structured-cloneable: SharedArrayBuffers only). */
export interface PcDeviceState {
  com1: SharedArrayBuffer;
  rtc: SharedArrayBuffer;
  i8042: SharedArrayBuffer;
  acpiPm: SharedArrayBuffer;
  reset: SharedArrayBuffer;
  pci: SharedArrayBuffer;
}

/** Options fixed at VM creation. */
export interface PcDeviceOptions {
  /** RAM below 4 GiB and above, for the CMOS memory-size bytes. */
  ramBelow4G: number;
  ramAbove4G: number;
  /** Offset of the guest's RTC from host time, in ms (tests start the clock wrong on purpose). */
  rtcOffsetMs?: number;
}

/** Creates the shared state of all legacy devices. */
export function createPcDeviceState(options: PcDeviceOptions): PcDeviceState {
  return {
    com1: Serial.createState(),
    rtc: Rtc.createState({
      ramBelow4G: options.ramBelow4G,
      ramAbove4G: options.ramAbove4G,
      timeOffsetMs: options.rtcOffsetMs ?? 0,
    }),
    i8042: I8042.createState(),
    acpiPm: AcpiPm.createState(),
    reset: ResetPort.createState(),
    pci: PciHost.createState(),
  };
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
  acpiPm: AcpiPm;
  /** The i8042 with its PS/2 keyboard and mouse (host input goes in through it). */
  i8042: I8042;
}

/** Builds this thread's device objects over `state` and maps them on a PIO bus. */
export function attachPcDevices(state: PcDeviceState, deps: PcDeviceDeps): PcDevices {
  const pio = new Bus("pio");
  const com1 = new Serial(state.com1, { irq: deps.irq(COM1_IRQ), output: deps.serialOutput });
  pio.insert(COM1_PORT, UART_PORT_COUNT, com1, "com1");
  pio.insert(RTC_PORT, 2, new Rtc(state.rtc), "rtc");
  const i8042 = new I8042(state.i8042, {
    power: deps.power,
    kbdIrq: deps.irq(I8042_KBD_IRQ),
    auxIrq: deps.irq(I8042_AUX_IRQ),
  });
  pio.insert(I8042_DATA_PORT, I8042_PORT_COUNT, i8042, "i8042");
  pio.insert(POST_PORT, 1, new DebugPort(), "post");
  const acpiPm = new AcpiPm(state.acpiPm, { power: deps.power, sci: deps.irq(SCI_IRQ) });
  pio.insert(PM1A_EVT_PORT, ACPI_PM_PORT_COUNT, acpiPm, "acpi-pm");
  const reset = new ResetPort(state.reset, { power: deps.power });
  pio.insert(
    PCI_CONFIG_PORT,
    PCI_HOST_PORT_COUNT,
    new PciHost(state.pci, { resetControl: reset }),
    "pci",
  );
  return { pio, com1, acpiPm, i8042 };
}
