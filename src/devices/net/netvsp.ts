/**
 * netvsp: the synthetic NIC on VMBus (`VmbusDevice`) for Linux `hv_netvsc` and Windows netvsc.
 *
 * The primary channel runs NVSP setup: INIT (versions 2 … 6.1, one try each), NDIS config and
 * version, the receive buffer (a GPADL cut into equal sub-allocations, one RNDIS message each)
 * and the send buffer (sections of `SEND_SECTION_SIZE`). RNDIS then flows inside NVSP
 * SEND_RNDIS_PKT messages on every channel:
 *
 * - guest → host: the message stream is the send-buffer section (if any) followed by the
 *   GPA-direct ranges; it holds one or more RNDIS messages stepped through by `msg_len`. Data
 *   packets go to the backend (checksum/LSO/VLAN PPIs become the backend's offload record);
 *   control messages are answered (`rndis.ts`). Each NVSP packet is completed on its channel.
 * - host → guest: frames read from the backend are written as RNDIS packets into free
 *   sub-allocations and announced in one transfer-page packet per batch (one range per frame);
 *   the guest's completion frees the batch's sub-allocations. Control answers and link
 *   indications travel the same way with channel type "control".
 *
 * Sub-channels (vRSS, `queues` > 1) come on the guest's NVSP SUBCHANNEL request; they share the
 * buffers. Backend queue q feeds channel q (modulo the channels open); a channel's transmits go
 * to backend queue `index % queues`. A send-indirection table spreads the guest's transmits.
 *
 * Hostile guests: every length, offset, section index and page range is checked against the
 * buffer it points into; a bad NVSP request gets status FAIL in its completion, a bad RNDIS
 * message is dropped and counted (`stats`), a packet that is not NVSP at all stops that channel.
 * A guest that never completes receive batches only runs the device out of sub-allocations: the
 * backend is no longer read (frames wait or are dropped by the host) until completions return.
 * Nothing on the data path allocates per packet: frames move with memcpy/read/write on host
 * addresses through scratch buffers made once.
 * @module
 */
import { getLogger, rateLimited } from "../../util/log.ts";
import type { Channel } from "../../vmbus/channel.ts";
import type { TransferPageRange, VmbusDevice } from "../../vmbus/device.ts";
import { VmPacketType } from "../../vmbus/protocol.ts";
import { EXTENSION_HEADER_SIZE, type RingPacket } from "../../vmbus/ring.ts";
import { GsoType, type NetBackend, noOffload, type RxInfo, type TxOffload } from "./backend.ts";
import { copyHost, GUEST_PAGE, GuestRam, hostAddress, HostBuffer } from "./buffers.ts";
import {
  CSUM_PPI_SIZE,
  formatNvspVersion,
  Lso,
  NET_CLASS_ID,
  NO_SECTION,
  NVSP_MESSAGE_SIZE,
  NVSP_SUBCHANNEL_ALLOCATE,
  NvspStatus,
  NvspType,
  PacketFilter,
  PpiType,
  RNDIS_HEADER_SIZE,
  RndisPacket,
  RndisType,
  RxCsum,
  SEND_INDIRECTION_TABLE_ENTRIES,
  SUPPORTED_NVSP_VERSIONS,
  TxCsum,
} from "./protocol.ts";
import {
  handleRndisControl,
  linkIndication,
  newRndisState,
  type RndisConfig,
  type RndisState,
} from "./rndis.ts";

/** Send-buffer section size told to the guest (Hyper-V's and OpenVMM's). */
export const SEND_SECTION_SIZE = 6144;
/** Frames per receive transfer-page packet (Linux allows 562 ranges per packet). */
export const RX_BATCH = 64;
/** RNDIS header + packet + checksum PPI in front of every received frame. */
export const RX_HEADER_SIZE = RNDIS_HEADER_SIZE + RndisPacket.size + CSUM_PPI_SIZE;
/** Largest guest → host message stream accepted (section + ranges): an LSO frame and change. */
export const TX_STREAM_MAX = 128 * 1024;
/** Control answers waiting for a sub-allocation before more are dropped. */
const MAX_PENDING_CONTROL = 256;
/** Bytes a frame may carry beyond the MTU: Ethernet header and one VLAN tag. */
const FRAME_OVERHEAD = 14 + 4;
/** Bytes left unused at the end of each sub-allocation (Windows netvsc writes there). */
const SUBALLOC_SLACK = 36;

/** Options of `NetvspDevice`. */
export interface NetvspOptions {
  /** MAC address, 6 bytes. */
  readonly mac: Uint8Array;
  /** MTU (default 1500). */
  readonly mtu?: number;
  /** Instance GUID (default `netvspInstanceId(0)`). */
  readonly instanceId?: string;
  /** Name for logs (default "netvsp"). */
  readonly name?: string;
  /** Advertise TX checksum + LSO offloads (default true). */
  readonly offloads?: boolean;
}

/** A deterministic instance GUID for NIC `index`. */
export function netvspInstanceId(index: number): string {
  return `6e657476-7370-4e49-8300-${index.toString(16).padStart(12, "0")}`;
}

/** Per-queue (channel) traffic counters. */
export interface NetQueueStats {
  /** Sub-channel index (0 = primary). */
  queue: number;
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
}

/** Device counters. */
export interface NetvspStats {
  /** Frames dropped on receive: filter, too large, not ready. */
  rxDropped: number;
  /** Times receive stopped for lack of sub-allocations or ring space. */
  rxStalls: number;
  /** Guest frames dropped: malformed RNDIS, backend refused. */
  txDropped: number;
  /** NVSP requests answered with FAIL or refused. */
  protocolErrors: number;
  /** RNDIS messages that broke the rules (lengths, offsets, sections, ranges). */
  malformed: number;
  /** Channels stopped because a packet was not NVSP. */
  channelsStopped: number;
  /** Completions from the guest that matched no receive batch. */
  unknownCompletions: number;
  /** Control answers dropped because too many waited. */
  controlDropped: number;
  /** Guest frames sent with segmentation offload (LSOv2) and with checksum offload only. */
  txLso: number;
  txCsum: number;
}

