/**
 * The benchmark harness: a figure is one hyperdeno measurement beside its floors (memcpy, a C
 * reference, a C VMM), measured in the same process, interleaved round by round so that a noisy
 * host slows every subject of a round alike. Ratios are the median of per-round ratios; nothing
 * is compared with a stored or absolute number.
 *
 * Each figure is registered twice: as `Deno.bench` entries (one group per figure, the first
 * floor as baseline, so `deno bench` prints its own table and "x times faster/slower"), and in a
 * figures table printed when the bench file ends (`printFiguresOnUnload`) or by `report.ts`.
 * @module
 */

/** One thing measured: `batch()` performs `Figure.opsPerBatch` operations. */
export interface Subject {
  readonly label: string;
  readonly batch: () => void;
}

/** A hyperdeno figure and the floors it is compared with. */
export interface Figure {
  /** Short name, unique within a run ("ring write 64 B"). */
  readonly name: string;
  /** Throughput figures report bytes/s and ops/s; latency figures µs per op. */
  readonly kind: "throughput" | "latency";
  /** Operations per `batch()` call. */
  readonly opsPerBatch: number;
  /** Payload bytes per operation (throughput figures). */
  readonly bytesPerOp?: number;
  /** What an operation is ("packet", "round trip", "exit"). */
  readonly op: string;
  /** The hyperdeno code path. */
  readonly subject: Subject;
  /** References, the first one is the baseline of the `Deno.bench` group. */
  readonly floors: readonly Subject[];
  /**
   * A stated target against one floor: for latency, hyperdeno time / floor time at most
   * `ratio`; for throughput, hyperdeno throughput / floor throughput at least `ratio`.
   */
  readonly target?: { readonly floor: string; readonly ratio: number };
}

/** Measured medians and ratios of one figure. */
export interface FigureResult {
  readonly figure: Figure;
  /** Median nanoseconds per operation, by subject label. */
  readonly nsPerOp: ReadonlyMap<string, number>;
  /**
   * By floor label: for latency, hyperdeno time / floor time (1.10 = 10% slower than the floor);
   * for throughput, hyperdeno throughput / floor throughput (0.80 = 80% of the floor's).
   */
  readonly ratios: ReadonlyMap<string, number>;
  /** Rounds measured. */
  readonly rounds: number;
}

