/**
 * storvsp wire format: the `vstor_packet` that storvsc (Linux `drivers/scsi/storvsc_drv.c`) and
 * the Windows storage VSC exchange with the host over VMBus, and the SRB status values carried
 * in it. Layouts and constants only, no I/O; sizes are pinned by
 * `tests/unit/devices/storage/protocol_test.ts`.
 *
 * Packet sizes depend on the negotiated revision: Windows 8 (5.1) appended 16 bytes to
 * `vmscsi_request` (the "win8 extension"), so a pre-Win8 `vstor_packet` is 48 bytes and a Win8+
 * one 64 (Linux used to keep this difference as `vmscsi_size_delta`). The host answers every
 * request with a packet as large as the request's own (Linux 6.1 sends 64-byte packets before
 * the version is agreed and drops shorter replies).
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** VMBus interface type (class id) of the synthetic SCSI controller (`HV_SCSI_GUID`). */
export const SCSI_CLASS_ID = "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f";

/** Builds a storvsp protocol version (`major << 8 | minor`). */
export function vstorVersion(major: number, minor: number): number {
  return ((major & 0xff) << 8) | (minor & 0xff);
}

/** Formats a storvsp protocol version as `major.minor`. */
export function formatVstorVersion(version: number): string {
  return `${(version >> 8) & 0xff}.${version & 0xff}`;
}

/** Protocol revisions (`VMSTOR_PROTO_VERSION_*`). */
export const VstorVersion = {
  /** 2.0, Windows Server 2008. */
  WIN6: 0x0200,
  /** 4.2, Windows 7. */
  WIN7: 0x0402,
  /** 5.1, Windows 8: multi-channel, the win8 SRB extension. */
  WIN8: 0x0501,
  /** 6.0, Windows 8.1 ("Blue"). */
  WIN8_1: 0x0600,
  /** 6.2, Windows 10 ("Threshold"): Linux enables WRITE SAME for "Msft" disks. */
  WIN10: 0x0602,
} as const;

/** Revisions this host accepts, newest first. */
export const SUPPORTED_VSTOR_VERSIONS: readonly number[] = [
  VstorVersion.WIN10,
  VstorVersion.WIN8_1,
  VstorVersion.WIN8,
  VstorVersion.WIN7,
  VstorVersion.WIN6,
];

/** `vstor_packet.operation` values (an open enum: unknown values are ordinary numbers). */
export const VstorOperation = {
  COMPLETE_IO: 1,
  REMOVE_DEVICE: 2,
  EXECUTE_SRB: 3,
  RESET_LUN: 4,
  RESET_ADAPTER: 5,
  RESET_BUS: 6,
  BEGIN_INITIALIZATION: 7,
  END_INITIALIZATION: 8,
  QUERY_PROTOCOL_VERSION: 9,
  QUERY_PROPERTIES: 10,
  ENUMERATE_BUS: 11,
  FCHBA_DATA: 12,
  CREATE_SUB_CHANNELS: 13,
  EVENT_NOTIFICATION: 14,
} as const;

/** `vstor_packet.flags`: the sender wants a completion (informational; VMBus flags rule). */
export const REQUEST_COMPLETION_FLAG = 1;

/** NTSTATUS values in `vstor_packet.status`. */
export const VstorStatus = {
  SUCCESS: 0,
  BUFFER_OVERFLOW: 0x8000_0005,
  DEVICE_BUSY: 0x8000_0011,
  UNSUCCESSFUL: 0xc000_0001,
  INVALID_PARAMETER: 0xc000_000d,
  INVALID_DEVICE_REQUEST: 0xc000_0010,
  REVISION_MISMATCH: 0xc000_0059,
  DEVICE_NOT_CONNECTED: 0xc000_009d,
  IO_TIMEOUT: 0xc000_00b5,
  DEVICE_DOES_NOT_EXIST: 0xc000_00c0,
  CANCELLED: 0xc000_0120,
  INVALID_DEVICE_STATE: 0xc000_0184,
  IO_DEVICE_ERROR: 0xc000_0185,
} as const;

