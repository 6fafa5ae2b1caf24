/**
 * VMBus wire formats: channel (control-plane) messages carried in SynIC messages, the ring
 * buffer control page and packet descriptors. Layouts and constants only, no I/O.
 *
 * Sources: Linux `include/linux/hyperv.h` and `drivers/hv/hyperv_vmbus.h` (the guest side we must
 * satisfy); sizes are pinned by `tests/unit/vmbus/protocol_test.ts`.
 * @module
 */
import { defineLayout } from "../util/layout.ts";

// ---------------------------------------------------------------------------------------------
// SynIC transport
// ---------------------------------------------------------------------------------------------

/** SynIC message type of every VMBus channel message (both directions). */
export const VMBUS_MESSAGE_TYPE = 1;
/** Message connection id used by guests before protocol 5.0 (and returned to 5.0+ guests). */
export const VMBUS_MESSAGE_CONNECTION_ID = 1;
/** Message connection id a 5.0+ guest uses for INITIATE_CONTACT. */
export const VMBUS_MESSAGE_CONNECTION_ID_4 = 4;
/** Shared event connection id: pre-Win8 guests signal through the interrupt page with it. */
export const VMBUS_EVENT_CONNECTION_ID = 2;
/** Monitor connection id (monitored notification; unused: offers never allocate a monitor). */
export const VMBUS_MONITOR_CONNECTION_ID = 3;
/** The SINT VMBus messages and channel interrupts are delivered on. */
export const VMBUS_MESSAGE_SINT = 2;
/** Maximum SynIC message payload, in bytes. */
export const MAX_MESSAGE_SIZE = 240;
/**
 * Guest-to-host connection id of channel `relid` is `CHANNEL_CONNECTION_ID_BASE + relid` (the
 * OpenVMM encoding `relid | SINT << 12` for VTL0).
 */
export const CHANNEL_CONNECTION_ID_BASE = 0x2000;
/** Highest relid handed out: event flags pages have 2048 bits and relid 0 is reserved. */
export const MAX_RELID = 2047;
/** `target_vp` value that disables host-to-guest interrupts for a channel. */
export const VP_INDEX_DISABLE_INTERRUPT = 0xffff_ffff;
/** Monitor id of an offer without monitored notification. */
export const MONITOR_ID_NONE = 0xff;

/** Hypercall status values returned from the guest-to-host entry points. */
export const HvStatus = {
  SUCCESS: 0,
  INVALID_HYPERCALL_INPUT: 3,
  INVALID_PARAMETER: 5,
  INSUFFICIENT_MEMORY: 11,
  INVALID_PORT_ID: 17,
  INVALID_CONNECTION_ID: 18,
  INSUFFICIENT_BUFFERS: 19,
} as const;

/** NTSTATUS values carried in channel messages. */
export const NtStatus = {
  SUCCESS: 0,
  UNSUCCESSFUL: 0x8000_ffff,
  CONNECTION_REFUSED: 0xc000_0236,
} as const;

// ---------------------------------------------------------------------------------------------
// Protocol versions
// ---------------------------------------------------------------------------------------------

/** Builds a VMBus version number (`major << 16 | minor`). */
export function makeVersion(major: number, minor: number): number {
  return ((major & 0xffff) * 0x10000 + (minor & 0xffff)) >>> 0;
}

/** Formats a VMBus version number as `major.minor`. */
export function formatVersion(version: number): string {
  return `${version >>> 16}.${version & 0xffff}`;
}

