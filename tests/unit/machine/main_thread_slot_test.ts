import { deepStrictEqual } from "node:assert/strict";
import {
  createRequestSlot,
  type MainThreadDevice,
  RequestSlotServer,
} from "../../../src/machine/main_thread_slot.ts";

Deno.test("main-thread slot: a vCPU thread's accesses reach an async device on the main thread", async () => {
  const slot = createRequestSlot();
  const wake = new SharedArrayBuffer(4);
  const regs = new Map<number, number>();
  const device: MainThreadDevice = {
    async read(offset, data) {
      await new Promise((r) => setTimeout(r, 1)); // an async backend
      new DataView(data.buffer, data.byteOffset, data.length).setUint32(
        0,
        (regs.get(offset) ?? 0) + 0x1000,
        true,
      );
    },
    write(offset, data) {
      regs.set(offset, data[0]!);
    },
  };
  const server = new RequestSlotServer([slot], [undefined, undefined, undefined, device]);
  const worker = new Worker(new URL("./slot_worker.ts", import.meta.url).href, { type: "module" });
  const messages: Record<string, unknown>[] = [];
  const done = new Promise<void>((resolve) => {
    worker.onmessage = (e) => {
      messages.push(e.data);
      if (e.data.reads) server.close();
      if (e.data.afterClose) resolve();
    };
  });
  worker.postMessage({ slot, wake, count: 20 });
  // The main thread's "event loop": wake-ups counted in `wake` (an eventfd in the VMM).
  const w = new Int32Array(wake);
  let seen = 0;
  while (messages.length < 2) {
    const r = Atomics.waitAsync(w, 0, seen, 50);
    if (r.async) await r.value;
    seen = Atomics.load(w, 0);
    server.serve();
    await new Promise((r) => setTimeout(r, 0));
  }
  await done;
  worker.terminate();
  deepStrictEqual(messages[0]!.reads, Array.from({ length: 20 }, (_, i) => 0x1000 + i));
  deepStrictEqual(messages[1]!.afterClose, [0xff, 0xff]);
});
