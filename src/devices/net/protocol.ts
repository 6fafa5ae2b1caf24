/**
 * netvsp wire formats: NVSP (the VMBus-level network protocol Linux `hv_netvsc` and Windows
 * netvsc speak, `drivers/net/hyperv/hyperv_net.h`) and the RNDIS messages carried inside it
 * (`include/linux/rndis.h`), plus the NDIS objects the guest queries (offload capabilities, RSS
 * capabilities) and the per-packet info (PPI) records of data packets. Layouts and constants
 * only, no I/O; sizes are pinned by `tests/unit/devices/net/protocol_test.ts`.
 *
 * Byte order is little-endian throughout; RNDIS offsets count from the start of the message
 * body (after the 8-byte `type, msg_len` header), as Linux reads them.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** VMBus interface type (class id) of the synthetic NIC (`HV_NIC_GUID`). */
export const NET_CLASS_ID = "f8615163-df3e-46c5-913f-f2d2f965ed0e";

/** NVSP protocol versions (`NVSP_PROTOCOL_VERSION_*`). */
export const NvspVersion = {
  V1: 0x2,
  V2: 0x30002,
  V4: 0x40000,
  V5: 0x50000,
  V6: 0x60000,
  V61: 0x60001,
} as const;

/** Versions this host accepts (the guest tries them newest first, one INIT each). */
export const SUPPORTED_NVSP_VERSIONS: readonly number[] = [
  NvspVersion.V61,
  NvspVersion.V6,
  NvspVersion.V5,
  NvspVersion.V4,
  NvspVersion.V2,
];

/** NVSP message types (`NVSP_MSG*_TYPE_*`; an open enum). */
export const NvspType = {
  INIT: 1,
  INIT_COMPLETE: 2,
  SEND_NDIS_VER: 100,
  SEND_RECV_BUF: 101,
  SEND_RECV_BUF_COMPLETE: 102,
  REVOKE_RECV_BUF: 103,
  SEND_SEND_BUF: 104,
  SEND_SEND_BUF_COMPLETE: 105,
  REVOKE_SEND_BUF: 106,
  SEND_RNDIS_PKT: 107,
  SEND_RNDIS_PKT_COMPLETE: 108,
  SEND_NDIS_CONFIG: 125,
  SEND_VF_ASSOCIATION: 128,
  SWITCH_DATA_PATH: 129,
  OID_QUERY_EX: 131,
  OID_QUERY_EX_COMPLETE: 132,
  SUBCHANNEL: 133,
  SEND_INDIRECTION_TABLE: 134,
} as const;

/** NVSP status values (`NVSP_STAT_*`). Zero is not success. */
export const NvspStatus = { NONE: 0, SUCCESS: 1, FAIL: 2 } as const;

/** The size Linux sends every NVSP message with (`sizeof(struct nvsp_message)`). */
export const NVSP_MESSAGE_SIZE = 40;

/** `send_buf_section_index` meaning "no send-buffer section" (data in GPA ranges only). */
export const NO_SECTION = 0xffff_ffff;

/** `SEND_RNDIS_PKT.channel_type`: data or control (RNDIS request/response/indication). */
export const RndisChannelType = { DATA: 0, CONTROL: 1 } as const;

/** `SUBCHANNEL.op`: allocate sub-channels. */
export const NVSP_SUBCHANNEL_ALLOCATE = 1;

/** Entries of the send-indirection table (`VRSS_SEND_TAB_SIZE`). */
export const SEND_INDIRECTION_TABLE_ENTRIES = 16;

/** `nvsp_1_message_send_ndis_version`. */
export const NvspInit = defineLayout("nvsp_message init", 12, {
  type: { offset: 0, type: "u32" },
  minVersion: { offset: 4, type: "u32" },
  maxVersion: { offset: 8, type: "u32" },
});

