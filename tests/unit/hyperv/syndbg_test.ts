import { assert, assertEquals, assertFalse } from "./assert.ts";
import { parseHvFeatures } from "../../../src/hyperv/features.ts";
import {
  type DebugSendResult,
  type DebugTransport,
  parseUdpFrame,
  RAW_FRAME_HEADER_BYTES,
  type SyntheticDebugger,
  writeUdpFrameHeader,
} from "../../../src/hyperv/syndbg.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { enableHypercalls, FakeRegs, makeRig, type Rig } from "./fakes.ts";
import { encodeControl } from "../../../src/hyperv/hypercall.ts";
import { prng } from "../prng.ts";

const PAGE = 4096;
const SEND = 0x20000;
const RECV = 0x21000;
const PENDING = 0x22000;
const IN = 0x30000;
const OUT = 0x31000;
const RAM_END = 4 << 20; // makeMemory's 4 MiB
const GUEST_IP = 0x0a000002; // 10.0.0.2
const DEBUGGER = { address: 0x7f000001, port: 50000 };

/** A scripted debugger: records what the guest sends, queues what it will receive. */
class FakeTransport implements DebugTransport {
  readonly peer = DEBUGGER;
  readonly sent: Uint8Array[] = [];
  readonly queue: Uint8Array[] = [];
  sendResult: DebugSendResult = "sent";
  fail = false;
  send(bytes: Uint8Array): DebugSendResult {
    if (this.fail) throw new Error("transport exploded");
    if (this.sendResult === "sent") this.sent.push(bytes.slice());
    return this.sendResult;
  }
  tryReceive(into: Uint8Array): number {
    if (this.fail) throw new Error("transport exploded");
    const d = this.queue.shift();
    if (!d) return 0;
    into.set(d.subarray(0, into.length));
    return d.length;
  }
  hasPending(): boolean {
    return this.queue.length > 0;
  }
}

function bytes(n: number, seed = 1): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
}

function setup(options: { hypercalls?: boolean } = {}) {
  const transport = new FakeTransport();
  const rig = makeRig({
    features: parseHvFeatures("all", { syndbg: true }),
    debugTransport: transport,
    syndbgHypercalls: options.hypercalls ?? false,
  });
  const dbg = rig.hv.syndbg!;
  assert(dbg, "syndbg on");
  return { rig, dbg, transport };
}

function wr(rig: Rig, msr: number, value: bigint | number): void {
  assert(rig.hv.wrmsr(0, msr, BigInt(value)), `wrmsr 0x${msr.toString(16)}`);
}

function rd(rig: Rig, msr: number): bigint {
  return rig.hv.rdmsr(1, msr)!;
}

const sendControl = (size: number) => T.HV_SYNDBG_CONTROL_SEND | (BigInt(size) << 16n);

Deno.test("syndbg wire layouts are pinned", () => {
  assertEquals(T.HV_INPUT_POST_DEBUG_DATA.size, 8);
  assertEquals(T.HV_OUTPUT_POST_DEBUG_DATA.size, 4);
  assertEquals(T.HV_INPUT_RETRIEVE_DEBUG_DATA.size, 16);
  assertEquals(T.HV_OUTPUT_RETRIEVE_DEBUG_DATA.size, 8);
  assertEquals(T.HV_INPUT_RESET_DEBUG_SESSION.size, 4);
  assertEquals(T.HV_OUTPUT_RESET_DEBUG_SESSION.size, 24);
  assertEquals(T.HV_OUTPUT_RESET_DEBUG_SESSION.fields.targetMac.offset, 18);
  assertEquals(T.HV_DEBUG_MAXIMUM_DATA_SIZE + 8, PAGE);
  assertEquals(RAW_FRAME_HEADER_BYTES, 42);
});

Deno.test("--hv all leaves syndbg out unless a debugger is configured", () => {
  assertFalse(parseHvFeatures("all").enabled.syndbg);
  assert(parseHvFeatures("all", { syndbg: true }).enabled.syndbg);
  assertFalse(parseHvFeatures("all,-syndbg", { syndbg: true }).enabled.syndbg);
  assertFalse(makeRig().hv.syndbg, "no debugger object without syndbg");
});

