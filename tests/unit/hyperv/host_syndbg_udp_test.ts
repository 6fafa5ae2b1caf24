/**
 * The synthetic debugger end to end over real UDP sockets on 127.0.0.1: a fake guest (guest
 * memory over an ArrayBuffer, MSR writes and hypercall blocks) on one side, a socket playing the
 * kernel debugger on the other.
 */
import { assert, assertEquals, assertFalse } from "./assert.ts";
import { makeRig, type Rig } from "./fakes.ts";
import {
  C,
  close,
  libc,
  SOCKADDR_IN_BYTES,
  sockaddrIn,
  socketName,
  udpSocket,
} from "../../../ffi/libc.ts";
import { parseHvFeatures } from "../../../src/hyperv/features.ts";
import { parseUdpFrame, RAW_FRAME_HEADER_BYTES } from "../../../src/hyperv/syndbg.ts";
import * as T from "../../../src/hyperv/tlfs.ts";
import { EventLoop } from "../../../src/util/event_loop.ts";
import { openDebugSocket, UdpDebugTransport } from "../../../src/hyperv/host/syndbg_udp.ts";

const LOOPBACK = C.INADDR_LOOPBACK;
const SEND = 0x20000;
const RECV = 0x21000;
const PENDING = 0x22000;
const IN = 0x30000;
const OUT = 0x31000;

/** A debugger socket, the VMM's socket connected to it, and a guest over the VMM's one. */
function link(options: { hypercalls?: boolean } = {}) {
  const debuggerFd = udpSocket({ address: LOOPBACK, port: 0 });
  const debuggerPort = socketName(debuggerFd).port;
  const vmmFd = openDebugSocket({ address: LOOPBACK, port: debuggerPort });
  const vmmPort = socketName(vmmFd).port;
  const transport = new UdpDebugTransport(vmmFd, { address: LOOPBACK, port: debuggerPort });
  const rig = makeRig({
    features: parseHvFeatures("all", { syndbg: true }),
    debugTransport: transport,
    syndbgHypercalls: options.hypercalls ?? false,
  });
  const toGuest = (bytes: Uint8Array, fromFd = debuggerFd) => {
    const n = libc.sendto(
      fromFd,
      bytes as Uint8Array<ArrayBuffer>,
      BigInt(bytes.length),
      0,
      sockaddrIn(LOOPBACK, vmmPort),
      SOCKADDR_IN_BYTES,
    );
    assertEquals(Number(n), bytes.length);
  };
  const fromGuest = (): Uint8Array | undefined => {
    const buf = new Uint8Array(65536);
    const n = Number(libc.recvfrom(debuggerFd, buf, 65536n, C.MSG_DONTWAIT, null, null));
    return n >= 0 ? buf.slice(0, n) : undefined;
  };
  return {
    rig,
    transport,
    debuggerFd,
    debuggerPort,
    vmmFd,
    toGuest,
    fromGuest,
    [Symbol.dispose]() {
      close(debuggerFd);
      close(vmmFd);
    },
  };
}

function bytes(n: number, seed = 1): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);
}

function wr(rig: Rig, msr: number, value: bigint | number): void {
  assert(rig.hv.wrmsr(0, msr, BigInt(value)));
}

Deno.test("guest MSR send reaches the debugger; debugger datagram fills the receive page", () => {
  using l = link();
  const { rig } = l;
  const data = bytes(1200);
  rig.memory.write(SEND, data);
  wr(rig, T.HV_X64_MSR_SYNDBG_SEND_BUFFER, SEND);
  wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, RECV);
  wr(rig, T.HV_X64_MSR_SYNDBG_PENDING_BUFFER, PENDING);
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_SEND | (1200n << 16n));
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_STATUS), T.HV_SYNDBG_STATUS_SEND_SUCCESS);
  assertEquals(l.fromGuest(), data, "exact bytes, one datagram");
  assertEquals(l.fromGuest(), undefined);

  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_STATUS), 0n, "nothing queued yet");

  const reply = bytes(4096, 5);
  l.toGuest(bytes(77, 2));
  l.toGuest(reply);
  assert(l.transport.hasPending());
  rig.hv.syndbg!.onReceivable();
  assertEquals(rig.memory.readU8(PENDING), 1);
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(
    rig.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_STATUS),
    T.HV_SYNDBG_STATUS_RECV_SUCCESS | (77n << 16n),
  );
  assertEquals(rig.memory.slice(RECV, 77), bytes(77, 2));
  assertEquals(rig.memory.readU8(PENDING), 1, "the second datagram is still queued");
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_STATUS)! >> 16n, 4096n);
  assertEquals(rig.memory.slice(RECV, 4096), reply);
  assertEquals(rig.memory.readU8(PENDING), 0);

  // Too large for the page: dropped, the guest is told nothing arrived.
  l.toGuest(bytes(5000));
  wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
  assertEquals(rig.hv.rdmsr(0, T.HV_X64_MSR_SYNDBG_STATUS), 0n);
  assertFalse(l.transport.hasPending());
});

