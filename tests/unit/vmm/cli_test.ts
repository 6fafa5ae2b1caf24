import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { parseSerial, parseSize } from "../../../src/vmm/config.ts";
import { openSerial, vcpuCpuid } from "../../../src/vmm/vmm.ts";
import { close, libc } from "../../../ffi/libc.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { fakeImage } from "../machine/fake_bzimage.ts";

Deno.test("boot arguments: defaults and values", () => {
  const c = parseBootArgs(["--kernel", "k", "--memory", "2G", "--cpus", "4", "--no-reboot"]);
  assert.equal(c.kernelPath, "k");
  assert.equal(c.memoryBytes, 2 * 2 ** 30);
  assert.equal(c.cpus, 4);
  assert.equal(c.noReboot, true);
  assert.equal(c.initrdPath, undefined);
  assert.deepEqual(c.serial, { kind: "stdio" });
  assert.equal(c.hv, "all");
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

Deno.test("boot --control never replaces a user's file or a live socket", async () => {
  const cli = new URL("../../../cli.ts", import.meta.url).pathname;
  // The path is checked before the kernel runs or KVM is opened: a kernel file that parses will do.
  const dir = await Deno.makeTempDir();
  const kernel = `${dir}/bzImage`;
  Deno.writeFileSync(kernel, fakeImage());
  const notes = `${dir}/notes.txt`;
  Deno.writeTextFileSync(notes, "important data\n");
  const live = Deno.listen({ transport: "unix", path: `${dir}/live.sock` });
  const cases: [string, RegExp][] = [
    [notes, /^hyperdeno: --control .*notes\.txt: a regular file is already there; refusing/],
    [`${dir}/live.sock`, /^hyperdeno: --control .*live\.sock: in use/],
  ];
  try {
    for (const [path, re] of cases) {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", cli, "boot", "--kernel", kernel, "--control", path],
        stdout: "piped",
        stderr: "piped",
        stdin: "null",
      }).output();
      const err = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 2, err);
      assert.match(err, re);
      assert.equal(err.trim().split("\n").length, 1, `one line, got: ${err}`);
    }
    assert.equal(Deno.readTextFileSync(notes), "important data\n");
    assert.ok(Deno.lstatSync(`${dir}/live.sock`).isSocket, "the live socket is still there");
  } finally {
    live.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--serial file=PATH appends to an existing file and never truncates it", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/console.log`;
  Deno.writeTextFileSync(path, "earlier run\n");
  const fd = openSerial({ serial: { kind: "file", path } });
  const line = new TextEncoder().encode("this run\n");
  assert.equal(Number(libc.write(fd, line, BigInt(line.length))), line.length);
  close(fd);
  assert.equal(Deno.readTextFileSync(path), "earlier run\nthis run\n");
  assert.throws(
    () => openSerial({ serial: { kind: "file", path: `${dir}/no/such/dir/log` } }),
    (e: unknown) => e instanceof UsageError && /--serial file=/.test(e.message),
  );
  await Deno.remove(dir, { recursive: true });
});
