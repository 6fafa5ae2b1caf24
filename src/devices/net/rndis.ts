/**
 * The RNDIS control plane of the synthetic NIC: answers INITIALIZE, QUERY, SET, RESET and
 * KEEPALIVE with the values Linux `rndis_filter.c` (and Windows netvsc) require, and builds the
 * status indications (link up/down). Pure functions over bytes: the device moves the messages.
 *
 * Every request is checked against its own `msg_len` before a field is read; a request too short
 * for its kind is answered with `RNDIS_STATUS_INVALID_DATA` when it has a request id, else
 * ignored. Unknown OIDs get `NOT_SUPPORTED` with an empty answer at offset 16 (Linux ignores
 * the status and looks only at the length).
 * @module
 */
import {
  LINK_SPEED_100BPS,
  LSO_MAX_SIZE,
  MediaState,
  NdisObjectType,
  NdisOffload,
  NdisRssCaps,
  OffloadCaps,
  Oid,
  RNDIS_HEADER_SIZE,
  RndisHeader,
  RndisIndicate,
  RndisInit,
  RndisInitComplete,
  RndisQuery,
  RndisQueryComplete,
  RndisResetComplete,
  RndisSetComplete,
  RndisStatus,
  RndisType,
} from "./protocol.ts";

/** What the NIC tells the guest about itself. */
export interface RndisConfig {
  /** Permanent MAC address (6 bytes). */
  readonly mac: Uint8Array;
  /** MTU (payload bytes of a frame). */
  readonly mtu: number;
  /** Receive queues offered for vRSS (1: none). */
  readonly queues: number;
  /** Advertise TX checksum and LSO offloads. */
  readonly offloads: boolean;
  /** Current link state. */
  readonly linkUp: () => boolean;
}

/** RNDIS state the guest changes. */
export interface RndisState {
  /** INITIALIZE succeeded (HALT and RESET clear it). */
  initialized: boolean;
  /** `OID_GEN_CURRENT_PACKET_FILTER`. */
  packetFilter: number;
  /** Requests answered, by kind (for tests and status). */
  requests: number;
}

/** A fresh state. */
export function newRndisState(): RndisState {
  return { initialized: false, packetFilter: 0, requests: 0 };
}

/** Largest message the guest may batch (`max_xfer_size` in INIT_C). */
export const RNDIS_MAX_TRANSFER = 0x4000;
/** Packets per message the guest may batch; 8 as Hyper-V. */
export const RNDIS_MAX_PACKETS_PER_MESSAGE = 8;
/** Packet alignment the guest pads to (2^3 = 8 bytes). */
export const RNDIS_PACKET_ALIGNMENT_SHIFT = 3;

/** The friendly name reported (becomes the guest's ifalias unless "Network Adapter"). */
const FRIENDLY_NAME = "Network Adapter";

function message(type: number, bodyLength: number): Uint8Array {
  const out = new Uint8Array(RNDIS_HEADER_SIZE + bodyLength);
  RndisHeader.encode({ type, msgLen: out.length }, out);
  return out;
}

