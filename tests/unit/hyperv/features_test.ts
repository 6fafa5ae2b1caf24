import { assert, assertEquals, assertFalse, assertThrows } from "./assert.ts";
import {
  formatHvFeatures,
  HV_FEATURE_NAMES,
  HV_FEATURES_ALL,
  HV_FEATURES_NONE,
  hvEnabled,
  parseHvFeatures,
} from "../../../src/hyperv/features.ts";
import { UsageError } from "../../../src/util/errors.ts";

Deno.test("--hv all enables everything except syndbg, spinlocks 0x1fff", () => {
  const f = parseHvFeatures("all");
  for (const n of HV_FEATURE_NAMES) assertEquals(f.enabled[n], n !== "syndbg", n);
  assertEquals(f.spinlocks, 0x1fff);
  assertEquals(f, HV_FEATURES_ALL);
});

Deno.test("--hv none disables everything", () => {
  const f = parseHvFeatures("none");
  assertFalse(hvEnabled(f));
  assertEquals(f.spinlocks, 0xffffffff);
  assertEquals(formatHvFeatures(f), "none");
  assertEquals(f, HV_FEATURES_NONE);
});

Deno.test("--hv list, with removal, additions and spinlocks", () => {
  const f = parseHvFeatures("vpindex,synic,time,stimer,spinlocks=8191");
  assert(f.enabled.stimer && f.enabled.synic && f.enabled.time && f.enabled.vpindex);
  assertFalse(f.enabled.relaxed);
  assertEquals(f.spinlocks, 8191);
  assertEquals(formatHvFeatures(f), "vpindex,time,synic,stimer,spinlocks=0x1fff");

  const g = parseHvFeatures("all,-reset,syndbg");
  assertFalse(g.enabled.reset);
  assert(g.enabled.syndbg);
  assertEquals(parseHvFeatures("all,-spinlocks").spinlocks, 0xffffffff);
  assertEquals(parseHvFeatures(" ALL , spinlocks=0xFFFFFFFF ").spinlocks, 0xffffffff);
});

Deno.test("--hv dependency errors name the flag and what it needs", () => {
  const cases: [string, string][] = [
    ["stimer", "--hv stimer needs synic and time"],
    ["vpindex,synic,stimer", "--hv stimer needs time"],
    ["synic", "--hv synic needs vpindex"],
    ["tlbflush", "--hv tlbflush needs vpindex"],
    ["vpindex,tlbflush-ext", "--hv tlbflush-ext needs tlbflush"],
    ["ipi", "--hv ipi needs vpindex"],
    ["vpindex,synic,time,stimer-direct", "--hv stimer-direct needs stimer"],
    ["vpindex,synic,syndbg", "--hv syndbg needs relaxed"],
    ["all,-vpindex", "needs vpindex"],
  ];
  for (const [spec, msg] of cases) {
    const e = assertThrows(() => parseHvFeatures(spec), UsageError);
    assert(e.message.includes(msg), `${spec}: ${e.message}`);
  }
});

Deno.test("--hv rejects unknown names, empty items and bad spinlock counts", () => {
  assertThrows(() => parseHvFeatures("relaxed,bogus"), UsageError, "unknown enlightenment 'bogus'");
  assertThrows(() => parseHvFeatures(""), UsageError, "needs a value");
  assertThrows(() => parseHvFeatures("relaxed,,vpindex"), UsageError, "empty item");
  assertThrows(() => parseHvFeatures("spinlocks"), UsageError, "needs a value");
  assertThrows(() => parseHvFeatures("spinlocks=100"), UsageError, "from 4095");
  assertThrows(() => parseHvFeatures("spinlocks=0x100000000"), UsageError);
  assertThrows(() => parseHvFeatures("spinlocks=12abc"), UsageError);
});
