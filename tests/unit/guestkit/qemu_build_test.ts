import { ok, strictEqual } from "node:assert/strict";
import {
  debSrcEntry,
  QEMU_CONFIGURE_FLAGS,
  QEMU_FIX_PATCH,
  qemuCacheKey,
} from "../../guest/machine/qemu_build.ts";

Deno.test("qemu build: the cache key names the source version and changes with it", async () => {
  const a = await qemuCacheKey("1:7.2+dfsg-7+deb12u18");
  const b = await qemuCacheKey("1:7.2+dfsg-7+deb12u19");
  ok(/^1_7\.2\+dfsg-7\+deb12u18-[0-9a-f]{16}$/.test(a), a);
  ok(a !== b);
  strictEqual(a, await qemuCacheKey("1:7.2+dfsg-7+deb12u18"));
});

Deno.test("qemu build: the fix patch says why and touches only the CR8 helper", async () => {
  const patch = await Deno.readTextFile(QEMU_FIX_PATCH);
  ok(patch.includes("tcg_handle_interrupt") && patch.includes("cpu_set_interrupt()"));
  const files = [...patch.matchAll(/^\+\+\+ (\S+)/gm)].map((m) => m[1]);
  strictEqual(files.join(), "b/target/i386/tcg/sysemu/misc_helper.c");
  ok(patch.includes("+            cpu_interrupt") === false, "the call itself is unchanged");
  ok(patch.includes("+                qemu_mutex_lock_iothread();"));
  ok(QEMU_CONFIGURE_FLAGS.includes("--target-list=x86_64-softmmu"));
});

Deno.test("qemu build: the deb-src entry covers the release, its updates and security", () => {
  const e = debSrcEntry("bookworm");
  ok(e.includes("Types: deb-src"));
  ok(e.includes("Suites: bookworm bookworm-updates"));
  ok(e.includes("Suites: bookworm-security"));
});
