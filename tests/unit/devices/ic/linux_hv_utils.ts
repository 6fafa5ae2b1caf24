/**
 * The guest side of the ICs, ported by hand from Linux 6.1 `drivers/hv/hv_util.c`,
 * `channel_mgmt.c` (`vmbus_prep_negotiate_resp`), `hv_kvp.c` and `tools/hv/hv_kvp_daemon.c`,
 * working on raw bytes at the C offsets (independently of `src/devices/ic/protocol.ts`), so the
 * tests check the host against the client's algorithm, quirks included:
 *
 * - each callback answers in the host's own buffer, `recvlen` bytes, with the request id;
 * - KVP reads nothing (not even NEGOTIATE) until the daemon registers, and one packet at a time;
 * - the KVP daemon answers GET for an existing key with an empty value (kernel/daemon offsets).
 *
 * `dmesg` collects the `pr_info` lines (`"Shutdown IC version 3.2"` …).
 */
import type {
  GuestChannel,
  GuestOffer,
  LoopbackGuest,
} from "../../../../src/vmbus/testing/loopback_guest.ts";

const PAGE = 4096;
const PIPE_HDR = 8;
const ICMSG_HDR = 28; // sizeof(vmbuspipe_hdr) + sizeof(icmsg_hdr)
// icmsg_hdr field offsets, relative to the buffer start.
const H_MSGTYPE = PIPE_HDR + 4;
const H_MSGSIZE = PIPE_HDR + 10;
const H_STATUS = PIPE_HDR + 12;
const H_FLAGS = PIPE_HDR + 17;

const ICMSGTYPE_NEGOTIATE = 0;
const ICMSGTYPE_HEARTBEAT = 1;
const ICMSGTYPE_KVPEXCHANGE = 2;
const ICMSGTYPE_SHUTDOWN = 3;
const ICMSGTYPE_TIMESYNC = 4;
const ICMSGHDRFLAG_TRANSACTION = 1;
const ICMSGHDRFLAG_RESPONSE = 4;
const HV_S_OK = 0;
const HV_E_FAIL = 0x80004005;
const HV_S_CONT = 0x80070103;
const IC_VERSION_NEGOTIATION_MAX_VER_COUNT = 100;

const v = (major: number, minor: number) => (major << 16) | minor;
const FW_VERSIONS = [v(3, 0), v(1, 0)];
const SD_VERSIONS = [v(3, 2), v(3, 1), v(3, 0), v(1, 0)];
const TS_VERSIONS = [v(4, 0), v(3, 0), v(1, 0)];
const HB_VERSIONS = [v(3, 0), v(1, 0)];
const KVP_VERSIONS = [v(4, 0), v(3, 0), v(1, 0)];
const TS_VERSION_3 = v(3, 0);

const SHUTDOWN_GUID = "0e0b6031-5213-4934-818b-38d90ced39db";
const TS_GUID = "9527e630-d0ae-497b-adce-e80ab0175caf";
const HEARTBEAT_GUID = "57164f39-9115-4e78-ab55-382f3bd5422d";
const KVP_GUID = "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6";