/** `nvsp_message_init_complete` (after the type). Linux needs ≥ 28 payload bytes. */
export const NvspInitComplete = defineLayout("nvsp_message init_complete", 16, {
  type: { offset: 0, type: "u32" },
  negotiatedVersion: { offset: 4, type: "u32" },
  maxMdlChainLength: { offset: 8, type: "u32" },
  status: { offset: 12, type: "u32" },
});

/** `nvsp_2_message_send_ndis_config`. */
export const NvspNdisConfig = defineLayout("nvsp_2_message_send_ndis_config", 20, {
  type: { offset: 0, type: "u32" },
  mtu: { offset: 4, type: "u32" },
  reserved: { offset: 8, type: "u32" },
  capability: { offset: 12, type: "u64" },
});

/** `nvsp_1_message_send_receive_buffer` / `_send_buffer` (also the revokes: id at 4). */
export const NvspSendBuffer = defineLayout("nvsp_1_message_send_receive_buffer", 10, {
  type: { offset: 0, type: "u32" },
  gpadl: { offset: 4, type: "u32" },
  id: { offset: 8, type: "u16" },
});

/** `nvsp_1_message_send_receive_buffer_complete` with its one section. */
export const NvspRecvBufComplete = defineLayout(
  "nvsp_1_message_send_receive_buffer_complete",
  28,
  {
    type: { offset: 0, type: "u32" },
    status: { offset: 4, type: "u32" },
    numSections: { offset: 8, type: "u32" },
    offset: { offset: 12, type: "u32" },
    subAllocSize: { offset: 16, type: "u32" },
    numSubAllocs: { offset: 20, type: "u32" },
    endOffset: { offset: 24, type: "u32" },
  },
);

/** `nvsp_1_message_send_send_buffer_complete`. */
export const NvspSendBufComplete = defineLayout("nvsp_1_message_send_send_buffer_complete", 12, {
  type: { offset: 0, type: "u32" },
  status: { offset: 4, type: "u32" },
  sectionSize: { offset: 8, type: "u32" },
});

/** `nvsp_1_message_send_rndis_packet`. */
export const NvspRndisPacket = defineLayout("nvsp_1_message_send_rndis_packet", 16, {
  type: { offset: 0, type: "u32" },
  channelType: { offset: 4, type: "u32" },
  sectionIndex: { offset: 8, type: "u32" },
  sectionSize: { offset: 12, type: "u32" },
});

/** `nvsp_1_message_send_rndis_packet_complete` (also the subchannel complete's first word). */
export const NvspRndisPacketComplete = defineLayout(
  "nvsp_1_message_send_rndis_packet_complete",
  8,
  { type: { offset: 0, type: "u32" }, status: { offset: 4, type: "u32" } },
);

/** `nvsp_5_subchannel_request` / `_complete` (op or status at 4, count at 8). */
export const NvspSubchannel = defineLayout("nvsp_5_subchannel_request", 12, {
  type: { offset: 0, type: "u32" },
  opOrStatus: { offset: 4, type: "u32" },
  count: { offset: 8, type: "u32" },
});

/** `nvsp_5_send_indirect_table` header; the u32 table follows at `offset`. */
export const NvspIndirectionTable = defineLayout("nvsp_5_send_indirect_table", 12, {
  type: { offset: 0, type: "u32" },
  count: { offset: 4, type: "u32" },
  offset: { offset: 8, type: "u32" },
});

// ---- RNDIS ----------------------------------------------------------------------------------

/** RNDIS message types; completions have bit 31 set. */
export const RndisType = {
  PACKET: 1,
  INIT: 2,
  HALT: 3,
  QUERY: 4,
  SET: 5,
  RESET: 6,
  INDICATE: 7,
  KEEPALIVE: 8,
  INIT_C: 0x8000_0002,
  QUERY_C: 0x8000_0004,
  SET_C: 0x8000_0005,
  RESET_C: 0x8000_0006,
  KEEPALIVE_C: 0x8000_0008,
} as const;