/** Protocol versions, named as in Linux `hyperv.h` (6.0 is OpenVMM's "Copper"). */
export const VmbusVersion = {
  /** 0.13, Windows Server 2008. */
  WS2008: makeVersion(0, 13),
  /** 1.1, Windows 7 / Server 2008 R2. */
  WIN7: makeVersion(1, 1),
  /** 2.4, Windows 8 / Server 2012. */
  WIN8: makeVersion(2, 4),
  /** 3.0, Windows 8.1 / Server 2012 R2. */
  WIN8_1: makeVersion(3, 0),
  /** 4.0, Windows 10. */
  WIN10: makeVersion(4, 0),
  /** 4.1, Windows 10 RS3. */
  WIN10_V4_1: makeVersion(4, 1),
  /** 5.0, newer Windows 10. */
  WIN10_V5: makeVersion(5, 0),
  /** 5.1, Windows 10 RS4. */
  WIN10_V5_1: makeVersion(5, 1),
  /** 5.2, Windows Server 2019 (RS5). */
  WIN10_V5_2: makeVersion(5, 2),
  /** 5.3, Windows Server 2022; the highest Linux 6.1 asks for. */
  WIN10_V5_3: makeVersion(5, 3),
  /** 6.0, feature-flag protocol (we grant no feature flags). */
  V6_0: makeVersion(6, 0),
} as const;

/** Every version the server accepts, newest first. */
export const SUPPORTED_VERSIONS: readonly number[] = [
  VmbusVersion.V6_0,
  VmbusVersion.WIN10_V5_3,
  VmbusVersion.WIN10_V5_2,
  VmbusVersion.WIN10_V5_1,
  VmbusVersion.WIN10_V5,
  VmbusVersion.WIN10_V4_1,
  VmbusVersion.WIN10,
  VmbusVersion.WIN8_1,
  VmbusVersion.WIN8,
  VmbusVersion.WIN7,
  VmbusVersion.WS2008,
];

/** `connection_state` values of VERSION_RESPONSE. */
export const ConnectionState = {
  SUCCESSFUL: 0,
  FAILED_LOW_RESOURCES: 1,
  FAILED_UNKNOWN_FAILURE: 2,
} as const;

// ---------------------------------------------------------------------------------------------
// Channel messages
// ---------------------------------------------------------------------------------------------

/**
 * Channel message types (open enum: an unknown number is a value to reject, not a cast).
 * 18..20 are the reserved-channel messages Linux names CHANNELMSG_18..20.
 */
export const ChannelMessageType = {
  INVALID: 0,
  OFFERCHANNEL: 1,
  RESCIND_CHANNELOFFER: 2,
  REQUESTOFFERS: 3,
  ALLOFFERS_DELIVERED: 4,
  OPENCHANNEL: 5,
  OPENCHANNEL_RESULT: 6,
  CLOSECHANNEL: 7,
  GPADL_HEADER: 8,
  GPADL_BODY: 9,
  GPADL_CREATED: 10,
  GPADL_TEARDOWN: 11,
  GPADL_TORNDOWN: 12,
  RELID_RELEASED: 13,
  INITIATE_CONTACT: 14,
  VERSION_RESPONSE: 15,
  UNLOAD: 16,
  UNLOAD_RESPONSE: 17,
  OPEN_RESERVED_CHANNEL: 18,
  CLOSE_RESERVED_CHANNEL: 19,
  CLOSE_RESERVED_RESPONSE: 20,
  TL_CONNECT_REQUEST: 21,
  MODIFYCHANNEL: 22,
  TL_CONNECT_RESULT: 23,
  MODIFYCHANNEL_RESPONSE: 24,
} as const;

/** A channel message type number (any u32; see `ChannelMessageType`). */
export type ChannelMessageType = number;

const MESSAGE_TYPE_NAMES = new Map<number, string>(
  Object.entries(ChannelMessageType).map(([k, v]) => [v, k]),
);

/** Name of a channel message type, or `UNKNOWN(n)`. */
export function messageTypeName(type: number): string {
  return MESSAGE_TYPE_NAMES.get(type) ?? `UNKNOWN(${type})`;
}

/** Offer `chn_flags` bits. */
export const OfferFlags = {
  ENUMERATE_DEVICE_INTERFACE: 0x1,
  SERVER_SUPPORTS_TRANSFER_PAGES: 0x2,
  SERVER_SUPPORTS_GPADLS: 0x4,
  NAMED_PIPE_MODE: 0x10,
  LOOPBACK_OFFER: 0x100,
  PARENT_OFFER: 0x200,
  REQUEST_MONITORED_NOTIFICATION: 0x400,
  TLNPI_PROVIDER_OFFER: 0x2000,
} as const;

