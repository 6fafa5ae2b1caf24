import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  createPflashState,
  type FlashStore,
  PflashDevice,
} from "../../../../src/machine/firmware/pflash.ts";
import {
  FV_HEADER,
  SYSTEM_NV_DATA_FV_GUID,
} from "../../../../src/machine/firmware/pflash_protocol.ts";
import { prng } from "../../prng.ts";

const SIZE = 16 * 4096;

class MemStore implements FlashStore {
  readonly bytes: Uint8Array;
  changes: [number, number][] = [];
  flushes = 0;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
  }
  changed(offset: number, length: number) {
    this.changes.push([offset, length]);
  }
  flush() {
    this.flushes++;
  }
}

/** A variable store volume: 16 zero bytes, the NV GUID, "_FVH"... like OVMF_VARS. */
function fvImage(size = SIZE): Uint8Array {
  const b = new Uint8Array(size).fill(0xff);
  FV_HEADER.encode(
    {
      file_system_guid: SYSTEM_NV_DATA_FV_GUID,
      fv_length: BigInt(size),
      signature: new TextEncoder().encode("_FVH"),
      header_length: 0x48,
      revision: 2,
    },
    b,
    0,
  );
  b.fill(0, 0x38, 0x48);
  let sum = 0;
  for (let i = 0; i < 0x48; i += 2) sum = (sum + b[i]! + (b[i + 1]! << 8)) & 0xffff;
  FV_HEADER.set(b, 0, "checksum", (0x10000 - sum) & 0xffff);
  return b;
}

/**
 * The guest's view: in array mode reads come from the bytes (the read-only memslot), otherwise
 * they exit to the device. Writes always exit.
 */
function guest(dev: PflashDevice, store: MemStore, modes: boolean[]) {
  return {
    read(off: number): number {
      if (modes.length === 0 || modes[modes.length - 1]) return store.bytes[off]!;
      const d = new Uint8Array(1);
      dev.read(off, d);
      return d[0]!;
    },
    write(off: number, v: number) {
      dev.write(off, Uint8Array.of(v));
    },
  };
}

function setup(readOnly = false) {
  const store = new MemStore(fvImage());
  const modes: boolean[] = [];
  const dev = new PflashDevice(createPflashState(), store, {
    readOnly,
    mapping: { setArrayMode: (a) => modes.push(a) },
  });
  return { store, modes, dev, g: guest(dev, store, modes) };
}

Deno.test("OVMF's QemuFlashDetected probe concludes 'FD behaves as FLASH'", () => {
  const { g, modes } = setup();
  // Find the first byte that is not 0x50, 0x70 or 0x00 (the GUID at 0x10 here).
  let off = 0;
  while ([0x50, 0x70, 0x00].includes(g.read(off))) off++;
  const original = g.read(off);
  g.write(off, 0x50);
  let probe = g.read(off);
  ok(!(original !== 0x50 && probe === 0x50), "not RAM");
  g.write(off, 0x70);
  probe = g.read(off);
  strictEqual(probe, 0x00, "cleared status: FLASH");
  g.write(off, 0xff);
  strictEqual(g.read(off), original);
  deepStrictEqual(
    modes,
    [false, true, false, true],
    "memslot flips: 0x50 round trip, 0x70 ... 0xFF",
  );
});

Deno.test("QemuFlashWrite: 0x10 + data per byte, 0xFF on the last byte, then the store is flushed", () => {
  const { g, dev, store, modes } = setup();
  const data = new TextEncoder().encode("VariableData");
  const at = 3 * 4096 + 100;
  for (let i = 0; i < data.length; i++) {
    g.write(at + i, 0x10);
    g.write(at + i, data[i]!);
  }
  strictEqual(dev.arrayMode, false);
  strictEqual(g.read(at), 0x80, "program mode reads the status: ready");
  g.write(at + data.length - 1, 0xff);
  strictEqual(dev.arrayMode, true);
  deepStrictEqual(store.bytes.subarray(at, at + data.length), data);
  strictEqual(store.changes.length, data.length);
  strictEqual(store.flushes, 1);
  deepStrictEqual(modes, [false, true]);
  strictEqual(dev.counters.programs, data.length);
});

Deno.test("block erase needs the 0xD0 confirm and clears the whole 4 KiB sector", () => {
  const { g, dev, store } = setup();
  store.bytes.fill(0x12, 8192, 12288);
  g.write(8192 + 77, 0x20);
  g.write(8192 + 77, 0xff); // aborted
  strictEqual(store.bytes[8192], 0x12);
  g.write(8192 + 77, 0x20);
  g.write(8192 + 77, 0xd0);
  ok(store.bytes.subarray(8192, 12288).every((b) => b === 0xff));
  strictEqual(store.bytes[12288], 0xff);
  strictEqual(store.bytes[8191], 0xff);
  strictEqual(g.read(8192), 0x80);
  g.write(0, 0xff);
  strictEqual(dev.counters.erases, 1);
  deepStrictEqual(store.changes, [[8192, 4096]]);
});

