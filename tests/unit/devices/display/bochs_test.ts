import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import { BochsDisplay, screenPixels } from "../../../../src/devices/display/bochs.ts";
import { buildEdid, DISPI, MMIO } from "../../../../src/devices/display/protocol.ts";
import { decodePng, encodePng } from "../../../../src/util/png.ts";
import { prng } from "../../prng.ts";

const VRAM = 1 << 22;

function display() {
  const vram = new Uint8Array(VRAM);
  const state = BochsDisplay.createState({ vramBytes: VRAM, mode: { width: 800, height: 600 } });
  const d = new BochsDisplay(state, { vramBytes: VRAM });
  const w16 = (index: number, v: number) =>
    d.mmio.write(MMIO.DISPI + index * 2, Uint8Array.of(v & 0xff, v >> 8));
  const r16 = (index: number) => {
    const b = new Uint8Array(2);
    d.mmio.read(MMIO.DISPI + index * 2, b);
    return b[0]! | (b[1]! << 8);
  };
  return { d, vram, state, w16, r16 };
}

Deno.test("edid: header, version 1.4, checksum, preferred detailed timing is the mode", () => {
  const e = buildEdid({ width: 800, height: 600 });
  strictEqual(e.length, 128);
  deepStrictEqual([...e.subarray(0, 8)], [0, 255, 255, 255, 255, 255, 255, 0]);
  strictEqual(e.reduce((a, b) => a + b, 0) % 256, 0);
  deepStrictEqual([e[18], e[19]], [1, 4]);
  // Detailed timing 1 at 54: hactive = byte 56 | (byte 58 >> 4) << 8.
  strictEqual(e[56]! | ((e[58]! >> 4) << 8), 800);
  strictEqual(e[59]! | ((e[61]! >> 4) << 8), 600);
  ok(e[54]! | e[55]! << 8, "pixel clock set");
  strictEqual(new TextDecoder().decode(e.subarray(77, 86)), "hyperdeno");
  throws(() => buildEdid({ width: 5000, height: 600 }), RangeError);
});

Deno.test("bochs: DISPI registers as Linux's bochs driver programs them", () => {
  const { d, w16, r16, vram } = display();
  strictEqual(r16(DISPI.ID), 0xb0c5);
  strictEqual(r16(DISPI.VIDEO_MEMORY_64K), VRAM / 65536);
  w16(DISPI.VIDEO_MEMORY_64K, 1); // read-only
  strictEqual(r16(DISPI.VIDEO_MEMORY_64K), VRAM / 65536);
  w16(DISPI.ID, 0x1234); // not an interface id: ignored
  strictEqual(r16(DISPI.ID), 0xb0c5);
  w16(DISPI.ENABLE, 0x02); // GETCAPS
  strictEqual(r16(DISPI.XRES), 2560);
  strictEqual(r16(DISPI.BPP), 32);
  strictEqual(d.screen(), "the display is off (no mode set)");
  vram.fill(0x77, 0, 800 * 4 * 600);
  w16(DISPI.ENABLE, 0);
  w16(DISPI.BPP, 32);
  w16(DISPI.XRES, 800);
  w16(DISPI.YRES, 600);
  w16(DISPI.VIRT_WIDTH, 800);
  w16(DISPI.VIRT_HEIGHT, VRAM / 3200);
  w16(DISPI.ENABLE, 0x41);
  strictEqual(vram[0], 0x77, "a mode set keeps VRAM (bochs-display, unlike stdvga)");
  deepStrictEqual(d.screen(), {
    width: 800,
    height: 600,
    bpp: 32,
    stride: 3200,
    offset: 0,
    bigEndian: false,
  });
  w16(DISPI.Y_OFFSET, 600); // page flip
  strictEqual((d.screen() as { offset: number }).offset, 600 * 3200);
  w16(DISPI.Y_OFFSET, 2000); // beyond VRAM: refused for screendump, never read out of bounds
  ok(typeof d.screen() === "string");
  // Byte-wide writes merge into the 16-bit register.
  d.mmio.write(MMIO.DISPI + DISPI.Y_OFFSET * 2, Uint8Array.of(5));
  strictEqual(r16(DISPI.Y_OFFSET), (2000 & 0xff00) | 5);
});

Deno.test("bochs: EDID at BAR2+0, QEMU extension registers, byte order", () => {
  const { d } = display();
  const b = new Uint8Array(8);
  d.mmio.read(0, b);
  deepStrictEqual([...b], [0, 255, 255, 255, 255, 255, 255, 0]);
  const q = new Uint8Array(4);
  d.mmio.read(MMIO.QEXT, q);
  strictEqual(new DataView(q.buffer).getUint32(0, true), 8);
  d.mmio.write(MMIO.QEXT + 4, Uint8Array.of(0xbe, 0xbe, 0xbe, 0xbe));
  d.mmio.read(MMIO.QEXT + 4, q);
  strictEqual(new DataView(q.buffer).getUint32(0, true), 0xbebebebe);
});

Deno.test("bochs: screen pixels from XRGB8888 (both byte orders) and RGB565 into a PNG that decodes", () => {
  const vram = new Uint8Array(64);
  vram.set([0x56, 0x34, 0x12, 0x00, 0xff, 0x00, 0x00, 0x00], 0); // little: B,G,R,X
  const g = { width: 2, height: 1, bpp: 32, stride: 8, offset: 0, bigEndian: false };
  deepStrictEqual([...screenPixels(vram, g)], [0x12, 0x34, 0x56, 0, 0, 0xff]);
  vram.set([0x00, 0x12, 0x34, 0x56], 0); // big: X,R,G,B
  deepStrictEqual([...screenPixels(vram, { ...g, width: 1, bigEndian: true })], [0x12, 0x34, 0x56]);
  vram.set([0x00, 0xf8], 16); // RGB565 red
  deepStrictEqual([
    ...screenPixels(vram, {
      width: 1,
      height: 1,
      bpp: 16,
      stride: 2,
      offset: 16,
      bigEndian: false,
    }),
  ], [255, 0, 0]);
  const rgb = new Uint8Array(3 * 7 * 5).map((_, i) => (i * 37) & 0xff);
  const img = decodePng(encodePng(7, 5, rgb));
  deepStrictEqual([img.width, img.height], [7, 5]);
  deepStrictEqual(img.rgb, rgb);
});

Deno.test("bochs fuzz: any BAR2 access of any width keeps the screen within VRAM", () => {
  const rng = prng(0xb0c5);
  const { d, vram } = display();
  for (let i = 0; i < 20000; i++) {
    const size = [1, 2, 4, 8][rng.int(4)]!;
    const off = rng.chance(0.7) ? MMIO.DISPI + rng.int(0x30) : rng.int(MMIO.SIZE - size + 1);
    const data = new Uint8Array(size).map(() => rng.int(256));
    if (rng.chance(0.5)) d.mmio.write(off, data);
    else d.mmio.read(off, data);
    const s = d.screen();
    if (typeof s !== "string") {
      ok(
        s.offset + (s.height - 1) * s.stride +
            s.width * (s.bpp === 32 ? 4 : s.bpp === 24 ? 3 : 2) <= VRAM,
      );
      if (i % 500 === 0) screenPixels(vram, s);
    }
  }
});
