import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { parseSerial, parseSize } from "../../../src/vmm/config.ts";
import { vcpuCpuid } from "../../../src/vmm/vmm.ts";
import { UsageError } from "../../../src/util/errors.ts";

Deno.test("boot arguments: defaults and values", () => {
  const c = parseBootArgs(["--kernel", "k", "--memory", "2G", "--cpus", "4", "--no-reboot"]);
  assert.equal(c.kernelPath, "k");
  assert.equal(c.memoryBytes, 2 * 2 ** 30);
  assert.equal(c.cpus, 4);
  assert.equal(c.noReboot, true);
  assert.equal(c.initrdPath, undefined);
  assert.deepEqual(c.serial, { kind: "stdio" });
  assert.equal(c.hv, "all");
  assert.deepEqual(c.display, { kind: "none" });
  assert.deepEqual(parseBootArgs(["--kernel", "k", "--display", "bochs"]).display, {
    kind: "bochs",
    width: 1024,
    height: 768,
  });
  assert.deepEqual(parseBootArgs(["--kernel", "k", "--display", "bochs,800x600"]).display, {
    kind: "bochs",
    width: 800,
    height: 600,
  });
});

const BAD: [string[], RegExp][] = [
  [[], /--kernel PATH is required/],
  [["--kernel", "k", "--cpus", "0"], /--cpus: 0 is outside 1\.\.64/],
  [["--kernel", "k", "--cpus", "65"], /--cpus: 65 is outside/],
  [["--kernel", "k", "--cpus", "two"], /--cpus: 'two' is not a number/],
  [["--kernel", "k", "--memory", "lots"], /--memory: 'lots' is not a size/],
  [["--kernel", "k", "--serial", "tcp"], /--serial: 'tcp' is not one of/],
  [["--kernel", "k", "--frobnicate"], /Unknown option '--frobnicate'/],
  [["--kernel", "k", "extra"], /positional/],
  [["--kernel", "k", "--on-crash", "explode"], /--on-crash/],
  [["--kernel", "k", "--log-level", "chatty"], /--log-level/],
  [["--kernel", "k", "--hv", "stimer"], /stimer needs synic/],
  [["--kernel", "k", "--hv", "relaxed,warp-drive"], /warp-drive/],
  [["--kernel", "k", "--disk", "path=/x,format=vmdk"], /format/],
  [["--kernel", "k", "--shutdown-timeout", "soon"], /--shutdown-timeout/],
  [["--kernel", "k", "--rtc-offset", "yesterday"], /--rtc-offset/],
  [["--kernel", "k", "--display", "vga"], /--display: 'vga' is not one of none, bochs/],
  [["--kernel", "k", "--display", "bochs,9000x600"], /--display: mode 9000x600 is outside/],
  [["--kernel", "k", "--display", "bochs,801x600"], /multiple of 8/],
];
for (const [args, re] of BAD) {
  Deno.test(`boot arguments rejected: ${args.join(" ") || "(none)"}`, () => {
    assert.throws(
      () => parseBootArgs(args),
      (e: unknown) => e instanceof UsageError && re.test(e.message),
    );
  });
}

Deno.test("sizes and serial specs", () => {
  assert.equal(parseSize("512M", "x"), 512 * 2 ** 20);
  assert.equal(parseSize("512", "x"), 512 * 2 ** 20);
  assert.equal(parseSize("1048576K", "x"), 2 ** 30);
  assert.equal(parseSize("1GiB", "x"), 2 ** 30);
  assert.deepEqual(parseSerial("file=/tmp/c.log"), { kind: "file", path: "/tmp/c.log" });
  assert.throws(() => parseSerial("file="), UsageError);
});

Deno.test("per-vCPU CPUID carries the APIC id, CPU count and hypervisor bit", () => {
  const base = [
    { function: 1, index: 0, flags: 0, eax: 0x800f12, ebx: 0xff00_1234, ecx: 0, edx: 0 },
    { function: 0xb, index: 0, flags: 1, eax: 0, ebx: 1, ecx: 0x100, edx: 0 },
  ];
  const c = vcpuCpuid(base, 3, 4);
  assert.equal(c[0]!.ebx >>> 24, 3);
  assert.equal((c[0]!.ebx >>> 16) & 0xff, 4);
  assert.equal(c[0]!.ebx & 0xffff, 0x1234);
  assert.ok((c[0]!.ecx >>> 31) & 1);
  assert.equal(c[1]!.edx, 3);
  assert.equal(base[0]!.ebx, 0xff00_1234, "input not modified");
});

Deno.test("the CLI prints one line and exits 2 on bad input", async () => {
  const cli = new URL("../../../cli.ts", import.meta.url).pathname;
  const cases: [string[], RegExp][] = [
    [
      ["boot", "--kernel", "/nonexistent/vmlinuz"],
      /^hyperdeno: kernel '\/nonexistent\/vmlinuz' does not exist\n$/,
    ],
    [["boot", "--kernel", cli], /^hyperdeno: .* is not a Linux bzImage/],
    [["frob"], /^hyperdeno: unknown command 'frob'/],
  ];
  for (const [args, re] of cases) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, ...args],
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 2, err);
    assert.match(err, re);
    assert.equal(err.trim().split("\n").length, 1, `one line, got: ${err}`);
  }
});
