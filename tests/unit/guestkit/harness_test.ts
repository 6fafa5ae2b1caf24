import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { parseSerial } from "../../guest/kit/markers.ts";
import { type GuestRun, QEMU_HYPERV, runProblems, vmmCommand } from "../../guest/harness.ts";

const CONSOLE = [
  "@@hyperdeno:booted 1.52",
  "@@hyperdeno:module-fail 6.1.0/kernel/drivers/hv/hv_vmbus.ko",
  "@@hyperdeno:begin",
  "@@hyperdeno:check pass vmbus up",
  "@@hyperdeno:check fail kvp answers",
  "@@hyperdeno:exit 1",
  "@@hyperdeno:end",
].join("\n");

const BOOT = { kernel: "/k", initrd: "/i", cmdline: "console=ttyS0", memory: "512M", cpus: 2 };

Deno.test("harness: hyperdeno command line follows the cli.ts boot flags", () => {
  const argv = vmmCommand("hyperdeno", BOOT);
  strictEqual(argv[0], Deno.execPath());
  ok(argv[3]!.endsWith("/cli.ts"));
  deepStrictEqual(argv.slice(4), [
    "boot",
    "--kernel",
    "/k",
    "--initrd",
    "/i",
    "--cmdline",
    "console=ttyS0",
    "--memory",
    "512M",
    "--cpus",
    "2",
    "--serial",
    "stdio",
    "--no-reboot",
  ]);
});

Deno.test("harness: --no-reboot is added once, or not at all when rebooting is wanted", () => {
  const twice = vmmCommand("hyperdeno", { ...BOOT, vmmArgs: ["--no-reboot", "--hv", "none"] });
  strictEqual(twice.filter((a) => a === "--no-reboot").length, 1);
  deepStrictEqual(twice.slice(-3), ["--no-reboot", "--hv", "none"]);
  strictEqual(vmmCommand("hyperdeno", { ...BOOT, noReboot: false }).includes("--no-reboot"), false);
  strictEqual(vmmCommand("qemu", { ...BOOT, noReboot: false }).includes("-no-reboot"), false);
});

Deno.test("harness: qemu reference command uses KVM and the Hyper-V flags when asked", () => {
  const argv = vmmCommand("qemu", { ...BOOT, ...QEMU_HYPERV });
  const at = (flag: string) => argv[argv.indexOf(flag) + 1];
  strictEqual(at("-accel"), "kvm");
  ok(at("-cpu")!.includes("hv-synic") && at("-cpu")!.endsWith("kvm=off"));
  strictEqual(at("-append"), "console=ttyS0");
  deepStrictEqual(argv.slice(-2), ["-device", "vmbus-bridge"]);
  ok(argv.includes("-no-reboot"));
});

function fakeRun(serial: string, code: number | null = 0): GuestRun {
  return {
    ...parseSerial(serial),
    vmm: "hyperdeno",
    argv: ["hyperdeno"],
    code,
    signal: null,
    timedOut: false,
    serial,
    stderr: "",
    seconds: 1,
    endToExitSeconds: undefined,
    markArrivals: new Map(),
  };
}

Deno.test("harness: a clean run has no problems", () => {
  const ok = "@@hyperdeno:booted 1\n@@hyperdeno:begin\n@@hyperdeno:check pass a\n" +
    "@@hyperdeno:exit 0\n@@hyperdeno:end\n";
  deepStrictEqual(runProblems(fakeRun(ok)), []);
});

Deno.test("harness: failed checks, module failures and bad exits are problems", () => {
  const p = runProblems(fakeRun(CONSOLE, 1));
  deepStrictEqual(p, [
    "the VMM exited with 1",
    "module failed to load: 6.1.0/kernel/drivers/hv/hv_vmbus.ko",
    "the test body exited with 1",
    "check failed: kvp answers",
  ]);
});

Deno.test("harness: a guest that never reached init or hung is a problem", () => {
  deepStrictEqual(runProblems(fakeRun("[ 0.0] Linux\n", 0)), ["the guest init never started"]);
  deepStrictEqual(runProblems(fakeRun("@@hyperdeno:booted 1\n@@hyperdeno:begin\n", null)), [
    "the VMM exited with null",
    "the test body did not finish",
  ]);
});
