/** A port bus for device tests: a registry with the given devices and one thread's dispatcher. */
import type { BusDevice } from "../../../src/machine/bus.ts";
import { DeviceRegistry, IoDispatch } from "../../../src/machine/registry.ts";

/** Maps each `[base, length, device, name]` on a fresh registry; reads/writes return hit. */
export function pioBus(entries: [number, number, BusDevice, string][]) {
  const registry = DeviceRegistry.create();
  const handlers = entries.map(([base, length, device, name]) => {
    registry.add("pio", base, length, registry.addDevice(name));
    return device;
  });
  const dispatch = new IoDispatch(registry, handlers);
  return {
    read: (port: number, data: Uint8Array) => dispatch.access("pio", port, false, data),
    write: (port: number, data: Uint8Array) => dispatch.access("pio", port, true, data),
  };
}