/** A packet as `vmbus_recvpacket` hands it over: a copy of the payload, its length, the id. */
interface Recv {
  buf: Uint8Array;
  recvlen: number;
  requestid: bigint;
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** A packet the guest read, for tests to inspect. */
export interface RxRecord {
  readonly classId: string;
  readonly type: number;
  readonly flags: number;
  readonly requestId: bigint;
  readonly payload: Uint8Array;
}

/** Reads one packet into a `size`-byte buffer (like vmbus_recvpacket), signalling as Linux does. */
function recvOne(ch: GuestChannel, size: number, rx: RxRecord[]): Recv | null {
  const { packet, signal } = ch.in.read();
  if (signal) ch.signalHost();
  if (!packet) return null;
  rx.push({
    classId: ch.offer.classId,
    type: packet.type,
    flags: packet.flags,
    requestId: packet.transactionId,
    payload: packet.payload,
  });
  if (packet.payload.length > size) {
    throw new Error(`host sent a ${packet.payload.length}-byte packet; Linux reads ${size}`);
  }
  const buf = new Uint8Array(PAGE * 4);
  buf.set(packet.payload);
  return { buf, recvlen: packet.payload.length, requestid: packet.transactionId };
}

/** A packet the guest sent (an answer), for tests. */
export interface TxRecord {
  readonly classId: string;
  readonly requestId: bigint;
  readonly payload: Uint8Array;
}

function respond(ch: GuestChannel, r: Recv, tx: TxRecord[]): void {
  r.buf[H_FLAGS] = ICMSGHDRFLAG_TRANSACTION | ICMSGHDRFLAG_RESPONSE;
  const payload = r.buf.slice(0, r.recvlen);
  tx.push({ classId: ch.offer.classId, requestId: r.requestid, payload });
  if (!ch.send(payload, { transactionId: r.requestid })) {
    throw new Error("guest send ring is full");
  }
}

/** vmbus_prep_negotiate_resp, line by line. Returns the chosen service version or undefined. */
export function prepNegotiateResp(
  buf: Uint8Array,
  buflen: number,
  fwVersions: readonly number[],
  srvVersions: readonly number[],
): { ok: boolean; fw: number; srv: number } {
  const d = dv(buf);
  if (buflen < ICMSG_HDR + 4) return { ok: false, fw: 0, srv: 0 }; // offsetof(reserved)
  d.setUint16(H_MSGSIZE, 0x10, true);
  const neg = ICMSG_HDR;
  let frameCnt = d.getUint16(neg, true);
  let msgCnt = d.getUint16(neg + 2, true);
  let icframeMajor = frameCnt, icframeMinor = 0;
  let icmsgMajor = msgCnt, icmsgMinor = 0;
  let found = false;
  const ver = (j: number) => ({
    major: d.getUint16(neg + 8 + j * 4, true),
    minor: d.getUint16(neg + 8 + j * 4 + 2, true),
  });
  const pktSize = ICMSG_HDR + 8 + (frameCnt + msgCnt) * 4;
  if (
    frameCnt > IC_VERSION_NEGOTIATION_MAX_VER_COUNT ||
    msgCnt > IC_VERSION_NEGOTIATION_MAX_VER_COUNT || pktSize > buflen
  ) {
    // fw_error
  } else {
    for (const fwv of fwVersions) {
      for (let j = 0; j < frameCnt; j++) {
        const x = ver(j);
        if (x.major === fwv >> 16 && x.minor === (fwv & 0xffff)) {
          icframeMajor = x.major;
          icframeMinor = x.minor;
          found = true;
          break;
        }
      }
      if (found) break;
    }
    if (found) {
      found = false;
      for (const sv of srvVersions) {
        for (let j = frameCnt; j < frameCnt + msgCnt; j++) {
          const x = ver(j);
          if (x.major === sv >> 16 && x.minor === (sv & 0xffff)) {
            icmsgMajor = x.major;
            icmsgMinor = x.minor;
            found = true;
            break;
          }
        }
        if (found) break;
      }
    }
  }
  frameCnt = found ? 1 : 0;
  msgCnt = found ? 1 : 0;
  d.setUint16(neg, frameCnt, true);
  d.setUint16(neg + 2, msgCnt, true);
  d.setUint16(neg + 8, icframeMajor, true);
  d.setUint16(neg + 10, icframeMinor, true);
  d.setUint16(neg + 12, icmsgMajor, true);
  d.setUint16(neg + 14, icmsgMinor, true);
  return {
    ok: found,
    fw: (icframeMajor << 16) | icframeMinor,
    srv: (icmsgMajor << 16) | icmsgMinor,
  };
}

const fmtVer = (x: number) => `${x >> 16}.${x & 0xffff}`;

/** What the shutdown callback scheduled. */
export type ShutdownWork = "poweroff" | "reboot" | "hibernate";

/** A time sample as `adj_guesttime` stored it. */
export interface GuestTimeSample {
  /** host_ts.host_time after the v4 correction (100 ns since 1601). */
  hostTime: bigint;
  /** The reference counter when the guest processed the message. */
  refTime: bigint;
  flags: number;
  /** Version of the struct read (true: ictimesync_ref_data). */
  v4: boolean;
}

/** The daemon side of KVP (hv_kvp_daemon), with records kept as raw C buffers. */
export class FakeKvpDaemon {
  /** `kvp_file_info[pool].records`. */
  readonly pools: { key: Uint8Array; value: Uint8Array }[][] = [[], [], [], [], []];
  /** Hold requests until `release()` (the daemon is slow). */
  hold = false;
  /** Never answer (the kernel times out after 30 s). */
  hung = false;
  /** Requests handled, as `op/pool`. */
  readonly seen: string[] = [];
  held: Uint8Array | undefined;
  /** Answers the kernel with (message) when `hold` is released. */
  deliver: ((msg: Uint8Array) => void) | undefined;
  /** Interfaces by upper-case MAC for GET_IP_INFO (kvp_mac_to_ip): `;`-joined strings. */
  readonly interfaces = new Map<string, { ip: string; subnet: string; gateway: string }>();