interface ChanState {
  readonly ch: Channel;
  readonly index: number;
  dead: boolean;
  /** Completions that did not fit the ring, in order. */
  readonly backlog: { tid: bigint; payload: Uint8Array }[];
  /** Reading stopped (`onPacket` returned false) until the backlog drains. */
  paused: boolean;
  /**
   * A receive batch (slot) that did not fit the guest's ring, with its header, sent again on
   * `onWritable`; -1 when none. Receiving on this channel waits meanwhile.
   */
  heldSlot: number;
  heldHeader: Uint8Array | undefined;
  readonly stats: NetQueueStats;
}

interface RecvBuffer {
  readonly gpadl: number;
  /** Transfer page set id the guest chose (Linux: 0xCAFE). */
  readonly setId: number;
  readonly buf: HostBuffer;
  readonly subAllocSize: number;
  readonly count: number;
}

interface SendBuffer {
  readonly gpadl: number;
  readonly buf: HostBuffer;
  readonly sections: number;
}

/** The synthetic NIC. */
export class NetvspDevice implements VmbusDevice {
  /** @inheritdoc */
  readonly classId = NET_CLASS_ID;
  /** @inheritdoc */
  readonly instanceId: string;
  /** @inheritdoc */
  readonly name: string;
  /** @inheritdoc */
  readonly maxSubChannels: number;
  /** MAC address. */
  readonly mac: Uint8Array;
  /** MTU told to the guest. */
  readonly mtu: number;
  /** The host side. */
  readonly backend: NetBackend;
  /** Counters. */
  readonly stats: NetvspStats = {
    rxDropped: 0,
    rxStalls: 0,
    txDropped: 0,
    protocolErrors: 0,
    malformed: 0,
    channelsStopped: 0,
    unknownCompletions: 0,
    controlDropped: 0,
    txLso: 0,
    txCsum: 0,
  };
  readonly #offloads: boolean;
  readonly #chans = new Map<Channel, ChanState>();
  /** Open channels by sub-channel index. */
  #byIndex: (ChanState | undefined)[] = [];
  #primary: ChanState | undefined;
  #version = 0;
  #ndisMtu = 0;
  #recv: RecvBuffer | undefined;
  #send: SendBuffer | undefined;
  #rndis: RndisState = newRndisState();
  readonly #rndisConfig: RndisConfig;
  #linkUp = true;
  #ram: GuestRam | undefined;
  /** Free sub-allocation indexes (a stack). */
  #free = new Int32Array(0);
  #freeCount = 0;
  /** Receive batches in flight: sub-allocation indexes per slot, slot id = tid - 1. */
  #slotIndexes = new Int32Array(0);
  #slotLengths = new Int32Array(0);
  #slotCounts = new Int32Array(0);
  #slotFree = new Int32Array(0);
  #slotFreeCount = 0;
  readonly #pendingControl: { data: Uint8Array; queue: number }[] = [];
  readonly #watching: boolean[];
  readonly #rxInfo: RxInfo = { csumValid: false };
  readonly #offload: TxOffload = noOffload();
  readonly #rxScratch: Uint8Array;
  readonly #rxAddr: number;
  readonly #rxView: DataView;
  readonly #txScratch: Uint8Array;
  readonly #txAddr: number;
  readonly #txView: DataView;
  readonly #ranges: { byteCount: number; byteOffset: number }[] = [];
  readonly #rangeList: TransferPageRange[] = [];
  readonly #dataHeader = new Uint8Array(NVSP_MESSAGE_SIZE);
  readonly #controlHeader = new Uint8Array(NVSP_MESSAGE_SIZE);
  readonly #completeOk = new Uint8Array(8);
  readonly #completeFail = new Uint8Array(8);
  readonly #log;
  readonly #warn = rateLimited();

