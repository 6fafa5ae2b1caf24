/**
 * `deno task test`: the whole suite. First installs the Debian packages the tests need (apt-get,
 * as root, through `guest/install.ts`, the installer `deno task demo` shares: the kernel,
 * busybox, qemu-img, iasl, a C compiler, OVMF, GRUB's ISO tools, QEMU when needed…), so a fresh machine runs every test
 * on its first run; then the unit tests (`deno test -A tests/unit`), then the guest tests
 * (`tests/guest/**\/*_test.ts`) on a machine that can run a stock 64-bit guest: this host when its
 * /dev/kvm can (direct), else the nested QEMU test machine, else they are skipped with the reason
 * (and still counted one by one). Prints `N passed, N failed, N skipped`; exits non-zero when
 * anything failed, the reason on the last line.
 *
 * With `CI` set (not `false`/`0`), a skipped guest test or a test machine that cannot start is a
 * failure, unless the host is not x86-64.
 *
 * Environment: `HYPERDENO_TEST_MACHINE=direct|nested|none` forces the mode (anything else is a
 * usage error, exit 2); `HYPERDENO_TEST_VERBOSE=1` shows the test machine's kernel console;
 * `HYPERDENO_TEST_NO_INSTALL=1` never runs apt-get.
 * @module
 */
import { FORCED_MODES, type MachineMode } from "./guest/machine/detect.ts";
import { type PreparedHost, prepareGuestHost } from "./guest/install.ts";
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
export function parseJunit(
  xml: string,
): Counts & { failedNames: string[]; skippedNames: string[] } {
  const counts = {
    passed: 0,
    failed: 0,
    skipped: 0,
    failedNames: [] as string[],
    skippedNames: [] as string[],
  };
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
      counts.skippedNames.push(name);
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

async function denoTest(
  args: string[],
  junit: string,
  what: "unit" | "guest",
  env?: Record<string, string>,
): Promise<Counts & { code: number }> {
  await Deno.remove(junit).catch(() => {});
  const st = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", `--junit-path=${junit}`, ...args],
    cwd: REPO,
    stdin: "null",
    ...(env ? { env } : {}),
  }).spawn().status;
  return { ...(await countJunit(junit, st.code, what)), code: st.code };
}

/** Why the run fails, in the order found; the first is the last line printed. */
const failures: string[] = [];
/** Names of skipped tests, `unit:` or `guest:` first. */
const skippedNames: string[] = [];

async function countJunit(junit: string, code: number, what: string): Promise<Counts> {
  let counts: Counts = { passed: 0, failed: 0, skipped: 0 };
  try {
    const parsed = parseJunit(await Deno.readTextFile(junit));
    counts = parsed;
    if (parsed.failed > 0) {
      failures.push(`${parsed.failed} ${what} failed: ${parsed.failedNames.join("; ")}`);
    }
    skippedNames.push(...parsed.skippedNames.map((n) => `${what}: ${n}`));
  } catch {
    // no report: the run died before writing it (type error, crash)
  }
  if (code !== 0 && counts.failed === 0) {
    console.log(`${what} exited with ${code} without a failed test in its report`);
    failures.push(`${what} exited with ${code} without a failed test in its report`);
    counts.failed++;
  }
  return counts;
}

/** `CI` is set to something other than empty, `0` or `false`. */
export function isCi(value: string | undefined): boolean {
  return value !== undefined && !["", "0", "false"].includes(value.toLowerCase());
}

function add(a: Counts, b: Counts): Counts {
  return {
    passed: a.passed + b.passed,
    failed: a.failed + b.failed,
    skipped: a.skipped + b.skipped,
  };
}

/** Why the guest tests were not run, when they were not. */
let guestSkipReason: string | undefined;

