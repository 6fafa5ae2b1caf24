import assert from "node:assert/strict";
import { openTap, parseNetSpec } from "../../../../src/devices/net/tap.ts";
import { UsageError } from "../../../../src/util/errors.ts";
import { parseBootArgs } from "../../../../cli.ts";

Deno.test("--net: the spec parses with defaults and every option", () => {
  const d = parseNetSpec("tap=hdtap0");
  assert.equal(d.tap, "hdtap0");
  assert.deepEqual([...d.mac], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
  assert.equal(d.queues, 1);
  assert.equal(d.mtu, 1500);
  const f = parseNetSpec("tap=t1,mac=52:54:00:AB:cd:01,queues=2,mtu=1400");
  assert.deepEqual([...f.mac], [0x52, 0x54, 0, 0xab, 0xcd, 1]);
  assert.equal(f.queues, 2);
  assert.equal(f.mtu, 1400);
  const c = parseBootArgs(["--kernel", "k", "--net", "tap=a", "--net", "tap=b,queues=3"]);
  assert.deepEqual(c.nets?.map((n) => [n.tap, n.queues]), [["a", 1], ["b", 3]]);
});

Deno.test("--net: bad specs are one clear UsageError line", () => {
  const bad: [string, RegExp][] = [
    ["mac=52:54:00:12:34:56", /names no tap device/],
    ["tap=", /not a network interface name/],
    ["tap=a/b", /not a network interface name/],
    ["tap=averyveryverylongname", /not a network interface name/],
    ["tap=t,mac=01:00:5e:00:00:01", /not a unicast address/],
    ["tap=t,mac=00:00:00:00:00:00", /not a unicast address/],
    ["tap=t,mac=52:54:00", /is not like/],
    ["tap=t,queues=0", /queues '0' is not a number from 1 to 8/],
    ["tap=t,queues=9", /from 1 to 8/],
    ["tap=t,mtu=20", /mtu '20'/],
    ["tap=t,speed=10", /unknown option 'speed'/],
  ];
  for (const [text, re] of bad) {
    assert.throws(
      () => parseNetSpec(text),
      (e: unknown) => e instanceof UsageError && re.test(e.message) && !e.message.includes("\n"),
      text,
    );
  }
});

Deno.test("--net: a tap that does not exist is a UsageError that says how to create it", () => {
  assert.throws(
    () => openTap(parseNetSpec("tap=hdnosuch9,queues=2")),
    (e: unknown) =>
      e instanceof UsageError &&
      /tap device 'hdnosuch9' does not exist; create it first: ip tuntap add dev hdnosuch9 mode tap multi_queue/
        .test(e.message),
  );
  assert.throws(
    () => openTap(parseNetSpec("tap=lo")),
    (e: unknown) => e instanceof UsageError && /'lo' is not a tap device/.test(e.message),
  );
});
