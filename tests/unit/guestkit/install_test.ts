/** Which Debian packages `deno task test` and `deno task demo` install, from fake host facts. */
import { deepStrictEqual, match, strictEqual } from "node:assert/strict";
import {
  type InstallFacts,
  installPackages,
  KIT_PACKAGES,
  machinePackages,
  neededPackages,
} from "../../guest/install.ts";
import { decideMachineMode, type MachineFacts } from "../../guest/machine/detect.ts";
import { timingLine } from "../../guest/demo.ts";

const NOTHING: InstallFacts = {
  kernel: false,
  staticBusybox: false,
  qemuImg: false,
  kvpDaemon: false,
  staticCompiler: false,
  iasl: false,
  objdump: false,
  ovmf: false,
  grubIsoMissing: ["grub-common", "xorriso"],
};
const EVERYTHING: InstallFacts = {
  kernel: true,
  staticBusybox: true,
  qemuImg: true,
  kvpDaemon: true,
  staticCompiler: true,
  iasl: true,
  objdump: true,
  ovmf: true,
  grubIsoMissing: [],
};

const names = (p: { name: string }[]) => p.map((n) => n.name);

Deno.test("install: a bare host gets the kit for the demo, and the test tools for the tests", () => {
  deepStrictEqual(names(neededPackages("demo", NOTHING)), ["linux-image-amd64", "busybox-static"]);
  deepStrictEqual(names(neededPackages("test", NOTHING)), [
    "linux-image-amd64",
    "busybox-static",
    "qemu-utils",
    "hyperv-daemons",
    "gcc",
    "libc6-dev",
    "acpica-tools",
    "binutils",
    "ovmf",
    "grub-common",
    "xorriso",
  ]);
});

Deno.test("install: only what is missing, nothing when everything is there", () => {
  deepStrictEqual(neededPackages("test", EVERYTHING), []);
  deepStrictEqual(neededPackages("demo", { ...EVERYTHING, qemuImg: false, kvpDaemon: false }), []);
  deepStrictEqual(names(neededPackages("test", { ...EVERYTHING, kvpDaemon: false })), [
    "hyperv-daemons",
  ]);
  deepStrictEqual(names(neededPackages("demo", { ...EVERYTHING, staticBusybox: false })), [
    "busybox-static",
  ]);
});

Deno.test("install: every package says why", () => {
  for (const p of Object.values(KIT_PACKAGES)) strictEqual(p.why.length > 20, true, p.name);
});

const PVM_NO_QEMU: MachineFacts = {
  arch: "x86_64",
  kvmPresent: true,
  kvmAccessible: true,
  kvmPvm: true,
  hardwareVirtualization: false,
  insideTestMachine: false,
  qemuPath: undefined,
  canApt: true,
  forced: undefined,
};

Deno.test("install: QEMU and a compiler exactly when the nested machine needs them", () => {
  const nested = machinePackages(decideMachineMode(PVM_NO_QEMU), EVERYTHING);
  deepStrictEqual(names(nested), ["qemu-system-x86"]);
  match(nested[0]!.why, /test machine .*because \/dev\/kvm is PVM/);
  // The machine's kvm_pin_apic_keys is built with cc: a bare host gets gcc and libc6-dev too.
  deepStrictEqual(names(machinePackages(decideMachineMode(PVM_NO_QEMU), NOTHING)), [
    "qemu-system-x86",
    "gcc",
    "libc6-dev",
  ]);
  const withQemu = decideMachineMode({ ...PVM_NO_QEMU, qemuPath: "/usr/bin/qemu" });
  deepStrictEqual(machinePackages(withQemu, EVERYTHING), []);
  deepStrictEqual(names(machinePackages(withQemu, NOTHING)), ["gcc", "libc6-dev"]);
  const hardware = decideMachineMode({
    ...PVM_NO_QEMU,
    kvmPvm: false,
    hardwareVirtualization: true,
  });
  deepStrictEqual(machinePackages(hardware, NOTHING), []);
});

Deno.test("install: HYPERDENO_TEST_NO_INSTALL says what is missing and runs nothing", async () => {
  const before = Deno.env.get("HYPERDENO_TEST_NO_INSTALL");
  Deno.env.set("HYPERDENO_TEST_NO_INSTALL", "1");
  try {
    const said: string[] = [];
    const r = await installPackages([KIT_PACKAGES.kernel], (l) => said.push(l));
    strictEqual(r.ok, false);
    match(r.problem ?? "", /linux-image-amd64 missing; not installing.*apt-get install/);
    strictEqual(said.length, 0);
    deepStrictEqual(await installPackages([], (l) => said.push(l)), { ok: true, seconds: 0 });
  } finally {
    if (before === undefined) Deno.env.delete("HYPERDENO_TEST_NO_INSTALL");
    else Deno.env.set("HYPERDENO_TEST_NO_INSTALL", before);
  }
});

Deno.test("demo: the closing line says where the time went", () => {
  strictEqual(
    timingLine({
      installing: 0,
      testMachine: 40.25,
      testMachineKernel: 22,
      guest: 51.04,
      total: 95.5,
    }),
    "where the time went: installing 0.0 s, starting the test machine 40.3 s (its kernel 22.0 s, " +
      "then Deno in it 18.3 s), booting and running the guest 51.0 s; total 95.5 s",
  );
  strictEqual(
    timingLine({ installing: 61.2, guest: 4.5, total: 70 }),
    "where the time went: installing 61.2 s, booting and running the guest 4.5 s; total 70.0 s",
  );
});
