import { assert, assertEquals } from "./assert.ts";
import { GuestMemory } from "../../../src/kvm/guest_memory.ts";
import { SynIC } from "../../../src/hyperv/synic.ts";

Deno.test("SynIC across threads: host posts, a guest thread consumes with EOM, nothing torn or lost", async () => {
  const count = 1000;
  const state = SynIC.createState(1);
  const ram = new SharedArrayBuffer(1 << 20);
  const memory = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(ram) }]);
  let msis = 0;
  const host = new SynIC(state, { memory, msi: { signalMsi: () => msis++ } });
  const worker = new Worker(new URL("./synic_guest_worker.ts", import.meta.url), {
    type: "module",
  });
  const replies: { ready?: boolean; done?: boolean; errors?: string[]; eoms?: number }[] = [];
  let wake: (() => void) | undefined;
  worker.onmessage = (e) => {
    replies.push(e.data);
    wake?.();
  };
  const next = () => new Promise<void>((resolve) => (wake = resolve));
  try {
    const ready = next();
    worker.postMessage({ state, ram, count });
    await ready;
    assert(replies[0]?.ready);
    const done = next();
    let busy = 0;
    const nap = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 1; i <= count; i++) {
      const payload = new Uint8Array(64).fill(i & 0xff);
      const deadline = performance.now() + 10_000;
      while (!host.postMessage(0, 2, i, payload)) {
        busy++;
        Atomics.wait(nap, 0, 0, 0.05);
        if (performance.now() > deadline) throw new Error(`message ${i} never delivered`);
      }
    }
    await done;
    const result = replies.at(-1)!;
    assertEquals(result.errors, []);
    assertEquals(msis, count, "one interrupt per delivered message");
    // Every busy attempt set msg_pending; the guest answered with EOMs.
    if (busy > 0) assert(result.eoms! > 0);
  } finally {
    worker.terminate();
  }
});
