import { assert, assertEquals, assertFalse, assertThrows } from "./assert.ts";
import { msiAddress } from "../../../src/hyperv/shared.ts";
import { SynIC } from "../../../src/hyperv/synic.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableSynic, FakeMsi, makeMemory, makeRig } from "./fakes.ts";

const M = T.HV_MESSAGE;

function slot(rig: ReturnType<typeof makeRig>, simp: number, sint: number) {
  const bytes = rig.memory.slice(simp + sint * 256, 256);
  return { bytes, msg: M.decode(bytes)! };
}

Deno.test("SynIC registers: reset values, SVERSION read-only, RsvdP kept, EOM RsvdZ", () => {
  const rig = makeRig();
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SCONTROL), 0n);
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SVERSION), 1n);
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_SVERSION, 2n));
  for (let s = 0; s < 16; s++) assertEquals(rig.hv.rdmsr(3, T.HV_X64_MSR_SINT0 + s), 0x10000n);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SCONTROL, 0xf000_0001n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SCONTROL), 0xf000_0001n);
  assertEquals(rig.hv.rdmsr(1, T.HV_X64_MSR_SCONTROL), 0n, "per VP");
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_EOM), 0n);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_EOM, 0n));
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_EOM, 1n));
});

Deno.test("SINT writes: vector < 16 unmasked is #GP, masked is fine, RsvdP kept", () => {
  const rig = makeRig();
  assertFalse(rig.hv.wrmsr(0, T.HV_X64_MSR_SINT0, 0x0fn));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SINT0, 0x1_000fn));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SINT0 + 1, 0xff00_0000_0000_ff30n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SINT0 + 1), 0xff00_0000_0000_ff30n);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SINT0 + 2, 0x2_0040n), "AutoEOI accepted (logged)");
});

Deno.test("SIMP/SIEFP: enabling zeroes the page; RsvdP bits kept", () => {
  const rig = makeRig();
  rig.memory.slice(0x20000, 4096).fill(0xaa);
  rig.memory.slice(0x21000, 4096).fill(0xbb);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SIMP, 0x20000n | 0x10n | 1n));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SIEFP, 0x21001n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SIMP), 0x20011n);
  assert(rig.memory.slice(0x20000, 4096).every((b) => b === 0));
  assert(rig.memory.slice(0x21000, 4096).every((b) => b === 0));
  rig.memory.writeU8(0x20000 + 100, 7);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SIMP, 0x20001n), "same page again: not re-zeroed");
  assertEquals(rig.memory.readU8(0x20000 + 100), 7);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SIMP, 0x9_0000_0001n), "outside RAM: accepted");
});

Deno.test("postMessage writes the slot, publishes the type and sends the SINT's MSI", () => {
  const rig = makeRig();
  const { simp } = enableSynic(rig, 1, { sint: 2, vector: 0x41 });
  const payload = new Uint8Array([1, 2, 3, 4, 5]);
  assert(rig.hv.synic.postMessage(1, 2, 0x1234, payload));
  const { msg } = slot(rig, simp, 2);
  assertEquals(msg.messageType, 0x1234);
  assertEquals(msg.payloadSize, 5);
  assertEquals(msg.messageFlags, 0);
  assertEquals([...msg.payload.subarray(0, 5)], [1, 2, 3, 4, 5]);
  assertEquals(rig.msi.sent, [{ address: msiAddress(1), data: 0x41 }]);
  assertEquals(msiAddress(1), 0xfee01000);
  assertEquals(slot(rig, simp, 3).msg.messageType, 0, "other slots untouched");
});

Deno.test("busy slot: msg_pending set, false returned; EOM notifies; retry succeeds", () => {
  const rig = makeRig();
  const { simp } = enableSynic(rig, 0);
  const seen: number[] = [];
  rig.hv.synic.onSlotFree((vp) => seen.push(vp));
  assert(rig.hv.synic.postMessage(0, 2, 1, new Uint8Array([0xa])));
  rig.msi.clear();
  const gen = rig.hv.synic.slotFreeGeneration(0);

  assertFalse(rig.hv.synic.postMessage(0, 2, 2, new Uint8Array([0xb])));
  const { bytes, msg } = slot(rig, simp, 2);
  assertEquals(msg.messageType, 1, "first message kept");
  assertEquals(msg.messageFlags & T.HV_MESSAGE_FLAG_PENDING, 1);
  assertEquals(rig.msi.sent.length, 0, "no interrupt for an undelivered message");

  // The guest consumes the message (cmpxchg type -> NONE), sees msg_pending, writes EOM.
  M.set(bytes, 0, "messageType", T.HVMSG_NONE);
  const notified = rig.notified;
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_EOM, 0n));
  assertEquals(rig.hv.synic.slotFreeGeneration(0), gen + 1);
  assertEquals(rig.notified, notified + 1);
  assertEquals(seen, [0]);

  assert(rig.hv.synic.postMessage(0, 2, 2, new Uint8Array([0xb])));
  const again = slot(rig, simp, 2).msg;
  assertEquals(again.messageType, 2);
  assertEquals(again.messageFlags, 0, "msg_pending cleared with the new message");
  assertEquals(again.payload[0], 0xb);
});

