/**
 * The device contract of port I/O and MMIO alike (rust-vmm `DevicePio`/`DeviceMmio` shape): a
 * device sees an offset into its own range, never an absolute address, so the same device can
 * sit at any base. Where ranges sit, and which device answers them, is the device registry's
 * business (`registry.ts`).
 * @module
 */

/**
 * A device on a bus. `data.length` is the access size (1, 2, 4 or 8 bytes); `read` fills `data`
 * (little-endian), `write` consumes it. Implementations must not throw on any guest access and
 * must not keep a reference to `data` (the caller reuses it for every exit).
 */
export interface BusDevice {
  /** Guest read of `data.length` bytes at `offset` into the device's range. */
  read(offset: number, data: Uint8Array): void;
  /** Guest write of `data` at `offset` into the device's range. */
  write(offset: number, data: Uint8Array): void;
}