/** RNDIS / NDIS status codes. */
export const RndisStatus = {
  SUCCESS: 0,
  FAILURE: 0xc000_0001,
  INVALID_DATA: 0xc001_0015,
  NOT_SUPPORTED: 0xc000_00bb,
  MEDIA_CONNECT: 0x4001_000b,
  MEDIA_DISCONNECT: 0x4001_000c,
  LINK_SPEED_CHANGE: 0x4001_0013,
  NETWORK_CHANGE: 0x4001_0018,
} as const;

/** The `type, msg_len` header of every RNDIS message. */
export const RndisHeader = defineLayout("rndis_message header", 8, {
  type: { offset: 0, type: "u32" },
  msgLen: { offset: 4, type: "u32" },
});

/** Size of `RndisHeader`. */
export const RNDIS_HEADER_SIZE = 8;

/** `rndis_initialize_request` body. */
export const RndisInit = defineLayout("rndis_initialize_request", 16, {
  reqId: { offset: 0, type: "u32" },
  major: { offset: 4, type: "u32" },
  minor: { offset: 8, type: "u32" },
  maxXferSize: { offset: 12, type: "u32" },
});

/** `rndis_initialize_complete` body. */
export const RndisInitComplete = defineLayout("rndis_initialize_complete", 44, {
  reqId: { offset: 0, type: "u32" },
  status: { offset: 4, type: "u32" },
  major: { offset: 8, type: "u32" },
  minor: { offset: 12, type: "u32" },
  devFlags: { offset: 16, type: "u32" },
  medium: { offset: 20, type: "u32" },
  maxPktPerMsg: { offset: 24, type: "u32" },
  maxXferSize: { offset: 28, type: "u32" },
  pktAlignmentFactor: { offset: 32, type: "u32" },
  afListOffset: { offset: 36, type: "u32" },
  afListSize: { offset: 40, type: "u32" },
});

/** `rndis_query_request` / `rndis_set_request` body; the info buffer follows at `infoOffset`. */
export const RndisQuery = defineLayout("rndis_query_request", 20, {
  reqId: { offset: 0, type: "u32" },
  oid: { offset: 4, type: "u32" },
  infoLength: { offset: 8, type: "u32" },
  infoOffset: { offset: 12, type: "u32" },
  deviceVcHandle: { offset: 16, type: "u32" },
});

/** `rndis_query_complete` body; the answer follows at `infoOffset` (16). */
export const RndisQueryComplete = defineLayout("rndis_query_complete", 16, {
  reqId: { offset: 0, type: "u32" },
  status: { offset: 4, type: "u32" },
  infoLength: { offset: 8, type: "u32" },
  infoOffset: { offset: 12, type: "u32" },
});

/** `rndis_set_complete` / `rndis_keepalive_complete` body. */
export const RndisSetComplete = defineLayout("rndis_set_complete", 8, {
  reqId: { offset: 0, type: "u32" },
  status: { offset: 4, type: "u32" },
});

/** `rndis_reset_complete` body. */
export const RndisResetComplete = defineLayout("rndis_reset_complete", 8, {
  status: { offset: 0, type: "u32" },
  addressingReset: { offset: 4, type: "u32" },
});

/** `rndis_indicate_status` body; the status buffer follows at `bufferOffset`. */
export const RndisIndicate = defineLayout("rndis_indicate_status", 12, {
  status: { offset: 0, type: "u32" },
  bufferLength: { offset: 4, type: "u32" },
  bufferOffset: { offset: 8, type: "u32" },
});

/** `rndis_packet` body: offsets count from the body's start. */
export const RndisPacket = defineLayout("rndis_packet", 36, {
  dataOffset: { offset: 0, type: "u32" },
  dataLength: { offset: 4, type: "u32" },
  oobDataOffset: { offset: 8, type: "u32" },
  oobDataLength: { offset: 12, type: "u32" },
  numOobDataElements: { offset: 16, type: "u32" },
  perPacketInfoOffset: { offset: 20, type: "u32" },
  perPacketInfoLength: { offset: 24, type: "u32" },
  vcHandle: { offset: 28, type: "u32" },
  reserved: { offset: 32, type: "u32" },
});

