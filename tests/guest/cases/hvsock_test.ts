/**
 * hv_sock (AF_VSOCK over VMBus) with a stock Debian 6.1 guest and `--vsock PATH`:
 *
 * - Guest → host: three guest clients connect to CID 2 port 5000 at once; the host service on
 *   `PATH_5000` receives each stream while it sends its own, then ends its side. Each side's
 *   byte count and CRC-32 match what the other side sent.
 * - Host → guest: three host clients connect to `PATH`, write `CONNECT 6000`, read `OK <port>`
 *   and exchange streams with a guest server on port 6000 the same way.
 * - After each phase the connections' channels are gone from `{"cmd":"channels"}` (the host
 *   rescinded them and the guest released them): closing either side frees the channel.
 *
 * The guest side is `tests/guest/tools/vsock.c` (built static).
 */
import assert from "node:assert/strict";
import { askControl, assertMark, describeRun, type GuestRun, guestTest } from "../harness.ts";
import { guestTool } from "../kit/tools.ts";

const DIR = await Deno.makeTempDir({ prefix: "hyperdeno-hvsock-" });
globalThis.addEventListener("unload", () => Deno.removeSync(DIR, { recursive: true }));
const CONTROL = `${DIR}/control.sock`;
const VSOCK = `${DIR}/v.sock`;
/** Bytes each side sends on each connection. */
const BYTES = Number(Deno.env.get("HVSOCK_TEST_BYTES") ?? 4 << 20);
const CONNECTIONS = 3;
const HOST_SEED = 0x4057;

const tool = await guestTool("vsock");
if (!tool.ok) console.warn(`skipped: hv_sock guest test (${tool.reason})`);

/** The guest tool's pattern: the top byte of an LCG per byte, from `seed`. */
function pattern(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

function crcUpdate(crc: number, bytes: Uint8Array): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

const hex = (n: number) => n.toString(16).padStart(8, "0");

/** One side of a stream exchange: what it received, and how long the exchange took. */
interface Exchange {
  recv: number;
  recvcrc: string;
  ms: number;
  error?: string;
}

/** Sends `data` and reads to the end at the same time; ends the write side after the data. */
async function exchange(
  conn: Deno.UnixConn,
  data: Uint8Array,
  head?: Uint8Array,
): Promise<Exchange> {
  const t0 = performance.now();
  let sent = 0;
  let error: string | undefined;
  const writer = (async () => {
    // conn.write may write less than it was given.
    while (sent < data.length) sent += await conn.write(data.subarray(sent, sent + 65536));
    await conn.closeWrite();
  })().catch((e) => void (error = `write after ${sent} bytes: ${e}`));
  let recv = 0;
  let crc = 0;
  if (head && head.length > 0) {
    recv += head.length;
    crc = crcUpdate(crc, head);
  }
  const buf = new Uint8Array(65536);
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      recv += n;
      crc = crcUpdate(crc, buf.subarray(0, n));
    }
  } catch (e) {
    error ??= `read after ${recv} bytes: ${e}`;
  }
  await writer;
  conn.close();
  return { recv, recvcrc: hex(crc), ms: performance.now() - t0, ...(error ? { error } : {}) };
}

const hostData = pattern(HOST_SEED, BYTES);
const hostCrc = hex(crcUpdate(0, hostData));

/** Guest → host: the service on PATH_5000. */
const received: Exchange[] = [];
const service = Deno.listen({ transport: "unix", path: `${VSOCK}_5000` });
const serving = (async () => {
  const pending: Promise<void>[] = [];
  for await (const conn of service) {
    pending.push(exchange(conn, hostData).then((e) => void received.push(e)));
  }
  await Promise.all(pending);
})().catch(() => {});

/** Host → guest: connections through PATH. */
const hostConns: (Exchange & { index: number; hostPort: number; ok: string })[] = [];

async function connectToGuest(i: number): Promise<void> {
  const conn = await Deno.connect({ transport: "unix", path: VSOCK });
  await conn.write(new TextEncoder().encode("CONNECT 6000\n")); // 13 bytes: written whole
  // Read the OK line; bytes after it are the guest's stream.
  let got = new Uint8Array(0);
  const buf = new Uint8Array(65536);
  let nl = -1;
  while (nl < 0) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`host connection ${i}: closed before OK`);
    const next = new Uint8Array(got.length + n);
    next.set(got);
    next.set(buf.subarray(0, n), got.length);
    got = next;
    nl = got.indexOf(0x0a);
  }
  const ok = new TextDecoder().decode(got.subarray(0, nl));
  const hostPort = Number(/^OK (\d+)$/.exec(ok)?.[1] ?? NaN);
  const e = await exchange(conn, pattern(HOST_SEED + 1 + i, BYTES), got.subarray(nl + 1));
  hostConns.push({ ...e, index: i, hostPort, ok });
}

/** hv_sock channels still known to the VMBus server (any state). */
async function hvsockChannels(): Promise<unknown[]> {
  for (let i = 0; i < 20; i++) {
    const r = await askControl(CONTROL, { cmd: "channels" });
    const list = (r.channels as { device: string }[]).filter((c) => c.device.startsWith("hv_sock"));
    if (list.length === 0 || i === 19) return list;
    await new Promise((res) => setTimeout(res, 500));
  }
  return [];
}

const channelsAfter: Record<string, unknown[]> = {};
const hostErrors: string[] = [];
let h2gSeconds = 0;

