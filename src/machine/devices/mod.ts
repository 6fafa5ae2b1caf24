/**
 * Legacy PC devices on the port-I/O bus: 16550A UART, CMOS RTC, i8042, ACPI PM1a block, reset
 * register, PCI configuration window with a host bridge, POST-code sink.
 *
 * Each device keeps its state in a SharedArrayBuffer made by its `createState` on the main
 * thread; every thread (each vCPU worker and the main thread) constructs its own device object
 * over that buffer with its own per-thread wiring (IRQ lines, power control, callbacks). Devices
 * see offsets into their range; the port and GSI are chosen by whoever attaches them.
 * @module
 */
export * from "./serial.ts";
export * from "./rtc.ts";
export * from "./i8042.ts";
export * from "./acpi_pm.ts";
export * from "./reset_port.ts";
export * from "./pci_host.ts";
export * from "./debug_port.ts";