Deno.test("MSR send: the send page's bytes go out as one datagram, STATUS says so", () => {
  const { rig, transport } = setup();
  const data = bytes(1500);
  rig.memory.write(SEND, data);
  wr(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER, SEND);
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(data.length));
  assertEquals(transport.sent, [data]);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), T.HV_SYNDBG_STATUS_SEND_SUCCESS);
  assertEquals(
    rd(rig, T.HV_X64_MSR_SYNDBG_CONTROL),
    sendControl(data.length),
    "CONTROL reads back",
  );
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER), BigInt(SEND));

  // A full page is the largest send.
  rig.memory.write(SEND, bytes(PAGE, 7));
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(PAGE));
  assertEquals(transport.sent[1], bytes(PAGE, 7));

  // Host buffer full or socket error: STATUS 0, the guest sends again.
  for (const r of ["busy", "failed"] as const) {
    transport.sendResult = r;
    wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(10));
    assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n, r);
  }
});

Deno.test("MSR send: hostile sizes and buffers give STATUS 0 and send nothing", () => {
  const { rig, transport } = setup();
  const cases: [number | bigint, number][] = [
    [SEND, PAGE + 1], // more than a page
    [SEND, 0xffff],
    [0, 16], // no send page
    [RAM_END - 10, 100], // runs off the end of RAM
    [0x7fff_ffff_f000n, 16], // far outside RAM
    [0xffff_ffff_ffff_f000n, 16], // beyond 2^53
  ];
  for (const [gpa, size] of cases) {
    wr(rig, T.HV_X64_MSR_SYNDBG_STATUS, 0xdeadn); // stale status must not survive
    wr(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER, gpa);
    wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(size));
    assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n, `${gpa}+${size}`);
  }
  assertEquals(transport.sent.length, 0);
  // Reserved CONTROL bits are stored, not faulted (KVM stores the whole value).
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, 0xffff_0000_0000_fff0n);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_CONTROL), 0xffff_0000_0000_fff0n);
});

Deno.test("MSR receive: pending page, receive page, size in STATUS, queue drained in order", () => {
  const { rig, dbg, transport } = setup();
  wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, RECV);
  rig.memory.writeU8(PENDING, 0x55);
  wr(rig, T.HV_X64_MSR_SYNDBG_PENDING_BUFFER, PENDING);
  assertEquals(rig.memory.readU8(PENDING), 0, "setting the page publishes the flag");

  const a = bytes(700, 3);
  const b = bytes(PAGE, 9);
  transport.queue.push(a, b);
  dbg.onReceivable(); // what the main thread does on EPOLLIN
  assertEquals(rig.memory.readU8(PENDING), 1);
  assert(dbg.pending);

  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(
    rd(rig, T.HV_X64_MSR_SYNDBG_STATUS),
    T.HV_SYNDBG_STATUS_RECV_SUCCESS | (700n << 16n),
  );
  assertEquals(rig.memory.slice(RECV, 700), a);
  assertEquals(rig.memory.readU8(PENDING), 1, "b still queued");

  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(
    rd(rig, T.HV_X64_MSR_SYNDBG_STATUS),
    T.HV_SYNDBG_STATUS_RECV_SUCCESS | (BigInt(PAGE) << 16n),
  );
  assertEquals(rig.memory.slice(RECV, PAGE), b);
  assertEquals(rig.memory.readU8(PENDING), 0, "queue empty");
  assertFalse(dbg.pending);

  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n, "nothing to receive");
});

Deno.test("MSR receive: oversized datagrams are dropped; bad receive pages give STATUS 0", () => {
  const { rig, transport } = setup();
  wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, RECV);
  transport.queue.push(bytes(PAGE + 1), bytes(20));
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n, "too large: dropped");
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS) >> 16n, 20n, "the next one arrives");

  transport.queue.push(bytes(20));
  for (const gpa of [0, RAM_END - 100, 0x1_0000_0000_0000n]) {
    wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, gpa);
    wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
    assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n, `${gpa}`);
  }
  assertEquals(transport.queue.length, 1, "nothing taken for a bad page");
  // A pending page outside RAM is ignored.
  wr(rig, T.HV_X64_MSR_SYNDBG_PENDING_BUFFER, 0x7fff_ffff_f000n);
});

