/**
 * `deno task test`: the whole suite. Unit tests first (`deno test -A tests/unit`), then the guest
 * tests (`tests/guest/**\/*_test.ts`) on a machine that can run a stock 64-bit guest: this host
 * when its /dev/kvm can (direct), else the nested QEMU test machine, else they are skipped with
 * the reason. Installs missing Debian packages it needs (apt-get, as root; `guest/install.ts`,
 * shared with `deno task demo`). Ends with the line `N passed, N failed, N skipped` and exits
 * non-zero when anything failed.
 *
 * Environment: `HYPERDENO_TEST_MACHINE=direct|nested` forces the mode; `HYPERDENO_TEST_VERBOSE=1`
 * shows the test machine's kernel console; `HYPERDENO_TEST_NO_INSTALL=1` never runs apt-get.
 * @module
 */
import type { MachineMode } from "./guest/machine/detect.ts";
import { prepareGuestHost } from "./guest/install.ts";
import { runInTestMachine } from "./guest/machine/test_machine.ts";

/** Test counts. */
export interface Counts {
  passed: number;
  failed: number;
  skipped: number;
}

function unescapeXml(s: string): string {
  return s.replaceAll("&lt;", "<").replaceAll("&gt;", ">").replaceAll("&quot;", '"')
    .replaceAll("&apos;", "'").replaceAll("&amp;", "&");
}

/**
 * Counts the test cases of a `deno test --junit-path` report. Steps (reported as `parent > step`
 * right after their parent) are not counted on their own; a failed step fails its test anyway.
 */
export function parseJunit(xml: string): Counts & { failedNames: string[] } {
  const counts = { passed: 0, failed: 0, skipped: 0, failedNames: [] as string[] };
  const re = /<testcase name="([^"]*)"[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g;
  const tops: string[] = [];
  for (const m of xml.matchAll(re)) {
    const name = unescapeXml(m[1]!);
    const body = m[3] ?? "";
    if (tops.some((t) => name.startsWith(`${t} > `))) continue;
    tops.push(name);
    if (body.includes("<failure") || body.includes("<error")) {
      counts.failed++;
      counts.failedNames.push(name);
    } else if (body.includes("<skipped")) {
      counts.skipped++;
    } else {
      counts.passed++;
    }
  }
  return counts;
}

/** The final summary line. */
export function summaryLine(c: Counts): string {
  return `${c.passed} passed, ${c.failed} failed` + (c.skipped > 0 ? `, ${c.skipped} skipped` : "");
}

const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const RESULTS = `${REPO}/build/test-results`;

function say(msg: string): void {
  console.log(`\n==> ${msg}`);
}

function listTests(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(d)];
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory) walk(`${d}/${e.name}`);
      else if (/_test\.(ts|js|mts)$/.test(e.name)) out.push(`${d}/${e.name}`);
    }
  };
  walk(dir);
  return out.sort();
}

async function denoTest(args: string[], junit: string): Promise<Counts & { code: number }> {
  await Deno.remove(junit).catch(() => {});
  const st = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", `--junit-path=${junit}`, ...args],
    cwd: REPO,
    stdin: "null",
  }).spawn().status;
  return { ...(await countJunit(junit, st.code, "deno test")), code: st.code };
}

async function countJunit(junit: string, code: number, what: string): Promise<Counts> {
  let counts: Counts = { passed: 0, failed: 0, skipped: 0 };
  try {
    counts = parseJunit(await Deno.readTextFile(junit));
  } catch {
    // no report: the run died before writing it (type error, crash)
  }
  if (code !== 0 && counts.failed === 0) {
    console.log(`${what} exited with ${code} without a failed test in its report`);
    counts.failed++;
  }
  return counts;
}

function add(a: Counts, b: Counts): Counts {
  return {
    passed: a.passed + b.passed,
    failed: a.failed + b.failed,
    skipped: a.skipped + b.skipped,
  };
}

async function guestTests(guestFiles: string[]): Promise<Counts> {
  const skipAll = (why: string): Counts => {
    say(`SKIPPED: ${guestFiles.length} guest test file(s) not run: ${why}`);
    return { passed: 0, failed: 0, skipped: guestFiles.length };
  };
  // Installs the guest kit's packages, and QEMU when the nested test machine is needed.
  const prepared = await prepareGuestHost("test", say);
  if (prepared.problem !== undefined) return skipAll(`the guest kit: ${prepared.problem}`);
  const mode: MachineMode = prepared.mode;
  say(`guest tests: ${mode.kind} mode (${mode.why})`);
  await Deno.mkdir(RESULTS, { recursive: true });
  const junit = `${RESULTS}/guest.xml`;
  const rel = guestFiles.map((f) => f.slice(REPO.length + 1));
  switch (mode.kind) {
    case "skip":
      return skipAll(mode.why);
    case "direct":
      return await denoTest(rel, junit);
    case "nested": {
      say("type-checking guest tests on the host (they run with --no-check in the machine)");
      const check = await new Deno.Command(Deno.execPath(), {
        args: ["check", ...rel],
        cwd: REPO,
        stdin: "null",
      }).spawn().status;
      if (!check.success) {
        console.log("guest tests do not type-check; not booting the test machine");
        return { passed: 0, failed: 1, skipped: 0 };
      }
      say("booting the test machine (QEMU TCG, nested SVM) to run the guest tests");
      await Deno.remove(junit).catch(() => {});
      const env: Record<string, string> = {};
      if (!Deno.stdout.isTerminal()) env.NO_COLOR = "1";
      const result = await runInTestMachine(
        [Deno.execPath(), "test", "-A", "--no-check", `--junit-path=${junit}`, ...rel],
        {
          cwd: REPO,
          env,
          shares: [{ hostPath: RESULTS, writable: true }],
          verbose: Deno.env.get("HYPERDENO_TEST_VERBOSE") === "1",
          onLine: (l) => console.log(l),
        },
      );
      const t = result.timings;
      console.log(
        `test machine: init after ${t.bootSeconds?.toFixed(1) ?? "?"} s, command started after ` +
          `${t.commandStartSeconds?.toFixed(1) ?? "?"} s, powered off after ` +
          `${t.totalSeconds.toFixed(1)} s`,
      );
      if (result.problem !== undefined) {
        console.log(`test machine FAILED: ${result.problem}`);
        console.log(result.report.lines.slice(-40).join("\n"));
        const partial = await countJunit(junit, 0, "guest deno test");
        return add(partial, { passed: 0, failed: 1, skipped: 0 });
      }
      return await countJunit(junit, result.status ?? 1, "guest deno test");
    }
  }
}

async function main(): Promise<number> {
  const started = performance.now();
  await Deno.mkdir(RESULTS, { recursive: true });
  let total: Counts = { passed: 0, failed: 0, skipped: 0 };

  const unitFiles = listTests(`${REPO}/tests/unit`);
  if (unitFiles.length > 0) {
    say(`unit tests (${unitFiles.length} files): deno test -A tests/unit`);
    total = add(total, await denoTest(["tests/unit"], `${RESULTS}/unit.xml`));
  } else {
    say("no unit tests found under tests/unit");
  }

  const guestFiles = listTests(`${REPO}/tests/guest`);
  if (guestFiles.length > 0) {
    total = add(total, await guestTests(guestFiles));
  } else {
    say("no guest tests found under tests/guest");
  }

  say(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  console.log(summaryLine(total));
  return total.failed > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main());