Deno.test("status, clear status, read ID and the CFI query table", () => {
  const { g, dev } = setup();
  g.write(5, 0x10);
  g.write(5, 0xab);
  g.write(0, 0x70);
  strictEqual(g.read(0), 0x80);
  g.write(0, 0x50);
  strictEqual(dev.arrayMode, true);
  g.write(0, 0x70);
  strictEqual(g.read(0), 0x00);
  g.write(0, 0x90);
  strictEqual(g.read(0), 0x89);
  strictEqual(g.read(1), 0x18);
  g.write(0, 0xff);
  g.write(0x55, 0x98);
  const q = [0x10, 0x11, 0x12].map((o) => g.read(o));
  strictEqual(String.fromCharCode(...q), "QRY");
  strictEqual(g.read(0x13), 0x01, "Intel command set");
  strictEqual(1 << g.read(0x27), SIZE, "device size");
  strictEqual(g.read(0x2c), 1);
  strictEqual((g.read(0x2d) | (g.read(0x2e) << 8)) + 1, SIZE / 4096, "sectors");
  strictEqual((g.read(0x2f) | (g.read(0x30) << 8)) * 256, 4096, "sector size");
  const wide = new Uint8Array(4);
  dev.read(0x10, wide);
  deepStrictEqual([...wide.subarray(0, 3)], [0x51, 0x52, 0x59]);
  g.write(0, 0x00); // still in query mode: only 0xFF leaves it
  strictEqual(dev.arrayMode, false);
  g.write(0, 0xff);
  strictEqual(dev.arrayMode, true);
});

Deno.test("a read-only flash reports program and erase errors and keeps its bytes", () => {
  const { g, store } = setup(true);
  const before = store.bytes.slice();
  g.write(100, 0x40);
  g.write(100, 0x00);
  g.write(0, 0x70);
  strictEqual(g.read(0), 0x90);
  g.write(0, 0x20);
  g.write(0, 0xd0);
  strictEqual(g.read(0), 0xb0);
  deepStrictEqual(store.bytes, before);
});

Deno.test("flash size must be whole sectors", () => {
  throws(
    () => new PflashDevice(createPflashState(), new MemStore(new Uint8Array(5000))),
    RangeError,
  );
});

/**
 * The command protocol as the Intel datasheet (and QEMU) state it, for the fuzz's reference:
 * returns what the write does to the contents.
 */
class Reference {
  cmd = 0;
  cycle = 0;
  write(v: number): "program" | "erase" | "" {
    if (this.cycle === 0) {
      if ([0x10, 0x40, 0x20, 0x60, 0x98].includes(v)) [this.cmd, this.cycle] = [v, 1];
      else if (v === 0x70 || v === 0x90) this.cmd = v;
      else this.cmd = 0;
      return "";
    }
    switch (this.cmd) {
      case 0x10:
      case 0x40:
        this.cycle = 0;
        return "program";
      case 0x20:
        this.cycle = 0;
        if (v === 0xd0) return "erase";
        this.cmd = 0;
        return "";
      case 0x60:
        this.cycle = 0;
        if (v !== 0xd0 && v !== 0x01) this.cmd = 0;
        return "";
      default: // 0x98: only 0xFF leaves query mode
        if (v === 0xff) [this.cmd, this.cycle] = [0, 0];
        return "";
    }
  }
}

Deno.test("flash fuzz: random traffic never throws; bytes change only by program or erase", () => {
  const rng = prng(0x5eed);
  const store = new MemStore(fvImage());
  const modes: boolean[] = [];
  const dev = new PflashDevice(createPflashState(), store, {
    mapping: { setArrayMode: (a) => modes.push(a) },
  });
  const model = store.bytes.slice();
  const ref = new Reference();
  const cmds = [0x10, 0x40, 0x20, 0x50, 0x60, 0x70, 0x90, 0x98, 0xd0, 0xff, 0x00, 0x01, 0xe8, 0xf0];
  for (let i = 0; i < 50_000; i++) {
    const width = rng.pick([1, 1, 1, 2, 4, 8]);
    const off = rng.int(SIZE - width + 1);
    const data = new Uint8Array(width);
    for (let k = 0; k < width; k++) data[k] = rng.chance(0.6) ? rng.pick(cmds) : rng.int(256);
    if (rng.chance(0.3)) {
      dev.read(off, data);
      continue;
    }
    dev.write(off, data);
    const effect = ref.write(data[0]!);
    if (effect === "program") model.set(data, off);
    if (effect === "erase") model.fill(0xff, off & ~4095, (off & ~4095) + 4096);
    strictEqual(dev.arrayMode, ref.cmd === 0, `iteration ${i}: array mode`);
    if (i % 997 === 0) deepStrictEqual(store.bytes, model, `iteration ${i}`);
  }
  deepStrictEqual(store.bytes, model);
  ok(dev.counters.programs > 1000 && dev.counters.erases > 20, JSON.stringify(dev.counters));
  for (let i = 1; i < modes.length; i++) ok(modes[i] !== modes[i - 1], "mode flips alternate");
  strictEqual(modes[modes.length - 1], dev.arrayMode);
});
