import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { attachPcDevices, createPcDeviceState } from "../../../src/vmm/pc_devices.ts";
import { PIRQ_GSI_BASE, PirqLines, pirqOf } from "../../../src/machine/pci/piix.ts";
import { DeviceRegistry, RegistryConflictError } from "../../../src/machine/registry.ts";
import { createRequestSlot, RequestSlotServer } from "../../../src/machine/main_thread_slot.ts";
import { EventLoop } from "../../../src/util/event_loop.ts";
import { close, eventfd, eventfdDrain } from "../../../ffi/libc.ts";
import { prng } from "../prng.ts";

function board(clock = { ns: 0n }) {
  const lines: [number, boolean][] = [];
  const state = createPcDeviceState({ ramBelow4G: 512 << 20, ramAbove4G: 0 });
  const dev = attachPcDevices(state, {
    irq: (gsi) => ({ set: (l) => lines.push([gsi, l]) }),
    power: { powerOff() {}, reset() {} },
    serialOutput: () => {},
    nowNs: () => clock.ns,
  });
  const io = (port: number, size: number, value?: number): number => {
    const b = new Uint8Array(size);
    if (value !== undefined) {
      for (let i = 0; i < size; i++) b[i] = (value >>> (8 * i)) & 0xff;
      dev.dispatch.access("pio", port, true, b);
      return 0;
    }
    dev.dispatch.access("pio", port, false, b);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
    return v;
  };
  const cfg = (devfn: number, reg: number, size = 4, value?: number) => {
    io(0xcf8, 4, (0x8000_0000 | (devfn << 8) | (reg & 0xfc)) >>> 0);
    return io(0xcfc + (reg & 3), size, value);
  };
  return { state, dev, io, cfg, lines, clock };
}

Deno.test("board: i440FX, PIIX3 and PIIX4 PM through CF8/CFC; nothing else on bus 0", () => {
  const { cfg } = board();
  strictEqual(cfg(0x00, 0), 0x1237_8086);
  strictEqual(cfg(0x08, 0), 0x7000_8086);
  strictEqual(cfg(0x0b, 0), 0x7113_8086);
  strictEqual(cfg(0x00, 8) >>> 8, 0x060000);
  strictEqual(cfg(0x08, 8) >>> 8, 0x060100);
  strictEqual(cfg(0x0b, 8) >>> 8, 0x068000);
  strictEqual(cfg(0x08, 0x0e, 1), 0x80, "PIIX3 is multi-function");
  strictEqual(cfg(0x00, 0x2c), 0x1100_1af4);
  for (const devfn of [0x01, 0x09, 0x0a, 0x10, 0xff]) strictEqual(cfg(devfn, 0), 0xffff_ffff);
});

Deno.test("board: PIRQ route registers reset disabled, keep bit 7 and the IRQ nibble", () => {
  const { cfg } = board();
  strictEqual(cfg(0x08, 0x60), 0x8080_8080);
  cfg(0x08, 0x60, 4, 0x0b0b_0a0a); // what OVMF writes
  strictEqual(cfg(0x08, 0x60), 0x0b0b_0a0a);
  cfg(0x08, 0x61, 1, 0xff);
  strictEqual(cfg(0x08, 0x61, 1), 0x8f);
});

Deno.test("board: the PM timer at PMBA+8 counts at 3.579545 MHz in 24 bits", () => {
  const { io, clock } = board();
  clock.ns = 1_000_000_000n;
  strictEqual(io(0x608, 4), 3_579_545);
  clock.ns = 5_000_000_000n; // 17.9 M ticks: wraps at 2^24
  strictEqual(io(0x608, 4), (5 * 3_579_545) & 0xff_ffff);
  strictEqual(io(0x60b, 1), 0);
});

Deno.test("board: PMBA and PMREGMISC move and disable the PM block for every thread", () => {
  const { cfg, io, state, clock } = board();
  clock.ns = 1_000_000_000n;
  strictEqual(cfg(0x0b, 0x40), 0x601);
  cfg(0x0b, 0x40, 4, 0xb000);
  strictEqual(cfg(0x0b, 0x40), 0xb001, "bit 0 reads 1");
  strictEqual(io(0x608, 4), 0xffff_ffff, "old place unclaimed");
  strictEqual(io(0xb008, 4), 3_579_545);
  // A second thread's devices over the same state see the move.
  const other = attachPcDevices(state, {
    irq: () => ({ set() {} }),
    power: { powerOff() {}, reset() {} },
    serialOutput: () => {},
    nowNs: () => 2_000_000_000n,
  });
  const b = new Uint8Array(4);
  ok(other.dispatch.access("pio", 0xb008, false, b));
  cfg(0x0b, 0x80, 1, 0);
  strictEqual(io(0xb008, 4), 0xffff_ffff, "PMREGMISC off");
  ok(!other.dispatch.access("pio", 0xb008, false, b));
  // PMBA on top of COM1: refused by the registry, the block stays off.
  cfg(0x0b, 0x40, 4, 0x3c0);
  cfg(0x0b, 0x80, 1, 1);
  strictEqual(io(0x3c8, 4), 0xffff_ffff);
});

