/** The input router: PS/2 until the guest's synthetic drivers connect, synthetic from then. */
import assert from "node:assert/strict";
import {
  InputRouter,
  KEYBOARD_CLASS_ID,
  MOUSE_CLASS_ID,
  type Ps2Input,
  SyntheticKeyboard,
  SyntheticMouse,
} from "../../../../src/devices/input/mod.ts";
import { LoopbackGuest } from "../../../../src/vmbus/testing/mod.ts";
import { LinuxKeyboard, LinuxMouse } from "./linux_input.ts";

class FakePs2 implements Ps2Input {
  keys: string[] = [];
  moves: number[][] = [];
  ps2Key(set1: number, set2: number, down: boolean): boolean {
    this.keys.push(`${set1.toString(16)}/${set2.toString(16)}/${down ? "down" : "up"}`);
    return true;
  }
  ps2Mouse(dx: number, dy: number, wheel: number, buttons: number): boolean {
    this.moves.push([dx, dy, wheel, buttons]);
    return true;
  }
}

Deno.test("router: PS/2 first, the synthetic devices once their drivers connected", () => {
  const keyboard = new SyntheticKeyboard();
  const mouse = new SyntheticMouse();
  const ps2 = new FakePs2();
  const router = new InputRouter({ keyboard, mouse, ps2 });
  assert.equal(router.keyRoute, "ps2");
  assert.ok(router.key(0xe053, true));
  assert.deepEqual(ps2.keys, ["e053/e071/down"]);
  router.screen = { width: 1025, height: 769 };
  router.pointer(0, 0, 0);
  router.pointer(32767, 16384, 1);
  assert.deepEqual(ps2.moves, [[0, 0, 0, 0], [1024, 384, 0, 1]]);

  const { guest } = LoopbackGuest.create({ devices: [keyboard, mouse] });
  guest.connect();
  const offers = guest.requestOffers();
  const kbd = new LinuxKeyboard(guest, offers.find((o) => o.classId === KEYBOARD_CLASS_ID)!);
  kbd.connect();
  assert.equal(router.keyRoute, "synthetic");
  assert.equal(router.pointerRoute, "ps2", "the mouse has not connected yet");
  router.key(0x1e, true);
  kbd.pump();
  assert.deepEqual(kbd.serio, [0x1e]);
  assert.equal(ps2.keys.length, 1);
  const ms = new LinuxMouse(guest, offers.find((o) => o.classId === MOUSE_CLASS_ID)!);
  assert.equal(ms.probe(), 0);
  router.pointer(100, 200, 0);
  ms.pump();
  assert.equal(ms.reports.length, 1);
  assert.equal(ps2.moves.length, 2);
  // The guest closes its keyboard channel (driver unloaded): keys fall back to PS/2.
  guest.close(kbd.ch);
  router.key(0x1e, false);
  assert.equal(ps2.keys.at(-1), "1e/1c/up");
  assert.equal(router.stats.keysSynthetic, 1);
  assert.equal(router.stats.keysPs2, 2);
});

Deno.test("router: without any device keys are dropped and counted", () => {
  const router = new InputRouter({});
  assert.equal(router.keyRoute, "none");
  assert.equal(router.key(0x1e, true), false);
  assert.equal(router.pointer(1, 1, 0), false);
  assert.equal(router.stats.keysDropped, 1);
  assert.equal(router.stats.pointerDropped, 1);
});
