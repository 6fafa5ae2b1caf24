import assert from "node:assert/strict";
import { isStaticElf } from "../../guest/kit/host.ts";
import { guestTool } from "../../guest/kit/tools.ts";

const odirect = await guestTool("odirect");

Deno.test("guest tools: a missing source is a reason, not an exception", async () => {
  const t = await guestTool("no-such-tool");
  assert.equal(t.ok, false);
  assert.match(!t.ok ? t.reason : "", /tests\/guest\/tools\/no-such-tool\.c/);
});

Deno.test({
  name: "guest tools: odirect is static, writes its pattern with O_DIRECT and verifies it",
  ignore: !odirect.ok,
  async fn() {
    assert.ok(odirect.ok);
    assert.ok(isStaticElf(odirect.image));
    assert.deepEqual(await guestTool("odirect"), odirect, "the second call uses the cache");
    const dir = await Deno.makeTempDir();
    try {
      const file = `${dir}/disk`;
      await Deno.writeFile(file, new Uint8Array(1 << 20));
      const run = async (...args: string[]) => {
        const out = await new Deno.Command(odirect.path, { args, stdout: "piped" }).output();
        return { code: out.code, text: new TextDecoder().decode(out.stdout) };
      };
      const w = await run("write", file, "4608", "65536", "7");
      if (/open O_DIRECT.*Invalid argument/.test(w.text)) return; // a file system without O_DIRECT
      assert.deepEqual(w, { code: 0, text: "ok write 65536 bytes at 4608\n" });
      assert.equal((await run("read", file, "4608", "65536", "7")).code, 0);
      const wrong = await run("read", file, "4608", "65536", "8");
      assert.equal(wrong.code, 1);
      assert.match(wrong.text, /^FAIL: byte \d+ is 0x[0-9a-f]{2}, expected 0x[0-9a-f]{2}\n$/);
      // The host-side generator of the storage guest test: the top byte of an LCG per byte.
      const bytes = (await Deno.readFile(file)).subarray(4608, 4608 + 4);
      let x = 7;
      const want = [0, 0, 0, 0].map(() => {
        x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
        return x >>> 24;
      });
      assert.deepEqual([...bytes], want);
      assert.equal((await run("bogus")).code, 2);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
