/**
 * In-flight I/O at channel close, unload and VM reset: storvsp's completions never reach a ring
 * after its channel closed, the guest's close (the ring GPADL's teardown), UNLOAD_RESPONSE and
 * `VmbusServer.settled()` wait until the backend I/O that moves data straight into guest pages
 * settled, and after that nothing in guest memory changes. A backend that fails after the close
 * leaves no unhandled rejection (Deno's test sanitizers would fail the test).
 */
import { DiskError } from "../../../../src/devices/storage/backend/backend.ts";
import { ChannelMessageType as Msg } from "../../../../src/vmbus/protocol.ts";
import { assert, assertEquals, be32, MemoryBackend, pattern, StorvscGuest } from "./helpers.ts";

/** A memory disk whose reads wait until `open()`; `failNext` makes the next one reject. */
class GatedBackend extends MemoryBackend {
  readonly #gates: (() => void)[] = [];
  /** Reads waiting at the gate. */
  waiting = 0;
  /** Reads that wrote guest memory. */
  completed = 0;
  failAfterGate = false;

  override async readv(offset: number, dst: readonly Uint8Array[]): Promise<void> {
    this.waiting++;
    await new Promise<void>((r) => this.#gates.push(r));
    this.waiting--;
    if (this.failAfterGate) throw new DiskError("io", "injected failure after close");
    await super.readv(offset, dst);
    this.completed++;
  }

  /** Lets every waiting read go on. */
  open(): void {
    for (const g of this.#gates.splice(0)) g();
  }
}

async function ticks(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setTimeout(r, 1));
}

/** Sends READ(10) of `blocks` at `lba` into fresh scattered pages filled with 0xAA. */
function startRead(g: StorvscGuest, lba: number, blocks: number) {
  const pages = g.pages(Math.ceil((blocks * 512) / 4096), true);
  g.fill(pages, 0, new Uint8Array(blocks * 512).fill(0xaa));
  const tid = g.sendSrb({
    cdb: [0x28, 0, ...be32(lba), 0, 0, blocks, 0],
    dataIn: 1,
    pages,
    length: blocks * 512,
  });
  g.poll();
  return { pages, tid };
}

function snapshot(g: StorvscGuest): Uint8Array {
  return g.guest.memory.regions[0]!.bytes.slice();
}

Deno.test("storvsp: guest closes the channel with reads in flight: no completion, close ends after the I/O", async () => {
  const backend = new GatedBackend(1 << 20);
  backend.bytes.set(pattern(1 << 20, 3));
  const g = StorvscGuest.withDisks([backend]);
  await g.init();
  const a = startRead(g, 0, 16);
  const b = startRead(g, 64, 24);
  assertEquals(backend.waiting, 2);
  assertEquals(g.device.inflight, 2);

  // CLOSECHANNEL + ring GPADL teardown: the host holds the ring while reads are in flight.
  const ch = g.ch;
  const ringBefore = ch.pages.map((p) => g.guest.memory.slice(p, 4096).slice());
  assertEquals(g.guest.close(ch), false, "GPADL_TORNDOWN must wait for the in-flight reads");
  let settled = false;
  const done = g.guest.server.settled().then(() => settled = true);
  await ticks();
  assertEquals(settled, false);
  assertEquals(g.device.inflight, 0, "closed channels no longer count");

  // The I/O finishes (writing guest pages: the guest has not got its close back yet).
  backend.open();
  await done;
  assertEquals(backend.completed, 2);
  assert(g.guest.torndown(ch.gpadl), "GPADL_TORNDOWN once the reads settled");
  assertEquals(g.collect(a.pages, 0, 16 * 512), backend.bytes.subarray(0, 16 * 512));
  // No completion went to the ring after the close.
  ch.pages.forEach((p, i) => assertEquals(g.guest.memory.slice(p, 4096), ringBefore[i]));
  g.poll();
  assertEquals([g.replies.has(a.tid), g.replies.has(b.tid)], [false, false]);
  // Nothing in guest memory changes after the close completed.
  const after = snapshot(g);
  await ticks();
  assertEquals(snapshot(g), after);
  assertEquals(g.guest.server.stats.deviceErrors, 0);
});

Deno.test("storvsp: a read that fails after the close leaves no unhandled rejection; reopen works", async () => {
  const backend = new GatedBackend(1 << 20);
  const g = StorvscGuest.withDisks([backend]);
  await g.init();
  startRead(g, 8, 8);
  const ch = g.ch;
  assertEquals(g.guest.close(ch), false);
  backend.failAfterGate = true;
  backend.open();
  await g.guest.server.settled();
  assert(g.guest.torndown(ch.gpadl));
  // The guest opens the channel again and gets a fresh init and working I/O.
  backend.failAfterGate = false;
  g.ch = g.guest.open(g.offer, { sendPages: 32, recvPages: 32 });
  await g.init();
  const p = g.rw("read", 0, 8);
  await ticks(2);
  backend.open();
  const { reply } = await p;
  assertEquals(reply.status, 0);
});

Deno.test("vmbus: unload and VM reset wait for storage I/O in flight (UNLOAD_RESPONSE, settled)", async () => {
  const backend = new GatedBackend(1 << 20);
  const g = StorvscGuest.withDisks([backend], { maxSubChannels: 1 });
  await g.init();
  startRead(g, 0, 8);
  assertEquals(g.guest.unload(), false, "UNLOAD_RESPONSE waits for the read");
  backend.open();
  await g.guest.server.settled();
  g.guest.runDeferred();
  assert(g.guest.expect(Msg.UNLOAD_RESPONSE) !== undefined, "UNLOAD_RESPONSE after the read");

  // VM reset (what the VMM does before unmapping guest memory).
  const h = StorvscGuest.withDisks([backend]);
  await h.init();
  startRead(h, 0, 8);
  h.guest.server.reset();
  let settled = false;
  const done = h.guest.server.settled().then(() => settled = true);
  await ticks();
  assertEquals(settled, false);
  backend.open();
  await done;
  const after = snapshot(h);
  await ticks();
  assertEquals(snapshot(h), after);
  // Nothing was queued for the guest after the reset.
  assertEquals(h.guest.receive().filter((m) => m.type === Msg.UNLOAD_RESPONSE).length, 0);
});
