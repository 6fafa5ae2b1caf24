import assert from "node:assert/strict";
import { UsageError } from "../../../src/util/errors.ts";
import { checkSocketPath, listenUnixSocket } from "../../../src/util/unix_socket.ts";

function refused(re: RegExp) {
  return (e: unknown) => e instanceof UsageError && re.test(e.message);
}

Deno.test("socket path: a regular file is refused and left untouched", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/notes.txt`;
  Deno.writeTextFileSync(path, "important data\n");
  await assert.rejects(
    listenUnixSocket(path, "--control"),
    refused(/--control .*notes\.txt: a regular file is already there; refusing to replace it/),
  );
  assert.equal(Deno.readTextFileSync(path), "important data\n");
  // Nothing else was left behind in the directory (no private bind directory).
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["notes.txt"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("socket path: directories, symlinks and FIFOs are refused", async () => {
  const dir = await Deno.makeTempDir();
  Deno.mkdirSync(`${dir}/d`);
  Deno.writeTextFileSync(`${dir}/target`, "x");
  Deno.symlinkSync(`${dir}/target`, `${dir}/link`);
  await new Deno.Command("mkfifo", { args: [`${dir}/fifo`] }).output();
  await assert.rejects(checkSocketPath(`${dir}/d`, "--vsock"), refused(/a directory/));
  await assert.rejects(checkSocketPath(`${dir}/link`, "--vsock"), refused(/a symbolic link/));
  await assert.rejects(checkSocketPath(`${dir}/fifo`, "--vsock"), refused(/a FIFO/));
  await assert.rejects(checkSocketPath(`${dir}/none/x.sock`, "--vsock"), refused(/does not exist/));
  assert.equal(Deno.readTextFileSync(`${dir}/target`), "x");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("socket path: a live socket is refused as in use, and keeps working", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/vm.sock`;
  const first = await listenUnixSocket(path, "--control");
  try {
    await assert.rejects(listenUnixSocket(path, "--control"), refused(/in use/));
    const accepted = first.listener.accept();
    const conn = await Deno.connect({ transport: "unix", path });
    (await accepted).close();
    conn.close();
  } finally {
    first.close();
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("socket path: a stale socket is replaced; the new one is owner-only", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/vm.sock`;
  // A socket whose server is gone: a process bound it and died without unlinking it.
  const bind = `import socket,os;s=socket.socket(socket.AF_UNIX);s.bind(${
    JSON.stringify(path)
  });os._exit(0)`;
  assert.ok((await new Deno.Command("python3", { args: ["-c", bind] }).output()).success);
  assert.ok(Deno.lstatSync(path).isSocket, "stale socket present");
  assert.equal(await checkSocketPath(path, "--control"), true);
  const owned = await listenUnixSocket(path, "--control");
  try {
    const info = Deno.lstatSync(path);
    assert.ok(info.isSocket);
    assert.equal(info.mode! & 0o777, 0o600);
    const accepted = owned.listener.accept();
    const conn = await Deno.connect({ transport: "unix", path });
    (await accepted).close();
    conn.close();
  } finally {
    owned.close();
    owned.close(); // twice is fine
  }
  assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound, "removed on close");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("socket path: close leaves a path that no longer names this socket alone", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/vm.sock`;
  const owned = await listenUnixSocket(path, "--control");
  Deno.removeSync(path);
  Deno.writeTextFileSync(path, "someone else's file");
  owned.close();
  assert.equal(Deno.readTextFileSync(path), "someone else's file");
  await Deno.remove(dir, { recursive: true });
});