Deno.test("SEND wins over RECV in one CONTROL write (QEMU)", () => {
  const { rig, transport } = setup();
  wr(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER, SEND);
  wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, RECV);
  transport.queue.push(bytes(5));
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(8) | T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(transport.sent.length, 1);
  assertEquals(transport.queue.length, 1);
});

Deno.test("reset: registers zero, OPTIONS back to the configured value", () => {
  const { rig } = setup({ hypercalls: true });
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_OPTIONS), T.HV_SYNDBG_OPTION_USE_HCALLS);
  wr(rig, T.HV_X64_MSR_SYNDBG_OPTIONS, 0);
  wr(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER, SEND);
  rig.hv.reset();
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER), 0n);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_OPTIONS), T.HV_SYNDBG_OPTION_USE_HCALLS);
  assertEquals(setup().rig.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_OPTIONS), 0n, "MSR path by default");
});

// --- Hypercalls -----------------------------------------------------------------------------

/** A raw Ethernet/IPv4/UDP frame from the guest carrying `payload`. */
function guestFrame(payload: Uint8Array, padTo = 0): Uint8Array {
  const f = new Uint8Array(Math.max(RAW_FRAME_HEADER_BYTES + payload.length, padTo));
  f.set(payload, RAW_FRAME_HEADER_BYTES);
  writeUdpFrameHeader(f, payload.length, {
    sourceIp: GUEST_IP,
    destinationIp: DEBUGGER.address,
    port: 50001,
  });
  return f;
}

/** Writes an HvPostDebugData input block; returns the rest of the input page and the output. */
function postInput(rig: Rig, frame: Uint8Array, count = frame.length, options = 0) {
  T.HV_INPUT_POST_DEBUG_DATA.encode({ count, options }, rig.memory.slice(IN, 8));
  rig.memory.write(IN + 8, frame.subarray(0, Math.min(frame.length, PAGE - 8)));
  return { input: rig.memory.slice(IN, PAGE), output: rig.memory.slice(OUT, PAGE) };
}

function post(dbg: SyntheticDebugger, rig: Rig, frame: Uint8Array, count?: number, options = 0) {
  const { input, output } = postInput(rig, frame, count, options);
  const status = dbg.postDebugData(input, output);
  return { status, pending: T.HV_OUTPUT_POST_DEBUG_DATA.get(output, 0, "pendingCount") };
}

function retrieve(dbg: SyntheticDebugger, rig: Rig, count: number, options = 0, outLen = PAGE) {
  T.HV_INPUT_RETRIEVE_DEBUG_DATA.encode(
    { count, options, timeout: 10_000n },
    rig.memory.slice(IN, 16),
  );
  const output = rig.memory.slice(OUT, outLen);
  const status = dbg.retrieveDebugData(rig.memory.slice(IN, PAGE), output);
  const O = T.HV_OUTPUT_RETRIEVE_DEBUG_DATA;
  const header = rig.memory.slice(OUT, O.size);
  return {
    status,
    retrieved: O.get(header, 0, "retrievedCount"),
    remaining: O.get(header, 0, "remainingCount"),
    frame: rig.memory.slice(OUT + 8, O.get(header, 0, "retrievedCount")),
  };
}

function checksumOk(b: Uint8Array): boolean {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += (b[i]! << 8) | b[i + 1]!;
  if (b.length & 1) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum === 0xffff;
}

Deno.test("hypercalls are refused without SYNDBG_OPTIONS.USE_HCALLS (KVM: OPERATION_DENIED)", () => {
  const { rig, dbg, transport } = setup();
  assertEquals(post(dbg, rig, guestFrame(bytes(10))).status, T.HV_STATUS_OPERATION_DENIED);
  assertEquals(retrieve(dbg, rig, 4088).status, T.HV_STATUS_OPERATION_DENIED);
  const out = new Uint8Array(24);
  assertEquals(dbg.resetDebugSession(new Uint8Array(8), out), T.HV_STATUS_OPERATION_DENIED);
  assertEquals(transport.sent.length, 0);
  // The guest may turn the hypercall interface on itself (KVM stores OPTIONS writes).
  wr(rig, T.HV_X64_MSR_SYNDBG_OPTIONS, T.HV_SYNDBG_OPTION_USE_HCALLS);
  assertEquals(post(dbg, rig, guestFrame(bytes(10))).status, T.HV_STATUS_SUCCESS);
});

