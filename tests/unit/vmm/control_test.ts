import assert from "node:assert/strict";
import {
  type ControlTarget,
  handleControlRequest,
  serveControl,
} from "../../../src/vmm/control.ts";

const target: ControlTarget = { boots: 2, cpus: 4, vmbus: undefined, ics: undefined };

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
