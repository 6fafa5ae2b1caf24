/**
 * The synthetic keyboard and mouse against Linux 6.1's drivers (ported probe and receive paths)
 * over a real VMBus server and the loopback ring.
 */
import assert from "node:assert/strict";
import {
  HidDeviceInfoBody,
  HidHeader,
  HidProtocolResponseBody,
  KbdKeystroke,
  KbdProtocolRequest,
  KbdProtocolResponse,
  KEYBOARD_CLASS_ID,
  KEYBOARD_INSTANCE_ID,
  MOUSE_CLASS_ID,
  MOUSE_INSTANCE_ID,
  MOUSE_REPORT_DESCRIPTOR,
  MouseButton,
  MouseReport,
  parseKeyCombos,
  SyntheticKeyboard,
  SyntheticMouse,
} from "../../../../src/devices/input/mod.ts";
import { OfferFlags } from "../../../../src/vmbus/protocol.ts";
import { LoopbackGuest } from "../../../../src/vmbus/testing/mod.ts";
import { LinuxKeyboard, LinuxMouse } from "./linux_input.ts";

function up() {
  const keyboard = new SyntheticKeyboard();
  const mouse = new SyntheticMouse();
  const { guest, server } = LoopbackGuest.create({ devices: [keyboard, mouse] });
  assert.ok(guest.connect() > 0);
  const offers = guest.requestOffers();
  const kbdOffer = offers.find((o) => o.classId === KEYBOARD_CLASS_ID)!;
  const mouseOffer = offers.find((o) => o.classId === MOUSE_CLASS_ID)!;
  return { keyboard, mouse, guest, server, kbdOffer, mouseOffer };
}

Deno.test("input protocol: struct sizes match the Linux drivers", () => {
  assert.equal(KbdProtocolRequest.size, 8);
  assert.equal(KbdProtocolResponse.size, 8);
  assert.equal(KbdKeystroke.size, 12);
  assert.equal(HidHeader.size, 16);
  assert.equal(HidProtocolResponseBody.size, 5);
  // hv_input_dev_info (32) + hid_descriptor (9) = synthhid_device_info minus its 8-byte header.
  assert.equal(HidDeviceInfoBody.size, 41);
  assert.equal(HidDeviceInfoBody.fields.bLength.offset, 32);
  assert.equal(MouseReport.size, 7);
  assert.equal(MOUSE_REPORT_DESCRIPTOR.length, 65);
  assert.equal(MOUSE_REPORT_DESCRIPTOR[14], 0x29, "SA-167 fix-up must be a no-op");
});

Deno.test("offers: Hyper-V's instance ids; the mouse is a message pipe", () => {
  const { kbdOffer, mouseOffer } = up();
  assert.equal(kbdOffer.instanceId, KEYBOARD_INSTANCE_ID);
  assert.equal(mouseOffer.instanceId, MOUSE_INSTANCE_ID);
  assert.equal(mouseOffer.channelFlags & OfferFlags.NAMED_PIPE_MODE, OfferFlags.NAMED_PIPE_MODE);
  assert.equal(new DataView(mouseOffer.userDefined.buffer).getUint32(0, true), 4);
});

Deno.test("keyboard: hyperv_keyboard probes; keys arrive as set-1 bytes with E0 and break", () => {
  const { keyboard, guest, kbdOffer } = up();
  assert.equal(keyboard.sendKey(0x1e, true), false, "no key before the guest connects");
  const linux = new LinuxKeyboard(guest, kbdOffer);
  assert.equal(keyboard.state, "opened");
  assert.equal(linux.connect(), true);
  assert.equal(keyboard.isReady, true);
  for (const e of parseKeyCombos("ctrl-alt-delete a")) keyboard.sendKey(e.scanCode, e.down);
  linux.pump();
  assert.deepEqual(linux.serio, [
    0x1d, // ctrl
    0x38, // alt
    0xe0,
    0x53, // delete
    0xe0,
    0xd3, // delete up
    0xb8, // alt up
    0x9d, // ctrl up
    0x1e,
    0x9e, // a, a up
  ]);
  assert.deepEqual(linux.errors, []);
  assert.equal(keyboard.stats.keysSent, 8);
});

