/**
 * Interrupt contracts the machine and device layers raise interrupts through. `src/kvm`
 * implements them with KVM_IRQ_LINE / KVM_SIGNAL_MSI; unit tests use fakes.
 * @module
 */

/** One GSI of the in-kernel IOAPIC/PIC. */
export interface IrqLine {
  /** Drives the line to `level` (edge devices pulse: set(true) then set(false)). */
  set(level: boolean): void;
}

/** Sends message-signalled interrupts (x86 MSI address/data format). */
export interface MsiSink {
  signalMsi(address: number, data: number): void;
}
