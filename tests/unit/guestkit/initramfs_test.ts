import { deepStrictEqual, ok, strictEqual } from "node:assert/strict";
import { parseCpio, S_IFLNK, S_IFMT } from "../../guest/kit/cpio.ts";
import { findHostKernel } from "../../guest/kit/host.ts";
import { buildInitramfsCpio, guestInitSh, gzip } from "../../guest/kit/initramfs.ts";
import { isStaticElf } from "../../guest/kit/host.ts";
import { parseSerial } from "../../guest/kit/markers.ts";

function hasBusybox(): boolean {
  try {
    return isStaticElf(Deno.readFileSync("/bin/busybox"));
  } catch {
    return false;
  }
}

function hasKernel(): boolean {
  try {
    findHostKernel();
    return true;
  } catch {
    return false;
  }
}

Deno.test("initramfs: init script prints markers in the order the parser expects", () => {
  const init = guestInitSh("@@x", "poweroff");
  ok(init.startsWith("#!/bin/sh\n"));
  const order = ["booted", "begin", "exit", "end"].map((k) => init.indexOf(`@@x:${k}`));
  deepStrictEqual([...order].sort((a, b) => a - b), order);
  ok(init.includes("poweroff -f"));
  ok(init.includes("mount -t devtmpfs"));
});

Deno.test({
  name: "initramfs: image holds init, busybox applets, body and ordered modules",
  ignore: !hasBusybox() || !hasKernel(),
  fn: async () => {
    const cpio = await buildInitramfsCpio({
      modules: ["kvm_amd"],
      script: "echo hi",
      files: { "/etc/motd": "hello\n", "/opt/tool": { data: "#!/bin/sh\n", mode: 0o755 } },
    });
    const entries = parseCpio(cpio);
    const byName = new Map(entries.map((e) => [e.name, e]));
    ok(byName.has("init"));
    strictEqual(byName.get("init")!.mode & 0o777, 0o755);
    ok(isStaticElf(byName.get("bin/busybox")!.data));
    const sh = byName.get("bin/sh")!;
    strictEqual(sh.mode & S_IFMT, S_IFLNK);
    strictEqual(new TextDecoder().decode(sh.data), "/bin/busybox");
    strictEqual(new TextDecoder().decode(byName.get("hd/body.sh")!.data), "echo hi\n");
    strictEqual(byName.get("opt/tool")!.mode & 0o777, 0o755);
    const modules = new TextDecoder().decode(byName.get("hd/modules")!.data).trim().split("\n");
    deepStrictEqual(modules.map((m) => m.replace(/^.*\//, "")), [
      "irqbypass.ko",
      "kvm.ko",
      "ccp.ko",
      "kvm-amd.ko",
    ]);
    for (const m of modules) ok(byName.has(`lib/modules/${m}`), m);
    // Every member's parent directory comes before it.
    const seen = new Set<string>();
    for (const e of entries) {
      const parent = e.name.includes("/") ? e.name.slice(0, e.name.lastIndexOf("/")) : "";
      ok(parent === "" || seen.has(parent), `${e.name} before its directory`);
      seen.add(e.name);
    }
  },
});

Deno.test({
  name: "initramfs: the init runs a body under busybox sh and reports its markers",
  ignore: !hasBusybox(),
  fn: async () => {
    // Run the real init logic on the host with busybox, PID-1 parts stubbed out.
    const dir = await Deno.makeTempDir();
    try {
      const init = guestInitSh("@@t", "poweroff")
        .replace(/^mount .*$/gm, ":").replace(/^mkdir .*$/gm, ":")
        .replaceAll("/hd/", `${dir}/`).replaceAll("/run/hd-failed", `${dir}/failed`)
        .replace("poweroff -f\nwhile :; do sleep 3600; done", "exit 0");
      await Deno.writeTextFile(`${dir}/modules`, "");
      await Deno.writeTextFile(
        `${dir}/lib.sh`,
        (await import("../../guest/kit/initramfs.ts")).guestLibSh("@@t").replaceAll(
          "/run/hd-failed",
          `${dir}/failed`,
        ),
      );
      await Deno.writeTextFile(
        `${dir}/body.sh`,
        'hd_mark answer 42\nhd_check "true works" true\nhd_check "false fails" false\necho done\n',
      );
      const out = await new Deno.Command("/bin/busybox", { args: ["sh", "-c", init] }).output();
      const r = parseSerial(new TextDecoder().decode(out.stdout), "@@t");
      strictEqual(r.marks.get("answer"), "42");
      deepStrictEqual(r.checks.map((c) => c.ok), [true, false]);
      strictEqual(r.exitStatus, 1); // body ended with status 0, but a check failed
      strictEqual(r.ended, true);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("initramfs: gzip output is a gzip stream that round-trips", async () => {
  const data = new TextEncoder().encode("x".repeat(10000));
  const gz = await gzip(data);
  deepStrictEqual([gz[0], gz[1]], [0x1f, 0x8b]);
  const back = new Uint8Array(
    await new Response(
      new Blob([gz as Uint8Array<ArrayBuffer>]).stream()
        .pipeThrough(new DecompressionStream("gzip")),
    ).arrayBuffer(),
  );
  strictEqual(back.length, 10000);
});
