import { deepStrictEqual, strictEqual, throws } from "node:assert/strict";
import {
  buffer,
  device,
  dwordMemory,
  eisaId,
  eisaIdValue,
  encodePkgLength,
  extendedInterrupt,
  integer,
  io,
  irq,
  irqNoFlags,
  method,
  name,
  nameString,
  pkg,
  pkgLength,
  qwordMemory,
  resourceTemplate,
  ret,
  scope,
  string,
  wordBusNumber,
} from "../../../src/machine/acpi/aml.ts";

const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join(" ");

Deno.test("PkgLength: 1/2/3/4-byte forms at their boundaries", () => {
  deepStrictEqual([...encodePkgLength(0)], [0x00]);
  deepStrictEqual([...encodePkgLength(63)], [0x3f]);
  deepStrictEqual([...encodePkgLength(64)], [0x40, 0x04]);
  deepStrictEqual([...encodePkgLength(4095)], [0x4f, 0xff]);
  deepStrictEqual([...encodePkgLength(4096)], [0x80, 0x00, 0x01]);
  deepStrictEqual([...encodePkgLength(0xf_ffff)], [0x8f, 0xff, 0xff]);
  deepStrictEqual([...encodePkgLength(0x10_0000)], [0xc0, 0x00, 0x00, 0x01]);
  deepStrictEqual([...encodePkgLength(0x0fff_ffff)], [0xcf, 0xff, 0xff, 0xff]);
  throws(() => encodePkgLength(0x1000_0000), RangeError);
  throws(() => encodePkgLength(-1), RangeError);
});

Deno.test("pkgLength(body) counts its own bytes and grows at the right body sizes", () => {
  const total = (b: number) => {
    const e = pkgLength(b);
    // Decode back.
    const n = e[0]! >> 6;
    let v = n === 0 ? e[0]! & 0x3f : e[0]! & 0xf;
    for (let i = 1; i <= n; i++) v |= e[i]! << (4 + 8 * (i - 1));
    strictEqual(v, b + e.length, `body ${b}`);
    return e.length;
  };
  strictEqual(total(0), 1);
  strictEqual(total(62), 1);
  strictEqual(total(63), 2);
  strictEqual(total(4093), 2);
  strictEqual(total(4094), 3);
  strictEqual(total(0xf_fffc), 3);
  strictEqual(total(0xf_fffd), 4);
  strictEqual(total(0x0fff_fffb), 4);
  throws(() => pkgLength(0x0fff_fffc), RangeError);
});

