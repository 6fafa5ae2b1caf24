import { deepStrictEqual, strictEqual } from "node:assert/strict";
import {
  defangMarkers,
  GUEST_MARKER_PREFIX,
  MACHINE_MARKER_PREFIX,
  parseSerial,
} from "../../guest/kit/markers.ts";

const CONSOLE = [
  "[    0.000000] Linux version 6.1.0",
  "@@hyperdeno:booted 1.52\r",
  "@@hyperdeno:module-fail 6.1.0/kernel/drivers/hv/hv_vmbus.ko",
  "@@hyperdeno:begin",
  "hello from the body",
  "@@hyperdeno:mark clocksource=hyperv_clocksource_tsc_page",
  "[    2.1] random: crng init done@@hyperdeno:check pass vmbus up",
  "@@hyperdeno:check fail kvp answers",
  "@@hyperdeno:exit 1",
  "@@hyperdeno:end",
  "[    2.5] reboot: Power down",
].join("\n");

Deno.test("markers: a console transcript parses into a report", () => {
  const r = parseSerial(CONSOLE);
  strictEqual(r.bootedAtSeconds, 1.52);
  deepStrictEqual(r.moduleFailures, ["6.1.0/kernel/drivers/hv/hv_vmbus.ko"]);
  strictEqual(r.begun, true);
  strictEqual(r.marks.get("clocksource"), "hyperv_clocksource_tsc_page");
  deepStrictEqual(r.checks, [
    { ok: true, description: "vmbus up" },
    { ok: false, description: "kvp answers" },
  ]);
  strictEqual(r.exitStatus, 1);
  strictEqual(r.ended, true);
  deepStrictEqual(r.bodyLines, ["hello from the body"]);
});

Deno.test("markers: machine and guest prefixes do not see each other", () => {
  const text = `${MACHINE_MARKER_PREFIX}:begin\n${GUEST_MARKER_PREFIX}:exit 3\n` +
    `${MACHINE_MARKER_PREFIX}:exit 0\n`;
  strictEqual(parseSerial(text, MACHINE_MARKER_PREFIX).exitStatus, 0);
  strictEqual(parseSerial(text, GUEST_MARKER_PREFIX).exitStatus, 3);
  strictEqual(parseSerial(defangMarkers(text), GUEST_MARKER_PREFIX).exitStatus, undefined);
});