Deno.test("HvPostDebugData: the UDP payload of the guest's frame goes out; padding does not", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  const payload = bytes(9);
  const r = post(dbg, rig, guestFrame(payload, 60)); // padded to the Ethernet minimum
  assertEquals(r, { status: T.HV_STATUS_SUCCESS, pending: 0 });
  assertEquals(transport.sent, [payload]);
  const big = bytes(T.HV_DEBUG_MAXIMUM_DATA_SIZE - RAW_FRAME_HEADER_BYTES, 5);
  assertEquals(post(dbg, rig, guestFrame(big)).status, T.HV_STATUS_SUCCESS);
  assertEquals(transport.sent[1], big);

  transport.sendResult = "busy";
  assertEquals(post(dbg, rig, guestFrame(payload)), {
    status: T.HV_STATUS_INSUFFICIENT_BUFFERS,
    pending: RAW_FRAME_HEADER_BYTES + 9,
  });
  transport.sendResult = "failed";
  assertEquals(post(dbg, rig, guestFrame(payload)).status, T.HV_STATUS_INSUFFICIENT_MEMORY);
});

Deno.test("HvPostDebugData: hostile counts, options and blocks get INVALID_PARAMETER", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  const frame = guestFrame(bytes(10));
  const bad = T.HV_STATUS_INVALID_PARAMETER;
  assertEquals(post(dbg, rig, frame, 4089).status, bad, "count over 4088");
  assertEquals(post(dbg, rig, frame, 0xffff_ffff).status, bad, "count 2^32-1");
  assertEquals(post(dbg, rig, frame, undefined, 0x4).status, bad, "undefined option bit");
  assertEquals(post(dbg, rig, frame, undefined, 0x8000_0000).status, bad);
  // The count must fit in the block the handler passed (input near the end of its page).
  const { input, output } = postInput(rig, frame);
  assertEquals(dbg.postDebugData(input.subarray(0, 8 + frame.length - 1), output), bad);
  assertEquals(dbg.postDebugData(input.subarray(0, 7), output), bad, "input shorter than header");
  assertEquals(dbg.postDebugData(input, output.subarray(0, 3)), bad, "output too short");
  assertEquals(transport.sent.length, 0);
  // Known options are accepted.
  assertEquals(post(dbg, rig, frame, undefined, T.HV_DEBUG_POST_OPTIONS_VALID).status, 0);
});

Deno.test("HvPostDebugData: frames that are not sound IPv4/UDP are dropped, never sent", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  const good = guestFrame(bytes(30));
  const mutate = (f: (b: Uint8Array) => void, len = good.length) => {
    const b = good.slice(0, len);
    f(b);
    return b;
  };
  const frames = [
    mutate((b) => (b[12] = 0x08, b[13] = 0x06)), // ARP
    mutate((b) => b[14] = 0x65), // IPv6 version nibble
    mutate((b) => b[14] = 0x44), // IHL 4 (< 20 bytes)
    mutate((b) => b[14] = 0x4f), // IHL 60: UDP header past the end of a short frame
    mutate((b) => b[23] = 6), // TCP
    mutate((b) => b[20] = 0x20), // more fragments
    mutate((b) => b[21] = 0x01), // fragment offset
    mutate((b) => (b[38] = 0, b[39] = 4)), // UDP length 4 < 8
    mutate((b) => (b[16] = 0, b[17] = 10)), // IP total length < header + UDP
    mutate(() => {}, 41), // shorter than the headers
    new Uint8Array(0),
  ];
  for (const [i, f] of frames.entries()) {
    assertEquals(post(dbg, rig, f), { status: T.HV_STATUS_SUCCESS, pending: 0 }, `frame ${i}`);
  }
  assertEquals(transport.sent.length, 0);
  // A UDP length larger than the frame is cut to the frame.
  post(dbg, rig, mutate((b) => (b[38] = 0x0f, b[39] = 0xff)));
  assertEquals(transport.sent, [bytes(30)]);
  assertEquals(parseUdpFrame(good)?.sourceIp, GUEST_IP);
});