/** Bytes of user-defined data in an offer and in OPENCHANNEL. */
export const MAX_USER_DEFINED_BYTES = 120;

/** `vmbus_channel_message_header`: every channel message starts with it. */
export const MessageHeader = defineLayout("vmbus_channel_message_header", 8, {
  msgtype: { offset: 0, type: "u32" },
  padding: { offset: 4, type: "u32" },
});

/** `vmbus_channel_offer_channel` (host → guest, CHANNELMSG_OFFERCHANNEL), 0xC4 bytes. */
export const OfferChannel = defineLayout("vmbus_channel_offer_channel", 196, {
  msgtype: { offset: 0, type: "u32" },
  ifType: { offset: 8, type: { bytes: 16 } },
  ifInstance: { offset: 24, type: { bytes: 16 } },
  reserved1: { offset: 40, type: "u64" },
  reserved2: { offset: 48, type: "u64" },
  chnFlags: { offset: 56, type: "u16" },
  mmioMegabytes: { offset: 58, type: "u16" },
  userDefined: { offset: 60, type: { bytes: MAX_USER_DEFINED_BYTES } },
  subChannelIndex: { offset: 180, type: "u16" },
  mmioMegabytesOptional: { offset: 182, type: "u16" },
  childRelid: { offset: 184, type: "u32" },
  monitorId: { offset: 188, type: "u8" },
  /** Bit 0: monitor_allocated. */
  monitorAllocated: { offset: 189, type: "u8" },
  /** Bit 0: is_dedicated_interrupt (Win7+). */
  isDedicatedInterrupt: { offset: 190, type: "u16" },
  /** Connection id the guest signals this channel with (Win7+). */
  connectionId: { offset: 192, type: "u32" },
});

/** `vmbus_channel_rescind_offer` (host → guest). */
export const RescindOffer = defineLayout("vmbus_channel_rescind_offer", 12, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
});

/** `vmbus_channel_open_channel` (guest → host). */
export const OpenChannel = defineLayout("vmbus_channel_open_channel", 148, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  openId: { offset: 12, type: "u32" },
  ringbufferGpadlHandle: { offset: 16, type: "u32" },
  targetVp: { offset: 20, type: "u32" },
  /** Offset of the host-to-guest ring in the ring GPADL, in pages. */
  downstreamRingbufferPageOffset: { offset: 24, type: "u32" },
  userData: { offset: 28, type: { bytes: MAX_USER_DEFINED_BYTES } },
});

/** `vmbus_channel_open_result` (host → guest). */
export const OpenResult = defineLayout("vmbus_channel_open_result", 20, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  openId: { offset: 12, type: "u32" },
  status: { offset: 16, type: "u32" },
});

/** `vmbus_channel_close_channel` (guest → host). */
export const CloseChannel = defineLayout("vmbus_channel_close_channel", 12, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
});

/** `vmbus_channel_gpadl_header` without its trailing `gpa_range` data (guest → host). */
export const GpadlHeader = defineLayout("vmbus_channel_gpadl_header", 20, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  gpadl: { offset: 12, type: "u32" },
  /** Total bytes of range data (range headers + PFNs) across header and body messages. */
  rangeBufLen: { offset: 16, type: "u16" },
  rangeCount: { offset: 18, type: "u16" },
});

/** `gpa_range` header; `ceil((byte_offset + byte_count) / 4096)` u64 PFNs follow. */
export const GpaRangeHeader = defineLayout("gpa_range", 8, {
  byteCount: { offset: 0, type: "u32" },
  byteOffset: { offset: 4, type: "u32" },
});

/** `vmbus_channel_gpadl_body` without its trailing PFNs (guest → host). */
export const GpadlBody = defineLayout("vmbus_channel_gpadl_body", 16, {
  msgtype: { offset: 0, type: "u32" },
  msgNumber: { offset: 8, type: "u32" },
  gpadl: { offset: 12, type: "u32" },
});

/** `vmbus_channel_gpadl_created` (host → guest). */
export const GpadlCreated = defineLayout("vmbus_channel_gpadl_created", 20, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  gpadl: { offset: 12, type: "u32" },
  creationStatus: { offset: 16, type: "u32" },
});