async function guestTests(guestFiles: string[], prepared: PreparedHost): Promise<Counts> {
  const rel = guestFiles.map((f) => f.slice(REPO.length + 1));
  const skipAll = async (why: string): Promise<Counts> => {
    guestSkipReason = why;
    say(`SKIPPED: guest tests not run: ${why}; listing them (HYPERDENO_TEST_MACHINE=none)`);
    // Run them here with no guest allowed: every guest test registers as ignored, so the count
    // is of tests, by name, not of files.
    return await denoTest(rel, `${RESULTS}/guest.xml`, "guest", {
      HYPERDENO_TEST_MACHINE: "none",
    });
  };
  if (prepared.problem !== undefined) return await skipAll(`the guest kit: ${prepared.problem}`);
  const mode: MachineMode = prepared.mode;
  say(`guest tests: ${mode.kind} mode (${mode.why})`);
  await Deno.mkdir(RESULTS, { recursive: true });
  const junit = `${RESULTS}/guest.xml`;
  switch (mode.kind) {
    case "skip":
      return await skipAll(mode.why);
    case "direct":
      return await denoTest(rel, junit, "guest");
    case "nested": {
      say("type-checking guest tests on the host (they run with --no-check in the machine)");
      const check = await new Deno.Command(Deno.execPath(), {
        args: ["check", ...rel],
        cwd: REPO,
        stdin: "null",
      }).spawn().status;
      if (!check.success) {
        console.log("guest tests do not type-check; not booting the test machine");
        failures.push("guest tests do not type-check");
        return { passed: 0, failed: 1, skipped: 0 };
      }
      say("booting the test machine (QEMU TCG, nested SVM) to run the guest tests");
      await Deno.remove(junit).catch(() => {});
      const env: Record<string, string> = {};
      if (!Deno.stdout.isTerminal()) env.NO_COLOR = "1";
      let result: Awaited<ReturnType<typeof runInTestMachine>>;
      try {
        result = await runInTestMachine(
          [Deno.execPath(), "test", "-A", "--no-check", `--junit-path=${junit}`, ...rel],
          {
            cwd: REPO,
            // Every guest test in one machine: the suite's length, with room, is the hang guard.
            timeoutMs: 75 * 60_000,
            env,
            shares: [{ hostPath: RESULTS, writable: true }],
            verbose: Deno.env.get("HYPERDENO_TEST_VERBOSE") === "1",
            onLine: (l) => console.log(l),
          },
        );
      } catch (e) {
        // The machine could not even be started: a failure with its reason, not a stack trace.
        failures.push(`the test machine could not start: ${(e as Error).message}`);
        return { passed: 0, failed: 1, skipped: 0 };
      }
      const t = result.timings;
      console.log(
        `test machine: init after ${t.bootSeconds?.toFixed(1) ?? "?"} s, command started after ` +
          `${t.commandStartSeconds?.toFixed(1) ?? "?"} s, powered off after ` +
          `${t.totalSeconds.toFixed(1)} s`,
      );
      if (result.problem !== undefined) {
        console.log(`test machine FAILED: ${result.problem}`);
        console.log(result.report.lines.slice(-40).join("\n"));
        failures.push(`the test machine failed: ${result.problem}`);
        const partial = await countJunit(junit, 0, "guest");
        return add(partial, { passed: 0, failed: 1, skipped: 0 });
      }
      return await countJunit(junit, result.status ?? 1, "guest");
    }
  }
}

/**
 * The CI verdict on skipped guest tests: a reason to fail, or undefined. Skips are allowed only
 * on a host that is not x86-64 (no guest can run there at all).
 */
export function ciSkipProblem(
  o: { ci: boolean; arch: string; guestSkipped: number; why: string | undefined },
): string | undefined {
  if (!o.ci || o.arch !== "x86_64" || o.guestSkipped === 0) return undefined;
  return `CI: ${o.guestSkipped} guest test(s) skipped (${o.why ?? "skipped inside the run"}); ` +
    "CI must boot every guest";
}

async function main(): Promise<number> {
  const started = performance.now();
  const forced = Deno.env.get("HYPERDENO_TEST_MACHINE");
  if (forced && !(FORCED_MODES as readonly string[]).includes(forced)) {
    console.error(
      `HYPERDENO_TEST_MACHINE=${forced} is not one of ${FORCED_MODES.join(", ")}; ` +
        "unset it to let the host decide",
    );
    return 2;
  }
  const ci = isCi(Deno.env.get("CI"));
  await Deno.mkdir(RESULTS, { recursive: true });
  let total: Counts = { passed: 0, failed: 0, skipped: 0 };

  // Packages first, so that the unit tests that use them (qemu-img, iasl, busybox, the kernel,
  // the C compiler) run on a fresh machine's first run instead of skipping.
  // One installer for `test` and `demo` (guest/install.ts): what it installs and why, then QEMU
  // when guests must run in the nested test machine.
  const prepared = await prepareGuestHost("test", say);

  const unitFiles = listTests(`${REPO}/tests/unit`);
  if (unitFiles.length > 0) {
    say(`unit tests (${unitFiles.length} files): deno test -A tests/unit`);
    total = add(total, await denoTest(["tests/unit"], `${RESULTS}/unit.xml`, "unit"));
  } else {
    say("no unit tests found under tests/unit");
  }

  // The long tier (tests/guest/long: minutes-long transfers) runs only when asked, so the CI run
  // stays well inside its time limit: `deno task test:long`.
  const long = Deno.env.get("HYPERDENO_TEST_LONG") === "1";
  const guestFiles = listTests(`${REPO}/tests/guest`).filter((f) =>
    long || !f.startsWith(`${REPO}/tests/guest/long/`)
  );
  let guestSkipped = 0;
  if (guestFiles.length > 0) {
    const guest = await guestTests(guestFiles, prepared);
    guestSkipped = guest.skipped;
    total = add(total, guest);
  } else {
    say("no guest tests found under tests/guest");
  }

  say(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  if (skippedNames.length > 0) console.log(`skipped:\n  ${skippedNames.join("\n  ")}`);
  const ciProblem = ciSkipProblem({
    ci,
    arch: Deno.build.arch,
    guestSkipped,
    why: guestSkipReason,
  });
  if (ciProblem !== undefined) failures.push(ciProblem);
  console.log(summaryLine(total));
  if (total.failed > 0 && failures.length === 0) failures.push(`${total.failed} failed`);
  if (failures.length > 0) {
    console.log(`FAILED: ${failures.join("; ")}`);
    return 1;
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