function guestScript(): string {
  return `
    t0=$(date +%s)
    for i in $(seq 1 ${CONNECTIONS}); do /hd/vsock client 5000 ${BYTES} $i > /tmp/c$i 2>&1 & done
    wait
    hd_mark g2h_seconds $(( $(date +%s) - t0 ))
    for i in $(seq 1 ${CONNECTIONS}); do hd_mark g2h$i "$(cat /tmp/c$i)"; done
    hd_mark g2h-done 1
    read -t 120 -r reply
    /hd/vsock server 6000 ${CONNECTIONS} ${BYTES} > /tmp/s 2>&1 &
    for i in $(seq 1 100); do grep -q listening /tmp/s && break; sleep 0.1; done
    hd_mark h2g-listening 1
    read -t 300 -r reply
    wait
    i=0
    grep ^conn /tmp/s | while read -r line; do i=$((i + 1)); hd_mark h2g$i "$line"; done
    grep FAIL /tmp/s && hd_mark h2g-fail "$(grep FAIL /tmp/s | head -1)"
    hd_mark h2g-done 1
    read -t 120 -r reply
  `;
}

function field(line: string, key: string): string {
  return new RegExp(`${key}=(\\S+)`).exec(line)?.[1] ?? "";
}

if (tool.ok) {
  guestTest("hv_sock: guest→host and host→guest streams, three at once, channels freed", {
    modules: ["hv_vmbus", "hv_sock"],
    timeoutMs: 900_000,
    vmmArgs: ["--control", CONTROL, "--vsock", VSOCK, "--log-level", "info"],
    files: tool.ok ? { "/hd/vsock": { data: tool.image, mode: 0o755 } } : {},
    script: guestScript(),
    onMark: async (key) => {
      if (key === "g2h-done") {
        channelsAfter.g2h = await hvsockChannels();
        return "go\n";
      }
      if (key === "h2g-listening") {
        const t0 = performance.now();
        await Promise.all(
          Array.from(
            { length: CONNECTIONS },
            (_, i) => connectToGuest(i).catch((e) => void hostErrors.push(String(e))),
          ),
        );
        h2gSeconds = (performance.now() - t0) / 1000;
        return "go\n";
      }
      if (key === "h2g-done") {
        channelsAfter.h2g = await hvsockChannels();
        return "go\n";
      }
    },
  }, (run: GuestRun) => {
    service.close();
    void serving;
    const ctx =
      `host: received ${JSON.stringify(received)} hostConns ${JSON.stringify(hostConns)} ` +
      `errors ${JSON.stringify(hostErrors)}\n${describeRun(run, 60)}`;
    // Guest → host: each guest client got the host's stream; the host got each client's stream.
    const sentByGuest = new Set<string>();
    for (let i = 1; i <= CONNECTIONS; i++) {
      const line = run.marks.get(`g2h${i}`) ?? "";
      assert.match(line, /^conn /, `guest client ${i}: ${line}\n${ctx}`);
      assert.equal(field(line, "sent"), String(BYTES), line);
      assert.equal(field(line, "recv"), String(BYTES), line);
      assert.equal(field(line, "recvcrc"), hostCrc, `guest client ${i} got the host's bytes`);
      assert.equal(field(line, "sentcrc"), hex(crcUpdate(0, pattern(i, BYTES))), line);
      sentByGuest.add(field(line, "sentcrc"));
    }
    assert.equal(received.length, CONNECTIONS, ctx);
    for (const e of received) {
      assert.equal(e.error, undefined, ctx);
      assert.equal(e.recv, BYTES);
      assert.ok(
        sentByGuest.has(e.recvcrc),
        `the host got a stream no guest client sent: ${e.recvcrc}`,
      );
    }
    assert.deepEqual(channelsAfter.g2h, [], "guest→host channels are gone after the close");
    // Host → guest.
    assertMark(run, "h2g-done", "1");
    assert.equal(run.marks.get("h2g-fail"), undefined, ctx);
    assert.equal(hostConns.length, CONNECTIONS, ctx);
    const guestLines = [1, 2, 3].map((i) => run.marks.get(`h2g${i}`) ?? "");
    for (const c of hostConns) {
      assert.equal(c.error, undefined, ctx);
      assert.ok(Number.isInteger(c.hostPort), c.ok);
      const line = guestLines.find((l) => field(l, "peer") === String(c.hostPort));
      assert.ok(line, `the guest saw host port ${c.hostPort}: ${guestLines.join(" | ")}`);
      // The guest server sends the pattern of its peer's port.
      assert.equal(c.recv, BYTES);
      assert.equal(c.recvcrc, hex(crcUpdate(0, pattern(c.hostPort, BYTES))));
      assert.equal(field(line, "recv"), String(BYTES));
      assert.equal(
        field(line, "recvcrc"),
        hex(crcUpdate(0, pattern(HOST_SEED + 1 + c.index, BYTES))),
        `host connection ${c.index}: the guest got its bytes`,
      );
    }
    assert.deepEqual(channelsAfter.h2g, [], "host→guest channels are gone after the close");
    const mib = (CONNECTIONS * BYTES) / 2 ** 20;
    const g2h = Number(run.marks.get("g2h_seconds"));
    console.log(
      `hv_sock: guest→host ${CONNECTIONS}×${BYTES >> 20} MiB each way in ~${g2h} s ` +
        `(${(2 * mib / Math.max(g2h, 1)).toFixed(2)} MiB/s both directions together); ` +
        `host→guest ${h2gSeconds.toFixed(1)} s (${(2 * mib / h2gSeconds).toFixed(2)} MiB/s); ` +
        `per-connection ms ${hostConns.map((c) => c.ms.toFixed(0)).join(",")}`,
    );
  });
}