Deno.test("masked and polling SINTs get the message without an interrupt", () => {
  const rig = makeRig();
  const { simp } = enableSynic(rig, 0, {
    sint: 3,
    vector: 0x50,
    sintFlags: T.HV_SYNIC_SINT_MASKED,
  });
  assert(rig.hv.synic.postMessage(0, 3, 9, new Uint8Array(240)));
  assertEquals(slot(rig, simp, 3).msg.messageType, 9);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SINT0 + 4, 0x50n | T.HV_SYNIC_SINT_POLLING));
  assert(rig.hv.synic.postMessage(0, 4, 9, new Uint8Array(0)));
  assertEquals(rig.msi.sent.length, 0);
});

Deno.test("postMessage refuses when SynIC or SIMP is disabled; enabling wakes senders", () => {
  const rig = makeRig();
  assertFalse(rig.hv.synic.postMessage(0, 2, 1, new Uint8Array(1)), "all disabled");
  const seen: number[] = [];
  rig.hv.synic.onSlotFree((vp) => seen.push(vp));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SIMP, 0x30001n));
  assertEquals(seen, [0], "SIMP enable wakes senders");
  assertFalse(rig.hv.synic.postMessage(0, 2, 1, new Uint8Array(1)), "SCONTROL off");
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SCONTROL, 1n));
  assertEquals(seen, [0, 0], "SCONTROL enable wakes senders");
  assert(rig.hv.synic.postMessage(0, 2, 1, new Uint8Array(1)));
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SIMP, 0x9_0000_0001n));
  assertFalse(rig.hv.synic.postMessage(0, 2, 1, new Uint8Array(1)), "SIMP outside RAM");
});

Deno.test("postMessage rejects host misuse with RangeError", () => {
  const rig = makeRig({ vpCount: 2 });
  enableSynic(rig, 0);
  const s = rig.hv.synic;
  assertThrows(() => s.postMessage(2, 0, 1, new Uint8Array(1)), RangeError);
  assertThrows(() => s.postMessage(0, 16, 1, new Uint8Array(1)), RangeError);
  assertThrows(() => s.postMessage(0, 0, 0, new Uint8Array(1)), RangeError);
  assertThrows(() => s.postMessage(0, 0, 1, new Uint8Array(241)), RangeError);
  assertThrows(() => s.signalEvent(0, 0, 2048), RangeError);
});

Deno.test("signalEvent sets the flag bit atomically and interrupts only on 0 -> 1", () => {
  const rig = makeRig();
  const { siefp } = enableSynic(rig, 2, { sint: 2, vector: 0x42 });
  rig.hv.synic.signalEvent(2, 2, 0);
  rig.hv.synic.signalEvent(2, 2, 37);
  rig.hv.synic.signalEvent(2, 2, 2047);
  const flags = rig.memory.slice(siefp + 2 * 256, 256);
  assertEquals(flags[0], 1);
  assertEquals(flags[4], 1 << 5);
  assertEquals(flags[255], 0x80);
  assertEquals(rig.msi.targets(), [[2, 0x42], [2, 0x42], [2, 0x42]]);
  rig.hv.synic.signalEvent(2, 2, 37);
  assertEquals(rig.msi.sent.length, 3, "already set: no interrupt");
  flags[4] = 0; // guest clears it
  rig.hv.synic.signalEvent(2, 2, 37);
  assertEquals(rig.msi.sent.length, 4);
  assertEquals(rig.memory.slice(siefp + 3 * 256, 256).every((b) => b === 0), true);
});

Deno.test("signalEvent is dropped while the SynIC or SIEF page is disabled", () => {
  const rig = makeRig();
  rig.hv.synic.signalEvent(0, 2, 1);
  assert(rig.hv.wrmsr(0, T.HV_X64_MSR_SCONTROL, 1n));
  rig.hv.synic.signalEvent(0, 2, 1);
  assertEquals(rig.msi.sent.length, 0);
});

Deno.test("two SynIC objects over one state: a sender in one thread sees EOM from the other", () => {
  const state = SynIC.createState(2);
  const memory = makeMemory();
  const msi = new FakeMsi();
  let notified = 0;
  const worker = new SynIC(state, { memory, msi });
  const main = new SynIC(state, { memory, msi, notifier: { notify: () => notified++ } });
  assert(worker.writeMsr(1, T.HV_X64_MSR_SIMP, 0x40001n));
  assert(worker.writeMsr(1, T.HV_X64_MSR_SINT0 + 2, 0x60n));
  assert(worker.writeMsr(1, T.HV_X64_MSR_SCONTROL, 1n));
  assertEquals(main.readMsr(1, T.HV_X64_MSR_SIMP), 0x40001n);
  assert(main.postMessage(1, 2, 5, new Uint8Array(8)));
  assertFalse(main.postMessage(1, 2, 6, new Uint8Array(8)));
  const woke: number[] = [];
  main.onSlotFree((vp) => woke.push(vp));
  main.dispatchSlotFree();
  assertEquals(woke, [1], "the worker's SIMP/SCONTROL enable counts as slot-free");
  woke.length = 0;
  main.dispatchSlotFree();
  assertEquals(woke, [], "nothing new since");
  memory.writeU32(0x40000 + 2 * 256, 0);
  assert(worker.writeMsr(1, T.HV_X64_MSR_EOM, 0n)); // worker has no notifier in this test
  main.dispatchSlotFree();
  assertEquals(woke, [1]);
  main.dispatchSlotFree();
  assertEquals(woke, [1], "once per generation");
  assert(main.postMessage(1, 2, 6, new Uint8Array(8)));
  assertEquals(notified, 0);
});
