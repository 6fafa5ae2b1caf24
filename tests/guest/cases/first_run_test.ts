/**
 * First run (issue #20): `boot` says what it starts, on stderr at the default log level, before
 * the guest prints anything; where /dev/kvm runs the guest, `doctor` says so and a bad kernel is
 * still one line and exit 2 (on a host that cannot, `boot` refuses first: tests/unit/vmm).
 */
import assert from "node:assert/strict";
import { BASE_CMDLINE, CLI_PATH, guestEnvironment, runHyperdeno, vmmCommand } from "../harness.ts";
import { findHostKernel } from "../kit/host.ts";
import { initramfsFile } from "../kit/initramfs.ts";
import { GUEST_MARKER_PREFIX } from "../kit/markers.ts";

const ignore = !guestEnvironment().ok;

/** Reads a stream to its end, noting when its first bytes arrived. */
async function drain(
  stream: ReadableStream<Uint8Array>,
  start: number,
): Promise<{ text: string; firstAt: number | undefined }> {
  let text = "";
  let firstAt: number | undefined;
  const decoder = new TextDecoder();
  for await (const chunk of stream) {
    firstAt ??= (performance.now() - start) / 1000;
    text += decoder.decode(chunk, { stream: true });
  }
  return { text, firstAt };
}

Deno.test({
  name: "boot prints its start line on stderr before the guest prints anything",
  ignore,
  async fn() {
    const kernel = findHostKernel().path;
    const initrd = await initramfsFile({
      script: "hd_mark up 1",
      markerPrefix: GUEST_MARKER_PREFIX,
    });
    const control = await Deno.makeTempFile({ prefix: "hyperdeno-first-run-", suffix: ".sock" });
    await Deno.remove(control);
    const argv = vmmCommand("hyperdeno", {
      kernel,
      initrd,
      cmdline: `${BASE_CMDLINE} quiet`,
      memory: "512M",
      cpus: 2,
      vmmArgs: ["--control", control],
    });
    const start = performance.now();
    const child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), 180_000);
    const [out, err, status] = await Promise.all([
      drain(child.stdout, start),
      drain(child.stderr, start),
      child.status,
    ]);
    clearTimeout(timer);
    const ctx = `stderr:\n${err.text}\nconsole tail:\n${out.text.slice(-2000)}`;
    assert.equal(status.code, 0, ctx);
    assert.match(out.text, /@@hyperdeno:mark up=1/, ctx);
    const first = err.text.split("\n")[0];
    assert.equal(
      first,
      `hyperdeno: starting kernel ${kernel}, initrd ${initrd}; 512 MiB, 2 vCPUs; ` +
        "devices: COM1, RTC, i8042, i440FX/PIIX (ACPI PM), VMBus (shutdown, timesync, " +
        "heartbeat, KVP, file copy, VSS, dynamic memory, keyboard, mouse, video); " +
        "Hyper-V: all; console: stdio; " +
        `control: ${control}`,
      ctx,
    );
    assert.ok(
      err.firstAt !== undefined && out.firstAt !== undefined && err.firstAt < out.firstAt,
      `start line at ${err.firstAt} s, first console bytes at ${out.firstAt} s`,
    );
    console.log(
      `start line after ${err.firstAt?.toFixed(1)} s, guest's first console bytes after ` +
        `${out.firstAt?.toFixed(1)} s, exit after ${
          ((performance.now() - start) / 1000).toFixed(1)
        } s`,
    );
  },
});

Deno.test({
  name: "where /dev/kvm runs the guest: doctor says so, a bad kernel is one line and exit 2",
  ignore,
  async fn() {
    const doctor = await runHyperdeno(["doctor"]);
    assert.equal(doctor.code, 0, doctor.stdout + doctor.stderr);
    assert.match(doctor.stdout, /^verdict: this host can run stock 64-bit guests directly\.$/m);
    const cases: [string[], RegExp][] = [
      [
        ["boot", "--kernel", "/nonexistent/vmlinuz"],
        /^hyperdeno: kernel '\/nonexistent\/vmlinuz' does not exist\n$/,
      ],
      [["boot", "--kernel", CLI_PATH], /^hyperdeno: .* is not a Linux bzImage[^\n]*\n$/],
    ];
    for (const [args, re] of cases) {
      const r = await runHyperdeno(args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, re);
      assert.equal(r.stdout, "");
    }
  },
});