Deno.test("HvRetrieveDebugData: a datagram comes back as a checksummed frame to the guest", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  post(dbg, rig, guestFrame(bytes(4))); // the guest's address is learnt from what it posts
  const payload = bytes(333, 11);
  transport.queue.push(payload);
  const r = retrieve(dbg, rig, 4000);
  assertEquals(r.status, T.HV_STATUS_SUCCESS);
  assertEquals(r.retrieved, RAW_FRAME_HEADER_BYTES + 333);
  assertEquals(r.remaining, 4000 - r.retrieved);
  const udp = parseUdpFrame(r.frame)!;
  assertEquals(r.frame.subarray(udp.offset, udp.offset + udp.length), payload);
  assertEquals(udp.sourceIp, DEBUGGER.address);
  const ip = r.frame.subarray(14, 34);
  assertEquals([ip[16], ip[17], ip[18], ip[19]], [10, 0, 0, 2], "to the guest's address");
  assert(checksumOk(ip), "IPv4 header checksum");
  const pseudo = new Uint8Array(12 + 8 + 333);
  pseudo.set(ip.subarray(12, 20));
  pseudo[9] = 17;
  pseudo[10] = (8 + 333) >> 8;
  pseudo[11] = (8 + 333) & 0xff;
  pseudo.set(r.frame.subarray(34), 12);
  assert(checksumOk(pseudo), "UDP checksum");
  assertEquals((r.frame[36]! << 8) | r.frame[37]!, DEBUGGER.port);

  const none = retrieve(dbg, rig, 4000);
  assertEquals([none.status, none.retrieved, none.remaining], [T.HV_STATUS_NO_DATA, 0, 4000]);
});

Deno.test("HvRetrieveDebugData: hostile counts and short blocks; oversize datagrams dropped", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  const bad = T.HV_STATUS_INVALID_PARAMETER;
  transport.queue.push(bytes(10));
  assertEquals(retrieve(dbg, rig, 4089).status, bad, "count over 4088");
  assertEquals(retrieve(dbg, rig, 0xffff_ffff).status, bad);
  assertEquals(retrieve(dbg, rig, RAW_FRAME_HEADER_BYTES).status, bad, "no room for data");
  assertEquals(retrieve(dbg, rig, 100, 0x8).status, bad, "undefined option bit");
  assertEquals(retrieve(dbg, rig, 100, 0, 7).status, bad, "output shorter than header");
  assertEquals(retrieve(dbg, rig, 4000, 0, 8 + RAW_FRAME_HEADER_BYTES).status, bad);
  assertEquals(dbg.retrieveDebugData(new Uint8Array(15), new Uint8Array(PAGE)), bad);
  assertEquals(transport.queue.length, 1, "nothing consumed by refused calls");

  // The datagram does not fit the guest's count: dropped, NO_DATA; the next one is delivered.
  transport.queue.push(bytes(5));
  const small = retrieve(dbg, rig, RAW_FRAME_HEADER_BYTES + 9);
  assertEquals([small.status, small.retrieved], [T.HV_STATUS_NO_DATA, 0]);
  const next = retrieve(dbg, rig, RAW_FRAME_HEADER_BYTES + 9);
  assertEquals([next.status, next.retrieved], [T.HV_STATUS_SUCCESS, RAW_FRAME_HEADER_BYTES + 5]);
  // Capacity is also bounded by the output block the handler passed.
  transport.queue.push(bytes(100));
  const cut = retrieve(dbg, rig, 4000, 0, 8 + RAW_FRAME_HEADER_BYTES + 99);
  assertEquals(cut.status, T.HV_STATUS_NO_DATA);
});

