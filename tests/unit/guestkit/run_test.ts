import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { ciSkipProblem, isCi, parseJunit, summaryLine } from "../../run.ts";

const JUNIT = `<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="deno test" tests="5" failures="1" errors="0" time="0.022">
    <testsuite name="./a_test.ts" tests="5" disabled="1" errors="0" failures="1">
        <testcase name="pass" classname="./a_test.ts" time="0.001" line="1" col="6">
        </testcase>
        <testcase name="fail &gt; x" classname="./a_test.ts" time="0.001" line="2" col="6">
            <failure message="Uncaught Error: x">Error: x</failure>
        </testcase>
        <testcase name="ign" classname="./a_test.ts" time="0.000" line="3" col="6">
            <skipped/>
        </testcase>
        <testcase name="steps" classname="./a_test.ts" time="0.001" line="4" col="6">
        </testcase>
        <testcase name="steps &gt; s1" classname="./a_test.ts" time="0.000" line="4" col="43">
        </testcase>
    </testsuite>
</testsuites>`;

Deno.test("run: junit reports count tests, not steps", () => {
  deepStrictEqual(parseJunit(JUNIT), {
    passed: 2,
    failed: 1,
    skipped: 1,
    failedNames: ["fail > x"],
    skippedNames: ["ign"],
  });
});

Deno.test("run: summary line has the exact form", () => {
  strictEqual(summaryLine({ passed: 3, failed: 0, skipped: 0 }), "3 passed, 0 failed");
  strictEqual(summaryLine({ passed: 3, failed: 1, skipped: 2 }), "3 passed, 1 failed, 2 skipped");
});

Deno.test("run: CI is any value but empty, 0 or false", () => {
  strictEqual(isCi(undefined), false);
  strictEqual(isCi(""), false);
  strictEqual(isCi("false"), false);
  strictEqual(isCi("0"), false);
  strictEqual(isCi("true"), true);
  strictEqual(isCi("1"), true);
});

Deno.test("run: CI fails on a skipped guest test unless the host is not x86-64", () => {
  const base = { ci: true, arch: "x86_64", guestSkipped: 3, why: "no qemu" };
  strictEqual(ciSkipProblem(base)?.includes("3 guest test(s) skipped (no qemu)"), true);
  strictEqual(ciSkipProblem({ ...base, ci: false }), undefined);
  strictEqual(ciSkipProblem({ ...base, arch: "aarch64" }), undefined);
  strictEqual(ciSkipProblem({ ...base, guestSkipped: 0 }), undefined);
});
