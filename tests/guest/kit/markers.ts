/**
 * Serial-console markers: how a kit init tells the host what happened. Every marker is one line
 * `<prefix>:<kind>[ <argument>]`; the host finds them anywhere in a line (kernel messages may
 * share the console) and ignores everything else.
 *
 * Kinds, in the order an init prints them: `booted <uptime>`, `module-fail <path>`, `begin`,
 * then from the test body `mark <key>=<value>` and `check pass|fail <description>`, then
 * `exit <status>` and `end`.
 * @module
 */

/** Prefix of markers printed by a guest test init. */
export const GUEST_MARKER_PREFIX = "@@hyperdeno";
/** Prefix of markers printed by the test machine (L1) init, distinct so that guest output the
 * machine echoes is never mistaken for the machine's own. */
export const MACHINE_MARKER_PREFIX = "@@hyperdeno-machine";

/** One `check` marker. */
export interface CheckResult {
  readonly ok: boolean;
  readonly description: string;
}

/** Everything the markers of one boot say. */
export interface SerialReport {
  /** Every output line, carriage returns removed. */
  readonly lines: readonly string[];
  /** Seconds since kernel start when the init began, from `/proc/uptime`. */
  readonly bootedAtSeconds: number | undefined;
  /** Module files that failed to load. */
  readonly moduleFailures: readonly string[];
  /** True once the test body started. */
  readonly begun: boolean;
  /** `mark` key/values in order (a later value of a key wins). */
  readonly marks: ReadonlyMap<string, string>;
  readonly checks: readonly CheckResult[];
  /** Exit status of the test body, if the init got that far. */
  readonly exitStatus: number | undefined;
  /** True once the init printed `end` (it is about to power off). */
  readonly ended: boolean;
  /** Output lines between `begin` and `exit`, markers excluded. */
  readonly bodyLines: readonly string[];
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Parses console text for the markers with `prefix`. */
export function parseSerial(text: string, prefix = GUEST_MARKER_PREFIX): SerialReport {
  const re = new RegExp(`${escapeRegExp(prefix)}:([a-z-]+)(?: (.*))?$`);
  const lines = text.replaceAll("\r", "").split("\n");
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  let bootedAtSeconds: number | undefined;
  const moduleFailures: string[] = [];
  let begun = false;
  const marks = new Map<string, string>();
  const checks: CheckResult[] = [];
  let exitStatus: number | undefined;
  let ended = false;
  const bodyLines: string[] = [];
  for (const line of lines) {
    const m = re.exec(line);
    if (!m) {
      if (begun && exitStatus === undefined) bodyLines.push(line);
      continue;
    }
    const kind = m[1]!;
    const arg = (m[2] ?? "").trim();
    switch (kind) {
      case "booted":
        bootedAtSeconds = Number.parseFloat(arg);
        break;
      case "module-fail":
        moduleFailures.push(arg);
        break;
      case "begin":
        begun = true;
        break;
      case "mark": {
        const eq = arg.indexOf("=");
        if (eq > 0) marks.set(arg.slice(0, eq), arg.slice(eq + 1));
        break;
      }
      case "check": {
        const sp = arg.indexOf(" ");
        const verdict = sp < 0 ? arg : arg.slice(0, sp);
        checks.push({ ok: verdict === "pass", description: sp < 0 ? "" : arg.slice(sp + 1) });
        break;
      }
      case "exit": {
        const n = Number.parseInt(arg, 10);
        if (!Number.isNaN(n)) exitStatus = n;
        break;
      }
      case "end":
        ended = true;
        break;
    }
  }
  return {
    lines,
    bootedAtSeconds,
    moduleFailures,
    begun,
    marks,
    checks,
    exitStatus,
    ended,
    bodyLines,
  };
}

/** Makes `text` inert: marker prefixes in it no longer parse (for echoing guest output). */
export function defangMarkers(text: string): string {
  return text.replaceAll("@@hyperdeno", "@@ hyperdeno");
}