  /** The daemon's records of `pool` as strings. */
  entries(pool: number): { key: string; value: string }[] {
    return this.pools[pool]!.map((r) => ({ key: cstr(r.key), value: cstr(r.value) }));
  }

  /** Handles one kernel message (hv_kvp_msg, utf-8 strings) in place. */
  handle(msg: Uint8Array): void {
    const d = dv(msg);
    const op = msg[0]!;
    const pool = msg[1]!;
    this.seen.push(`${op}/${pool}`);
    d.setUint32(0, HV_S_OK, true); // hv_msg->error = HV_S_OK (overlays kvp_hdr)
    const body = 4;
    const recs = this.pools[pool];
    const fail = () => d.setUint32(0, HV_S_CONT, true);
    switch (op) {
      case 1: { // SET: kvp_set.data at body: value_type, key_size, value_size, key[512], value[2048]
        const keySize = d.getUint32(body + 4, true);
        const valueSize = d.getUint32(body + 8, true);
        if (!recs || keySize > 512 || valueSize > 2048) return fail();
        const key = msg.subarray(body + 12, body + 12 + 512);
        const value = msg.subarray(body + 524, body + 524 + 2048);
        const hit = recs.find((r) => memeq(r.key, key, keySize));
        if (hit) {
          hit.value.set(value.subarray(0, valueSize));
          return;
        }
        const rec = { key: new Uint8Array(512), value: new Uint8Array(2048) };
        rec.value.set(value.subarray(0, valueSize));
        rec.key.set(key.subarray(0, keySize));
        recs.push(rec);
        return;
      }
      case 0: { // GET: kvp_get_value(pool, kvp_set.data.key, key_size, kvp_set.data.value, value_size)
        const keySize = d.getUint32(body + 4, true);
        const valueSize = d.getUint32(body + 8, true);
        if (!recs || keySize > 512 || valueSize > 2048) return fail();
        const key = msg.subarray(body + 12, body + 12 + 512);
        const hit = recs.find((r) => memeq(r.key, key, keySize));
        if (!hit) return fail();
        msg.set(hit.value.subarray(0, valueSize), body + 524);
        return;
      }
      case 2: { // DELETE: kvp_delete.key_size, key
        const keySize = d.getUint32(body, true);
        if (!recs) return fail();
        const i = recs.findIndex((r) => memeq(r.key, msg.subarray(body + 4), keySize));
        if (i < 0) return fail();
        recs.splice(i, 1);
        return;
      }
      case 4: { // GET_IP_INFO: kvp_ip_val (utf-8): adapter_id[256] @0, family @256, dhcp @257,
        // ip_addr[2048] @258, sub_net @2306, gate_way[1024] @4354, dns_addr @5378.
        const mac = cstr(msg.subarray(body, body + 256));
        const itf = this.interfaces.get(mac);
        if (!itf) return d.setUint32(0, HV_E_FAIL, true);
        msg[body + 256] = 0x10;
        msg.set(new TextEncoder().encode(itf.ip + "\0"), body + 258);
        msg.set(new TextEncoder().encode(itf.subnet + "\0"), body + 2306);
        msg.set(new TextEncoder().encode(itf.gateway + "\0"), body + 4354);
        return;
      }
      case 3: { // ENUMERATE: kvp_enum_data: index, data{type, key_size, value_size, key, value}
        const index = d.getUint32(body, true);
        if (pool === 2) {
          const auto = [
            ["FullyQualifiedDomainName", "guest.example"],
            ["IntegrationServicesVersion", "3.1"],
          ];
          const e = auto[index];
          if (!e) return fail();
          msg.set(new TextEncoder().encode(e[0] + "\0"), body + 16);
          msg.set(new TextEncoder().encode(e[1] + "\0"), body + 528);
          return;
        }
        const rec = recs?.[index];
        if (!rec) return fail();
        msg.set(rec.key, body + 16);
        msg.set(rec.value, body + 528);
        return;
      }
    }
  }
}

function memeq(a: Uint8Array, b: Uint8Array, n: number): boolean {
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

function cstr(b: Uint8Array): string {
  const end = b.indexOf(0);
  return new TextDecoder().decode(end < 0 ? b : b.subarray(0, end));
}

/** utf16s_to_utf8s: `inlen` UTF-16 units at most, stops at NUL, at most `maxout` bytes. */
function utf16ToUtf8(src: Uint8Array, inlen: number, maxout: number): Uint8Array {
  let s = "";
  const d = dv(src);
  for (let i = 0; i < inlen && i * 2 + 1 < src.length; i++) {
    const u = d.getUint16(i * 2, true);
    if (u === 0) break;
    s += String.fromCharCode(u);
  }
  return new TextEncoder().encode(s).subarray(0, maxout);
}

/** utf8s_to_utf16s into `dst` (no terminator), at most `maxout` units; returns units written. */
function utf8ToUtf16(src: string, dst: Uint8Array, at: number, maxout: number): number {
  const d = dv(dst);
  const n = Math.min(src.length, maxout);
  for (let i = 0; i < n; i++) d.setUint16(at + i * 2, src.charCodeAt(i), true);
  return n;
}

const HV_KVP_MSG_SIZE = 4 + 7426; // sizeof(struct hv_kvp_msg)

/** The hv_utils driver bound to the four ICs of a `LoopbackGuest`. */
export class LinuxHvUtils {
  readonly guest: LoopbackGuest;
  /** pr_info lines. */
  readonly dmesg: string[] = [];
  /** Every packet the guest read, in order. */
  readonly rx: RxRecord[] = [];
  /** Every answer the guest sent, in order. */
  readonly tx: TxRecord[] = [];
  /** Negotiated service versions (`sd_srv_version` …). */
  readonly versions = new Map<string, number>();
  readonly channels = new Map<string, GuestChannel>();
  /** Work the shutdown callback scheduled. */
  readonly shutdownWork: ShutdownWork[] = [];
  /** hv_is_hibernation_supported(). */
  hibernationSupported = false;
  /** adj_guesttime calls. */
  readonly timeSamples: GuestTimeSample[] = [];
  /** hv_read_reference_counter(). */
  refCounter: () => bigint = () => 0n;
  /** Heartbeat sequence numbers answered. */
  readonly heartbeats: bigint[] = [];
  /** The KVP daemon (undefined: not running). */
  daemon: FakeKvpDaemon | undefined;
  /** Stop answering heartbeats (a hung guest: the channel callback never runs). */
  heartbeatStalled = false;

  // hv_kvp.c globals
  #kvpState: "init" | "ready" | "hostmsg" | "userspace" = "init";
  #kvpRecv: Recv | undefined;
  #hostNegotiated: "not-started" | "in-progress" | "finished" = "not-started";

  constructor(guest: LoopbackGuest) {
    this.guest = guest;
  }

  /** util_probe for each IC offer: opens the channel with 3-page rings (HV_UTIL_RING_*_SIZE). */
  probe(offers: readonly GuestOffer[]): void {
    for (const o of offers) {
      if (![SHUTDOWN_GUID, TS_GUID, HEARTBEAT_GUID, KVP_GUID].includes(o.classId)) continue;
      this.channels.set(o.classId, this.guest.open(o, { sendPages: 4, recvPages: 4 }));
    }
  }

  /** util_remove for one IC: closes its channel. */
  remove(classId: string): void {
    const ch = this.channels.get(classId);
    if (!ch) return;
    this.channels.delete(classId);
    this.guest.close(ch);
    if (classId === KVP_GUID) {
      this.#kvpState = this.daemon ? "ready" : "init";
      this.#hostNegotiated = "not-started";
    }
  }

  /** Runs every channel callback until nothing more happens. */
  pump(): void {
    for (let round = 0; round < 10_000; round++) {
      let progress = false;
      for (const [cls, ch] of this.channels) {
        if (!ch.in.hasData()) continue;
        if (cls === SHUTDOWN_GUID) progress = this.#shutdownCallback(ch) || progress;
        else if (cls === TS_GUID) progress = this.#timesyncCallback(ch) || progress;
        else if (cls === HEARTBEAT_GUID) progress = this.#heartbeatCallback(ch) || progress;
        else if (cls === KVP_GUID) progress = this.#kvpCallback(ch) || progress;
      }
      if (!progress) return;
    }
    throw new Error("guest callbacks did not settle");
  }

  #negotiate(ch: GuestChannel, r: Recv, srv: readonly number[], label: string, cls: string) {
    const res = prepNegotiateResp(r.buf, r.recvlen, FW_VERSIONS, srv);
    if (res.ok) {
      this.versions.set(cls, res.srv);
      this.dmesg.push(`${label} IC version ${fmtVer(res.srv)}`);
    }
    void ch;
  }

  #shutdownCallback(ch: GuestChannel): boolean {
    const r = recvOne(ch, PAGE, this.rx);
    if (!r || r.recvlen === 0) return false;
    if (r.recvlen < ICMSG_HDR) {
      this.dmesg.push(`Shutdown request received. Packet length too small: ${r.recvlen}`);
      return true;
    }
    const d = dv(r.buf);
    const type = d.getUint16(H_MSGTYPE, true);
    let work: ShutdownWork | undefined;
    if (type === ICMSGTYPE_NEGOTIATE) {
      this.#negotiate(ch, r, SD_VERSIONS, "Shutdown", SHUTDOWN_GUID);
    } else if (type === ICMSGTYPE_SHUTDOWN) {
      if (r.recvlen < ICMSG_HDR + 2060) {
        this.dmesg.push(`Invalid shutdown msg data. Packet length too small: ${r.recvlen}`);
        return true;
      }
      const flags = d.getUint32(ICMSG_HDR + 8, true);
      switch (flags) {
        case 0:
        case 1:
          d.setUint32(H_STATUS, HV_S_OK, true);
          work = "poweroff";
          this.dmesg.push("Shutdown request received - graceful shutdown initiated");
          break;
        case 2:
        case 3:
          d.setUint32(H_STATUS, HV_S_OK, true);
          work = "reboot";
          this.dmesg.push("Restart request received - graceful restart initiated");
          break;
        case 4:
        case 5:
          this.dmesg.push("Hibernation request received");
          d.setUint32(H_STATUS, this.hibernationSupported ? HV_S_OK : HV_E_FAIL, true);
          if (this.hibernationSupported) work = "hibernate";
          break;
        default:
          d.setUint32(H_STATUS, HV_E_FAIL, true);
          this.dmesg.push("Shutdown request received - Invalid request");
      }
    } else {
      d.setUint32(H_STATUS, HV_E_FAIL, true);
      this.dmesg.push(`Shutdown request received. Invalid msg type: ${type}`);
    }
    respond(ch, r, this.tx);
    if (work) this.shutdownWork.push(work);
    return true;
  }

