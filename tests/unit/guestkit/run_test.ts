import { deepStrictEqual, strictEqual } from "node:assert/strict";
import { parseJunit, summaryLine } from "../../run.ts";

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
  });
});

Deno.test("run: summary line has the exact form", () => {
  strictEqual(summaryLine({ passed: 3, failed: 0, skipped: 0 }), "3 passed, 0 failed");
  strictEqual(summaryLine({ passed: 3, failed: 1, skipped: 2 }), "3 passed, 1 failed, 2 skipped");
});
