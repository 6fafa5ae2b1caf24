import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { parseSerial, parseSize } from "../../../src/vmm/config.ts";
import { vcpuCpuid } from "../../../src/vmm/vmm.ts";
import { openSerial } from "../../../src/vmm/session.ts";
import { close, libc } from "../../../ffi/libc.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { fakeImage } from "../machine/fake_bzimage.ts";
import { judgeKvmHost, kvmRefusal, readKvmHostFacts } from "../../../src/kvm/host_support.ts";

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
  [[], /--kernel PATH or --firmware uefi is required/],
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

/** What `boot` says first on this host when its /dev/kvm cannot run the guest. */
const HOST_VERDICT = judgeKvmHost(readKvmHostFacts());

const CLI = new URL("../../../cli.ts", import.meta.url).pathname;

/** Runs `cli.ts` with `args`; its exit code and what it printed. */
async function runCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Asserts a usage error: exit 2 and one line on stderr matching `re`. */
async function assertUsageError(args: string[], re: RegExp): Promise<void> {
  const { code, stderr } = await runCli(args);
  assert.equal(code, 2, stderr);
  assert.match(stderr, re);
  assert.equal(stderr.trim().split("\n").length, 1, `one line, got: ${stderr}`);
}

Deno.test("the CLI prints one line and exits 2 on bad input", async () => {
  // Input errors come before the host verdict: the same answers on any host.
  const cases: [string[], RegExp][] = [
    [
      ["boot", "--kernel", "/nonexistent/vmlinuz"],
      /^hyperdeno: kernel '\/nonexistent\/vmlinuz' does not exist\n$/,
    ],
    [["boot", "--kernel", CLI], /^hyperdeno: .* is not a Linux bzImage/],
    [["boot", "--kernel", CLI, "--cpus", "0"], /^hyperdeno: --cpus: 0 is outside 1\.\.64\n$/],
    [["frob"], /^hyperdeno: unknown command 'frob'/],
  ];
  for (const [args, re] of cases) await assertUsageError(args, re);
});

Deno.test("boot --control never replaces a user's file or a live socket", async () => {
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
      await assertUsageError(["boot", "--kernel", kernel, "--control", path], re);
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

Deno.test({
  name: "boot on a host whose /dev/kvm cannot run the guest: why and what to do, exit 2, fast",
  ignore: HOST_VERDICT.ok,
  async fn() {
    if (HOST_VERDICT.ok) return;
    // A kernel that parses: the refusal comes once the inputs are checked, before anything is
    // built (a real kernel used to boot and hang silently on PVM).
    const dir = await Deno.makeTempDir();
    const kernel = `${dir}/bzImage`;
    Deno.writeFileSync(kernel, fakeImage());
    const started = performance.now();
    const out = await runCli(["boot", "--kernel", kernel, "--cpus", "2"]);
    const seconds = (performance.now() - started) / 1000;
    const err = out.stderr;
    assert.equal(out.code, 2, err);
    assert.equal(out.stdout, "", "nothing on the console");
    assert.equal(err.split("\n").filter((l) => l !== "").length, 1, err);
    assert.equal(err, `hyperdeno: ${kvmRefusal(HOST_VERDICT)}\n`);
    assert.match(err, /hardware KVM/);
    assert.match(err, /test machine/);
    assert.ok(seconds < 5, `took ${seconds.toFixed(1)} s`);
    await Deno.remove(dir, { recursive: true });
  },
});
