/**
 * The README's quick start stays true: its commands are the ones `deno task test:quick-start`
 * runs from a fresh clone, they name tasks that exist, pin the Deno this project runs on, and the
 * packages it says they install are the installer's.
 */
import assert from "node:assert/strict";
import denoJson from "../../../deno.json" with { type: "json" };
import { downloadLines, freshEnvironment, quickStartCommands } from "../../quick_start.ts";
import { KIT_PACKAGES } from "../../guest/install.ts";
import { QEMU_PACKAGE } from "../../guest/machine/detect.ts";

const README = Deno.readTextFileSync(new URL("../../../README.md", import.meta.url));

Deno.test("readme: the quick start is npx deno@<this Deno> task demo, then task test", () => {
  const commands = quickStartCommands(README);
  const v = Deno.version.deno;
  assert.deepEqual(commands, [`npx -y deno@${v} task demo`, `npx -y deno@${v} task test`]);
  for (const task of ["demo", "test", "test:quick-start", "boot", "compile"]) {
    assert.ok(task in denoJson.tasks, `deno.json has no task ${task}`);
  }
});

Deno.test("readme: the packages it says the quick start installs are the installer's", () => {
  const section = README.split(/^## /m).find((s) => s.startsWith("Quick start"))!;
  for (const p of [...Object.values(KIT_PACKAGES).map((p) => p.name), QEMU_PACKAGE]) {
    assert.ok(section.includes(`\`${p}\``), `the quick start does not name ${p}`);
  }
});

Deno.test("quick start: parsing, a fresh environment, and download lines", () => {
  assert.deepEqual(
    quickStartCommands("# x\n\n## Quick start\n\ntext\n\n```sh\na b   # c\n\nd\n```\n## Next\n"),
    ["a b", "d"],
  );
  assert.throws(() => quickStartCommands("## Other\n"), /no '## Quick start'/);
  const env = freshEnvironment("/tmp/h", (dir) => dir === "/usr/local/bin", {
    HOME: "/root",
    DENO_DIR: "/root/.cache/deno",
    HYPERDENO_TEST_MACHINE: "nested",
    NODE_EXTRA_CA_CERTS: "/etc/ca.pem",
  });
  assert.equal(env.NODE_EXTRA_CA_CERTS, "/etc/ca.pem");
  assert.equal(env.HOME, "/tmp/h");
  assert.equal(env.DENO_DIR, "/tmp/h/.cache/deno");
  assert.equal(env.npm_config_cache, "/tmp/h/.npm");
  assert.equal(env.PATH, "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin");
  assert.ok(!Object.keys(env).some((k) => k.startsWith("HYPERDENO_")));
  assert.deepEqual(
    downloadLines(
      "Download https://registry.npmjs.org/@logtape%2flogtape\nverdict: ok\n" +
        "Get:1 http://deb.debian.org/debian bookworm InRelease\n  Download done\n",
    ),
    [
      "Download https://registry.npmjs.org/@logtape%2flogtape",
      "Get:1 http://deb.debian.org/debian bookworm InRelease",
    ],
  );
});

Deno.test("readme: the CLI reference lists every boot option of --help, and nothing else", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../../cli.ts", import.meta.url).pathname, "--help"],
    stdout: "piped",
    stdin: "null",
  }).output();
  const help = new TextDecoder().decode(out.stdout);
  const bootSection = help.slice(help.indexOf("boot options:"), help.indexOf("Exit status:"));
  const helpOptions = [...bootSection.matchAll(/^ {2}(--[a-z-]+)/gm)].map((m) => m[1]!).sort();
  const readmeOptions = [...README.matchAll(/^\| `(--[a-z-]+)[ `]/gm)].map((m) => m[1]!).sort();
  assert.ok(helpOptions.length > 10, help);
  assert.deepEqual(readmeOptions, helpOptions);
});