Deno.test("HvResetDebugSession: reports the debugger endpoint, purges incoming data", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  wr(rig, T.HV_X64_MSR_SYNDBG_PENDING_BUFFER, PENDING);
  transport.queue.push(bytes(1), bytes(2));
  dbg.onReceivable();
  const input = new Uint8Array(8);
  const output = new Uint8Array(24).fill(0xee);
  assertEquals(dbg.resetDebugSession(input, output), T.HV_STATUS_SUCCESS);
  assertEquals(T.HV_OUTPUT_RESET_DEBUG_SESSION.decode(output), {
    hostIp: DEBUGGER.address,
    targetIp: DEBUGGER.address,
    hostPort: DEBUGGER.port,
    targetPort: DEBUGGER.port,
    hostMac: new Uint8Array(6),
    targetMac: new Uint8Array(6),
  });
  assertEquals(transport.queue.length, 2, "no purge asked");
  T.HV_INPUT_RESET_DEBUG_SESSION.encode({
    options: T.HV_DEBUG_PURGE_INCOMING_DATA | T.HV_DEBUG_PURGE_OUTGOING_DATA,
  }, input);
  assertEquals(dbg.resetDebugSession(input, output), T.HV_STATUS_SUCCESS);
  assertEquals(transport.queue.length, 0);
  assertEquals(rig.memory.readU8(PENDING), 0, "pending flag cleared");

  const bad = T.HV_STATUS_INVALID_PARAMETER;
  T.HV_INPUT_RESET_DEBUG_SESSION.encode({ options: 0x10 }, input);
  assertEquals(dbg.resetDebugSession(input, output), bad, "undefined option bit");
  assertEquals(dbg.resetDebugSession(new Uint8Array(3), output), bad);
  assertEquals(dbg.resetDebugSession(new Uint8Array(4), new Uint8Array(23)), bad);
});

Deno.test("a failing transport never throws out: MSRs answer STATUS 0, hypercalls an HV_STATUS", () => {
  const { rig, dbg, transport } = setup({ hypercalls: true });
  transport.fail = true;
  wr(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER, SEND);
  wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, RECV);
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(4));
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n);
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), 0n);
  const e = T.HV_STATUS_INVALID_HYPERCALL_INPUT;
  assertEquals(post(dbg, rig, guestFrame(bytes(4))).status, e);
  assertEquals(retrieve(dbg, rig, 100).status, e);
  T.HV_INPUT_RESET_DEBUG_SESSION.encode({ options: 1 }, rig.memory.slice(IN, 4));
  assertEquals(dbg.resetDebugSession(rig.memory.slice(IN, 8), rig.memory.slice(OUT, 24)), e);
  // And the lock was released: the next operation works.
  transport.fail = false;
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, sendControl(4));
  assertEquals(rd(rig, T.HV_X64_MSR_SYNDBG_STATUS), T.HV_SYNDBG_STATUS_SEND_SUCCESS);
});

Deno.test("fuzz: random MSR writes and hypercall blocks never throw, statuses stay known", () => {
  const rng = prng(0x5d6b);
  const { rig, dbg, transport } = setup({ hypercalls: true });
  const known = new Set([
    T.HV_STATUS_SUCCESS,
    T.HV_STATUS_INVALID_PARAMETER,
    T.HV_STATUS_NO_DATA,
    T.HV_STATUS_INSUFFICIENT_BUFFERS,
    T.HV_STATUS_INSUFFICIENT_MEMORY,
    T.HV_STATUS_OPERATION_DENIED,
  ]);
  const rand64 = () =>
    (BigInt(rng.int(0x10000)) << 48n) | (BigInt(rng.int(0x1000000)) << 24n) |
    BigInt(rng.int(0x1000000));
  const gpas = [0, SEND, RECV, RAM_END - 1, RAM_END - PAGE, RAM_END, 0x7fff_ffff_f000];
  for (let i = 0; i < 3000; i++) {
    if (rng.chance(0.2)) transport.queue.push(bytes(rng.int(PAGE + 50), i));
    transport.sendResult = rng.pick(["sent", "busy", "failed"] as const);
    const msr = rng.pick([0x400000f1, 0x400000f2, 0x400000f3, 0x400000f4, 0x400000f5, 0x400000ff]);
    const value = rng.chance(0.5) ? BigInt(rng.pick(gpas)) : rand64();
    rig.hv.wrmsr(rng.int(4), msr, value); // OPTIONS may get toggled too
    const inLen = rng.int(PAGE + 1);
    const outLen = rng.int(PAGE + 1);
    const input = rig.memory.slice(IN, PAGE).subarray(0, inLen);
    const output = rig.memory.slice(OUT, PAGE).subarray(0, outLen);
    if (rng.chance(0.5)) {
      for (let j = 0; j < Math.min(inLen, 64); j++) input[j] = rng.int(256);
    } else if (inLen >= 16) {
      T.HV_INPUT_RETRIEVE_DEBUG_DATA.encode({
        count: rng.int(5000),
        options: rng.int(8),
        timeout: 0n,
      }, input);
      if (rng.chance(0.5)) input.set(guestFrame(bytes(rng.int(100))).subarray(0, inLen - 8), 8);
    }
    const call = rng.pick([
      () => dbg.postDebugData(input, output),
      () => dbg.retrieveDebugData(input, output),
      () => dbg.resetDebugSession(input, output),
    ]);
    const s = call();
    assert(known.has(s), `status ${s} at ${i}`);
  }
});