/** Options of `measureFigures`. */
export interface MeasureOptions {
  /** Measuring time per figure after warm-up, in ms. Default: env BENCH_MS or 1500. */
  figureMs?: number;
  /** Minimum time of one sample, in ms. */
  sampleMs?: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function envMs(): number {
  const v = Number(Deno.env.get("BENCH_MS"));
  return Number.isFinite(v) && v > 0 ? v : 1500;
}

/** Runs `s` for at least `ms`, returning batches done and elapsed ms. */
function runFor(s: Subject, ms: number, minBatches = 1): { batches: number; elapsed: number } {
  const t0 = performance.now();
  let batches = 0;
  let elapsed = 0;
  do {
    s.batch();
    batches++;
    elapsed = performance.now() - t0;
  } while (elapsed < ms || batches < minBatches);
  return { batches, elapsed };
}

/** Measures one figure: warm-up, then rounds of one sample per subject in rotating order. */
export function measureFigure(figure: Figure, options: MeasureOptions = {}): FigureResult {
  const figureMs = options.figureMs ?? envMs();
  const sampleMs = options.sampleMs ?? Math.max(5, figureMs / 60);
  const subjects = [figure.subject, ...figure.floors];
  // Warm-up (JIT, caches, page faults) and calibration: batches per sample.
  const reps = subjects.map((s) => {
    const { batches, elapsed } = runFor(s, Math.min(200, figureMs / 6), 2);
    return Math.max(1, Math.ceil(sampleMs / (elapsed / batches)));
  });
  const samples: number[][] = subjects.map(() => []);
  const t0 = performance.now();
  let round = 0;
  while (round < 5 || performance.now() - t0 < figureMs) {
    for (let k = 0; k < subjects.length; k++) {
      const i = (k + round) % subjects.length;
      const s = subjects[i]!;
      const n = reps[i]!;
      const start = performance.now();
      for (let b = 0; b < n; b++) s.batch();
      const ns = (performance.now() - start) * 1e6;
      samples[i]!.push(ns / (n * figure.opsPerBatch));
    }
    round++;
  }
  const nsPerOp = new Map<string, number>();
  subjects.forEach((s, i) => nsPerOp.set(s.label, median(samples[i]!)));
  const ratios = new Map<string, number>();
  figure.floors.forEach((f, j) => {
    const per = samples[0]!.map((ours, r) => {
      const floor = samples[j + 1]![r]!;
      return figure.kind === "latency" ? ours / floor : floor / ours;
    });
    ratios.set(f.label, median(per));
  });
  return { figure, nsPerOp, ratios, rounds: round };
}

/** Measures every figure in turn. */
export function measureFigures(figures: readonly Figure[], options?: MeasureOptions) {
  return figures.map((f) => measureFigure(f, options));
}

/** "1.23 GB/s" / "4.56 Mpkt/s" / "12.3 µs" for one subject of a result. */
export function formatValue(figure: Figure, nsPerOp: number): string {
  if (figure.kind === "latency") {
    return nsPerOp >= 1000 ? `${(nsPerOp / 1000).toFixed(2)} µs` : `${nsPerOp.toFixed(0)} ns`;
  }
  const opsPerS = 1e9 / nsPerOp;
  const bytes = (figure.bytesPerOp ?? 0) * opsPerS;
  const rate = opsPerS >= 1e6
    ? `${(opsPerS / 1e6).toFixed(2)} M`
    : `${(opsPerS / 1e3).toFixed(1)} k`;
  return `${(bytes / 1e9).toFixed(2)} GB/s, ${rate}${figure.op}/s`;
}

/** "0.85× memcpy" with the sense of the ratio spelled out. */
export function formatRatio(figure: Figure, ratio: number): string {
  return figure.kind === "latency"
    ? `${ratio.toFixed(2)}× the time`
    : `${ratio.toFixed(2)}× the rate`;
}

/** "met" / "MISSED" / "" for a result's target. */
export function targetVerdict(r: FigureResult): string {
  const t = r.figure.target;
  if (!t) return "";
  const ratio = r.ratios.get(t.floor);
  if (ratio === undefined) return "";
  const ok = r.figure.kind === "latency" ? ratio <= t.ratio : ratio >= t.ratio;
  const want = r.figure.kind === "latency" ? `≤ ${t.ratio}×` : `≥ ${t.ratio}×`;
  return `target ${want} ${t.floor}: ${ok ? "met" : "MISSED"}`;
}

/** One row per (figure, floor): the table both the bench files and `report.ts` print. */
export interface Row {
  figure: string;
  hyperdeno: string;
  floor: string;
  floorValue: string;
  ratio: string;
  target: string;
}

/** Rows of a set of results. */
export function rows(results: readonly FigureResult[]): Row[] {
  const out: Row[] = [];
  for (const r of results) {
    const f = r.figure;
    const ours = formatValue(f, r.nsPerOp.get(f.subject.label)!);
    for (const floor of f.floors) {
      out.push({
        figure: f.name,
        hyperdeno: ours,
        floor: floor.label,
        floorValue: formatValue(f, r.nsPerOp.get(floor.label)!),
        ratio: formatRatio(f, r.ratios.get(floor.label)!),
        target: f.target?.floor === floor.label ? targetVerdict(r) : "",
      });
    }
  }
  return out;
}

/** Column titles of `Row`. */
export const ROW_HEADERS: Record<keyof Row, string> = {
  figure: "figure",
  hyperdeno: "hyperdeno",
  floor: "floor",
  floorValue: "floor value",
  ratio: "ratio (hyperdeno / floor)",
  target: "target",
};

/** The cells of a row, in `ROW_HEADERS` order. */
export function rowCells(r: Row): string[] {
  return (Object.keys(ROW_HEADERS) as (keyof Row)[]).map((k) => r[k]);
}

/** A markdown table with padded columns (also readable as plain text). */
export function formatTable(headers: readonly string[], cells: readonly string[][]): string {
  const width = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? "").length)));
  const line = (row: readonly string[]) =>
    `| ${width.map((w, i) => (row[i] ?? "").padEnd(w)).join(" | ")} |`;
  return [
    line(headers),
    `| ${width.map((w) => "-".repeat(w)).join(" | ")} |`,
    ...cells.map(line),
  ].join("\n");
}

/** The figures table of `rows`. */
export function markdownTable(list: readonly Row[]): string {
  return formatTable(Object.values(ROW_HEADERS), list.map(rowCells));
}

/**
 * Registers `Deno.bench` entries for the figures: one group per figure, the first floor as
 * baseline. Each iteration is one batch (`opsPerBatch` operations, shown in the name).
 */
export function registerBenches(figures: readonly Figure[]): void {
  for (const f of figures) {
    [f.subject, ...f.floors].forEach((s, i) => {
      Deno.bench({
        name: `${f.name}: ${s.label} (${f.opsPerBatch} ${f.op}s/iter)`,
        group: f.name,
        baseline: i === 1,
        fn: s.batch,
      });
    });
  }
}

/**
 * When the bench file ends, measures the figures interleaved and prints the figures table
 * (skipped with BENCH_TABLE=0, e.g. when filtering one `Deno.bench`).
 */
export function printFiguresOnUnload(title: string, figures: () => readonly Figure[]): void {
  if (Deno.env.get("BENCH_TABLE") === "0") return;
  globalThis.addEventListener("unload", () => {
    const list = figures();
    if (list.length === 0) return;
    console.log(`\n${title}: figures beside their floors, interleaved in this run`);
    console.log(markdownTable(rows(measureFigures(list))));
  });
}

/** Prints why a bench file measures nothing, and registers an ignored bench that says so. */
export function skipBenches(name: string, reason: string): void {
  console.warn(`skipped: ${name}: ${reason}`);
  Deno.bench({ name: `${name} (skipped: ${reason})`, ignore: true, fn() {} });
}
