import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { decideMachineMode, type MachineFacts, QEMU_PACKAGE } from "../../guest/machine/detect.ts";

const HARDWARE: MachineFacts = {
  arch: "x86_64",
  kvmPresent: true,
  kvmAccessible: true,
  kvmPvm: false,
  hardwareVirtualization: true,
  insideTestMachine: false,
  qemuPath: "/usr/bin/qemu-system-x86_64",
  canApt: true,
  forced: undefined,
};
const PVM: MachineFacts = { ...HARDWARE, kvmPvm: true, hardwareVirtualization: false };

Deno.test("detect: hardware KVM runs guests directly", () => {
  strictEqual(decideMachineMode(HARDWARE).kind, "direct");
});

Deno.test("detect: PVM /dev/kvm needs the nested test machine", () => {
  const m = decideMachineMode(PVM);
  strictEqual(m.kind, "nested");
  strictEqual(m.kind === "nested" && m.install.length, 0);
  strictEqual(m.why.includes("PVM"), true);
});

Deno.test("detect: no /dev/kvm and no QEMU installs QEMU when apt can", () => {
  const m = decideMachineMode({
    ...HARDWARE,
    kvmPresent: false,
    kvmAccessible: false,
    qemuPath: undefined,
  });
  deepStrictEqual(m.kind === "nested" && m.install, [QEMU_PACKAGE]);
});

Deno.test("detect: nothing usable is a skip that says why", () => {
  const m = decideMachineMode({ ...PVM, qemuPath: undefined, canApt: false });
  strictEqual(m.kind, "skip");
  strictEqual(/PVM.*qemu-system-x86_64 is missing/.test(m.why), true, m.why);
});

Deno.test("detect: a /dev/kvm without vmx/svm is not hardware KVM", () => {
  strictEqual(decideMachineMode({ ...HARDWARE, hardwareVirtualization: false }).kind, "nested");
});

Deno.test("detect: /dev/kvm that is not writable is not usable", () => {
  const m = decideMachineMode({ ...HARDWARE, kvmAccessible: false });
  strictEqual(m.kind, "nested");
  strictEqual(m.why.includes("not read-writable"), true);
});

Deno.test("detect: inside the test machine is direct, never nested again", () => {
  strictEqual(decideMachineMode({ ...HARDWARE, insideTestMachine: true }).kind, "direct");
  // The machine's own facts decide, as they do for `boot` there: a bad /dev/kvm is a skip.
  strictEqual(decideMachineMode({ ...PVM, insideTestMachine: true }).kind, "skip");
  strictEqual(
    decideMachineMode({ ...HARDWARE, insideTestMachine: true, kvmPresent: false }).kind,
    "skip",
  );
});

Deno.test("detect: HYPERDENO_TEST_MACHINE forces a mode", () => {
  strictEqual(decideMachineMode({ ...HARDWARE, forced: "nested" }).kind, "nested");
  strictEqual(decideMachineMode({ ...PVM, forced: "direct" }).kind, "skip");
  strictEqual(decideMachineMode({ ...HARDWARE, forced: "direct" }).kind, "direct");
  const bad = decideMachineMode({ ...HARDWARE, forced: "sideways" });
  strictEqual(bad.kind === "skip" && bad.why.includes("sideways"), true);
  strictEqual(decideMachineMode({ ...HARDWARE, forced: "none" }).kind, "skip");
});

Deno.test("detect: non-x86_64 hosts skip", () => {
  strictEqual(decideMachineMode({ ...HARDWARE, arch: "aarch64" }).kind, "skip");
});
