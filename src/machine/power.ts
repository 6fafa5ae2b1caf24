/**
 * Power requests from any thread (ACPI PM1 sleep, i8042 reset line, the reset MSR, the shutdown
 * IC). The main thread owns the VM and acts on them; devices only ask.
 * @module
 */

/** What a device can ask of the machine's power state. */
export interface PowerControl {
  /** Guest asked to power off (ACPI S5). */
  powerOff(): void;
  /** Guest asked for a reset (i8042 pulse, 0xCF9, ACPI reset register, reset MSR). */
  reset(): void;
}