/** `rndis_per_packet_info`: the value follows at `ppiOffset` from the record's start. */
export const RndisPpi = defineLayout("rndis_per_packet_info", 12, {
  size: { offset: 0, type: "u32" },
  type: { offset: 4, type: "u32" },
  ppiOffset: { offset: 8, type: "u32" },
});

/** PPI types (`enum ndis_per_pkt_info_type`). */
export const PpiType = {
  TCPIP_CHKSUM: 0,
  IPSEC: 1,
  TCP_LARGESEND: 2,
  IEEE_8021Q: 6,
  NBL_HASH_VALUE: 8,
} as const;

/** TX checksum PPI bits (`ndis_tcp_ip_checksum_info.transmit`). */
export const TxCsum = {
  IS_IPV4: 1 << 0,
  IS_IPV6: 1 << 1,
  TCP: 1 << 2,
  UDP: 1 << 3,
  IP_HEADER: 1 << 4,
  /** `tcp_header_offset` is bits 16..25. */
  HEADER_OFFSET_SHIFT: 16,
} as const;

/** RX checksum PPI bits (`ndis_tcp_ip_checksum_info.receive`). */
export const RxCsum = {
  TCP_SUCCEEDED: 1 << 3,
  UDP_SUCCEEDED: 1 << 4,
  IP_SUCCEEDED: 1 << 5,
} as const;

/** The LSOv2 PPI (`ndis_tcp_lso_info.lso_v2_transmit`): mss bits 0..19, header offset 20..29. */
export const Lso = {
  MSS_MASK: 0xfffff,
  HEADER_OFFSET_SHIFT: 20,
  HEADER_OFFSET_MASK: 0x3ff,
  /** Bit 30: type (1 = LSOv2). */
  TYPE_V2: 1 << 30,
  /** Bit 31: IPv6 (0 = IPv4). */
  IPV6: 1 << 31,
} as const;

/** Bytes of one RX checksum PPI record (header 12 + value 4). */
export const CSUM_PPI_SIZE = 16;

/** RNDIS OIDs the host answers. */
export const Oid = {
  GEN_SUPPORTED_LIST: 0x0001_0101,
  GEN_HARDWARE_STATUS: 0x0001_0102,
  GEN_MEDIA_SUPPORTED: 0x0001_0103,
  GEN_MEDIA_IN_USE: 0x0001_0104,
  GEN_MAXIMUM_FRAME_SIZE: 0x0001_0106,
  GEN_LINK_SPEED: 0x0001_0107,
  GEN_CURRENT_PACKET_FILTER: 0x0001_010e,
  GEN_MAXIMUM_TOTAL_SIZE: 0x0001_0111,
  GEN_MEDIA_CONNECT_STATUS: 0x0001_0114,
  GEN_RNDIS_CONFIG_PARAMETER: 0x0001_021b,
  GEN_FRIENDLY_NAME: 0x0002_0216,
  GEN_RECEIVE_SCALE_CAPABILITIES: 0x0001_0203,
  GEN_RECEIVE_SCALE_PARAMETERS: 0x0001_0204,
  P802_3_PERMANENT_ADDRESS: 0x0101_0101,
  P802_3_CURRENT_ADDRESS: 0x0101_0102,
  P802_3_MULTICAST_LIST: 0x0101_0103,
  P802_3_MAXIMUM_LIST_SIZE: 0x0101_0104,
  TCP_OFFLOAD_PARAMETERS: 0xfc01_020c,
  TCP_OFFLOAD_HARDWARE_CAPABILITIES: 0xfc01_020d,
  OFFLOAD_ENCAPSULATION: 0x0101_010a,
} as const;

/** Packet filter bits (`NDIS_PACKET_TYPE_*`). */
export const PacketFilter = {
  DIRECTED: 0x1,
  MULTICAST: 0x2,
  ALL_MULTICAST: 0x4,
  BROADCAST: 0x8,
  PROMISCUOUS: 0x20,
} as const;

