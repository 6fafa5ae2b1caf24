/** `--disk` parsing and opening: every bad input is a UsageError that says what to do. */
import { UsageError } from "../../../../src/util/errors.ts";
import { createDisk } from "../../../../src/devices/storage/backend/create.ts";
import { openDisk, parseDiskSpec } from "../../../../src/devices/storage/backend/disk_spec.ts";
import { Qcow2Backend } from "../../../../src/devices/storage/backend/qcow2.ts";
import { RawFileBackend } from "../../../../src/devices/storage/backend/raw.ts";
import { assert, assertEquals, assertRejects, tempDir } from "./helpers.ts";

Deno.test("disk spec: keys, defaults, bare path, escaped commas", () => {
  assertEquals(parseDiskSpec("path=/d/a.img"), {
    path: "/d/a.img",
    readOnly: false,
    format: undefined,
    serial: undefined,
    lun: undefined,
    direct: false,
    sectorSize: 512,
    bus: "scsi",
  });
  assertEquals(parseDiskSpec("path=s.img,bus=sata").bus, "sata");
  const s = parseDiskSpec("a,,b.qcow2,readonly=on,format=qcow2,serial=ABC-1,lun=3,sector=4096");
  assertEquals([s.path, s.readOnly, s.format, s.serial, s.lun, s.sectorSize], [
    "a,b.qcow2",
    true,
    "qcow2",
    "ABC-1",
    3,
    4096,
  ]);
  assertEquals(parseDiskSpec("path=x,readonly=off,direct=yes").direct, true);
});

Deno.test("disk spec: bad input is refused with a clear message", async () => {
  const cases: [string, RegExp][] = [
    ["", /needs a value/],
    ["readonly=on", /needs path=FILE/],
    ["path=", /needs path=FILE/],
    ["path=a,size=3", /unknown key 'size'/],
    ["path=a,bogus", /not key=value/],
    ["path=a,path=b", /given twice/],
    ["path=a,readonly=maybe", /expected on or off/],
    ["path=a,format=vmdk", /unknown format/],
    ["path=a,serial=has space", /printable ASCII/],
    ["path=a,serial=123456789012345678901", /1 to 20/],
    ["path=a,lun=300", /0 to 254/],
    ["path=a,lun=-1", /0 to 254/],
    ["path=a,sector=1024", /512 or 4096/],
    ["path=a,format=qcow2,direct=on", /raw images only/],
    ["path=a,bus=ide", /use scsi .* or sata/],
    ["path=a,bus=sata,lun=1", /lun= is for bus=scsi/],
  ];
  for (const [text, re] of cases) await assertRejects(() => parseDiskSpec(text), UsageError, re);
});

Deno.test("disk spec: openDisk opens raw and qcow2, refuses missing files and guessed qcow2", async () => {
  using dir = tempDir();
  await assertRejects(
    () => openDisk(parseDiskSpec(`${dir.path}/none.img`)),
    UsageError,
    /file not found \(create one with 'hyperdeno create-disk/,
  );
  await assertRejects(() => openDisk(parseDiskSpec(dir.path)), UsageError, /is a directory/);
  const raw = `${dir.path}/r.img`;
  await createDisk(raw, "1M");
  const r = await openDisk(parseDiskSpec(`path=${raw},readonly=on`));
  assert(r instanceof RawFileBackend && r.readOnly);
  r.close();
  const q = `${dir.path}/q.qcow2`;
  await createDisk(q, "1M", { format: "qcow2" });
  await assertRejects(
    () => openDisk(parseDiskSpec(q)),
    UsageError,
    /looks like a qcow2 image; add format=qcow2/,
  );
  const qi = await openDisk(parseDiskSpec(`${q},format=qcow2`));
  assert(qi instanceof Qcow2Backend);
  assertEquals(qi.size, 1 << 20);
  qi.close();
  const asRaw = await openDisk(parseDiskSpec(`${q},format=raw`));
  assertEquals(asRaw.format, "raw");
  asRaw.close();
  Deno.writeFileSync(`${dir.path}/junk`, new Uint8Array(4096).fill(7));
  await assertRejects(
    () => openDisk(parseDiskSpec(`${dir.path}/junk,format=qcow2`)),
    UsageError,
    /is not a valid qcow2 image: bad magic/,
  );
});