Deno.test("the debug calls through the guest's hypercall path: slow only, blocks within a page", () => {
  const { rig, transport } = setup({ hypercalls: true });
  enableHypercalls(rig);
  const hcall = (code: number, inGpa: number, outGpa: number, fast = false) => {
    const regs = new FakeRegs().call64(
      encodeControl({ code, fast }),
      BigInt(inGpa),
      BigInt(outGpa),
    );
    assertEquals(rig.hv.hypercall(0, regs), "done");
    return regs.status();
  };
  const payload = bytes(20, 3);
  postInput(rig, guestFrame(payload));
  assertEquals(hcall(T.HVCALL_POST_DEBUG_DATA, IN, OUT), T.HV_STATUS_SUCCESS);
  assertEquals(transport.sent, [payload]);
  assertEquals(hcall(T.HVCALL_POST_DEBUG_DATA, IN, OUT, true), T.HV_STATUS_INVALID_PARAMETER);
  assertEquals(hcall(T.HVCALL_POST_DEBUG_DATA, IN + 4, OUT), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(hcall(T.HVCALL_POST_DEBUG_DATA, IN, RAM_END), T.HV_STATUS_INVALID_ALIGNMENT);
  // Header in the page, data running into the next one: refused, nothing sent.
  const frame = guestFrame(bytes(200));
  const near = IN + PAGE - 64;
  T.HV_INPUT_POST_DEBUG_DATA.encode({ count: frame.length, options: 0 }, rig.memory.slice(near, 8));
  assertEquals(hcall(T.HVCALL_POST_DEBUG_DATA, near, OUT), T.HV_STATUS_INVALID_ALIGNMENT);
  assertEquals(transport.sent.length, 1);

  transport.queue.push(bytes(50, 9));
  T.HV_INPUT_RETRIEVE_DEBUG_DATA.encode(
    { count: 1000, options: 0, timeout: 0n },
    rig.memory.slice(IN, 16),
  );
  assertEquals(hcall(T.HVCALL_RETRIEVE_DEBUG_DATA, IN, OUT), T.HV_STATUS_SUCCESS);
  const O = T.HV_OUTPUT_RETRIEVE_DEBUG_DATA;
  assertEquals(O.get(rig.memory.slice(OUT, 8), 0, "retrievedCount"), RAW_FRAME_HEADER_BYTES + 50);
  // An output block of 8 + 1000 bytes that would cross the page is refused before any receive.
  transport.queue.push(bytes(5));
  assertEquals(
    hcall(T.HVCALL_RETRIEVE_DEBUG_DATA, IN, OUT + PAGE - 512),
    T.HV_STATUS_INVALID_ALIGNMENT,
  );
  assertEquals(transport.queue.length, 1);

  T.HV_INPUT_RESET_DEBUG_SESSION.encode({ options: 0 }, rig.memory.slice(IN, 4));
  assertEquals(hcall(T.HVCALL_RESET_DEBUG_SESSION, IN, OUT), T.HV_STATUS_SUCCESS);
  const R = T.HV_OUTPUT_RESET_DEBUG_SESSION;
  assertEquals(R.get(rig.memory.slice(OUT, R.size), 0, "hostPort"), DEBUGGER.port);
});