/** `OID_GEN_MEDIA_CONNECT_STATUS` values. */
export const MediaState = { CONNECTED: 0, DISCONNECTED: 1 } as const;

/** NDIS object header types used in answers. */
export const NdisObjectType = { OFFLOAD: 0xa7, RSS_CAPABILITIES: 0x88 } as const;

/**
 * `ndis_offload` revision 3 (NDIS 6.30): 156 bytes. Linux requires type 0xA7, revision ≥ 1 and
 * 112 ≤ size ≤ the bytes returned.
 */
export const NdisOffload = defineLayout("ndis_offload", 156, {
  type: { offset: 0, type: "u8" },
  revision: { offset: 1, type: "u8" },
  size: { offset: 2, type: "u16" },
  ip4TxEncap: { offset: 4, type: "u32" },
  ip4TxCsum: { offset: 8, type: "u32" },
  ip4RxEncap: { offset: 12, type: "u32" },
  ip4RxCsum: { offset: 16, type: "u32" },
  ip6TxEncap: { offset: 20, type: "u32" },
  ip6TxCsum: { offset: 24, type: "u32" },
  ip6RxEncap: { offset: 28, type: "u32" },
  ip6RxCsum: { offset: 32, type: "u32" },
  lsov2Ip4Encap: { offset: 80, type: "u32" },
  lsov2Ip4MaxSize: { offset: 84, type: "u32" },
  lsov2Ip4MinSegments: { offset: 88, type: "u32" },
  lsov2Ip6Encap: { offset: 92, type: "u32" },
  lsov2Ip6MaxSize: { offset: 96, type: "u32" },
  lsov2Ip6MinSegments: { offset: 100, type: "u32" },
  lsov2Ip6Options: { offset: 104, type: "u32" },
  flags: { offset: 108, type: "u32" },
  rscIp4: { offset: 144, type: "u8" },
  rscIp6: { offset: 145, type: "u8" },
});

/** Offload capability bits of `NdisOffload`. */
export const OffloadCaps = {
  ENCAP_8023: 0x2,
  /** `NDIS_TXCSUM_CAP_TCP4 | TCP4OPT` (Linux needs both) and UDP4. */
  TXCSUM_TCP4: 0x10 | 0x4,
  TXCSUM_UDP4: 0x40,
  /** `NDIS_TXCSUM_CAP_TCP6 | TCP6OPT | IP6EXT` and UDP6. */
  TXCSUM_TCP6: 0x10 | 0x4 | 0x1,
  TXCSUM_UDP6: 0x40,
  /** `NDIS_LSOV2_CAP_IP6EXT | TCP6OPT`. */
  LSOV2_IP6: 0x1 | 0x4,
} as const;

/** `ndis_recv_scale_cap` (18 bytes; Linux's buffer is exactly that). */
export const NdisRssCaps = defineLayout("ndis_recv_scale_cap", 18, {
  type: { offset: 0, type: "u8" },
  revision: { offset: 1, type: "u8" },
  size: { offset: 2, type: "u16" },
  capabilities: { offset: 4, type: "u32" },
  numInterruptMessages: { offset: 8, type: "u32" },
  numReceiveQueues: { offset: 12, type: "u32" },
  numIndirectionEntries: { offset: 16, type: "u16" },
});

/** Link speed reported (`OID_GEN_LINK_SPEED`, 100 bps units): 10 Gb/s. */
export const LINK_SPEED_100BPS = 100_000_000;

/** Largest TSO segment the guest may hand over (Hyper-V's value). */
export const LSO_MAX_SIZE = 62_780;

/** Formats an NVSP version as Hyper-V names it (`6.1`, `5`, …). */
export function formatNvspVersion(v: number): string {
  if (v === NvspVersion.V1) return "1";
  const major = v >>> 16;
  const minor = v & 0xffff;
  return minor ? `${major}.${minor}` : `${major}`;
}
