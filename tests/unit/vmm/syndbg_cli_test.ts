import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { hvFeaturesOf, parseSyndbg } from "../../../src/vmm/config.ts";
import { UsageError } from "../../../src/util/errors.ts";

Deno.test("--syndbg: port alone means 127.0.0.1; options", () => {
  assert.deepEqual(parseSyndbg("50000"), { address: 0x7f000001, port: 50000, hypercalls: false });
  assert.deepEqual(parseSyndbg("127.0.0.2:1,hcalls"), {
    address: 0x7f000002,
    port: 1,
    hypercalls: true,
  });
  assert.deepEqual(parseSyndbg("192.168.1.5:50000,allow-remote"), {
    address: 0xc0a80105,
    port: 50000,
    hypercalls: false,
  });
});

const BAD: [string, RegExp][] = [
  ["", /needs \[HOST:\]PORT/],
  ["0", /port '0' is not a number from 1 to 65535/],
  ["65536", /port '65536'/],
  ["127.0.0.1:", /port ''/],
  ["127.0.0.1:http", /port 'http'/],
  ["localhost:50000", /'localhost' is not an IPv4 address/],
  ["127.0.0.256:50000", /not an IPv4 address/],
  ["0.0.0.0:50000", /not a unicast host address/],
  ["224.0.0.1:50000,allow-remote", /not a unicast/],
  ["10.0.0.1:50000", /not a loopback address.*allow-remote/],
  ["50000,fast", /unknown option 'fast'; valid: hcalls, allow-remote/],
];
for (const [text, re] of BAD) {
  Deno.test(`--syndbg rejected: '${text}'`, () => {
    assert.throws(
      () => parseSyndbg(text),
      (e: unknown) => e instanceof UsageError && re.test(e.message) && !e.message.includes("\n"),
    );
  });
}

Deno.test("--syndbg and --hv: all includes syndbg only with a debugger; mismatches refused", () => {
  const spec = parseSyndbg("50000");
  assert.equal(hvFeaturesOf({ hv: "all" }).enabled.syndbg, false);
  assert.equal(hvFeaturesOf({ hv: "all", syndbg: spec }).enabled.syndbg, true);
  assert.equal(
    hvFeaturesOf({ hv: "relaxed,vpindex,synic,syndbg", syndbg: spec }).enabled.syndbg,
    true,
  );
  for (const hv of ["none", "all,-syndbg", "relaxed,vpindex,synic"]) {
    assert.throws(
      () => hvFeaturesOf({ hv, syndbg: spec }),
      (e: unknown) =>
        e instanceof UsageError && /--syndbg needs the syndbg enlightenment/.test(e.message),
      hv,
    );
  }
  assert.throws(
    () => hvFeaturesOf({ hv: "all,syndbg" }),
    (e: unknown) => e instanceof UsageError && /--hv syndbg needs --syndbg/.test(e.message),
  );
});

Deno.test("boot --syndbg reaches the config; bad values fail at parse time", () => {
  const c = parseBootArgs(["--kernel", "k", "--syndbg", "127.0.0.1:50001,hcalls"]);
  assert.deepEqual(c.syndbg, { address: 0x7f000001, port: 50001, hypercalls: true });
  assert.equal(parseBootArgs(["--kernel", "k"]).syndbg, undefined);
  assert.throws(() => parseBootArgs(["--kernel", "k", "--syndbg", "x"]), UsageError);
  assert.throws(
    () => parseBootArgs(["--kernel", "k", "--syndbg", "50000", "--hv", "none"]),
    UsageError,
  );
});