Deno.test("integers use the shortest prefix", () => {
  deepStrictEqual([...integer(0)], [0x00]);
  deepStrictEqual([...integer(1)], [0x01]);
  deepStrictEqual([...integer(2)], [0x0a, 0x02]);
  deepStrictEqual([...integer(0xff)], [0x0a, 0xff]);
  deepStrictEqual([...integer(0x100)], [0x0b, 0x00, 0x01]);
  deepStrictEqual([...integer(0xffff)], [0x0b, 0xff, 0xff]);
  deepStrictEqual([...integer(0x1_0000)], [0x0c, 0x00, 0x00, 0x01, 0x00]);
  deepStrictEqual([...integer(0xffff_ffff)], [0x0c, 0xff, 0xff, 0xff, 0xff]);
  deepStrictEqual([...integer(0x1_0000_0000)], [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  deepStrictEqual([...integer(0xffff_ffff_ffff_ffffn)], [0x0e, ...new Array(8).fill(0xff)]);
  throws(() => integer(-1), RangeError);
  throws(() => integer(2 ** 64), RangeError);
  throws(() => integer(1n << 64n), RangeError);
});

Deno.test("names: segments padded, root/parent prefixes, dual and multi paths", () => {
  strictEqual(hex(nameString("_SB")), "5f 53 42 5f");
  strictEqual(hex(nameString("\\_SB")), "5c 5f 53 42 5f");
  strictEqual(hex(nameString("\\_SB.COM1")), "5c 2e 5f 53 42 5f 43 4f 4d 31");
  strictEqual(hex(nameString("^^PCI0")), "5e 5e 50 43 49 30");
  strictEqual(hex(nameString("\\")), "5c 00");
  strictEqual(hex(nameString("A.B.C")), "2f 03 41 5f 5f 5f 42 5f 5f 5f 43 5f 5f 5f");
  throws(() => nameString("TOOLONG"), RangeError);
  throws(() => nameString("1ABC"), RangeError);
  throws(() => nameString("a"), RangeError);
});

Deno.test("strings, EISA IDs, buffers and packages", () => {
  strictEqual(hex(string("VMBus")), "0d 56 4d 42 75 73 00");
  throws(() => string("é"), RangeError);
  strictEqual(eisaIdValue("PNP0501"), 0x0105d041);
  strictEqual(eisaIdValue("PNP0C0C"), 0x0c0cd041);
  strictEqual(eisaIdValue("PNP0A03"), 0x030ad041);
  strictEqual(hex(eisaId("PNP0303")), "0c 41 d0 03 03");
  throws(() => eisaIdValue("pnp0501"), RangeError);
  strictEqual(hex(buffer(Uint8Array.of(1, 2, 3))), "11 06 0a 03 01 02 03");
  strictEqual(hex(pkg(integer(5), integer(0))), "12 05 02 0a 05 00");
});

Deno.test("named objects: Name, Scope, Device, Method, Return", () => {
  strictEqual(hex(name("_UID", integer(1))), "08 5f 55 49 44 01");
  strictEqual(hex(scope("\\_SB")), "10 06 5c 5f 53 42 5f");
  strictEqual(hex(device("PWRB")), "5b 82 05 50 57 52 42");
  strictEqual(
    hex(method("_STA", {}, ret(integer(0x0f)))),
    "14 09 5f 53 54 41 00 a4 0a 0f",
  );
  strictEqual(method("M", { args: 2, serialized: true })[6], 0x0a);
  throws(() => method("M", { args: 8 }), RangeError);
  // A device big enough to need a two-byte PkgLength.
  const big = device("BIG", name("DATA", buffer(new Uint8Array(100))));
  strictEqual(big[2]! >> 6, 1);
  strictEqual((big[3]! << 4) | (big[2]! & 0xf), big.length - 2);
});

Deno.test("resource descriptors", () => {
  strictEqual(hex(io(0x3f8, 0x3f8, 1, 8)), "47 01 f8 03 f8 03 01 08");
  strictEqual(hex(irqNoFlags(4)), "22 10 00");
  strictEqual(hex(irqNoFlags(1, 12)), "22 02 10");
  strictEqual(hex(irq({ edge: false, activeLow: true, shared: true }, 9)), "23 00 02 18");
  strictEqual(hex(extendedInterrupt({}, 5)), "89 06 00 03 01 05 00 00 00");
  throws(() => irqNoFlags(16), RangeError);
  const d = dwordMemory(0xf000_0000, 0x0800_0000);
  strictEqual(d.length, 26);
  strictEqual(hex(d.subarray(0, 6)), "87 17 00 00 0c 03");
  const dv = new DataView(d.buffer);
  strictEqual(dv.getUint32(10, true), 0xf000_0000);
  strictEqual(dv.getUint32(14, true), 0xf7ff_ffff);
  strictEqual(dv.getUint32(22, true), 0x0800_0000);
  throws(() => dwordMemory(0xf000_0000, 0x2000_0000), RangeError);
  const q = qwordMemory(0x2_4000_0000, 0x4000_0000);
  strictEqual(q.length, 46);
  const qv = new DataView(q.buffer);
  strictEqual(qv.getBigUint64(14, true), 0x2_4000_0000n);
  strictEqual(qv.getBigUint64(22, true), 0x2_7fff_ffffn);
  strictEqual(qv.getBigUint64(38, true), 0x4000_0000n);
  strictEqual(wordBusNumber(0, 256).length, 16);
  // ResourceTemplate = Buffer(size) { descriptors, EndTag }.
  strictEqual(hex(resourceTemplate(irqNoFlags(4))), "11 08 0a 05 22 10 00 79 00");
  strictEqual(hex(resourceTemplate()), "11 05 0a 02 79 00");
});