/** SRB status codes (low 6 bits of `srb_status`). */
export const SrbStatus = {
  PENDING: 0x00,
  SUCCESS: 0x01,
  ABORTED: 0x02,
  ERROR: 0x04,
  BUSY: 0x05,
  INVALID_REQUEST: 0x06,
  INVALID_PATH_ID: 0x07,
  NO_DEVICE: 0x08,
  TIMEOUT: 0x09,
  SELECTION_TIMEOUT: 0x0a,
  DATA_OVERRUN: 0x12,
  INVALID_LUN: 0x20,
  INVALID_TARGET_ID: 0x21,
} as const;

/** `srb_status` flag: the sense data in the reply is valid. */
export const SRB_STATUS_AUTOSENSE_VALID = 0x80;
/** `srb_status` flag: the queue is frozen. */
export const SRB_STATUS_QUEUE_FROZEN = 0x40;

/** `vmscsi_request.data_in` values (`enum storvsc_request_type`). */
export const SrbDataDirection = {
  /** Host reads guest memory (SCSI data-out). */
  WRITE: 0,
  /** Host writes guest memory (SCSI data-in). */
  READ: 1,
  /** No data. */
  UNKNOWN: 2,
} as const;

/** `srb_flags` bits the host looks at. */
export const SrbFlags = {
  DATA_IN: 0x40,
  DATA_OUT: 0x80,
} as const;

/** `vmstorage_channel_properties.flags`: sub-channels may be requested. */
export const STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL = 1;

/** Largest CDB an SRB carries. */
export const MAX_CDB_LENGTH = 16;
/** Sense bytes an SRB reply carries (`STORVSC_SENSE_BUFFER_SIZE`). */
export const SENSE_BUFFER_SIZE = 0x14;

/** `vstor_packet` header: operation, flags, status (the payload union follows). */
export const VstorPacketHeader = defineLayout("vstor_packet header", 12, {
  operation: { offset: 0, type: "u32" },
  flags: { offset: 4, type: "u32" },
  status: { offset: 8, type: "u32" },
});

/** Size of the `vstor_packet` header. */
export const VSTOR_HEADER_SIZE = VstorPacketHeader.size;

/**
 * `vmscsi_request` with the win8 extension (52 bytes). The CDB and the reply's sense data share
 * bytes 16..36.
 */
export const VmscsiRequest = defineLayout("vmscsi_request", 0x34, {
  length: { offset: 0, type: "u16" },
  srbStatus: { offset: 2, type: "u8" },
  scsiStatus: { offset: 3, type: "u8" },
  portNumber: { offset: 4, type: "u8" },
  pathId: { offset: 5, type: "u8" },
  targetId: { offset: 6, type: "u8" },
  lun: { offset: 7, type: "u8" },
  cdbLength: { offset: 8, type: "u8" },
  senseInfoLength: { offset: 9, type: "u8" },
  dataIn: { offset: 10, type: "u8" },
  properties: { offset: 11, type: "u8" },
  dataTransferLength: { offset: 12, type: "u32" },
  cdb: { offset: 16, type: { bytes: 0x14 } },
  reserve: { offset: 36, type: "u16" },
  queueTag: { offset: 38, type: "u8" },
  queueAction: { offset: 39, type: "u8" },
  srbFlags: { offset: 40, type: "u32" },
  timeOutValue: { offset: 44, type: "u32" },
  queueSortKey: { offset: 48, type: "u32" },
});