Deno.test("keyboard: a version other than 1.0 is refused in-band and keys stay off", () => {
  const { keyboard, guest, kbdOffer } = up();
  const linux = new LinuxKeyboard(guest, kbdOffer);
  assert.equal(linux.connect(0x20000), false);
  assert.equal(keyboard.isReady, false);
  assert.equal(keyboard.stats.refused, 1);
});

Deno.test("keyboard: keys wait while the guest's ring is full and are not lost", () => {
  const { keyboard, guest, kbdOffer } = up();
  const linux = new LinuxKeyboard(guest, kbdOffer);
  linux.connect();
  // 36 KiB ring, 32 bytes a keystroke packet: about 1150 fit; send more without reading.
  const n = 1400;
  for (let i = 0; i < n; i++) assert.ok(keyboard.sendKey(0x1e, i % 2 === 0));
  linux.pump(); // reads, frees space, signals: the queue drains
  linux.pump();
  assert.equal(linux.serio.length, n);
  assert.equal(keyboard.stats.keysDropped, 0);
  // Close drops the queue and turns keys off.
  guest.close(linux.ch);
  assert.equal(keyboard.isReady, false);
  assert.equal(keyboard.sendKey(0x1e, true), false);
});

Deno.test("mouse: hid_hyperv probes (response ≤ 13, device info, ACK) and gets absolute reports", () => {
  const { mouse, guest, mouseOffer } = up();
  const linux = new LinuxMouse(guest, mouseOffer);
  assert.equal(linux.probe(), 0);
  assert.deepEqual(linux.errors, []);
  assert.equal(linux.vendor, 0x045e);
  assert.equal(linux.product, 0x0621);
  assert.deepEqual(linux.reportDescriptor, MOUSE_REPORT_DESCRIPTOR);
  assert.equal(mouse.isReady, true);
  mouse.sendPointer({ buttons: MouseButton.LEFT, x: 16384, y: 8192 });
  mouse.sendPointer({ buttons: 0, x: 40000, y: -5, wheel: -1 });
  linux.pump();
  assert.equal(linux.reports.length, 2);
  assert.deepEqual(MouseReport.decode(linux.reports[0]!), {
    buttons: 1,
    x: 16384,
    y: 8192,
    wheel: 0,
  });
  assert.deepEqual(MouseReport.decode(linux.reports[1]!), {
    buttons: 0,
    x: 0x7fff,
    y: 0,
    wheel: 0xffff,
  });
});

Deno.test("mouse: version 1.0 is not approved; the guest's probe fails with ENODEV", () => {
  const { mouse, guest, mouseOffer } = up();
  const linux = new LinuxMouse(guest, mouseOffer);
  assert.equal(linux.probe(0x10000), -19);
  assert.equal(mouse.isReady, false);
});

Deno.test("mouse: a full ring keeps only the newest pointer state", () => {
  const { mouse, guest, mouseOffer } = up();
  const linux = new LinuxMouse(guest, mouseOffer);
  assert.equal(linux.probe(), 0);
  for (let i = 0; i < 3000; i++) mouse.sendPointer({ buttons: 0, x: i, y: i });
  assert.ok(mouse.stats.reportsCoalesced > 0);
  linux.pump();
  linux.pump();
  const last = MouseReport.decode(linux.reports.at(-1)!)!;
  assert.equal(last.x, 2999);
  assert.equal(mouse.stats.reportsSent + mouse.stats.reportsCoalesced, 3000);
});

Deno.test("mouse: reopen after close probes again from scratch", () => {
  const { mouse, guest, mouseOffer } = up();
  const first = new LinuxMouse(guest, mouseOffer);
  assert.equal(first.probe(), 0);
  assert.ok(guest.close(first.ch));
  assert.equal(mouse.isReady, false);
  const second = new LinuxMouse(guest, mouseOffer);
  assert.equal(second.probe(), 0);
  assert.equal(mouse.isReady, true);
});
