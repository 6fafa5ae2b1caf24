/** `--vnc` / `--vnc-password` parsing, the control socket's input commands, and startConsole. */
import assert from "node:assert/strict";
import { parseBootArgs } from "../../../cli.ts";
import { handleControlRequest } from "../../../src/vmm/control.ts";
import { startConsole } from "../../../src/vmm/console.ts";
import { UsageError } from "../../../src/util/errors.ts";
import { InputRouter, type Ps2Input } from "../../../src/devices/input/mod.ts";

Deno.test("--vnc: unix socket, loopback TCP, remote only with a password", () => {
  assert.deepEqual(parseBootArgs(["--kernel", "k", "--vnc", "unix:/tmp/v.sock"]).vnc, {
    kind: "unix",
    path: "/tmp/v.sock",
  });
  assert.deepEqual(parseBootArgs(["--kernel", "k", "--vnc", "127.0.0.1:5901"]).vnc, {
    kind: "tcp",
    hostname: "127.0.0.1",
    port: 5901,
    loopback: true,
  });
  const remote = parseBootArgs(["--kernel", "k", "--vnc", "0.0.0.0:5900", "--vnc-password", "pw"]);
  assert.equal(remote.vncPassword, "pw");
  for (
    const [args, re] of [
      [["--vnc", "0.0.0.0:5900"], /not a loopback address.*--vnc-password/],
      [["--vnc", "localhost:5900"], /not unix:PATH or IPV4:PORT/],
      [["--vnc", "127.0.0.1:70000"], /not unix:PATH or IPV4:PORT/],
      [["--vnc", "unix:"], /needs a socket path/],
      [["--vnc-password", "x"], /needs --vnc/],
      [["--vnc", "127.0.0.1:5900", "--vnc-password", "123456789"], /1 to 8 bytes/],
    ] as const
  ) {
    assert.throws(() => parseBootArgs(["--kernel", "k", ...args]), (e) => {
      assert.ok(e instanceof UsageError);
      assert.match(e.message, re);
      return true;
    });
  }
});

Deno.test("startConsole refuses to replace a file that is not a socket, and keeps it", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/precious.txt`;
  Deno.writeTextFileSync(path, "keep me");
  try {
    await assert.rejects(
      () => startConsole({ vnc: { kind: "unix", path } }, { input: undefined }),
      /a regular file is already there; refusing to replace it/,
    );
    assert.equal(Deno.readTextFileSync(path), "keep me");
    const sock = `${dir}/vnc.sock`;
    const fe = await startConsole({ vnc: { kind: "unix", path: sock } }, { input: undefined });
    assert.ok(Deno.lstatSync(sock).isSocket);
    fe.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("control socket: send-keys, type, pointer, input go through the router", async () => {
  const got: string[] = [];
  const ps2: Ps2Input = {
    ps2Key: (s1, _s2, down) => (got.push(`${s1.toString(16)}${down ? "+" : "-"}`), true),
    ps2Mouse: () => true,
  };
  const input = new InputRouter({ ps2 });
  const target = { boots: 1, cpus: 1, vmbus: undefined, ics: undefined, scsi: undefined, input };
  const r = await handleControlRequest('{"cmd":"send-keys","keys":"ctrl-alt-delete"}', target);
  assert.deepEqual(r, { ok: true, events: 6, route: "ps2" });
  assert.deepEqual(got, ["1d+", "38+", "e053+", "e053-", "38-", "1d-"]);
  assert.deepEqual(await handleControlRequest('{"cmd":"type","text":"A"}', target), {
    ok: true,
    events: 4,
    route: "ps2",
  });
  assert.match(
    String((await handleControlRequest('{"cmd":"send-keys","keys":"ctrl-frob"}', target)).error),
    /unknown key 'frob'/,
  );
  assert.match(
    String((await handleControlRequest('{"cmd":"type","text":"é"}', target)).error),
    /cannot type/,
  );
  assert.equal((await handleControlRequest('{"cmd":"pointer","x":1,"y":2}', target)).ok, true);
  assert.equal((await handleControlRequest('{"cmd":"pointer","x":"a"}', target)).ok, false);
  assert.equal((await handleControlRequest('{"cmd":"input"}', target)).keyRoute, "ps2");
});