/** `vmbus_channel_gpadl_teardown` (guest → host). */
export const GpadlTeardown = defineLayout("vmbus_channel_gpadl_teardown", 16, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  gpadl: { offset: 12, type: "u32" },
});

/** `vmbus_channel_gpadl_torndown` (host → guest). */
export const GpadlTorndown = defineLayout("vmbus_channel_gpadl_torndown", 12, {
  msgtype: { offset: 0, type: "u32" },
  gpadl: { offset: 8, type: "u32" },
});

/** `vmbus_channel_relid_released` (guest → host). */
export const RelidReleased = defineLayout("vmbus_channel_relid_released", 12, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
});

/**
 * `vmbus_channel_initiate_contact` (guest → host). `interruptPage` is the interrupt page GPA
 * before 5.0; from 5.0 its low byte is the message SINT (and from 6.0 bits 32..63 the requested
 * feature flags).
 */
export const InitiateContact = defineLayout("vmbus_channel_initiate_contact", 40, {
  msgtype: { offset: 0, type: "u32" },
  versionRequested: { offset: 8, type: "u32" },
  targetVcpu: { offset: 12, type: "u32" },
  interruptPage: { offset: 16, type: "u64" },
  msgSint: { offset: 16, type: "u8" },
  msgVtl: { offset: 17, type: "u8" },
  featureFlags: { offset: 20, type: "u32" },
  monitorPage1: { offset: 24, type: "u64" },
  monitorPage2: { offset: 32, type: "u64" },
});

/** INITIATE_CONTACT with a client id GUID (6.0 with the client-id feature). */
export const InitiateContact2 = defineLayout("vmbus_channel_initiate_contact2", 56, {
  ...InitiateContact.fields,
  clientId: { offset: 40, type: { bytes: 16 } },
});

/** `vmbus_channel_version_response` (host → guest). */
export const VersionResponse = defineLayout("vmbus_channel_version_response", 16, {
  msgtype: { offset: 0, type: "u32" },
  versionSupported: { offset: 8, type: "u8" },
  connectionState: { offset: 9, type: "u8" },
  padding: { offset: 10, type: "u16" },
  /** 5.0+: the message connection id the guest must use from now on; before: the version. */
  msgConnId: { offset: 12, type: "u32" },
});

/** VERSION_RESPONSE of 6.0+, with the granted feature flags. */
export const VersionResponse2 = defineLayout("vmbus_channel_version_response2", 20, {
  ...VersionResponse.fields,
  supportedFeatures: { offset: 16, type: "u32" },
});

/** `vmbus_channel_tl_connect_request` (guest → host, hv_sock connect). */
export const TlConnectRequest = defineLayout("vmbus_channel_tl_connect_request", 40, {
  msgtype: { offset: 0, type: "u32" },
  guestEndpointId: { offset: 8, type: { bytes: 16 } },
  hostServiceId: { offset: 24, type: { bytes: 16 } },
});

/** TL_CONNECT_REQUEST with a silo id (RS5+ Windows guests). */
export const TlConnectRequest2 = defineLayout("vmbus_channel_tl_connect_request2", 56, {
  ...TlConnectRequest.fields,
  siloId: { offset: 40, type: { bytes: 16 } },
});

/** TL_CONNECT_RESULT (host → guest, 4.1+). */
export const TlConnectResult = defineLayout("vmbus_channel_tl_connect_result", 44, {
  msgtype: { offset: 0, type: "u32" },
  guestEndpointId: { offset: 8, type: { bytes: 16 } },
  hostServiceId: { offset: 24, type: { bytes: 16 } },
  status: { offset: 40, type: "u32" },
});

/** `vmbus_channel_modifychannel` (guest → host, 4.1+). */
export const ModifyChannel = defineLayout("vmbus_channel_modifychannel", 16, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  targetVp: { offset: 12, type: "u32" },
});

/** `vmbus_channel_modifychannel_response` (host → guest, 5.3+). */
export const ModifyChannelResponse = defineLayout("vmbus_channel_modifychannel_response", 16, {
  msgtype: { offset: 0, type: "u32" },
  childRelid: { offset: 8, type: "u32" },
  status: { offset: 12, type: "u32" },
});

