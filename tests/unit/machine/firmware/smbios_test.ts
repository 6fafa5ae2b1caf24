import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { sum8 } from "../../../../src/machine/acpi/tables.ts";
import { GIB } from "../../../../src/machine/layout.ts";
import { buildMemoryMap } from "../../../../src/machine/memory_map.ts";
import { buildSmbios, smbiosUuid } from "../../../../src/machine/firmware/smbios.ts";
import {
  SMBIOS_ENTRY_POINT,
  SMBIOS_TYPE0,
  SMBIOS_TYPE1,
  SMBIOS_TYPE127,
  SMBIOS_TYPE16,
  SMBIOS_TYPE17,
  SMBIOS_TYPE19,
  SMBIOS_TYPE3,
  SMBIOS_TYPE32,
  SMBIOS_TYPE4,
} from "../../../../src/machine/firmware/smbios_protocol.ts";

const UUID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

Deno.test("SMBIOS structure sizes are pinned", () => {
  deepStrictEqual(
    [
      SMBIOS_ENTRY_POINT,
      SMBIOS_TYPE0,
      SMBIOS_TYPE1,
      SMBIOS_TYPE3,
      SMBIOS_TYPE4,
      SMBIOS_TYPE16,
      SMBIOS_TYPE17,
      SMBIOS_TYPE19,
      SMBIOS_TYPE32,
      SMBIOS_TYPE127,
    ].map((l) => l.size),
    [31, 24, 27, 22, 42, 23, 40, 31, 11, 4],
  );
});

Deno.test("SMBIOS UUIDs are stored with the first three fields little-endian", () => {
  deepStrictEqual(
    [...smbiosUuid(UUID)!],
    [0x10, 0xb8, 0xa7, 0x6b, 0xad, 0x9d, 0xd1, 0x11, 0x80, 0xb4, 0, 0xc0, 0x4f, 0xd4, 0x30, 0xc8],
  );
  strictEqual(smbiosUuid("not-a-uuid"), undefined);
});

/** Walks the structure table: [type, handle, strings] per structure. */
function walk(t: Uint8Array) {
  const out: { type: number; handle: number; at: number; strings: string[] }[] = [];
  let at = 0;
  while (at < t.length) {
    const type = t[at]!, len = t[at + 1]!;
    let end = at + len;
    const strings: string[] = [];
    while (!(t[end] === 0 && t[end + 1] === 0)) {
      const z = t.indexOf(0, end);
      strings.push(new TextDecoder().decode(t.subarray(end, z)));
      end = z + 1;
      if (t[end] === 0) {
        end--;
        break;
      }
    }
    out.push({ type, handle: t[at + 2]! | (t[at + 3]! << 8), at, strings });
    at = end + 2;
  }
  return out;
}

Deno.test("SMBIOS tables: types 0 1 3 4 16 17 19 32 127, anchor checksums and counts", () => {
  const map = buildMemoryMap(6 * GIB);
  const { anchor, tables } = buildSmbios({ cpus: 2, ram: map.ram, uuid: smbiosUuid(UUID)! });
  strictEqual(sum8(anchor), 0);
  strictEqual(sum8(anchor.subarray(16)), 0);
  const s = walk(tables);
  deepStrictEqual(s.map((x) => x.type), [0, 1, 3, 4, 16, 17, 19, 19, 32, 127]);
  strictEqual(SMBIOS_ENTRY_POINT.get(anchor, 0, "structure_count"), s.length);
  strictEqual(SMBIOS_ENTRY_POINT.get(anchor, 0, "table_length"), tables.length);
  strictEqual(new Set(s.map((x) => x.handle)).size, s.length, "handles are unique");
  const t17 = s.find((x) => x.type === 17)!;
  strictEqual(SMBIOS_TYPE17.get(tables, t17.at, "size"), 6 * 1024);
  const t19 = s.filter((x) => x.type === 19);
  strictEqual(SMBIOS_TYPE19.get(tables, t19[1]!.at, "starting_address"), 4 * 1024 * 1024);
  ok(s[1]!.strings.includes("hyperdeno"));
});

const HAVE_DMIDECODE =
  new Deno.Command("sh", { args: ["-c", "command -v dmidecode"], stdout: "null" }).outputSync()
    .success;

Deno.test({
  name: "dmidecode reads the tables: UUID, product, CPU cores, memory",
  ignore: !HAVE_DMIDECODE,
}, async () => {
  const map = buildMemoryMap(20 * GIB);
  const { anchor, tables } = buildSmbios({ cpus: 3, ram: map.ram, uuid: smbiosUuid(UUID)! });
  // dmidecode's dump format: entry point at 0, table at 0x20 (the address it names).
  const dump = new Uint8Array(0x20 + tables.length);
  const ep = anchor.slice();
  SMBIOS_ENTRY_POINT.set(ep, 0, "table_address", 0x20);
  SMBIOS_ENTRY_POINT.set(ep, 0, "intermediate_checksum", 0);
  SMBIOS_ENTRY_POINT.set(ep, 0, "intermediate_checksum", (0x100 - sum8(ep.subarray(16))) & 0xff);
  SMBIOS_ENTRY_POINT.set(ep, 0, "checksum", 0);
  SMBIOS_ENTRY_POINT.set(ep, 0, "checksum", (0x100 - sum8(ep)) & 0xff);
  dump.set(ep);
  dump.set(tables, 0x20);
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeFile(file, dump);
    const out = await new Deno.Command("dmidecode", { args: ["--from-dump", file] }).output();
    const text = new TextDecoder().decode(out.stdout);
    ok(out.success, new TextDecoder().decode(out.stderr));
    if (Deno.env.get("SHOW_DMI")) console.log(text);
    ok(text.includes("SMBIOS 2.8 present."), text);
    ok(text.includes(`UUID: ${UUID}`), text);
    ok(text.includes("Product Name: hyperdeno PC (i440FX + PIIX)"), text);
    ok(text.includes("Core Count: 3"), text);
    ok(/Size: 16 GB[\s\S]*Size: 4 GB/.test(text), "two memory devices, 16 + 4 GiB");
    ok(text.includes("Range Size: 3 GB") && text.includes("Range Size: 17 GB"), text);
    ok(text.includes("System is a virtual machine"), text);
    ok(!/wrong|invalid|Invalid|truncated/.test(text + new TextDecoder().decode(out.stderr)), text);
  } finally {
    await Deno.remove(file);
  }
});
