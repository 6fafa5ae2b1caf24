/**
 * `deno task test:quick-start`: the README's quick start, as a new user runs it. Clones this
 * repository's committed HEAD into a fresh directory and runs the README's own commands there
 * (read from its Quick start block, so the README is what is tested) with an empty HOME: no Deno
 * on PATH, empty npm and Deno caches, no HYPERDENO_* variables. Root stays root (the quick start
 * needs it for apt-get and /dev/kvm). Then runs the CLI again from the filled cache and requires
 * that nothing is downloaded.
 *
 * ```sh
 * deno task test:quick-start            # `demo` (a few minutes nested; downloads Deno from npm)
 * deno task test:quick-start --test     # also `task test` in the clone (the whole suite, ~6 min+)
 * deno task test:quick-start --keep     # keep the clone and its HOME for a look
 * ```
 *
 * Not part of `deno task test`: it boots its own test machine and fetches Deno and the npm
 * dependency from the registry, so it runs as its own CI step. Ends with `quick start: OK` or
 * `quick start: FAILED …` and exits 0 or 1.
 * @module
 */
import { parseArgs } from "node:util";

const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

/** The README's quick-start commands: the `sh` block under `## Quick start`, comments dropped. */
export function quickStartCommands(readme: string): string[] {
  const section = readme.split(/^## /m).find((s) => s.startsWith("Quick start"));
  if (section === undefined) throw new Error("README.md has no '## Quick start' section");
  const block = /```sh\n([\s\S]*?)```/.exec(section);
  if (block === null) throw new Error("README.md's quick start has no ```sh block");
  return block[1]!.split("\n").map((l) => l.replace(/#.*$/, "").trim()).filter((l) => l !== "");
}

/** The directories of a plain PATH. */
const PLAIN_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

function hasDeno(dir: string): boolean {
  try {
    Deno.statSync(`${dir}/deno`);
    return true;
  } catch {
    return false;
  }
}

/** The machine's network setup (TLS trust, proxies), which a new user on it has too. Deno reads
 * NODE_EXTRA_CA_CERTS for npm downloads. */
export const MACHINE_NETWORK_ENV = [
  "NODE_EXTRA_CA_CERTS",
  "SSL_CERT_FILE",
  "SSL_CERT_DIR",
  "DENO_CERT",
  "DENO_TLS_CA_STORE",
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "NO_PROXY",
  "http_proxy",
  "https_proxy",
  "no_proxy",
];

/** The environment of a new user: an empty HOME, a plain PATH without any Deno (this host's
 * own Deno may sit in /usr/local/bin; a fresh machine has none), the machine's network setup
 * (`machineEnv`, default this process's), nothing of ours. */
export function freshEnvironment(
  home: string,
  pathHasDeno: (dir: string) => boolean = hasDeno,
  machineEnv: Readonly<Record<string, string>> = Deno.env.toObject(),
): Record<string, string> {
  const network = Object.fromEntries(
    MACHINE_NETWORK_ENV.filter((k) => machineEnv[k] !== undefined).map((k) => [k, machineEnv[k]!]),
  );
  return {
    ...network,
    HOME: home,
    PATH: PLAIN_PATH.filter((d) => !pathHasDeno(d)).join(":"),
    LANG: "C.UTF-8",
    TERM: "dumb",
    NO_COLOR: "1",
    // npm's and Deno's caches default under HOME; said explicitly so nothing else is used.
    npm_config_cache: `${home}/.npm`,
    DENO_DIR: `${home}/.cache/deno`,
  };
}

/** Lines of output that mean something was fetched from a registry (Deno's and apt's). */
export function downloadLines(output: string): string[] {
  return output.split("\n").filter((l) => /^\s*(Download|Get:\d+)\s+https?:/.test(l));
}

async function run(
  argv: string[],
  options: { cwd: string; env: Record<string, string>; label: string },
): Promise<{ code: number; output: string; seconds: number }> {
  console.log(`\n==> ${options.label}: ${argv.join(" ")}`);
  const started = performance.now();
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    cwd: options.cwd,
    env: options.env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let output = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        output += `${line}\n`;
        console.log(`  | ${line}`);
      }
    }
    if (pending !== "") {
      output += pending;
      console.log(`  | ${pending}`);
    }
  };
  await Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = await child.status;
  const seconds = (performance.now() - started) / 1000;
  console.log(`==> ${options.label}: exit ${status.code} after ${seconds.toFixed(0)} s`);
  return { code: status.code, output, seconds };
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      test: { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
    },
  });
  const commands = quickStartCommands(await Deno.readTextFile(`${REPO}/README.md`));
  const demo = commands.find((c) => /\btask demo$/.test(c));
  const suite = commands.find((c) => /\btask test$/.test(c));
  if (demo === undefined || suite === undefined) {
    console.log(`quick start: FAILED: README's quick start lacks 'task demo' or 'task test'`);
    return 1;
  }
  const head = new TextDecoder().decode(
    (await new Deno.Command("git", { args: ["-C", REPO, "rev-parse", "HEAD"], stdout: "piped" })
      .output()).stdout,
  ).trim();
  const dir = await Deno.makeTempDir({ prefix: "hyperdeno-quick-start-" });
  const home = `${dir}/home`;
  const clone = `${dir}/hyperdeno`;
  await Deno.mkdir(home);
  const env = freshEnvironment(home);
  const failures: string[] = [];
  const figures: string[] = [];
  try {
    console.log(
      `quick start in ${dir} (HEAD ${head.slice(0, 12)}; uncommitted changes not included)`,
    );
    const git = await new Deno.Command("git", {
      args: ["clone", "--quiet", "--no-local", REPO, clone],
      stdin: "null",
    }).spawn().status;
    if (!git.success) return fail(["git clone failed"]);
    await new Deno.Command("git", { args: ["-C", clone, "checkout", "--quiet", head] }).spawn()
      .status;
    const sh = (command: string) => ["/bin/sh", "-c", command];
    const first = await run(sh(demo), { cwd: clone, env, label: "first run of the demo" });
    figures.push(`demo first run ${first.seconds.toFixed(0)} s`);
    if (first.code !== 0) failures.push(`'${demo}' exited with ${first.code}`);
    if (!/^demo succeeded in \d+ s$/m.test(first.output)) {
      failures.push(`'${demo}' did not print 'demo succeeded in N s'`);
    }
    // The second run uses the caches the first one filled: nothing may be fetched.
    const cli = demo.replace(/\btask demo$/, "run -A cli.ts doctor");
    const again = await run(sh(cli), { cwd: clone, env, label: "a second run (from the cache)" });
    figures.push(`second run ${again.seconds.toFixed(1)} s`);
    if (!/^verdict: /m.test(again.output)) failures.push(`'${cli}' printed no verdict`);
    const fetched = downloadLines(again.output);
    if (fetched.length > 0) failures.push(`the second run downloaded: ${fetched.join(" | ")}`);
    if (values.test) {
      const t = await run(sh(suite), { cwd: clone, env, label: "the whole suite" });
      figures.push(`suite ${t.seconds.toFixed(0)} s`);
      if (t.code !== 0) failures.push(`'${suite}' exited with ${t.code}`);
    }
  } finally {
    if (values.keep) console.log(`kept ${dir}`);
    else await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return failures.length > 0
    ? fail(failures)
    : (console.log(`quick start: OK (${figures.join(", ")})`), 0);

  function fail(why: string[]): number {
    console.log(`quick start: FAILED: ${why.join("; ")}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