Deno.test("the connected socket ignores datagrams from anyone but the debugger", () => {
  using l = link();
  const stranger = udpSocket({ address: LOOPBACK, port: 0 });
  try {
    l.toGuest(bytes(10), stranger);
    assertFalse(l.transport.hasPending());
    assertEquals(l.transport.tryReceive(new Uint8Array(100)), 0);
  } finally {
    close(stranger);
  }
});

Deno.test("hypercalls over UDP: posted frame's payload out, datagram back as a frame", () => {
  using l = link({ hypercalls: true });
  const { rig } = l;
  const dbg = rig.hv.syndbg!;
  // The guest posts a raw frame (from 10.0.0.2) carrying a KDNET-sized payload.
  const payload = bytes(1400, 9);
  const frame = new Uint8Array(RAW_FRAME_HEADER_BYTES + payload.length);
  frame.set(payload, RAW_FRAME_HEADER_BYTES);
  frame.set([0x08, 0x00], 12);
  frame.set([0x45, 0, (1428 >> 8) & 0xff, 1428 & 0xff, 0, 0, 0x40, 0, 64, 17], 14);
  frame.set([10, 0, 0, 2, 127, 0, 0, 1], 26);
  frame.set([0xc3, 0x51, 0xc3, 0x50, (1408 >> 8) & 0xff, 1408 & 0xff], 34);
  T.HV_INPUT_POST_DEBUG_DATA.encode({ count: frame.length, options: 0 }, rig.memory.slice(IN, 8));
  rig.memory.write(IN + 8, frame);
  const status = dbg.postDebugData(rig.memory.slice(IN, 4096), rig.memory.slice(OUT, 4096));
  assertEquals(status, T.HV_STATUS_SUCCESS);
  assertEquals(l.fromGuest(), payload);

  l.toGuest(bytes(300, 4));
  T.HV_INPUT_RETRIEVE_DEBUG_DATA.encode(
    { count: 4088, options: 0, timeout: 0n },
    rig.memory.slice(IN, 16),
  );
  assertEquals(
    dbg.retrieveDebugData(rig.memory.slice(IN, 4096), rig.memory.slice(OUT, 4096)),
    T.HV_STATUS_SUCCESS,
  );
  const retrieved = rig.memory.readU32(OUT);
  assertEquals(retrieved, RAW_FRAME_HEADER_BYTES + 300);
  assertEquals(rig.memory.readU32(OUT + 4), 4088 - retrieved);
  const back = rig.memory.slice(OUT + 8, retrieved);
  const udp = parseUdpFrame(back)!;
  assertEquals(back.subarray(udp.offset), bytes(300, 4));
  assertEquals(udp.sourceIp, LOOPBACK);
  assertEquals([back[30], back[31], back[32], back[33]], [10, 0, 0, 2]);
  assertEquals((back[36]! << 8) | back[37]!, l.debuggerPort);

  assertEquals(
    dbg.retrieveDebugData(rig.memory.slice(IN, 4096), rig.memory.slice(OUT, 4096)),
    T.HV_STATUS_NO_DATA,
  );
  const out = rig.memory.slice(OUT, 24);
  assertEquals(dbg.resetDebugSession(new Uint8Array(4), out), T.HV_STATUS_SUCCESS);
  assertEquals(T.HV_OUTPUT_RESET_DEBUG_SESSION.get(out, 0, "hostPort"), l.debuggerPort);
  assertEquals(T.HV_OUTPUT_RESET_DEBUG_SESSION.get(out, 0, "hostIp"), LOOPBACK);
});

Deno.test("no debugger listening: sends still report sent (ICMP refusals are absorbed)", () => {
  using l = link();
  close(l.debuggerFd); // nobody at the port any more: each datagram draws an ICMP unreachable
  for (let i = 0; i < 5; i++) assertEquals(l.transport.send(bytes(20)), "sent", `send ${i}`);
  assertEquals(l.transport.tryReceive(new Uint8Array(64)), 0);
  assertFalse(l.transport.hasPending());
});

Deno.test("main-thread event loop: every datagram raises the pending flag (edge-triggered)", async () => {
  using l = link();
  const { rig } = l;
  wr(rig, T.HV_X64_MSR_SYNDBG_PENDING_BUFFER, PENDING);
  wr(rig, T.HV_X64_MSR_SYNDBG_RECV_BUFFER, RECV);
  const loop = new EventLoop();
  let events = 0;
  loop.add(l.vmmFd, () => {
    events++;
    rig.hv.syndbg!.onReceivable();
    loop.stop();
  }, C.EPOLLIN | C.EPOLLET);
  try {
    const timeout = setTimeout(() => loop.stop(), 2000);
    l.toGuest(bytes(10));
    await loop.run();
    assertEquals(events, 1);
    assertEquals(rig.memory.readU8(PENDING), 1);
    // The guest takes it: flag down. A new datagram raises it again through a new edge.
    wr(rig, T.HV_X64_MSR_SYNDBG_CONTROL, T.HV_SYNDBG_CONTROL_RECV);
    assertEquals(rig.memory.readU8(PENDING), 0);
    l.toGuest(bytes(11));
    await loop.run();
    clearTimeout(timeout);
    assertEquals(events, 2);
    assertEquals(rig.memory.readU8(PENDING), 1);
  } finally {
    loop.remove(l.vmmFd);
    loop.close();
  }
});