  #timesyncCallback(ch: GuestChannel): boolean {
    let any = false;
    for (;;) {
      const r = recvOne(ch, PAGE, this.rx);
      if (!r || r.recvlen === 0) break;
      any = true;
      if (r.recvlen < ICMSG_HDR) {
        this.dmesg.push(`Timesync request received. Packet length too small: ${r.recvlen}`);
        break;
      }
      const d = dv(r.buf);
      const type = d.getUint16(H_MSGTYPE, true);
      if (type === ICMSGTYPE_NEGOTIATE) {
        this.#negotiate(ch, r, TS_VERSIONS, "TimeSync", TS_GUID);
      } else if (type === ICMSGTYPE_TIMESYNC) {
        const ver = this.versions.get(TS_GUID) ?? 0;
        if (ver > TS_VERSION_3) {
          if (r.recvlen < ICMSG_HDR + 22) {
            this.dmesg.push(`Invalid ictimesync ref data. Length too small: ${r.recvlen}`);
            break;
          }
          this.#adj(
            d.getBigUint64(ICMSG_HDR, true),
            d.getBigUint64(ICMSG_HDR + 8, true),
            d.getUint8(ICMSG_HDR + 16),
            true,
          );
        } else {
          if (r.recvlen < ICMSG_HDR + 25) {
            this.dmesg.push(`Invalid ictimesync data. Length too small: ${r.recvlen}`);
            break;
          }
          this.#adj(
            d.getBigUint64(ICMSG_HDR, true),
            this.refCounter(),
            d.getUint8(ICMSG_HDR + 24),
            false,
          );
        }
      } else {
        d.setUint32(H_STATUS, HV_E_FAIL, true);
      }
      respond(ch, r, this.tx);
    }
    return any;
  }

  #adj(hosttime: bigint, reftime: bigint, flags: number, v4: boolean): void {
    const cur = this.refCounter();
    this.timeSamples.push({ hostTime: hosttime + (cur - reftime), refTime: cur, flags, v4 });
  }

  #heartbeatCallback(ch: GuestChannel): boolean {
    if (this.heartbeatStalled) return false;
    let any = false;
    for (;;) {
      const r = recvOne(ch, PAGE, this.rx);
      if (!r || r.recvlen === 0) break;
      any = true;
      if (r.recvlen < ICMSG_HDR) {
        this.dmesg.push(`Heartbeat request received. Packet length too small: ${r.recvlen}`);
        break;
      }
      const d = dv(r.buf);
      const type = d.getUint16(H_MSGTYPE, true);
      if (type === ICMSGTYPE_NEGOTIATE) {
        this.#negotiate(ch, r, HB_VERSIONS, "Heartbeat", HEARTBEAT_GUID);
      } else if (type === ICMSGTYPE_HEARTBEAT) {
        if (r.recvlen < ICMSG_HDR + 8) {
          this.dmesg.push(`Invalid heartbeat msg data. Length too small: ${r.recvlen}`);
          break;
        }
        const seq = BigInt.asUintN(64, d.getBigUint64(ICMSG_HDR, true) + 1n);
        d.setBigUint64(ICMSG_HDR, seq, true);
        this.heartbeats.push(seq);
      } else {
        d.setUint32(H_STATUS, HV_E_FAIL, true);
      }
      respond(ch, r, this.tx);
    }
    return any;
  }

  // ---- KVP (hv_kvp.c) ---------------------------------------------------------------------------

  /** hv_kvp_daemon starts and registers (KVP_OP_REGISTER1): the channel gets polled. */
  startDaemon(daemon = new FakeKvpDaemon()): FakeKvpDaemon {
    this.daemon = daemon;
    this.#kvpState = "ready"; // kvp_register_done → kvp_poll_wrapper
    this.pump();
    return daemon;
  }

  /** The daemon exits (kvp_on_reset): a pending transaction fails, reading stops. */
  stopDaemon(): void {
    if (this.#kvpState === "userspace" || this.#kvpState === "hostmsg") {
      this.#kvpRespond(undefined, HV_E_FAIL);
    }
    this.daemon = undefined;
    this.#kvpState = "init";
  }

  /** The 30 s kvp_timeout_work fires while the daemon holds a request. */
  kvpTimeout(): void {
    if (this.#kvpState !== "userspace") return;
    this.#kvpRespond(undefined, HV_E_FAIL);
    this.#kvpState = "ready";
    this.pump();
  }

  /** A held daemon answers now. */
  releaseDaemon(): void {
    const d = this.daemon;
    if (!d?.held || !d.deliver) return;
    const msg = d.held;
    d.held = undefined;
    d.handle(msg);
    d.deliver(msg);
    this.pump();
  }

  #kvpCallback(ch: GuestChannel): boolean {
    if (this.#kvpState === "init") {
      if (this.#hostNegotiated === "not-started") this.#hostNegotiated = "in-progress";
      return false;
    }
    if (this.#kvpState !== "ready") return false;
    const r = recvOne(ch, PAGE * 4, this.rx);
    if (!r || r.recvlen === 0) return false;
    if (r.recvlen < ICMSG_HDR) {
      this.dmesg.push(`KVP request received. Packet length too small: ${r.recvlen}`);
      return true;
    }
    const d = dv(r.buf);
    const type = d.getUint16(H_MSGTYPE, true);
    if (type === ICMSGTYPE_NEGOTIATE) {
      this.#negotiate(ch, r, KVP_VERSIONS, "KVP", KVP_GUID);
    } else if (type === ICMSGTYPE_KVPEXCHANGE) {
      this.#kvpRecv = r;
      this.#kvpState = "hostmsg";
      this.#kvpSendKey();
      return true;
    } else {
      this.dmesg.push(`KVP request received. Invalid msg type: ${type}`);
      return true;
    }
    respond(ch, r, this.tx);
    this.#hostNegotiated = "finished";
    return true;
  }

  /** kvp_send_key: converts the host's UTF-16 message for the daemon. */
  #kvpSendKey(): void {
    const r = this.#kvpRecv!;
    const inb = r.buf.subarray(ICMSG_HDR);
    const ind = dv(inb);
    const msg = new Uint8Array(HV_KVP_MSG_SIZE);
    const md = dv(msg);
    const op = inb[0]!;
    msg[0] = op;
    msg[1] = inb[1]!;
    const body = 4;
    switch (op) {
      case 1: { // SET
        const valueType = ind.getUint32(body, true);
        const keySize = ind.getUint32(body + 4, true);
        const valueSize = ind.getUint32(body + 8, true);
        let value: Uint8Array | undefined;
        if (valueType === 1) {
          value = utf16ToUtf8(inb.subarray(body + 524), valueSize, 2047);
        } else if (valueType === 4) {
          value = new TextEncoder().encode(String(ind.getUint32(body + 524, true)));
        } else if (valueType === 8) {
          value = new TextEncoder().encode(String(ind.getBigUint64(body + 524, true)));
        }
        if (value) {
          msg.set(value, body + 524);
          md.setUint32(body + 8, value.length + 1, true);
        }
        const key = utf16ToUtf8(inb.subarray(body + 12), keySize, 511);
        msg.set(key, body + 12);
        md.setUint32(body + 4, key.length + 1, true);
        break;
      }
      case 0: { // GET: only the key
        const keySize = ind.getUint32(body + 4, true);
        const key = utf16ToUtf8(inb.subarray(body + 12), keySize, 511);
        msg.set(key, body + 12);
        md.setUint32(body + 4, key.length + 1, true);
        break;
      }
      case 2: { // DELETE
        const keySize = ind.getUint32(body, true);
        const key = utf16ToUtf8(inb.subarray(body + 4), keySize, 511);
        msg.set(key, body + 4);
        md.setUint32(body, key.length + 1, true);
        break;
      }
      case 3: // ENUMERATE
        md.setUint32(body, ind.getUint32(body, true), true);
        break;
      case 4: { // GET_IP_INFO (process_ib_ipinfo): hv_kvp_ip_msg's adapter_id at 2, in UTF-16
        msg.set(utf16ToUtf8(inb.subarray(2), 128, 255), body);
        msg[body + 256] = inb[2 + 256]!;
        break;
      }
    }
    this.#kvpState = "userspace";
    const daemon = this.daemon;
    if (!daemon) {
      this.#kvpRespond(undefined, HV_E_FAIL);
      this.#kvpState = "ready";
      return;
    }
    if (daemon.hung) return;
    const deliver = (answer: Uint8Array) => {
      if (this.#kvpState !== "userspace") return;
      this.#kvpRespond(answer, dv(answer).getUint32(0, true));
      this.#kvpState = "ready";
    };
    if (daemon.hold) {
      daemon.held = msg;
      daemon.deliver = deliver;
      return;
    }
    daemon.handle(msg);
    deliver(msg);
  }

  /** kvp_respond_to_host. */
  #kvpRespond(answer: Uint8Array | undefined, error: number): void {
    const r = this.#kvpRecv;
    const ch = this.channels.get(KVP_GUID);
    if (!r || !ch) return;
    const d = dv(r.buf);
    d.setUint32(H_STATUS, error >>> 0, true);
    if (!error && answer) {
      const kvp = ICMSG_HDR; // hv_kvp_msg in recv_buffer
      const op = r.buf[kvp]!;
      if (op === 0 || op === 3) {
        // GET: kvp_get.data (body + 0); ENUMERATE: kvp_enum_data.data (body + 4).
        const data = kvp + 4 + (op === 3 ? 4 : 0);
        let keylen = 0;
        if (op === 3) {
          const key = cstr(answer.subarray(4 + 16, 4 + 16 + 512));
          keylen = utf8ToUtf16(key, r.buf, data + 12, 512 / 2 - 2);
          d.setUint32(data + 4, 2 * (keylen + 1), true);
        }
        // copy_value: the value is read at kvp_enum_data.data.value for GET too.
        const value = cstr(answer.subarray(4 + 528, 4 + 528 + 2048));
        const valuelen = utf8ToUtf16(value, r.buf, data + 524, 2048 / 2 - 2);
        d.setUint32(data + 8, 2 * (valuelen + 1), true);
        d.setUint32(data, 1, true); // REG_SZ
      }
      if (op === 4) {
        // process_ob_ipinfo: back to UTF-16 in the host's hv_kvp_ip_msg.
        const v = kvp + 2;
        const str = (at: number) => cstr(answer.subarray(at));
        utf8ToUtf16(str(4 + 258), r.buf, v + 258, 1024);
        utf8ToUtf16(str(4 + 2306), r.buf, v + 2306, 1024);
        utf8ToUtf16(str(4 + 4354), r.buf, v + 4354, 512);
        r.buf[v + 256] = answer[4 + 256]!;
      }
    }
    respond(ch, r, this.tx);
    this.#kvpRecv = undefined;
  }
}

export { HEARTBEAT_GUID, HV_E_FAIL, HV_S_CONT, HV_S_OK, KVP_GUID, SHUTDOWN_GUID, TS_GUID };
