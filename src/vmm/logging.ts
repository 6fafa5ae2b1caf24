/**
 * Log sink setup: logtape to stderr (the guest console on stdout stays clean), filtered by
 * `--log-level`. Each thread (main and every vCPU Worker) configures its own logtape.
 * @module
 */
import { configure, defaultTextFormatter, type LogLevel, type LogRecord } from "@logtape/logtape";

const encoder = new TextEncoder();

function stderrSink(record: LogRecord): void {
  Deno.stderr.writeSync(encoder.encode(defaultTextFormatter(record)));
}

/** Configures logtape once for this thread; `level` is error | warning | info | debug. */
export async function configureLogging(level: string): Promise<void> {
  await configure({
    reset: true,
    sinks: { stderr: stderrSink },
    loggers: [
      { category: ["hyperdeno"], lowestLevel: level as LogLevel, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}