  /** A NIC over `backend`; sub-channels follow the backend's queue count. */
  constructor(backend: NetBackend, options: NetvspOptions) {
    this.backend = backend;
    this.mac = options.mac.slice(0, 6);
    this.mtu = options.mtu ?? 1500;
    this.instanceId = options.instanceId ?? netvspInstanceId(0);
    this.name = options.name ?? "netvsp";
    this.maxSubChannels = Math.max(0, backend.queues.length - 1);
    this.#offloads = options.offloads ?? true;
    this.#log = getLogger("dev", this.name);
    this.#watching = backend.queues.map(() => false);
    this.#rndisConfig = {
      mac: this.mac,
      mtu: this.mtu,
      queues: backend.queues.length,
      offloads: this.#offloads,
      linkUp: () => this.#linkUp,
    };
    // Scratch: a receive frame with the RNDIS header and backend header in front; a whole
    // guest message stream with room to insert a VLAN tag and a backend header.
    this.#rxScratch = new Uint8Array(RX_HEADER_SIZE + 65536 + 64);
    this.#rxAddr = hostAddress(this.#rxScratch);
    this.#rxView = new DataView(this.#rxScratch.buffer);
    this.#txScratch = new Uint8Array(TX_STREAM_MAX + 64);
    this.#txAddr = hostAddress(this.#txScratch);
    this.#txView = new DataView(this.#txScratch.buffer);
    for (const [buf, ct] of [[this.#dataHeader, 0], [this.#controlHeader, 1]] as const) {
      const dv = new DataView(buf.buffer);
      dv.setUint32(0, NvspType.SEND_RNDIS_PKT, true);
      dv.setUint32(4, ct, true);
      dv.setUint32(8, NO_SECTION, true);
    }
    for (const [buf, st] of [[this.#completeOk, 1], [this.#completeFail, 2]] as const) {
      const dv = new DataView(buf.buffer);
      dv.setUint32(0, NvspType.SEND_RNDIS_PKT_COMPLETE, true);
      dv.setUint32(4, st, true);
    }
    for (let i = 0; i < RX_BATCH; i++) this.#ranges.push({ byteCount: 0, byteOffset: 0 });
  }

  /** Negotiated NVSP version (0 before INIT). */
  get version(): number {
    return this.#version;
  }

  /** True once the guest initialized RNDIS. */
  get rndisInitialized(): boolean {
    return this.#rndis.initialized;
  }

  /** The guest's packet filter (0: deliver nothing). */
  get packetFilter(): number {
    return this.#rndis.packetFilter;
  }

  /** Link state. */
  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** Receive sub-allocations free right now (0 without a receive buffer). */
  get freeReceiveSlots(): number {
    return this.#freeCount;
  }

  /** Per-queue counters of the open channels. */
  queueStats(): NetQueueStats[] {
    return this.#byIndex.filter((c) => c !== undefined).map((c) => ({ ...c!.stats }));
  }

  /** Sets the link state and tells an initialized guest (RNDIS status indication). */
  setLink(up: boolean): void {
    if (this.#linkUp === up) return;
    this.#linkUp = up;
    if (this.#rndis.initialized) this.#queueControl(linkIndication(up), 0);
    this.#updateWatch();
  }

  /** Stops reading the backend (the VMM closes the backend itself). */
  close(): void {
    for (let q = 0; q < this.backend.queues.length; q++) this.#setWatch(q, false);
  }

  #warnLimited(msg: string, props: Record<string, unknown>): void {
    this.#warn((dropped) =>
      this.#log.warn(`${msg}{more}`, {
        ...props,
        more: dropped ? ` (${dropped} similar messages dropped)` : "",
      })
    );
  }

  // ---- VmbusDevice -----------------------------------------------------------------------------

  /** @inheritdoc */
  onOpen(channel: Channel): boolean {
    const index = channel.subChannelIndex;
    const cs: ChanState = {
      ch: channel,
      index,
      dead: false,
      backlog: [],
      paused: false,
      heldSlot: -1,
      heldHeader: undefined,
      stats: { queue: index, rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0 },
    };
    this.#chans.set(channel, cs);
    this.#byIndex[index] = cs;
    if (index === 0) {
      this.#primary = cs;
      this.#resetSession();
      this.#ram = new GuestRam(channel.memory);
    }
    this.#updateWatch();
    return true;
  }

  /** @inheritdoc */
  onClose(channel: Channel): void {
    const cs = this.#chans.get(channel);
    if (!cs) return;
    this.#chans.delete(channel);
    if (this.#byIndex[cs.index] === cs) this.#byIndex[cs.index] = undefined;
    if (cs === this.#primary) {
      this.#primary = undefined;
      this.#resetSession();
    }
    this.#updateWatch();
  }

  /** @inheritdoc */
  onGpadlTeardown(channel: Channel, gpadlId: number): void {
    if (this.#recv?.gpadl === gpadlId) this.#dropRecvBuffer();
    if (this.#send?.gpadl === gpadlId) this.#send = undefined;
    channel.releaseGpadl(gpadlId);
    this.#primary?.ch.releaseGpadl(gpadlId);
  }

  /** @inheritdoc */
  onWritable(channel: Channel): void {
    const cs = this.#chans.get(channel);
    if (!cs) return;
    this.#flushBacklog(cs);
    if (cs.heldSlot >= 0 && !this.#recv) cs.heldSlot = -1;
    if (cs.heldSlot >= 0) {
      if (
        !cs.ch.sendTransferPages(this.#recv!.setId, this.#slotRanges(cs.heldSlot), cs.heldHeader!, {
          transactionId: BigInt(cs.heldSlot + 1),
        })
      ) return;
      cs.heldSlot = -1;
      cs.heldHeader = undefined;
      this.#flushControl();
      this.#updateWatch();
    }
  }

  /** @inheritdoc */
  onPacket(channel: Channel, pkt: RingPacket): boolean {
    const cs = this.#chans.get(channel);
    if (!cs || cs.dead) return true;
    if (cs.backlog.length > 0) {
      cs.paused = true;
      return false;
    }
    if (pkt.payloadLength < 4) {
      this.#stopChannel(cs, `${pkt.payloadLength}-byte packet is not an NVSP message`);
      return true;
    }
    const data = pkt.data;
    const base = pkt.payloadOffset;
    const len = pkt.payloadLength;
    const type = rd32(data, base);
    if (pkt.type === VmPacketType.COMP) {
      if (type === NvspType.SEND_RNDIS_PKT_COMPLETE) this.#receiveCompleted(pkt);
      return true;
    }
    if (pkt.type !== VmPacketType.DATA_INBAND && pkt.type !== VmPacketType.DATA_USING_GPA_DIRECT) {
      this.#stopChannel(cs, `packet type ${pkt.type} is not an NVSP request`);
      return true;
    }
    if (type === NvspType.SEND_RNDIS_PKT) {
      this.#rndisPacket(cs, pkt, data, base, len);
      return true;
    }
    if (cs !== this.#primary) {
      // Setup messages belong on the primary channel.
      this.#nvspError(cs, pkt, `NVSP message ${type} on sub-channel ${cs.index}`);
      return true;
    }
    this.#setupMessage(cs, pkt, type, data, base, len);
    return true;
  }

  // ---- NVSP setup ------------------------------------------------------------------------------

  #setupMessage(
    cs: ChanState,
    pkt: RingPacket,
    type: number,
    data: Uint8Array,
    base: number,
    len: number,
  ): void {
    const field = (off: number) => off + 4 <= len ? rd32(data, base + off) : -1;
    switch (type) {
      case NvspType.INIT: {
        const min = field(4);
        const max = field(8);
        const ok = min >= 0 && max >= 0 && min <= max &&
          SUPPORTED_NVSP_VERSIONS.some((v) => v >= min && v <= max);
        if (ok) {
          this.#version = SUPPORTED_NVSP_VERSIONS.find((v) => v >= min && v <= max)!;
          this.#log.debug("{name}: NVSP {v}", {
            name: this.name,
            v: formatNvspVersion(this.#version),
          });
        }
        const out = new Uint8Array(NVSP_MESSAGE_SIZE);
        wr32(out, 0, NvspType.INIT_COMPLETE);
        wr32(out, 4, ok ? this.#version : 0);
        wr32(out, 8, 0);
        wr32(out, 12, ok ? NvspStatus.SUCCESS : NvspStatus.FAIL);
        this.#completeWith(cs, pkt, out);
        return;
      }
      case NvspType.SEND_NDIS_CONFIG: {
        const mtu = field(4);
        if (mtu > 0) this.#ndisMtu = mtu;
        if (pkt.completionRequested) this.#completeWith(cs, pkt, new Uint8Array(0));
        return;
      }
      case NvspType.SEND_NDIS_VER:
        if (pkt.completionRequested) this.#completeWith(cs, pkt, new Uint8Array(0));
        return;
      case NvspType.SEND_RECV_BUF:
        return this.#setRecvBuffer(cs, pkt, field(4), len >= 10 ? rd16(data, base + 8) : -1);
      case NvspType.SEND_SEND_BUF:
        return this.#setSendBuffer(cs, pkt, field(4));
      case NvspType.REVOKE_RECV_BUF:
        this.#dropRecvBuffer();
        if (pkt.completionRequested) this.#completeWith(cs, pkt, new Uint8Array(0));
        return;
      case NvspType.REVOKE_SEND_BUF:
        if (this.#send) cs.ch.releaseGpadl(this.#send.gpadl);
        this.#send = undefined;
        if (pkt.completionRequested) this.#completeWith(cs, pkt, new Uint8Array(0));
        return;
      case NvspType.SUBCHANNEL:
        return this.#allocateSubChannels(cs, pkt, field(4), field(8));
      case NvspType.SWITCH_DATA_PATH:
        if (pkt.completionRequested) this.#completeWith(cs, pkt, new Uint8Array(0));
        return;
      case NvspType.OID_QUERY_EX: {
        const out = new Uint8Array(NVSP_MESSAGE_SIZE);
        wr32(out, 0, NvspType.OID_QUERY_EX_COMPLETE);
        wr32(out, 4, 0xc000_00bb); // NDIS not supported
        if (pkt.completionRequested) this.#completeWith(cs, pkt, out);
        return;
      }
    }
    this.#nvspError(cs, pkt, `unknown NVSP message ${type}`);
  }

  #nvspError(cs: ChanState, pkt: RingPacket, why: string): void {
    this.stats.protocolErrors++;
    this.#warnLimited("{name}: refused {why}", { name: this.name, why });
    if (!pkt.completionRequested) return;
    const out = new Uint8Array(NVSP_MESSAGE_SIZE);
    wr32(out, 0, rd32(pkt.data, pkt.payloadOffset));
    wr32(out, 4, NvspStatus.FAIL);
    this.#completeWith(cs, pkt, out);
  }

  #setRecvBuffer(cs: ChanState, pkt: RingPacket, gpadl: number, id: number): void {
    const out = new Uint8Array(NVSP_MESSAGE_SIZE);
    wr32(out, 0, NvspType.SEND_RECV_BUF_COMPLETE);
    wr32(out, 4, NvspStatus.FAIL);
    const sg = gpadl >= 0 && id >= 0 && this.#version !== 0 && !this.#recv
      ? cs.ch.acquireGpadl(gpadl)
      : undefined;
    if (!sg) {
      this.#nvspError(cs, pkt, `receive buffer GPADL ${gpadl}`);
      return;
    }
    const frame = Math.max(this.mtu, this.#ndisMtu - 14) + FRAME_OVERHEAD;
    const subAllocSize = (RX_HEADER_SIZE + frame + SUBALLOC_SLACK + 63) & ~63;
    const count = Math.floor(sg.length / subAllocSize);
    if (count < 1) {
      cs.ch.releaseGpadl(gpadl);
      this.#nvspError(cs, pkt, `receive buffer of ${sg.length} bytes`);
      return;
    }
    this.#recv = { gpadl, setId: id, buf: new HostBuffer(sg.segments), subAllocSize, count };
    this.#free = new Int32Array(count);
    for (let i = 0; i < count; i++) this.#free[i] = count - 1 - i;
    this.#freeCount = count;
    const slots = Math.min(count, 4096);
    this.#slotIndexes = new Int32Array(slots * RX_BATCH);
    this.#slotLengths = new Int32Array(slots * RX_BATCH);
    this.#slotCounts = new Int32Array(slots);
    this.#slotFree = new Int32Array(slots);
    for (let i = 0; i < slots; i++) this.#slotFree[i] = slots - 1 - i;
    this.#slotFreeCount = slots;
    wr32(out, 4, NvspStatus.SUCCESS);
    wr32(out, 8, 1);
    wr32(out, 12, 0);
    wr32(out, 16, subAllocSize);
    wr32(out, 20, count);
    wr32(out, 24, subAllocSize * count);
    this.#completeWith(cs, pkt, out);
    this.#log.debug("{name}: receive buffer {n} x {size}", {
      name: this.name,
      n: count,
      size: subAllocSize,
    });
    this.#flushControl();
    this.#updateWatch();
  }

  #setSendBuffer(cs: ChanState, pkt: RingPacket, gpadl: number): void {
    const sg = gpadl >= 0 && this.#version !== 0 && !this.#send
      ? cs.ch.acquireGpadl(gpadl)
      : undefined;
    if (!sg) {
      this.#nvspError(cs, pkt, `send buffer GPADL ${gpadl}`);
      return;
    }
    this.#send = {
      gpadl,
      buf: new HostBuffer(sg.segments),
      sections: Math.floor(sg.length / SEND_SECTION_SIZE),
    };
    const out = new Uint8Array(NVSP_MESSAGE_SIZE);
    wr32(out, 0, NvspType.SEND_SEND_BUF_COMPLETE);
    wr32(out, 4, NvspStatus.SUCCESS);
    wr32(out, 8, SEND_SECTION_SIZE);
    this.#completeWith(cs, pkt, out);
  }

  #allocateSubChannels(cs: ChanState, pkt: RingPacket, op: number, count: number): void {
    const out = new Uint8Array(NVSP_MESSAGE_SIZE);
    wr32(out, 0, NvspType.SUBCHANNEL);
    const granted = Math.min(Math.max(count, 0), this.maxSubChannels);
    const ok = op === NVSP_SUBCHANNEL_ALLOCATE && granted > 0 &&
      this.#version >= 0x50000 && cs.ch.enableSubChannels(granted);
    wr32(out, 4, ok ? NvspStatus.SUCCESS : NvspStatus.FAIL);
    wr32(out, 8, ok ? granted : 0);
    if (!ok) this.stats.protocolErrors++;
    this.#completeWith(cs, pkt, out);
    if (ok) this.#sendIndirectionTable(cs, granted + 1);
  }

  /** Spreads the guest's transmits over `channels` channels (NVSP 5 send table, in-band). */
  #sendIndirectionTable(cs: ChanState, channels: number): void {
    // 76 bytes with the table at offset 12: read right by every Linux version (see the notes on
    // the ≤ 6.0 offset quirk, which applies only to messages of 104 bytes or more).
    const out = new Uint8Array(12 + SEND_INDIRECTION_TABLE_ENTRIES * 4);
    wr32(out, 0, NvspType.SEND_INDIRECTION_TABLE);
    wr32(out, 4, SEND_INDIRECTION_TABLE_ENTRIES);
    wr32(out, 8, 12);
    for (let i = 0; i < SEND_INDIRECTION_TABLE_ENTRIES; i++) wr32(out, 12 + i * 4, i % channels);
    cs.ch.send(out);
  }

  #resetSession(): void {
    this.#forgetHeld();
    this.#version = 0;
    this.#ndisMtu = 0;
    this.#recv = undefined;
    this.#send = undefined;
    this.#rndis = newRndisState();
    this.#freeCount = 0;
    this.#slotFreeCount = 0;
    this.#pendingControl.length = 0;
  }

  #dropRecvBuffer(): void {
    if (!this.#recv) return;
    this.#primary?.ch.releaseGpadl(this.#recv.gpadl);
    this.#recv = undefined;
    this.#freeCount = 0;
    this.#slotFreeCount = 0;
    this.#forgetHeld();
    this.#updateWatch();
  }

  /** Drops batches held for ring space (their sub-allocations go with the buffer). */
  #forgetHeld(): void {
    for (const cs of this.#chans.values()) {
      cs.heldSlot = -1;
      cs.heldHeader = undefined;
    }
  }

  #stopChannel(cs: ChanState, why: string): void {
    cs.dead = true;
    this.stats.channelsStopped++;
    this.#warnLimited("{name}: channel {relid} stopped: {why}", {
      name: this.name,
      relid: cs.ch.relid,
      why,
    });
  }

  // ---- completions to the guest ----------------------------------------------------------------

  #completeWith(cs: ChanState, pkt: RingPacket, payload: Uint8Array): void {
    if (!pkt.completionRequested) return;
    if (cs.backlog.length === 0 && cs.ch.complete(pkt, payload)) return;
    // Rare: the guest's ring is full; sent in order once it has room.
    cs.backlog.push({ tid: pkt.transactionId, payload: payload.slice() });
  }

  #completeRndis(cs: ChanState, pkt: RingPacket, ok: boolean): void {
    if (!pkt.completionRequested) return;
    const payload = ok ? this.#completeOk : this.#completeFail;
    if (cs.backlog.length === 0 && cs.ch.complete(pkt, payload)) return;
    cs.backlog.push({ tid: pkt.transactionId, payload });
  }

  #flushBacklog(cs: ChanState): void {
    while (cs.backlog.length > 0) {
      const head = cs.backlog[0]!;
      if (!cs.ch.complete(head.tid, head.payload)) return;
      cs.backlog.shift();
    }
    if (cs.paused) {
      cs.paused = false;
      cs.ch.resume();
    }
  }

  // ---- guest → host: RNDIS messages ------------------------------------------------------------

  #rndisPacket(cs: ChanState, pkt: RingPacket, data: Uint8Array, base: number, len: number): void {
    if (len < 16) {
      this.#malformedRndis(cs, pkt, "SEND_RNDIS_PKT is truncated");
      return;
    }
    const section = rd32(data, base + 8);
    const sectionSize = rd32(data, base + 12);
    const total = this.#gather(pkt, section, sectionSize);
    if (total < 0) {
      this.#malformedRndis(cs, pkt, this.#gatherError);
      return;
    }
    const buf = this.#txScratch;
    let at = 0;
    let ok = true;
    while (at + RNDIS_HEADER_SIZE <= total) {
      const type = rd32(buf, at);
      const msgLen = rd32(buf, at + 4);
      if (msgLen < RNDIS_HEADER_SIZE || msgLen > total - at) {
        this.stats.malformed++;
        ok = false;
        break;
      }
      if (type === RndisType.PACKET) {
        if (!this.#transmit(cs, at, msgLen)) ok = false;
      } else {
        // Control messages (any channel type: Windows sends some on the data type).
        const answer = handleRndisControl(buf, at, msgLen, this.#rndisConfig, this.#rndis);
        if (answer) this.#queueControl(answer, cs.index);
        this.#updateWatch();
      }
      at += msgLen;
    }
    this.#completeRndis(cs, pkt, ok);
  }

  #malformedRndis(cs: ChanState, pkt: RingPacket, why: string): void {
    this.stats.malformed++;
    this.#warnLimited("{name}: dropped an RNDIS packet: {why}", { name: this.name, why });
    this.#completeRndis(cs, pkt, false);
  }

  #gatherError = "";

  /**
   * Copies the message stream (send-buffer section, then GPA-direct ranges) into the TX scratch.
   * Returns its length, or -1 with `#gatherError` set.
   */
  #gather(pkt: RingPacket, section: number, sectionSize: number): number {
    let total = 0;
    if (section !== NO_SECTION) {
      const send = this.#send;
      if (!send) return this.#fail("a send-buffer section without a send buffer");
      if (section >= send.sections || sectionSize > SEND_SECTION_SIZE) {
        return this.#fail(`send section ${section} (${sectionSize} bytes) is outside the buffer`);
      }
      send.buf.copyOut(section * SEND_SECTION_SIZE, this.#txAddr, sectionSize);
      total = sectionSize;
    }
    if (pkt.type !== VmPacketType.DATA_USING_GPA_DIRECT) return total;
    const ram = this.#ram!;
    const ext = pkt.ext;
    let at = EXTENSION_HEADER_SIZE;
    for (let r = 0; r < pkt.rangeCount; r++) {
      const byteCount = rd32(ext, at);
      let offset = rd32(ext, at + 4);
      at += 8;
      const pages = Math.ceil((offset + byteCount) / GUEST_PAGE);
      if (total + byteCount > TX_STREAM_MAX) {
        return this.#fail(`message stream longer than ${TX_STREAM_MAX} bytes`);
      }
      let left = byteCount;
      for (let p = 0; p < pages; p++, at += 8) {
        const pfn = rd32(ext, at) + rd32(ext, at + 4) * 0x1_0000_0000;
        const n = Math.min(GUEST_PAGE - offset, left);
        if (n <= 0) continue;
        const src = ram.address(pfn * GUEST_PAGE + offset, n);
        if (src < 0) return this.#fail(`page 0x${(pfn * GUEST_PAGE).toString(16)} is not RAM`);
        copyHost(this.#txAddr + total, src, n);
        total += n;
        left -= n;
        offset = 0;
      }
    }
    return total;
  }

  #fail(why: string): number {
    this.#gatherError = why;
    return -1;
  }

  /** Sends the data packet at `[at, at+msgLen)` of the TX scratch to the backend. */
  #transmit(cs: ChanState, at: number, msgLen: number): boolean {
    const buf = this.#txScratch;
    const dv = this.#txView;
    if (!this.#rndis.initialized || msgLen < RNDIS_HEADER_SIZE + RndisPacket.size) {
      this.stats.txDropped++;
      return msgLen >= RNDIS_HEADER_SIZE + RndisPacket.size;
    }
    const body = at + RNDIS_HEADER_SIZE;
    const bodyLen = msgLen - RNDIS_HEADER_SIZE;
    const dataOffset = rd32(buf, body);
    const dataLength = rd32(buf, body + 4);
    const ppiOffset = rd32(buf, body + 20);
    const ppiLength = rd32(buf, body + 24);
    if (
      dataOffset < RndisPacket.size || dataOffset > bodyLen || dataLength > bodyLen - dataOffset ||
      dataLength < 14 || ppiOffset > bodyLen || ppiLength > bodyLen - ppiOffset
    ) {
      this.stats.malformed++;
      this.stats.txDropped++;
      return false;
    }
    let frame = body + dataOffset;
    let length = dataLength;
    // Per-packet info: checksum, LSO, VLAN.
    let csum = 0;
    let lso = 0;
    let vlan = -1;
    let p = body + ppiOffset;
    const ppiEnd = p + ppiLength;
    while (p + 12 <= ppiEnd) {
      const size = rd32(buf, p);
      const type = rd32(buf, p + 4) & 0x7fff_ffff;
      const off = rd32(buf, p + 8);
      if (size < 12 || size > ppiEnd - p || off < 12 || off + 4 > size) {
        this.stats.malformed++;
        break;
      }
      const value = rd32(buf, p + off);
      if (type === PpiType.TCPIP_CHKSUM) csum = value;
      else if (type === PpiType.TCP_LARGESEND) lso = value;
      else if (type === PpiType.IEEE_8021Q) vlan = value & 0xffff;
      p += size;
    }
    const o = this.#offload;
    o.needsCsum = 0;
    o.csumStart = 0;
    o.csumOffset = 0;
    o.gsoType = GsoType.NONE;
    o.gsoSize = 0;
    o.hdrLen = 0;
    if (lso !== 0 && (lso & Lso.TYPE_V2) !== 0) {
      if (!this.#prepareLso(frame, length, lso)) {
        this.stats.malformed++;
        this.stats.txDropped++;
        return false;
      }
    } else if ((csum & (TxCsum.TCP | TxCsum.UDP)) !== 0) {
      const l4 = (csum >>> TxCsum.HEADER_OFFSET_SHIFT) & 0x3ff;
      const field = (csum & TxCsum.TCP) !== 0 ? 16 : 6;
      if (l4 < 14 || l4 + field + 2 > length) {
        this.stats.malformed++;
        this.stats.txDropped++;
        return false;
      }
      o.needsCsum = 1;
      o.csumStart = l4;
      o.csumOffset = field;
      this.stats.txCsum++;
    }
    if (vlan >= 0) {
      // The guest stripped the tag into the PPI: put it back after the MAC addresses.
      buf.copyWithin(frame - 4, frame, frame + 12);
      frame -= 4;
      length += 4;
      dv.setUint16(frame + 12, 0x8100, false);
      dv.setUint16(
        frame + 14,
        ((vlan & 0x7) << 13) | (((vlan >> 3) & 1) << 12) | (vlan >> 4),
        false,
      );
      if (o.needsCsum) o.csumStart += 4;
      if (o.hdrLen) o.hdrLen += 4;
    }
    const queues = this.backend.queues;
    const queue = queues[cs.index % queues.length]!;
    if (!queue.write(this.#txAddr + frame, length, frame, o)) {
      this.stats.txDropped++;
      return true;
    }
    cs.stats.txPackets++;
    cs.stats.txBytes += length;
    return true;
  }

  /**
   * Turns an LSOv2 frame into a GSO description. Linux zeroes the IPv4 total length (IPv6
   * payload length) and leaves a pseudo-header sum without the length in the TCP checksum; the
   * backend's segmentation wants both complete, so they are fixed here in the scratch copy.
   */
  #prepareLso(frame: number, length: number, lso: number): boolean {
    const buf = this.#txScratch;
    const dv = this.#txView;
    const mss = lso & Lso.MSS_MASK;
    const l4 = (lso >>> Lso.HEADER_OFFSET_SHIFT) & Lso.HEADER_OFFSET_MASK;
    const ipv6 = (lso & Lso.IPV6) !== 0;
    let l3 = 14;
    if (dv.getUint16(frame + 12, false) === 0x8100) l3 = 18;
    if (mss === 0 || l4 < l3 + 20 || l4 + 20 > length) return false;
    const thl = (buf[frame + l4 + 12]! >> 4) * 4;
    if (thl < 20 || l4 + thl > length) return false;
    const l4Len = length - l4;
    if (!ipv6) {
      const ihl = (buf[frame + l3]! & 0xf) * 4;
      if (ihl < 20 || l3 + ihl > l4) return false;
      dv.setUint16(frame + l3 + 2, length - l3, false);
      dv.setUint16(frame + l3 + 10, 0, false);
      dv.setUint16(frame + l3 + 10, ipChecksum(buf, frame + l3, ihl), false);
    } else {
      dv.setUint16(frame + l3 + 4, length - l3 - 40, false);
    }
    let sum = dv.getUint16(frame + l4 + 16, false) + l4Len;
    sum = (sum & 0xffff) + (sum >>> 16);
    sum = (sum & 0xffff) + (sum >>> 16);
    dv.setUint16(frame + l4 + 16, sum, false);
    const o = this.#offload;
    o.needsCsum = 1;
    o.csumStart = l4;
    o.csumOffset = 16;
    o.gsoType = ipv6 ? GsoType.TCPV6 : GsoType.TCPV4;
    o.gsoSize = mss;
    o.hdrLen = l4 + thl;
    this.stats.txLso++;
    return true;
  }

  // ---- host → guest ----------------------------------------------------------------------------

  /** True when frames may flow to the guest. */
  get #receiving(): boolean {
    return this.#recv !== undefined && this.#rndis.initialized && this.#rndis.packetFilter !== 0 &&
      this.#linkUp;
  }

  #updateWatch(): void {
    const queues = this.backend.queues;
    for (let q = 0; q < queues.length; q++) {
      const cs = this.#channelFor(q);
      const on = this.#receiving && cs !== undefined && cs.heldSlot < 0 && this.#freeCount > 0 &&
        this.#slotFreeCount > 0 && this.#pendingControl.length === 0;
      this.#setWatch(q, on);
    }
  }

  #setWatch(q: number, on: boolean): void {
    if (this.#watching[q] === on) return;
    this.#watching[q] = on;
    this.backend.queues[q]!.watch(on ? () => this.#onBackendReadable(q) : undefined);
  }

  /** The open channel that receives backend queue `q`'s frames. */
  #channelFor(q: number): ChanState | undefined {
    let open = 0;
    for (const c of this.#byIndex) if (c && !c.dead) open++;
    if (open === 0) return undefined;
    let k = q % open;
    for (const c of this.#byIndex) {
      if (!c || c.dead) continue;
      if (k-- === 0) return c;
    }
    return undefined;
  }

  /** Reads a batch of frames from backend queue `q` into the guest. */
  #onBackendReadable(q: number): void {
    const queue = this.backend.queues[q]!;
    const cs = this.#channelFor(q);
    const recv = this.#recv;
    if (!cs || !recv || !this.#receiving) {
      this.#updateWatch();
      return;
    }
    if (cs.heldSlot >= 0 || this.#freeCount === 0 || this.#slotFreeCount === 0) {
      this.stats.rxStalls++;
      this.#updateWatch();
      return;
    }
    const slot = this.#slotFree[--this.#slotFreeCount]!;
    const maxFrame = recv.subAllocSize - SUBALLOC_SLACK - RX_HEADER_SIZE;
    const info = this.#rxInfo;
    const rx = this.#rxScratch;
    const dv = this.#rxView;
    const filter = this.#rndis.packetFilter;
    let n = 0;
    while (n < RX_BATCH && this.#freeCount > 0) {
      const len = queue.read(this.#rxAddr + RX_HEADER_SIZE, 65536, info);
      if (len <= 0) break;
      if (len > maxFrame || len < 14 || !this.#passesFilter(rx, RX_HEADER_SIZE, filter)) {
        this.stats.rxDropped++;
        continue;
      }
      const msgLen = RX_HEADER_SIZE + len;
      dv.setUint32(0, RndisType.PACKET, true);
      dv.setUint32(4, msgLen, true);
      dv.setUint32(8, RX_HEADER_SIZE - RNDIS_HEADER_SIZE, true); // data offset
      dv.setUint32(12, len, true);
      dv.setUint32(16, 0, true);
      dv.setUint32(20, 0, true);
      dv.setUint32(24, 0, true);
      dv.setUint32(28, RndisPacket.size, true); // PPI offset
      dv.setUint32(32, CSUM_PPI_SIZE, true);
      dv.setUint32(36, 0, true);
      dv.setUint32(40, 0, true);
      dv.setUint32(44, CSUM_PPI_SIZE, true);
      dv.setUint32(48, PpiType.TCPIP_CHKSUM, true);
      dv.setUint32(52, 12, true);
      dv.setUint32(
        56,
        info.csumValid ? RxCsum.TCP_SUCCEEDED | RxCsum.UDP_SUCCEEDED | RxCsum.IP_SUCCEEDED : 0,
        true,
      );
      const idx = this.#free[--this.#freeCount]!;
      const off = idx * recv.subAllocSize;
      recv.buf.copyIn(off, this.#rxAddr, msgLen);
      this.#slotIndexes[slot * RX_BATCH + n] = idx;
      this.#slotLengths[slot * RX_BATCH + n] = msgLen;
      n++;
      cs.stats.rxPackets++;
      cs.stats.rxBytes += len;
    }
    if (n === 0) {
      this.#slotFree[this.#slotFreeCount++] = slot;
      if (this.#freeCount === 0) this.#updateWatch();
      return;
    }
    this.#slotCounts[slot] = n;
    this.#sendBatch(cs, slot, this.#dataHeader);
    if (this.#freeCount === 0 || this.#slotFreeCount === 0) {
      this.stats.rxStalls++;
      this.#updateWatch();
    }
  }

  #passesFilter(frame: Uint8Array, at: number, filter: number): boolean {
    if ((filter & PacketFilter.PROMISCUOUS) !== 0) return true;
    if ((frame[at]! & 1) !== 0) {
      let bcast = true;
      for (let i = 0; i < 6; i++) if (frame[at + i] !== 0xff) bcast = false;
      if (bcast) return (filter & PacketFilter.BROADCAST) !== 0;
      return (filter & (PacketFilter.ALL_MULTICAST | PacketFilter.MULTICAST)) !== 0;
    }
    if ((filter & PacketFilter.DIRECTED) === 0) return false;
    const mac = this.mac;
    for (let i = 0; i < 6; i++) if (frame[at + i] !== mac[i]) return false;
    return true;
  }

  /** The transfer-page ranges of slot `slot` (a reused list, valid until the next call). */
  #slotRanges(slot: number): readonly TransferPageRange[] {
    const n = this.#slotCounts[slot]!;
    const size = this.#recv!.subAllocSize;
    const list = this.#rangeList;
    list.length = n;
    for (let i = 0; i < n; i++) {
      const r = this.#ranges[i]!;
      r.byteCount = this.#slotLengths[slot * RX_BATCH + i]!;
      r.byteOffset = this.#slotIndexes[slot * RX_BATCH + i]! * size;
      list[i] = r;
    }
    return list;
  }

  /**
   * Sends slot `slot` as one transfer-page packet. When the guest's ring is full the batch is
   * held on the channel and sent from `onWritable`; receiving on that channel waits meanwhile.
   */
  #sendBatch(cs: ChanState, slot: number, header: Uint8Array): void {
    const sent = cs.ch.sendTransferPages(this.#recv!.setId, this.#slotRanges(slot), header, {
      transactionId: BigInt(slot + 1),
    });
    if (!sent) {
      cs.heldSlot = slot;
      cs.heldHeader = header;
      this.stats.rxStalls++;
      this.#updateWatch();
    }
  }

  #freeSlot(slot: number): void {
    const n = this.#slotCounts[slot]!;
    for (let i = 0; i < n; i++) {
      this.#free[this.#freeCount++] = this.#slotIndexes[slot * RX_BATCH + i]!;
    }
    this.#slotCounts[slot] = 0;
    this.#slotFree[this.#slotFreeCount++] = slot;
  }

  /** The guest completed a receive batch. */
  #receiveCompleted(pkt: RingPacket): void {
    const slot = pkt.tidLo - 1;
    if (
      pkt.tidHi !== 0 || slot < 0 || slot >= this.#slotCounts.length || !this.#recv ||
      this.#slotCounts[slot] === 0
    ) {
      this.stats.unknownCompletions++;
      return;
    }
    this.#freeSlot(slot);
    if (this.#pendingControl.length > 0) this.#flushControl();
    this.#updateWatch();
  }

  /** Queues an RNDIS control answer or indication for channel `queue` and sends what it can. */
  #queueControl(data: Uint8Array, queue: number): void {
    if (this.#pendingControl.length >= MAX_PENDING_CONTROL) {
      this.stats.controlDropped++;
      return;
    }
    this.#pendingControl.push({ data, queue });
    this.#flushControl();
  }

  #flushControl(): void {
    const recv = this.#recv;
    while (this.#pendingControl.length > 0) {
      if (!recv || this.#freeCount === 0 || this.#slotFreeCount === 0) return;
      const head = this.#pendingControl[0]!;
      const cs = this.#byIndex[head.queue] ?? this.#primary;
      if (!cs || cs.heldSlot >= 0) return;
      if (head.data.length > recv.subAllocSize) {
        this.#pendingControl.shift();
        this.stats.controlDropped++;
        continue;
      }
      this.#pendingControl.shift();
      const slot = this.#slotFree[--this.#slotFreeCount]!;
      const idx = this.#free[--this.#freeCount]!;
      const off = idx * recv.subAllocSize;
      recv.buf.copyIn(off, hostAddress(head.data), head.data.length);
      this.#slotIndexes[slot * RX_BATCH] = idx;
      this.#slotLengths[slot * RX_BATCH] = head.data.length;
      this.#slotCounts[slot] = 1;
      this.#sendBatch(cs, slot, this.#controlHeader);
    }
    this.#updateWatch();
  }
}

function rd32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

function rd16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

function wr32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff;
  b[at + 1] = (v >>> 8) & 0xff;
  b[at + 2] = (v >>> 16) & 0xff;
  b[at + 3] = (v >>> 24) & 0xff;
}

/** The IPv4 header checksum of `length` bytes at `at` (checksum field zero). */
function ipChecksum(b: Uint8Array, at: number, length: number): number {
  let sum = 0;
  for (let i = 0; i < length; i += 2) sum += (b[at + i]! << 8) | b[at + i + 1]!;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