Deno.test("board: INTx swizzle to PIRQ GSIs 16-19, shared lines stay high while any source asserts", () => {
  strictEqual(pirqOf(0x10, 1), 2); // slot 2 INTA -> PIRQC
  strictEqual(pirqOf(0x18, 2), 0); // slot 3 INTB -> PIRQA
  strictEqual(pirqOf(0x18, 0), -1);
  const seen: [number, boolean][] = [];
  const lines = new PirqLines(
    PirqLines.createState(),
    [0, 1, 2, 3].map((n) => ({ set: (l: boolean) => seen.push([PIRQ_GSI_BASE + n, l]) })),
  );
  const a = lines.line(2, 0);
  const b = lines.line(2, 5);
  a.set(true);
  b.set(true);
  a.set(false);
  b.set(false);
  deepStrictEqual(seen, [[18, true], [18, false]]);
});

Deno.test("board: in-kernel ranges are claimed, so no device can be mapped over them", () => {
  const { dev } = board();
  const id = dev.registry.deviceId("ioapic");
  ok(id >= 0);
  strictEqual(dev.registry.devices[id]!.thread, "kernel");
  throws(
    () => dev.registry.add("pio", 0x20, 1, dev.registry.deviceId("com1")),
    RegistryConflictError,
  );
  throws(
    () => dev.registry.add("mmio", 0xfee0_0800, 4, dev.registry.deviceId("com1")),
    RegistryConflictError,
  );
});

Deno.test("board: a main-thread device answers a vCPU thread through its request slot", async () => {
  const { state } = board();
  const registry = new DeviceRegistry(state.registry);
  registry.add("pio", 0x510, 2, registry.addDevice("selector-test", "main"));
  const wake = eventfd();
  state.requests = { slots: [createRequestSlot()], wakeFd: wake };
  const main = attachPcDevices(state, {
    irq: () => ({ set() {} }),
    power: { powerOff() {}, reset() {} },
    serialOutput: () => {},
    nowNs: () => 0n,
  });
  // A device with a selector register and an async data port, as fw_cfg would be.
  let selected = 0;
  let pos = 0;
  main.mainThread[registry.deviceId("selector-test")] = {
    write(offset, data) {
      if (offset === 0) [selected, pos] = [data[0]! | (data[1]! << 8), 0];
    },
    async read(offset, data) {
      await Promise.resolve();
      data[0] = offset === 1 ? (selected + pos++) & 0xff : 0xff;
    },
  };
  const server = new RequestSlotServer(state.requests.slots, main.mainThread);
  const loop = new EventLoop();
  loop.add(wake, () => {
    eventfdDrain(wake);
    server.serve();
  });
  const worker = new Worker(new URL("./board_worker.ts", import.meta.url).href, { type: "module" });
  const reply = new Promise<{ read: number[] }>((resolve) => {
    worker.onmessage = (e) => {
      resolve(e.data);
      loop.stop();
    };
  });
  worker.postMessage(state);
  await loop.run();
  const { read } = await reply;
  server.close();
  loop.close();
  close(wake);
  worker.terminate();
  deepStrictEqual(read, [0x19, 0x1a, 0x1b, 0x1c]);
});

Deno.test("board fuzz: random PIO/MMIO/config accesses of every width never throw; unclaimed reads float", () => {
  const rng = prng(0x440f);
  const { dev, cfg } = board({ ns: 123_456_789n });
  const widths = [1, 2, 4, 8];
  for (let i = 0; i < 30000; i++) {
    const size = widths[rng.int(4)]!;
    const data = new Uint8Array(size).map(() => rng.int(256));
    const write = rng.chance(0.5);
    const space = rng.chance(0.8) ? "pio" : "mmio";
    const addr = space === "pio"
      ? (rng.chance(0.5)
        ? rng.int(0x1_0000)
        : [0xcf8, 0xcfc, 0x600, 0x3f8, 0x70, 0x60][rng.int(6)]! + rng.int(8))
      : [0xc000_0000, 0xfec0_0000, 0xfee0_0000, 0xfed0_0000][rng.int(4)]! + rng.int(0x2000);
    // Config cycles to every function, register and lane, including BAR sizing patterns.
    if (rng.chance(0.2)) {
      const devfn = [0x00, 0x08, 0x0b, 0x10, rng.int(256)][rng.int(5)]!;
      cfg(
        devfn,
        rng.int(256),
        [1, 2, 4][rng.int(3)]!,
        rng.chance(0.3) ? 0xffff_ffff : rng.int(2 ** 32),
      );
      continue;
    }
    const hit = dev.dispatch.access(space, addr, write, data);
    const owner = dev.registry.find(space, addr);
    if (!hit && !write) ok(data.every((b) => b === 0xff), `unclaimed ${space} read at ${addr}`);
    if (hit) ok(owner !== undefined, `dispatched without an owner at ${space} ${addr}`);
  }
  // The board survives: the host bridge still answers.
  strictEqual(cfg(0x00, 0), 0x1237_8086);
});