/** Offset of the CDB / sense bytes inside `vmscsi_request`. */
export const VMSCSI_CDB_OFFSET = 16;
/** `vmscsi_request` size before Windows 8 (no extension). */
export const VMSCSI_REQUEST_SIZE_V1 = 0x24;
/** `vmscsi_request` size from Windows 8 on. */
export const VMSCSI_REQUEST_SIZE_V2 = 0x34;
/** The win8 extension (`vmscsi_size_delta`). */
export const VMSCSI_WIN8_EXTENSION_SIZE = VMSCSI_REQUEST_SIZE_V2 - VMSCSI_REQUEST_SIZE_V1;
/** Largest `vstor_packet` (header + largest union member): 64 bytes. */
export const MAX_VSTOR_PACKET_SIZE = VSTOR_HEADER_SIZE + VMSCSI_REQUEST_SIZE_V2;

/** `vmstorage_channel_properties` (reply to QUERY_PROPERTIES). */
export const ChannelProperties = defineLayout("vmstorage_channel_properties", 24, {
  reserved: { offset: 0, type: "u32" },
  maxChannelCount: { offset: 4, type: "u16" },
  reserved1: { offset: 6, type: "u16" },
  flags: { offset: 8, type: "u32" },
  maxTransferBytes: { offset: 12, type: "u32" },
  reserved2: { offset: 16, type: "u64" },
});

/** `vmstorage_protocol_version` (QUERY_PROTOCOL_VERSION request and reply). */
export const ProtocolVersion = defineLayout("vmstorage_protocol_version", 4, {
  majorMinor: { offset: 0, type: "u16" },
  revision: { offset: 2, type: "u16" },
});

/** `hv_fc_wwn_packet` (FCHBA_DATA; only Fibre Channel controllers answer it). */
export const FcWwnPacket = defineLayout("hv_fc_wwn_packet", 36, {
  primaryActive: { offset: 0, type: "u8" },
  primaryPortWwn: { offset: 4, type: { bytes: 8 } },
  primaryNodeWwn: { offset: 12, type: { bytes: 8 } },
  secondaryPortWwn: { offset: 20, type: { bytes: 8 } },
  secondaryNodeWwn: { offset: 28, type: { bytes: 8 } },
});

/** `vmscsi_request` size (the SRB part of a packet) for protocol `version`. */
export function vmscsiRequestSize(version: number): number {
  return version >= VstorVersion.WIN8 ? VMSCSI_REQUEST_SIZE_V2 : VMSCSI_REQUEST_SIZE_V1;
}

/** Full `vstor_packet` size for protocol `version` (48 before Win8, 64 from Win8 on). */
export function vstorPacketSize(version: number): number {
  return VSTOR_HEADER_SIZE + vmscsiRequestSize(version);
}

/** True when `version` is one this host accepts. */
export function isSupportedVstorVersion(version: number): boolean {
  return SUPPORTED_VSTOR_VERSIONS.includes(version);
}

/** Maps an SRB status (low 6 bits) to the NTSTATUS a Hyper-V host puts in the packet. */
export function srbToNtStatus(srbStatus: number): number {
  switch (srbStatus & 0x3f) {
    case SrbStatus.SUCCESS:
      return VstorStatus.SUCCESS;
    case SrbStatus.BUSY:
      return VstorStatus.DEVICE_BUSY;
    case SrbStatus.INVALID_LUN:
    case SrbStatus.INVALID_TARGET_ID:
    case SrbStatus.NO_DEVICE:
      return VstorStatus.DEVICE_DOES_NOT_EXIST;
    case SrbStatus.TIMEOUT:
      return VstorStatus.IO_TIMEOUT;
    case SrbStatus.SELECTION_TIMEOUT:
      return VstorStatus.DEVICE_NOT_CONNECTED;
    case SrbStatus.INVALID_REQUEST:
      return VstorStatus.INVALID_DEVICE_REQUEST;
    case SrbStatus.DATA_OVERRUN:
      return VstorStatus.BUFFER_OVERFLOW;
    case SrbStatus.ABORTED:
      return VstorStatus.CANCELLED;
    default:
      return VstorStatus.IO_DEVICE_ERROR;
  }
}
