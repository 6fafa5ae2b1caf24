import { deepStrictEqual, ok, strictEqual, throws } from "node:assert/strict";
import {
  CpioFormatError,
  CpioWriter,
  NEWC_HEADER_SIZE,
  NEWC_MAGIC,
  parseCpio,
  S_IFCHR,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  TRAILER_NAME,
} from "../../guest/kit/cpio.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);

function sample(): Uint8Array {
  return new CpioWriter()
    .dir("bin")
    .file("bin/hello", "hi!\n", 0o755)
    .file("odd", new Uint8Array([1, 2, 3, 4, 5]))
    .symlink("bin/sh", "/bin/busybox")
    .charDevice("dev-console", 5, 1)
    .finish();
}

Deno.test("cpio: what is written parses back with every field", () => {
  const entries = parseCpio(sample());
  deepStrictEqual(entries.map((e) => e.name), ["bin", "bin/hello", "odd", "bin/sh", "dev-console"]);
  const [dir, hello, odd, link, con] = entries;
  strictEqual(dir!.mode, S_IFDIR | 0o755);
  strictEqual(dir!.nlink, 2);
  strictEqual(hello!.mode, S_IFREG | 0o755);
  strictEqual(text(hello!.data), "hi!\n");
  deepStrictEqual([...odd!.data], [1, 2, 3, 4, 5]);
  strictEqual(link!.mode & S_IFMT, S_IFLNK);
  strictEqual(text(link!.data), "/bin/busybox");
  strictEqual(con!.mode, S_IFCHR | 0o600);
  strictEqual(con!.rdevMajor, 5);
  strictEqual(con!.rdevMinor, 1);
  deepStrictEqual(entries.map((e) => e.ino), [1, 2, 3, 4, 5]);
  for (const e of entries) {
    strictEqual(e.uid, 0);
    strictEqual(e.mtime, 0);
  }
});

Deno.test("cpio: newc headers are 110 ASCII bytes and records are 4-byte aligned", () => {
  const bytes = sample();
  strictEqual(bytes.length % 4, 0);
  const entries = parseCpio(bytes);
  for (const e of entries) {
    strictEqual(e.offset % 4, 0);
    const header = text(bytes.subarray(e.offset, e.offset + NEWC_HEADER_SIZE));
    ok(header.startsWith(NEWC_MAGIC));
    ok(/^[0-9A-F]{104}$/.test(header.slice(6)), header);
    const namesize = parseInt(header.slice(6 + 11 * 8, 6 + 12 * 8), 16);
    strictEqual(namesize, new TextEncoder().encode(e.name).length + 1);
    strictEqual(parseInt(header.slice(6 + 12 * 8), 16), 0); // check field
  }
  // Name "odd" (4 bytes with NUL): 110 + 4 = 114, padded to 116, then 5 bytes data padded to 8.
  const odd = entries[2]!;
  strictEqual(entries[3]!.offset - odd.offset, 116 + 8);
});

Deno.test("cpio: archive ends with an all-zero TRAILER!!! record", () => {
  const bytes = new CpioWriter().file("a", "x").finish();
  const trailer = `${NEWC_MAGIC}${"0".repeat(8 * 4)}00000001${"0".repeat(8 * 6)}0000000B${
    "0".repeat(8)
  }${TRAILER_NAME}\0`;
  const tail = text(bytes.subarray(bytes.length - 124, bytes.length - 124 + trailer.length));
  strictEqual(tail, trailer);
  strictEqual(bytes.length, 116 + 124); // "a": 110+2 → 112, data 1 → 4; trailer: 110+11 → 124
});

Deno.test("cpio: an empty archive is just the trailer", () => {
  const bytes = new CpioWriter().finish();
  strictEqual(bytes.length, 124);
  deepStrictEqual(parseCpio(bytes), []);
});

Deno.test("cpio: writer refuses duplicates, absolute and empty names", () => {
  const w = new CpioWriter().file("a", "1");
  throws(() => w.file("a", "2"), /duplicate/);
  throws(() => w.file("/etc/x", "2"), /invalid/);
  throws(() => w.file("", "2"), /invalid/);
  throws(() => w.file(TRAILER_NAME, "2"), /invalid/);
  w.finish();
  throws(() => w.file("b", "2"), /finished/);
});

Deno.test("cpio: concatenated archives (as the kernel accepts) parse in order", () => {
  const a = new CpioWriter().file("one", "1").finish();
  const b = new CpioWriter().file("two", "22").finish();
  const both = new Uint8Array(a.length + 512 + b.length); // zero padding between archives
  both.set(a, 0);
  both.set(b, a.length + 512);
  deepStrictEqual(parseCpio(both).map((e) => e.name), ["one", "two"]);
});

Deno.test("cpio: parser rejects bad magic, truncation and a missing trailer", () => {
  const good = sample();
  const badMagic = good.slice();
  badMagic[5] = "7".charCodeAt(0);
  throws(() => parseCpio(badMagic), CpioFormatError);
  throws(() => parseCpio(good.subarray(0, good.length - 124)), /TRAILER/);
  throws(() => parseCpio(good.subarray(0, 200)), CpioFormatError);
  const badHex = good.slice();
  badHex[10] = "G".charCodeAt(0);
  throws(() => parseCpio(badHex), /bad hex/);
});
