/**
 * Firmware boot (issue: firmware boot): `boot --firmware uefi` starts Debian's OVMF from flash
 * with fw_cfg, the CFI flash over the `--efi-vars` file, ACPI through the table-loader and
 * SMBIOS. With no boot media the firmware ends in its built-in UEFI shell on COM1, which the test
 * drives as a user would:
 *
 * 1. First VMM run: BdsDxe starts the shell; `smbiosview -t 1` shows our UUID and maker (SMBIOS
 *    through fw_cfg); `dmem` shows an ACPI 2.0 table (ACPI through the table-loader);
 *    `set HDMVAR …` stores a non-volatile shell variable (a UEFI variable, written through the
 *    flash); `reset` reboots the guest and the shell still sees the variable; SIGTERM ends it.
 * 2. The vars file now differs from the template and holds the variable's name.
 * 3. Second VMM run on the same file (`--no-reboot`): `set` still lists the variable; `reset`
 *    exits 0.
 */
import assert from "node:assert/strict";
import { CLI_PATH, guestEnvironment } from "../harness.ts";

const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const env = guestEnvironment();
const haveOvmf = (() => {
  try {
    return Deno.statSync("/usr/share/OVMF/OVMF_CODE_4M.fd").isFile;
  } catch {
    return false;
  }
})();

/** Strips the terminal escapes OVMF's console driver emits. */
function plain(s: string): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/\x1b\[[0-9;?=]*[A-Za-z]/g, "").replace(/\r/g, "");
}

interface Step {
  /** Wait until the console (since the previous step) matches this. */
  readonly until: RegExp;
  /** Then type this (each character as a key), or send this signal. */
  readonly send?: string;
  readonly signal?: Deno.Signal;
}

/** Runs the VMM with COM1 on stdio, walks the steps, returns the console and exit code. */
async function drive(args: string[], steps: Step[], timeoutMs: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI_PATH, "boot", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  const decoder = new TextDecoder();
  let consoleText = "";
  let from = 0;
  const t0 = performance.now();
  const seen: { step: number; seconds: number }[] = [];
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const stderrP = new Response(child.stderr).text();
  let step = 0;
  const reader = child.stdout.getReader();
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      consoleText += decoder.decode(value, { stream: true });
      while (step < steps.length) {
        const text = plain(consoleText.slice(from));
        const m = steps[step]!.until.exec(text);
        if (!m) break;
        from = consoleText.length;
        seen.push({ step, seconds: (performance.now() - t0) / 1000 });
        const s = steps[step]!;
        step++;
        if (s.send !== undefined) {
          // A key at a time, as typed: the shell reads its console one key per poll.
          for (const ch of s.send) {
            await writer.write(new TextEncoder().encode(ch));
            await new Promise((r) => setTimeout(r, 30));
          }
        }
        if (s.signal) child.kill(s.signal);
      }
    }
  } finally {
    clearTimeout(timer);
    await writer.close().catch(() => {});
  }
  const status = await child.status;
  return {
    code: status.code,
    signal: status.signal,
    console: plain(consoleText),
    stderr: await stderrP,
    stepsDone: step,
    seen,
  };
}

const SHELL = /Shell> *$/m;

Deno.test({
  name:
    "UEFI: OVMF boots to its shell; SMBIOS and ACPI from fw_cfg; a variable survives reboot and VMM restart",
  ignore: !env.ok || !haveOvmf,
}, async () => {
  const dir = await Deno.makeTempDir();
  const vars = `${dir}/vm.vars`;
  try {
    const common = ["--firmware", "uefi", "--efi-vars", vars, "--memory", "512M", "--hv", "none"];
    const run1 = await drive(common, [
      { until: /BdsDxe: (loading|starting) Boot[0-9A-F]{4} "EFI Internal Shell"/ },
      { until: /Press ESC in \d+ seconds|Shell>/, send: "\x1b" },
      { until: SHELL, send: "smbiosview -t 1\r" },
      { until: SHELL, send: "dmem\r" },
      { until: SHELL, send: "set HDMVAR persisted-42\r" },
      { until: SHELL, send: "reset\r" },
      { until: /BdsDxe: (loading|starting) Boot[0-9A-F]{4} "EFI Internal Shell"/ },
      { until: /Press ESC in \d+ seconds|Shell>/, send: "\x1b" },
      { until: SHELL, send: "set\r" },
      { until: /HDMVAR[\s\S]*Shell> *$/m, signal: "SIGTERM" },
    ], 900_000);
    const ctx = `\n--- console (last 3000) ---\n${run1.console.slice(-3000)}\n--- stderr ---\n${
      run1.stderr.slice(-2000)
    }`;
    console.log(`run 1 step times (s): ${run1.seen.map((s) => s.seconds.toFixed(1)).join(" ")}`);
    assert.equal(run1.stepsDone, 10, `run 1 stopped at step ${run1.stepsDone}${ctx}`);
    assert.match(run1.console, /Manufacturer: hyperdeno/, `SMBIOS type 1 maker${ctx}`);
    assert.match(run1.console, /ProductName: hyperdeno PC \(i440FX \+ PIIX\)/, ctx);
    // The firmware installed ACPI (from the table-loader: OVMF has no tables of its own here).
    assert.match(run1.console, /ACPI 2\.0 Table\s*:?\s*0*[1-9A-F][0-9A-F]*/i, `dmem: ACPI${ctx}`);
    assert.match(run1.console, /HDMVAR\s*=\s*persisted-42/, ctx);

    const after = await Deno.readFile(vars);
    const template = await Deno.readFile(OVMF_VARS);
    assert.equal(after.length, template.length, "the vars file keeps its size");
    assert.notDeepEqual(after, template, "OVMF wrote to the variable store");
    const name = new Uint8Array([..."HDMVAR"].flatMap((c) => [c.charCodeAt(0), 0]));
    const hay = Array.from(after).join(",");
    assert.ok(hay.includes(Array.from(name).join(",")), "the variable's name is in the file");

    const run2 = await drive([...common, "--no-reboot"], [
      { until: /Press ESC in \d+ seconds|Shell>/, send: "\x1b" },
      { until: SHELL, send: "set\r" },
      { until: /HDMVAR[\s\S]*Shell> *$/m, send: "reset\r" },
    ], 600_000);
    const ctx2 = `\n--- console ---\n${run2.console.slice(-3000)}\n--- stderr ---\n${
      run2.stderr.slice(-2000)
    }`;
    console.log(`run 2 step times (s): ${run2.seen.map((s) => s.seconds.toFixed(1)).join(" ")}`);
    assert.equal(run2.stepsDone, 3, ctx2);
    assert.match(run2.console, /HDMVAR\s*=\s*persisted-42/, ctx2);
    assert.equal(run2.code, 0, ctx2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