/** Messages that are only a header: REQUESTOFFERS, ALLOFFERS_DELIVERED, UNLOAD, UNLOAD_RESPONSE. */
export const EmptyMessage = MessageHeader;

// ---------------------------------------------------------------------------------------------
// Ring buffers
// ---------------------------------------------------------------------------------------------

/** Page size of ring buffers and GPADLs. */
export const HV_PAGE_SIZE = 4096;

/**
 * `hv_ring_buffer` control page: the first page of each ring; the data area follows. Indices are
 * byte offsets into the data area.
 */
export const RingControl = defineLayout("hv_ring_buffer", HV_PAGE_SIZE, {
  writeIndex: { offset: 0, type: "u32" },
  readIndex: { offset: 4, type: "u32" },
  interruptMask: { offset: 8, type: "u32" },
  pendingSendSize: { offset: 12, type: "u32" },
  /** Bit 0: feat_pending_send_sz. */
  featureBits: { offset: 64, type: "u32" },
});

/** u32 word index of each control field (for `Uint32Array`/`Atomics` access). */
export const RingControlWord = {
  WRITE_INDEX: 0,
  READ_INDEX: 1,
  INTERRUPT_MASK: 2,
  PENDING_SEND_SIZE: 3,
  FEATURE_BITS: 16,
} as const;

/** `feature_bits` bit: the writer sets pending_send_sz when blocked and the reader honours it. */
export const RING_FEATURE_PENDING_SEND_SIZE = 1;

/** `vmpacket_descriptor`: starts every ring packet. Offsets and lengths are in 8-byte units. */
export const PacketDescriptor = defineLayout("vmpacket_descriptor", 16, {
  type: { offset: 0, type: "u16" },
  offset8: { offset: 2, type: "u16" },
  len8: { offset: 4, type: "u16" },
  flags: { offset: 6, type: "u16" },
  transId: { offset: 8, type: "u64" },
});

/** Extension after the descriptor of a GPA-direct packet; `gpa_range`s follow. */
export const GpaDirectHeader = defineLayout("vmdata_gpa_direct", 8, {
  reserved: { offset: 0, type: "u32" },
  rangeCount: { offset: 4, type: "u32" },
});

/** Extension after the descriptor of a transfer-page packet; `vmtransfer_page_range`s follow. */
export const TransferPageHeader = defineLayout("vmtransfer_page_packet_header", 8, {
  transferPageSetId: { offset: 0, type: "u16" },
  senderOwnsSet: { offset: 2, type: "u8" },
  reserved: { offset: 3, type: "u8" },
  rangeCount: { offset: 4, type: "u32" },
});

/** `vmtransfer_page_range`. */
export const TransferPageRange = defineLayout("vmtransfer_page_range", 8, {
  byteCount: { offset: 0, type: "u32" },
  byteOffset: { offset: 4, type: "u32" },
});

/** The 8 bytes after every packet: the packet's start offset in the high half. */
export const PacketTrailer = defineLayout("vmpacket_trailer", 8, {
  reserved: { offset: 0, type: "u32" },
  packetStart: { offset: 4, type: "u32" },
});

/** Ring packet types (open enum). */
export const VmPacketType = {
  INVALID: 0x0,
  SYNCH: 0x1,
  ADD_XFER_PAGESET: 0x2,
  RM_XFER_PAGESET: 0x3,
  ESTABLISH_GPADL: 0x4,
  TEARDOWN_GPADL: 0x5,
  DATA_INBAND: 0x6,
  DATA_USING_XFER_PAGES: 0x7,
  DATA_USING_GPADL: 0x8,
  DATA_USING_GPA_DIRECT: 0x9,
  CANCEL_REQUEST: 0xa,
  COMP: 0xb,
  DATA_USING_ADDITIONAL_PKT: 0xc,
  ADDITIONAL_DATA: 0xd,
} as const;

/** Descriptor flag: the sender wants a VM_PKT_COMP with the same transaction id. */
export const VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED = 1;
