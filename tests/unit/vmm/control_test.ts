import assert from "node:assert/strict";
import { RawFileBackend } from "../../../src/devices/storage/backend/raw.ts";
import { ScsiController } from "../../../src/devices/storage/scsi/controller.ts";
import { ScsiDisk } from "../../../src/devices/storage/scsi/disk.ts";
import {
  type ControlTarget,
  handleControlRequest,
  serveControl,
} from "../../../src/vmm/control.ts";
import { MemoryBackend } from "../devices/storage/helpers.ts";

const target: ControlTarget = {
  boots: 2,
  cpus: 4,
  vmbus: undefined,
  ics: undefined,
  scsi: undefined,
};

Deno.test("control requests: screendump needs a path and a display; pci lists functions", async () => {
  assert.match(
    String((await handleControlRequest('{"cmd":"screendump"}', target)).error),
    /needs a string path/,
  );
  assert.match(
    String((await handleControlRequest('{"cmd":"screendump","path":"/tmp/x.png"}', target)).error),
    /no display \(start with --display bochs\)/,
  );
  const shown = {
    ...target,
    screendump: (p: string) => Promise.resolve({ width: p.length, height: 2 }),
  };
  assert.deepEqual(
    await handleControlRequest('{"cmd":"screendump","path":"abc"}', shown),
    { ok: true, width: 3, height: 2 },
  );
  const failing = {
    ...target,
    screendump: () => Promise.reject(new Error("screendump: the display is off (no mode set)")),
  };
  assert.deepEqual(await handleControlRequest('{"cmd":"screendump","path":"a"}', failing), {
    ok: false,
    error: "screendump: the display is off (no mode set)",
  });
  assert.deepEqual(await handleControlRequest('{"cmd":"pci"}', target), { ok: true, devices: [] });
});

Deno.test("control requests: status, unknown, malformed, no VM, no VMBus", async () => {
  assert.deepEqual(await handleControlRequest('{"cmd":"status"}', target), {
    ok: true,
    boots: 2,
    cpus: 4,
    vmbus: "not connected",
    heartbeat: null,
  });
  assert.equal((await handleControlRequest('{"cmd":"frob"}', target)).ok, false);
  assert.match(String((await handleControlRequest("{nope", target)).error), /bad request/);
  assert.match(String((await handleControlRequest("[1]", target)).error), /not an object/);
  assert.match(
    String((await handleControlRequest('{"cmd":"status"}', undefined)).error),
    /not running/,
  );
  assert.match(
    String((await handleControlRequest('{"cmd":"shutdown"}', target)).error),
    /not ready/,
  );
  assert.match(
    String((await handleControlRequest('{"cmd":"kvp-get","key":1}', target)).error),
    /VMBus/,
  );
  assert.deepEqual(await handleControlRequest('{"cmd":"channels"}', target), {
    ok: true,
    channels: [],
  });
  assert.deepEqual(await handleControlRequest('{"cmd":"disks"}', target), { ok: true, disks: [] });
});

Deno.test("control disks: per-disk counters after guest-like I/O, exact reply shape over the socket", async () => {
  const dir = await Deno.makeTempDir();
  const image = `${dir}/d0.raw`;
  Deno.writeFileSync(image, new Uint8Array(1 << 20));
  const scsi = new ScsiController();
  const d0 = new ScsiDisk(RawFileBackend.open(image));
  scsi.attach(0, d0);
  scsi.attach(2, new ScsiDisk(new MemoryBackend(1 << 20), { readOnly: true }));
  const io = (cdb: number[], bytes: number) => {
    const data = new Uint8Array(bytes);
    return d0.execute({
      cdb: Uint8Array.from(cdb),
      data: { length: bytes, segments: [data], read: () => {}, write: () => {} },
      dataLength: bytes,
    });
  };
  await io([0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0], 4096); // WRITE(10) 8 blocks at LBA 8
  await io([0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0], 8192); // READ(10) 16 blocks
  await io([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0); // SYNCHRONIZE CACHE(10)
  const path = `${dir}/ctl.sock`;
  const server = serveControl(path, () => ({ ...target, scsi }));
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    await conn.write(new TextEncoder().encode('{"cmd":"disks"}\n'));
    let text = "";
    const buf = new Uint8Array(4096);
    while (!text.includes("\n")) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    conn.close();
    assert.deepEqual(JSON.parse(text), {
      ok: true,
      disks: [
        {
          lun: 0,
          path: image,
          format: "raw",
          readonly: false,
          reads: 1,
          writes: 1,
          flushes: 1,
          bytesRead: 8192,
          bytesWritten: 4096,
          inFlight: 0,
        },
        {
          lun: 2,
          path: "",
          format: "memory",
          readonly: true,
          reads: 0,
          writes: 0,
          flushes: 0,
          bytesRead: 0,
          bytesWritten: 0,
          inFlight: 0,
        },
      ],
    });
  } finally {
    server.close();
    d0.backend.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("control socket answers JSON lines over a unix socket", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/ctl.sock`;
  const server = serveControl(path, () => target);
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    await conn.write(new TextEncoder().encode('{"cmd":"status"}\n{"cmd":"channels"}\n'));
    let text = "";
    const buf = new Uint8Array(4096);
    while (text.split("\n").length < 3) {
      const n = await conn.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    conn.close();
    const [a, b] = text.trim().split("\n").map((l) => JSON.parse(l));
    assert.equal(a.boots, 2);
    assert.deepEqual(b, { ok: true, channels: [] });
  } finally {
    server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
