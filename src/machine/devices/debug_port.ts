/**
 * POST-code port (0x80 on a PC). Linux's `io_delay` writes to it around slow legacy I/O, many
 * times per boot, so it must cost nothing: writes are dropped, reads float to 0xFF. Stateless,
 * so there is no shared state to create.
 * @module
 */
import type { BusDevice } from "../bus.ts";

/** A sink for POST codes. */
export class DebugPort implements BusDevice {
  /** Guest read: nothing latched, the bus floats. */
  read(_offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }

  /** Guest write: dropped. */
  write(_offset: number, _data: Uint8Array): void {}
}
