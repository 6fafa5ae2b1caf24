/**
 * No network at run time: the one npm dependency is pinned by deno.lock (frozen, so no run
 * resolves anew or rewrites it), nothing imports a remote module around the import map, and with
 * the cache present a run needs no registry at all.
 */
import assert from "node:assert/strict";
import denoJson from "../../../deno.json" with { type: "json" };

const REPO = new URL("../../../", import.meta.url).pathname.replace(/\/$/, "");

function sources(dir: string, out: string[] = []): string[] {
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.startsWith(".") || e.name === "node_modules" || e.name === "build") continue;
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) sources(p, out);
    else if (/\.(ts|js|mts)$/.test(e.name)) out.push(p);
  }
  return out;
}

Deno.test("deps: every import-map entry is pinned in deno.lock, and the lock is frozen", () => {
  const lock = JSON.parse(Deno.readTextFileSync(`${REPO}/deno.lock`));
  assert.deepEqual(denoJson.lock, { path: "deno.lock", frozen: true });
  for (const [name, spec] of Object.entries(denoJson.imports)) {
    assert.ok(spec in lock.specifiers, `${name}: ${spec} is not in deno.lock`);
    const pinned = `${spec.replace(/^npm:/, "").replace(/@[^@]*$/, "")}@${lock.specifiers[spec]}`;
    assert.ok(pinned in lock.npm && lock.npm[pinned].integrity, `${pinned}: no integrity`);
  }
});

Deno.test("deps: no module imports jsr:, npm: or http(s): around the import map", () => {
  const re = /(?:from|import)\s*\(?\s*["'](jsr:|npm:|https?:)/;
  const offenders = sources(REPO).filter((f) => re.test(Deno.readTextFileSync(f)));
  assert.deepEqual(offenders.map((f) => f.slice(REPO.length + 1)), []);
});

Deno.test("deps: with the cache present, a run downloads nothing (--cached-only works)", async () => {
  for (const extra of [[], ["--cached-only"]]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", ...extra, `${REPO}/cli.ts`, "--version"],
      cwd: REPO,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, err);
    assert.doesNotMatch(err, /Download/, err);
    assert.match(new TextDecoder().decode(out.stdout), /^hyperdeno \d/);
  }
});