function queryAnswer(reqId: number, status: number, info: Uint8Array): Uint8Array {
  const out = message(RndisType.QUERY_C, RndisQueryComplete.size + info.length);
  RndisQueryComplete.encode(
    {
      reqId,
      status,
      infoLength: info.length,
      infoOffset: RndisQueryComplete.size,
    },
    out,
    RNDIS_HEADER_SIZE,
  );
  out.set(info, RNDIS_HEADER_SIZE + RndisQueryComplete.size);
  return out;
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

/** The `ndis_offload` capabilities answer (156 bytes, revision 3). */
export function offloadCapabilities(offloads: boolean): Uint8Array {
  const caps = NdisOffload.encode({
    type: NdisObjectType.OFFLOAD,
    revision: 3,
    size: NdisOffload.size,
  });
  if (offloads) {
    NdisOffload.encode({
      type: NdisObjectType.OFFLOAD,
      revision: 3,
      size: NdisOffload.size,
      ip4TxEncap: OffloadCaps.ENCAP_8023,
      ip4TxCsum: OffloadCaps.TXCSUM_TCP4 | OffloadCaps.TXCSUM_UDP4,
      ip6TxEncap: OffloadCaps.ENCAP_8023,
      ip6TxCsum: OffloadCaps.TXCSUM_TCP6 | OffloadCaps.TXCSUM_UDP6,
      lsov2Ip4Encap: OffloadCaps.ENCAP_8023,
      lsov2Ip4MaxSize: LSO_MAX_SIZE,
      lsov2Ip4MinSegments: 2,
      lsov2Ip6Encap: OffloadCaps.ENCAP_8023,
      lsov2Ip6MaxSize: LSO_MAX_SIZE,
      lsov2Ip6MinSegments: 2,
      lsov2Ip6Options: OffloadCaps.LSOV2_IP6,
    }, caps);
  }
  return caps;
}

function queryOid(oid: number, cfg: RndisConfig, state: RndisState): Uint8Array | undefined {
  switch (oid) {
    case Oid.GEN_MAXIMUM_FRAME_SIZE:
      return u32(cfg.mtu);
    case Oid.GEN_MAXIMUM_TOTAL_SIZE:
      return u32(cfg.mtu + 14);
    case Oid.GEN_LINK_SPEED:
      return u32(LINK_SPEED_100BPS);
    case Oid.GEN_MEDIA_CONNECT_STATUS:
      return u32(cfg.linkUp() ? MediaState.CONNECTED : MediaState.DISCONNECTED);
    case Oid.GEN_CURRENT_PACKET_FILTER:
      return u32(state.packetFilter);
    case Oid.GEN_MEDIA_SUPPORTED:
    case Oid.GEN_MEDIA_IN_USE:
      return u32(0); // 802.3
    case Oid.P802_3_PERMANENT_ADDRESS:
    case Oid.P802_3_CURRENT_ADDRESS:
      return cfg.mac.slice(0, 6);
    case Oid.P802_3_MAXIMUM_LIST_SIZE:
      return u32(32);
    case Oid.GEN_FRIENDLY_NAME: {
      const out = new Uint8Array((FRIENDLY_NAME.length + 1) * 2);
      for (let i = 0; i < FRIENDLY_NAME.length; i++) out[i * 2] = FRIENDLY_NAME.charCodeAt(i);
      return out;
    }
    case Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES:
      return offloadCapabilities(cfg.offloads);
    case Oid.GEN_RECEIVE_SCALE_CAPABILITIES:
      return NdisRssCaps.encode({
        type: NdisObjectType.RSS_CAPABILITIES,
        revision: 2,
        size: NdisRssCaps.size,
        capabilities: 0,
        numInterruptMessages: cfg.queues,
        numReceiveQueues: cfg.queues,
        numIndirectionEntries: 128,
      });
  }
  return undefined;
}

/**
 * Answers one RNDIS control message at `msg[at, at+length)` (`length` is its `msg_len`).
 * Returns the response to send to the guest, or undefined when the message needs none (HALT, a
 * request too short to carry a request id, an unknown type).
 */
export function handleRndisControl(
  msg: Uint8Array,
  at: number,
  length: number,
  cfg: RndisConfig,
  state: RndisState,
): Uint8Array | undefined {
  if (length < RNDIS_HEADER_SIZE || at + length > msg.length) return undefined;
  const type = RndisHeader.get(msg, at, "type");
  const body = at + RNDIS_HEADER_SIZE;
  const bodyLength = length - RNDIS_HEADER_SIZE;
  state.requests++;
  // Every request except HALT starts with a request id.
  const reqId = bodyLength >= 4 ? RndisInit.get(msg, body, "reqId") : undefined;
  switch (type) {
    case RndisType.INIT: {
      if (reqId === undefined) return undefined;
      const out = message(RndisType.INIT_C, RndisInitComplete.size);
      const ok = bodyLength >= RndisInit.size;
      RndisInitComplete.encode(
        {
          reqId,
          status: ok ? RndisStatus.SUCCESS : RndisStatus.INVALID_DATA,
          major: 1,
          minor: 0,
          devFlags: 1, // connectionless
          medium: 0, // 802.3
          maxPktPerMsg: RNDIS_MAX_PACKETS_PER_MESSAGE,
          maxXferSize: RNDIS_MAX_TRANSFER,
          pktAlignmentFactor: RNDIS_PACKET_ALIGNMENT_SHIFT,
        },
        out,
        RNDIS_HEADER_SIZE,
      );
      if (ok) state.initialized = true;
      return out;
    }
    case RndisType.HALT:
      state.initialized = false;
      state.packetFilter = 0;
      return undefined;
    case RndisType.QUERY: {
      if (reqId === undefined) return undefined;
      if (bodyLength < RndisQuery.size) {
        return queryAnswer(reqId, RndisStatus.INVALID_DATA, new Uint8Array(0));
      }
      const oid = RndisQuery.get(msg, body, "oid");
      const info = queryOid(oid, cfg, state);
      return info
        ? queryAnswer(reqId, RndisStatus.SUCCESS, info)
        : queryAnswer(reqId, RndisStatus.NOT_SUPPORTED, new Uint8Array(0));
    }
    case RndisType.SET: {
      if (reqId === undefined) return undefined;
      const out = message(RndisType.SET_C, RndisSetComplete.size);
      let status: number = RndisStatus.INVALID_DATA;
      if (bodyLength >= RndisQuery.size) {
        const oid = RndisQuery.get(msg, body, "oid");
        const infoLength = RndisQuery.get(msg, body, "infoLength");
        const infoOffset = RndisQuery.get(msg, body, "infoOffset");
        const inside = infoOffset <= bodyLength && infoLength <= bodyLength - infoOffset;
        status = setOid(oid, inside ? msg : undefined, body + infoOffset, infoLength, state);
      }
      RndisSetComplete.encode({ reqId, status }, out, RNDIS_HEADER_SIZE);
      return out;
    }
    case RndisType.RESET: {
      state.packetFilter = 0;
      const out = message(RndisType.RESET_C, RndisResetComplete.size);
      RndisResetComplete.encode({ status: RndisStatus.SUCCESS, addressingReset: 1 }, out, 8);
      return out;
    }
    case RndisType.KEEPALIVE: {
      if (reqId === undefined) return undefined;
      const out = message(RndisType.KEEPALIVE_C, RndisSetComplete.size);
      RndisSetComplete.encode({ reqId, status: RndisStatus.SUCCESS }, out, RNDIS_HEADER_SIZE);
      return out;
    }
  }
  state.requests--;
  return undefined;
}

function setOid(
  oid: number,
  msg: Uint8Array | undefined,
  at: number,
  length: number,
  state: RndisState,
): number {
  if (!msg) return RndisStatus.INVALID_DATA;
  switch (oid) {
    case Oid.GEN_CURRENT_PACKET_FILTER:
      if (length < 4) return RndisStatus.INVALID_DATA;
      state.packetFilter = RndisQuery.get(msg, at, "reqId");
      return RndisStatus.SUCCESS;
    case Oid.TCP_OFFLOAD_PARAMETERS:
    case Oid.GEN_RECEIVE_SCALE_PARAMETERS:
    case Oid.P802_3_MULTICAST_LIST:
    case Oid.OFFLOAD_ENCAPSULATION:
      // Accepted: offloads are always on in the host path, RSS placement is the host's choice,
      // and multicast frames pass by the filter bits.
      return RndisStatus.SUCCESS;
  }
  return RndisStatus.NOT_SUPPORTED;
}

/** An INDICATE_STATUS message for a link change (`MEDIA_CONNECT` / `MEDIA_DISCONNECT`). */
export function linkIndication(up: boolean): Uint8Array {
  const out = message(RndisType.INDICATE, RndisIndicate.size);
  RndisIndicate.encode(
    {
      status: up ? RndisStatus.MEDIA_CONNECT : RndisStatus.MEDIA_DISCONNECT,
      bufferLength: 0,
      bufferOffset: 0,
    },
    out,
    RNDIS_HEADER_SIZE,
  );
  return out;
}
