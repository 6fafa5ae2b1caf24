/**
 * Deterministic fuzzing of the synthetic keyboard and mouse through the real VMBus server:
 * mutated guest packets (odd lengths, wrong pipe and message types, truncated HID headers,
 * completions and non-in-band packet types) interleaved with host key and pointer events and
 * channel reopens. Invariants: nothing throws out of the server, no device or server internal
 * error, every host packet passes the ported Linux drivers' checks, and after the storm a fresh
 * probe still works and input still arrives.
 */
import assert from "node:assert/strict";
import {
  KEYBOARD_CLASS_ID,
  MOUSE_CLASS_ID,
  MouseReport,
  SyntheticKeyboard,
  SyntheticMouse,
} from "../../../../src/devices/input/mod.ts";
import { encodePacket } from "../../../../src/vmbus/testing/guest_ring.ts";
import { LoopbackGuest } from "../../../../src/vmbus/testing/mod.ts";
import { prng, type Rng } from "../../prng.ts";
import { LinuxKeyboard, LinuxMouse } from "./linux_input.ts";

const SEED = Number(Deno.env.get("INPUT_FUZZ_SEED") ?? 0x1e9b0a7d);
const STEPS = 6000;

function u32(b: Uint8Array, at: number, v: number): void {
  if (at + 4 <= b.length) new DataView(b.buffer, b.byteOffset).setUint32(at, v >>> 0, true);
}

/** A guest packet body built around what the drivers send, then mutated. */
function guestBody(rng: Rng, mouse: boolean): Uint8Array {
  const len = rng.pick([0, 1, 3, 4, 5, 7, 8, 11, 12, 15, 16, 17, 19, 20, 24, 33, 64, 200]);
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = rng.chance(0.7) ? 0 : rng.int(256);
  if (mouse) {
    u32(b, 0, rng.chance(0.85) ? 1 : rng.pick([0, 2, 0xffffffff]));
    u32(b, 4, rng.pick([0, 1, 9, 12, 13, 0x7fffffff, 0xffffffff, len - 8]));
    u32(b, 8, rng.pick([0, 1, 2, 3, 4, 5, 0xffffffff]));
    u32(b, 12, rng.pick([0, 1, 4, 7, 0xffffffff]));
    u32(b, 16, rng.pick([0x20000, 0x10000, 0, 0xffffffff]));
  } else {
    u32(b, 0, rng.pick([0, 1, 2, 3, 4, 5, 0xffffffff]));
    u32(b, 4, rng.pick([0x10000, 0x20000, 0, 0xffffffff]));
  }
  return b;
}

Deno.test("input fuzz: hostile guest packets never break the host or the next probe", () => {
  const rng = prng(SEED);
  const keyboard = new SyntheticKeyboard();
  const mouse = new SyntheticMouse();
  const { guest, server } = LoopbackGuest.create({ devices: [keyboard, mouse] });
  assert.ok(guest.connect() > 0);
  const offers = guest.requestOffers();
  const kbdOffer = offers.find((o) => o.classId === KEYBOARD_CLASS_ID)!;
  const mouseOffer = offers.find((o) => o.classId === MOUSE_CLASS_ID)!;
  let kbd = new LinuxKeyboard(guest, kbdOffer);
  let ms = new LinuxMouse(guest, mouseOffer);
  kbd.connect();
  ms.probe();
  for (let step = 0; step < STEPS; step++) {
    const ctx = `seed 0x${SEED.toString(16)} step ${step}`;
    switch (rng.int(8)) {
      case 0:
      case 1:
      case 2: { // hostile packet to one device, sometimes of another VMBus type
        const toMouse = rng.chance(0.5);
        const body = guestBody(rng, toMouse);
        const ch = toMouse ? ms.ch : kbd.ch;
        const type = rng.pick([6, 6, 6, 6, 11, 7, 9]);
        if (type === 6) ch.send(body, { completionRequested: rng.chance(0.5) });
        else if (type === 11) ch.complete(BigInt(rng.int(1000)), body);
        else {
          // A descriptor with no ranges: structurally valid, not what an input device takes.
          ch.sendRaw(encodePacket(type, 0, 1n, new Uint8Array(8), body));
        }
        break;
      }
      case 3:
        keyboard.sendKey(rng.pick([0x1e, 0xe053, 0x2a, 0xe11d, 0x7f]), rng.chance(0.5));
        break;
      case 4:
        mouse.sendPointer({
          buttons: rng.int(256),
          x: rng.pick([0, 100, 32767, 99999, -1, NaN]),
          y: rng.int(40000),
          wheel: rng.pick([0, 1, -1, 1e9]),
        });
        break;
      case 5:
        kbd.pump();
        ms.pump();
        break;
      case 6:
        if (rng.chance(0.05)) {
          guest.close(kbd.ch);
          kbd = new LinuxKeyboard(guest, kbdOffer);
          kbd.connect();
        }
        break;
      case 7:
        if (rng.chance(0.05)) {
          guest.close(ms.ch);
          ms = new LinuxMouse(guest, mouseOffer);
          ms.probe();
        }
        break;
    }
    assert.equal(server.stats.deviceErrors, 0, ctx);
    assert.equal(server.stats.internalErrors, 0, ctx);
  }
  kbd.pump();
  ms.pump();
  // Every host packet passed the drivers' checks (the mouse model flags oversize answers,
  // reports longer than their packet, device infos too small).
  assert.deepEqual(ms.errors.filter((e) => !e.startsWith("unsupported")), []);
  assert.ok(keyboard.stats.malformed + mouse.stats.malformed > 100, "the fuzz reached the parsers");
  // A fresh driver binds and input flows.
  guest.close(kbd.ch);
  guest.close(ms.ch);
  const k2 = new LinuxKeyboard(guest, kbdOffer);
  assert.equal(k2.connect(), true);
  keyboard.sendKey(0x1e, true);
  k2.pump();
  assert.deepEqual(k2.serio, [0x1e]);
  const m2 = new LinuxMouse(guest, mouseOffer);
  assert.equal(m2.probe(), 0);
  mouse.sendPointer({ buttons: 1, x: 5, y: 6 });
  m2.pump();
  assert.equal(MouseReport.decode(m2.reports.at(-1)!)!.x, 5);
});
