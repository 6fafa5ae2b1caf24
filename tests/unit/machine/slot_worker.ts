/** A stand-in vCPU thread: forwards accesses to main-thread device 3 through its request slot. */
import { RequestSlotClient } from "../../../src/machine/main_thread_slot.ts";

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent) => void) | null;
  postMessage(m: unknown): void;
};
scope.onmessage = (e) => {
  const { slot, wake, count } = e.data as {
    slot: SharedArrayBuffer;
    wake: SharedArrayBuffer;
    count: number;
  };
  const w = new Int32Array(wake);
  const client = new RequestSlotClient(slot, () => {
    Atomics.add(w, 0, 1);
    Atomics.notify(w, 0);
  });
  const dev = client.proxy(3);
  const reads: number[] = [];
  for (let i = 0; i < count; i++) {
    dev.write(i * 4, Uint8Array.of(i & 0xff, 0, 0, 0));
    const b = new Uint8Array(4);
    dev.read(i * 4, b);
    reads.push(new DataView(b.buffer).getUint32(0, true));
  }
  const after = new Uint8Array(2);
  scope.postMessage({ reads });
  // After the server closed (on the reads message): answered at once with all-ones.
  setTimeout(() => {
    dev.read(0, after);
    scope.postMessage({ afterClose: [...after] });
  }, 100);
};
