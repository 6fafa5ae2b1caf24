/** A stand-in vCPU thread of the board test: dispatches port accesses with its own devices. */
import { attachPcDevices, type PcDeviceState } from "../../../src/vmm/pc_devices.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e) => {
  const state = e.data as PcDeviceState;
  const dev = attachPcDevices(state, {
    irq: () => ({ set() {} }),
    power: { powerOff() {}, reset() {} },
    serialOutput: () => {},
    nowNs: () => 0n,
    vcpu: 0,
  });
  dev.dispatch.access("pio", 0x510, true, Uint8Array.of(0x19, 0x00));
  const b = new Uint8Array(1);
  const read: number[] = [];
  for (let i = 0; i < 4; i++) {
    dev.dispatch.access("pio", 0x511, false, b);
    read.push(b[0]!);
  }
  scope.postMessage({ read });
};
