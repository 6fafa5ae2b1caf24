/** The bochs display as a VNC source: mode changes, scanned damage, and a real VNC client. */
import assert from "node:assert/strict";
import { BochsDisplay } from "../../../src/devices/display/bochs.ts";
import { DISPI, MMIO } from "../../../src/devices/display/protocol.ts";
import { BochsScreen } from "../../../src/vmm/screen.ts";

const VRAM = 1 << 22;

function display() {
  const vram = new Uint8Array(VRAM);
  const state = BochsDisplay.createState({ vramBytes: VRAM, mode: { width: 800, height: 600 } });
  const d = new BochsDisplay(state, { vramBytes: VRAM });
  const w16 = (index: number, v: number) =>
    d.mmio.write(MMIO.DISPI + index * 2, Uint8Array.of(v & 0xff, v >> 8));
  const setMode = (w: number, h: number, bpp = 32) => {
    w16(DISPI.ENABLE, 0);
    w16(DISPI.XRES, w);
    w16(DISPI.YRES, h);
    w16(DISPI.BPP, bpp);
    w16(DISPI.ENABLE, 0x41);
  };
  return { d, vram, setMode };
}

Deno.test("bochs screen: off, then the guest's mode; scans find exactly the changed tiles", () => {
  const { d, vram, setMode } = display();
  const screen = new BochsScreen(d, vram);
  const changes: string[] = [];
  screen.subscribe((c) => changes.push(c.kind));
  assert.deepEqual([screen.frame().width, screen.frame().height], [640, 480]);
  assert.equal(screen.hasMode, false);
  setMode(320, 200);
  assert.deepEqual(screen.scan(), [], "a mode change is a resize, not damage");
  assert.deepEqual(changes, ["resize"]);
  assert.deepEqual([screen.frame().width, screen.frame().height, screen.frame().stride], [
    320,
    200,
    1280,
  ]);
  assert.deepEqual(screen.scan(), [], "nothing drawn");
  vram.set([1, 2, 3, 0], (50 * 320 + 70) * 4); // pixel (70, 50)
  vram.set([9, 9, 9, 0], (199 * 320 + 319) * 4); // bottom-right pixel
  assert.deepEqual(screen.scan(), [
    { x: 64, y: 48, width: 64, height: 16 },
    { x: 256, y: 192, width: 64, height: 8 },
  ]);
  assert.deepEqual(screen.scan(), [], "the shadow caught up");
  vram[(50 * 320 + 70) * 4 + 3] = 0x55; // the X byte is not a visible change
  assert.deepEqual(screen.scan(), []);
  setMode(160, 100, 16);
  screen.scan();
  vram.set([0x00, 0xf8], 0); // RGB565 red at (0, 0)
  assert.deepEqual(screen.scan(), [{ x: 0, y: 0, width: 64, height: 16 }]);
  assert.deepEqual([...screen.frame().data.subarray(0, 4)], [0, 0, 255, 0]);
});
