/**
 * Hyper-V integration component (IC) wire formats: the pipe and IC message headers, version
 * negotiation, and the shutdown, heartbeat, time sync and KVP messages. Layouts, constants and
 * pure codecs only, no I/O.
 *
 * Every IC packet is an in-band VMBus packet whose payload is `vmbuspipe_hdr` (8 bytes), then
 * `icmsg_hdr` (20 bytes), then the message body: Linux reads the IC header at
 * `sizeof(struct vmbuspipe_hdr)` and the body at `ICMSG_HDR` (28). The guest answers by echoing
 * the whole buffer with `icflags = TRANSACTION | RESPONSE` and the VMBus transaction id of the
 * request.
 *
 * Sources: Linux `include/linux/hyperv.h` (icmsg_hdr, icmsg_negotiate, shutdown_msg_data,
 * heartbeat_msg_data, ictimesync_data, ictimesync_ref_data), `include/uapi/linux/hyperv.h`
 * (KVP, status codes, framework versions), `drivers/hv/hv_util.c`, `drivers/hv/hv_kvp.c`. Sizes
 * are pinned by `tests/unit/devices/ic/protocol_test.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

// ---------------------------------------------------------------------------------------------
// Device identity
// ---------------------------------------------------------------------------------------------

/** Interface (class) GUIDs of the ICs (`HV_*_GUID` in Linux hyperv.h). */
export const IcClassId = {
  SHUTDOWN: "0e0b6031-5213-4934-818b-38d90ced39db",
  TIMESYNC: "9527e630-d0ae-497b-adce-e80ab0175caf",
  HEARTBEAT: "57164f39-9115-4e78-ab55-382f3bd5422d",
  KVP: "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
  /** File copy (Windows "Guest Service Interface"). */
  FCOPY: "34d14be3-dee4-41c8-9ae7-6b174977c192",
  VSS: "35fa2e29-ea23-4236-96ae-3a6ebacba440",
} as const;

/** The instance GUIDs Hyper-V gives its ICs (stable, so guest tooling sees familiar ids). */
export const IcInstanceId = {
  SHUTDOWN: "b6650ff7-33bc-4840-8048-e0676786f393",
  TIMESYNC: "2dd1ce17-079e-403c-b352-a1921ee207ee",
  HEARTBEAT: "fd149e91-82e0-4a7d-afa6-2a4166cbd7c0",
  KVP: "242ff919-07db-4180-9c2e-b86cb68c8c55",
  FCOPY: "eb765408-105f-49b6-b4aa-c123b64d17d4",
  VSS: "2450ee40-33bf-4fbd-892e-9fb06e9214cf",
} as const;

/** Offer `pipe_mode` (first u32 of the user-defined data) of a message-mode pipe. */
export const VMBUS_PIPE_TYPE_MESSAGE = 4;
/** `vmbuspipe_hdr.flags` of a data message (Linux skips the header without reading it). */
export const PIPE_PACKET_DATA = 1;

// ---------------------------------------------------------------------------------------------
// Common header
// ---------------------------------------------------------------------------------------------

/** `struct vmbuspipe_hdr`: message-mode pipe framing in front of every IC message. */
export const PipeHeader = defineLayout("vmbuspipe_hdr", 8, {
  flags: { offset: 0, type: "u32" },
  msgsize: { offset: 4, type: "u32" },
});

/** `struct icmsg_hdr` (follows the pipe header). */
export const IcMessageHeader = defineLayout("icmsg_hdr", 20, {
  frameworkMajor: { offset: 0, type: "u16" },
  frameworkMinor: { offset: 2, type: "u16" },
  msgType: { offset: 4, type: "u16" },
  messageMajor: { offset: 6, type: "u16" },
  messageMinor: { offset: 8, type: "u16" },
  msgSize: { offset: 10, type: "u16" },
  status: { offset: 12, type: "u32" },
  transactionId: { offset: 16, type: "u8" },
  flags: { offset: 17, type: "u8" },
  reserved: { offset: 18, type: "u16" },
});

/** Offset of the IC header in a packet payload (`sizeof(struct vmbuspipe_hdr)`). */
export const IC_HEADER_OFFSET = PipeHeader.size;
/** Offset of the message body in a packet payload (Linux `ICMSG_HDR`). */
export const ICMSG_HDR = PipeHeader.size + IcMessageHeader.size;

/** `icmsgtype` values (open enum: keep the raw number, reject unknown ones). */
export const IcMessageType = {
  NEGOTIATE: 0,
  HEARTBEAT: 1,
  KVP_EXCHANGE: 2,
  SHUTDOWN: 3,
  TIMESYNC: 4,
  VSS: 5,
  FCOPY: 7,
} as const;

/** `icflags` bits. */
export const IcHeaderFlags = {
  TRANSACTION: 1,
  REQUEST: 2,
  RESPONSE: 4,
} as const;

/** IC status codes (HRESULTs) carried in `icmsg_hdr.status`. */
export const IcStatus = {
  S_OK: 0,
  E_FAIL: 0x8000_4005,
  /** HRESULT_FROM_WIN32(ERROR_NO_MORE_ITEMS): KVP "no such key" / "end of enumeration". */
  S_CONT: 0x8007_0103,
  ERROR_NOT_SUPPORTED: 0x8007_0032,
  ERROR_MACHINE_LOCKED: 0x8007_04f7,
  ERROR_DEVICE_NOT_CONNECTED: 0x8007_048f,
  INVALIDARG: 0x8007_0057,
  GUID_NOTFOUND: 0x8004_1002,
  ERROR_ALREADY_EXISTS: 0x8007_0050,
  ERROR_DISK_FULL: 0x8007_0070,
} as const;

/** Formats an IC status for messages: `0x80004005 (E_FAIL)`. */
export function formatIcStatus(status: number): string {
  const hex = `0x${(status >>> 0).toString(16).padStart(8, "0")}`;
  for (const [name, value] of Object.entries(IcStatus)) {
    if (value === status >>> 0) return `${hex} (${name})`;
  }
  return hex;
}

// ---------------------------------------------------------------------------------------------
// Versions and negotiation
// ---------------------------------------------------------------------------------------------

/** `struct ic_version`. */
export interface IcVersion {
  /** Major version. */
  readonly major: number;
  /** Minor version. */
  readonly minor: number;
}

/** `struct ic_version` as a layout (the negotiate message carries an array of them). */
export const IcVersionLayout = defineLayout("ic_version", 4, {
  major: { offset: 0, type: "u16" },
  minor: { offset: 2, type: "u16" },
});

/** `struct icmsg_negotiate` (followed by framework versions, then message versions). */
export const NegotiateMessage = defineLayout("icmsg_negotiate", 8, {
  frameworkCount: { offset: 0, type: "u16" },
  messageCount: { offset: 2, type: "u16" },
  reserved: { offset: 4, type: "u32" },
});

/** Linux refuses negotiate messages announcing more versions than this per list. */
export const IC_VERSION_NEGOTIATION_MAX_VER_COUNT = 100;

/** Framework versions the host offers (Linux `fw_versions`: 3.0, 1.0). */
export const FRAMEWORK_VERSIONS: readonly IcVersion[] = [
  { major: 3, minor: 0 },
  { major: 1, minor: 0 },
];
/** Shutdown message versions (3.1 added reboot, 3.2 hibernate; Linux 6.1 takes 3.2). */
export const SHUTDOWN_VERSIONS: readonly IcVersion[] = [
  { major: 3, minor: 2 },
  { major: 3, minor: 1 },
  { major: 3, minor: 0 },
  { major: 1, minor: 0 },
];
/** Time sync message versions (4.0 carries the reference time). */
export const TIMESYNC_VERSIONS: readonly IcVersion[] = [
  { major: 4, minor: 0 },
  { major: 3, minor: 0 },
  { major: 1, minor: 0 },
];
/** Heartbeat message versions. */
export const HEARTBEAT_VERSIONS: readonly IcVersion[] = [
  { major: 3, minor: 0 },
  { major: 1, minor: 0 },
];
/** KVP message versions (WIN8 4.0, WIN7 3.0, WS2008 1.0; same get/set/enumerate/delete). */
export const KVP_VERSIONS: readonly IcVersion[] = [
  { major: 4, minor: 0 },
  { major: 3, minor: 0 },
  { major: 1, minor: 0 },
];

/** File copy message versions (Linux accepts only 1.1). */
export const FCOPY_VERSIONS: readonly IcVersion[] = [{ major: 1, minor: 1 }];
/** VSS message versions (Linux accepts only 5.0; Windows 4.0-7.0 carry LUN lists). */
export const VSS_VERSIONS: readonly IcVersion[] = [{ major: 5, minor: 0 }];

/** `major.minor`. */
export function formatIcVersion(v: IcVersion): string {
  return `${v.major}.${v.minor}`;
}

/** True when `list` holds `v`. */
export function hasIcVersion(list: readonly IcVersion[], v: IcVersion): boolean {
  return list.some((x) => x.major === v.major && x.minor === v.minor);
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

/** Bytes of `shutdown_msg_data.display_message`. */
export const SHUTDOWN_DISPLAY_MESSAGE_SIZE = 2048;

/** `struct shutdown_msg_data` (Linux requires all 2060 bytes to be present). */
export const ShutdownMessage = defineLayout(
  "shutdown_msg_data",
  12 + SHUTDOWN_DISPLAY_MESSAGE_SIZE,
  {
    reasonCode: { offset: 0, type: "u32" },
    timeoutSeconds: { offset: 4, type: "u32" },
    flags: { offset: 8, type: "u32" },
    displayMessage: { offset: 12, type: { bytes: SHUTDOWN_DISPLAY_MESSAGE_SIZE } },
  },
);

/** `shutdown_msg_data.flags`: 0 power off, bit 0 force, bit 1 restart, bit 2 hibernate. */
export const ShutdownFlags = {
  FORCE: 1,
  RESTART: 2,
  HIBERNATE: 4,
} as const;

/** Windows SDK `SHTDN_REASON_FLAG_PLANNED`, the reason code the host sends. */
export const SHTDN_REASON_FLAG_PLANNED = 0x8000_0000;

// ---------------------------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------------------------

/** `struct heartbeat_msg_data`: the guest answers with `seq_num + 1`. */
export const HeartbeatMessage = defineLayout("heartbeat_msg_data", 40, {
  seqNum: { offset: 0, type: "u64" },
  reserved: { offset: 8, type: { bytes: 32 } },
});

// ---------------------------------------------------------------------------------------------
// Time sync
// ---------------------------------------------------------------------------------------------

/** `ictimesync_data.flags` / `ictimesync_ref_data.flags`. */
export const TimesyncFlags = {
  PROBE: 0,
  /** Hard request to set the clock (first message after open, resume). */
  SYNC: 1,
  /** A sample the guest may use to discipline its clock. */
  SAMPLE: 2,
} as const;

/** 100 ns intervals between 1601-01-01 and 1970-01-01 (Linux `WLTIMEDELTA`). */
export const WLTIMEDELTA = 116_444_736_000_000_000n;

/** Converts Unix milliseconds (may be fractional) to 100 ns units since 1601 (FILETIME). */
export function filetimeFromUnixMs(ms: number): bigint {
  return WLTIMEDELTA + BigInt(Math.round(ms * 10_000));
}

/** `struct ictimesync_data` (message versions 1.0 and 3.0). */
export const TimesyncMessage = defineLayout("ictimesync_data", 25, {
  parentTime: { offset: 0, type: "u64" },
  childTime: { offset: 8, type: "u64" },
  roundTripTime: { offset: 16, type: "u64" },
  flags: { offset: 24, type: "u8" },
});

/** `struct ictimesync_ref_data` (message version 4.0). */
export const TimesyncRefMessage = defineLayout("ictimesync_ref_data", 22, {
  parentTime: { offset: 0, type: "u64" },
  vmReferenceTime: { offset: 8, type: "u64" },
  flags: { offset: 16, type: "u8" },
  leapFlags: { offset: 17, type: "u8" },
  stratum: { offset: 18, type: "u8" },
  reserved: { offset: 19, type: { bytes: 3 } },
});

// ---------------------------------------------------------------------------------------------
// KVP
// ---------------------------------------------------------------------------------------------

/** Key bytes (UTF-16LE, including the NUL terminator). */
export const HV_KVP_EXCHANGE_MAX_KEY_SIZE = 512;
/** Value bytes (UTF-16LE, including the NUL terminator). */
export const HV_KVP_EXCHANGE_MAX_VALUE_SIZE = 2048;

/** `hv_kvp_hdr.operation`. */
export const KvpOperation = {
  GET: 0,
  SET: 1,
  DELETE: 2,
  ENUMERATE: 3,
  GET_IP_INFO: 4,
  SET_IP_INFO: 5,
} as const;

/**
 * `hv_kvp_hdr.pool`. EXTERNAL: data the host gives the guest (`.kvp_pool_0`); GUEST: data
 * guest software publishes for the host; AUTO: intrinsic guest data the daemon generates (OS
 * name, FQDN, addresses; enumerate only); AUTO_EXTERNAL: host-provided intrinsic data (host
 * name, VM name); AUTO_INTERNAL: guest-internal intrinsic data.
 */
export const KvpPool = {
  EXTERNAL: 0,
  GUEST: 1,
  AUTO: 2,
  AUTO_EXTERNAL: 3,
  AUTO_INTERNAL: 4,
} as const;

/** Number of pools (`KVP_POOL_COUNT`). */
export const KVP_POOL_COUNT = 5;

/** Registry value types of `hv_kvp_exchg_msg_value.value_type`. */
export const KvpValueType = {
  SZ: 1,
  EXPAND_SZ: 2,
  U32: 4,
  U64: 8,
} as const;

/** `struct hv_kvp_hdr`. */
export const KvpHeader = defineLayout("hv_kvp_hdr", 4, {
  operation: { offset: 0, type: "u8" },
  pool: { offset: 1, type: "u8" },
  pad: { offset: 2, type: "u16" },
});

/** `struct hv_kvp_msg` for GET and SET: header, then `hv_kvp_exchg_msg_value`. */
export const KvpGetSetMessage = defineLayout("hv_kvp_msg (get/set)", 4 + 2572, {
  operation: { offset: 0, type: "u8" },
  pool: { offset: 1, type: "u8" },
  valueType: { offset: 4, type: "u32" },
  keySize: { offset: 8, type: "u32" },
  valueSize: { offset: 12, type: "u32" },
  key: { offset: 16, type: { bytes: HV_KVP_EXCHANGE_MAX_KEY_SIZE } },
  value: { offset: 528, type: { bytes: HV_KVP_EXCHANGE_MAX_VALUE_SIZE } },
});

/** `struct hv_kvp_msg` for ENUMERATE: header, index, then `hv_kvp_exchg_msg_value`. */
export const KvpEnumerateMessage = defineLayout("hv_kvp_msg (enumerate)", 4 + 4 + 2572, {
  operation: { offset: 0, type: "u8" },
  pool: { offset: 1, type: "u8" },
  index: { offset: 4, type: "u32" },
  valueType: { offset: 8, type: "u32" },
  keySize: { offset: 12, type: "u32" },
  valueSize: { offset: 16, type: "u32" },
  key: { offset: 20, type: { bytes: HV_KVP_EXCHANGE_MAX_KEY_SIZE } },
  value: { offset: 532, type: { bytes: HV_KVP_EXCHANGE_MAX_VALUE_SIZE } },
});

/** `struct hv_kvp_msg` for DELETE: header, `hv_kvp_msg_delete`. */
export const KvpDeleteMessage = defineLayout("hv_kvp_msg (delete)", 4 + 4 + 512, {
  operation: { offset: 0, type: "u8" },
  pool: { offset: 1, type: "u8" },
  keySize: { offset: 4, type: "u32" },
  key: { offset: 8, type: { bytes: HV_KVP_EXCHANGE_MAX_KEY_SIZE } },
});

/** `MAX_ADAPTER_ID_SIZE`, `MAX_IP_ADDR_SIZE`, `MAX_GATEWAY_SIZE` (UTF-16 units). */
export const KVP_ADAPTER_ID_UNITS = 128;
export const KVP_IP_ADDR_UNITS = 1024;
export const KVP_GATEWAY_UNITS = 512;

/**
 * `struct hv_kvp_ip_msg` (packed): the GET_IP_INFO request and answer. The host names the
 * adapter by MAC (`52:54:00:AB:CD:02`, upper case as `hv_kvp_daemon` compares it); the guest
 * answers with `;`-separated addresses, CIDR subnets, gateways and DNS servers.
 */
export const KvpIpInfoMessage = defineLayout("hv_kvp_ip_msg", 7428, {
  operation: { offset: 0, type: "u8" },
  pool: { offset: 1, type: "u8" },
  adapterId: { offset: 2, type: { bytes: KVP_ADAPTER_ID_UNITS * 2 } },
  addrFamily: { offset: 258, type: "u8" },
  dhcpEnabled: { offset: 259, type: "u8" },
  ipAddr: { offset: 260, type: { bytes: KVP_IP_ADDR_UNITS * 2 } },
  subNet: { offset: 2308, type: { bytes: KVP_IP_ADDR_UNITS * 2 } },
  gateway: { offset: 4356, type: { bytes: KVP_GATEWAY_UNITS * 2 } },
  dnsAddr: { offset: 5380, type: { bytes: KVP_IP_ADDR_UNITS * 2 } },
});

/** `addr_family` bits of `KvpIpInfoMessage` (`ADDR_FAMILY_IPV4`/`_IPV6`). */
export const KvpAddrFamily = { IPV4: 0x10, IPV6: 0x20 } as const;

/**
 * Body size the host sends for every KVP operation (the largest of get/set/enumerate/delete).
 * Linux answers in the host's own buffer (`recvlen` bytes), so the request must leave room for
 * the longest answer.
 */
export const KVP_MESSAGE_SIZE = KvpEnumerateMessage.size;

// ---------------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------------

const utf16Decoder = new TextDecoder("utf-16le");

/**
 * Encodes `text` as NUL-terminated UTF-16LE. Returns the bytes, or `undefined` when they (with
 * the terminator) exceed `maxBytes`.
 */
export function encodeUtf16z(text: string, maxBytes: number): Uint8Array | undefined {
  const bytes = (text.length + 1) * 2;
  if (bytes > maxBytes) return undefined;
  const out = new Uint8Array(bytes);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < text.length; i++) dv.setUint16(i * 2, text.charCodeAt(i), true);
  return out;
}

/**
 * Decodes UTF-16LE from the first `size` bytes of `bytes` (clamped to the buffer, an odd final
 * byte ignored), stopping at the first NUL. Never throws; unpaired surrogates become U+FFFD.
 */
export function decodeUtf16z(bytes: Uint8Array, size: number): string {
  const n = Math.max(0, Math.min(size, bytes.length)) & ~1;
  let end = 0;
  while (end < n && (bytes[end] !== 0 || bytes[end + 1] !== 0)) end += 2;
  return utf16Decoder.decode(bytes.subarray(0, end));
}

// ---------------------------------------------------------------------------------------------
// File copy (Linux drivers/hv/hv_fcopy.c, include/uapi/linux/hyperv.h; all structs packed)
// ---------------------------------------------------------------------------------------------

/** `enum hv_fcopy_op`. */
export const FcopyOperation = {
  START_FILE_COPY: 0,
  WRITE_TO_FILE: 1,
  COMPLETE_FCOPY: 2,
  CANCEL_FCOPY: 3,
} as const;

/** `copy_flags` of START_FILE_COPY. */
export const FcopyFlags = {
  OVER_WRITE: 1,
  CREATE_PATH: 2,
} as const;

/** `W_MAX_PATH`: UTF-16 units of each name field, terminator included. */
export const FCOPY_MAX_PATH = 260;
/** Data bytes in one WRITE_TO_FILE (`DATA_FRAGMENT`). */
export const FCOPY_DATA_FRAGMENT = 6 * 1024;

/** `struct hv_fcopy_hdr`: every file copy message starts with it. */
export const FcopyHeader = defineLayout("hv_fcopy_hdr", 36, {
  operation: { offset: 0, type: "u32" },
  serviceId0: { offset: 4, type: { bytes: 16 } },
  serviceId1: { offset: 20, type: { bytes: 16 } },
});

/** `struct hv_start_fcopy`: names as NUL-terminated UTF-16LE. */
export const StartFcopyMessage = defineLayout("hv_start_fcopy", 1088, {
  operation: { offset: 0, type: "u32" },
  fileName: { offset: 36, type: { bytes: FCOPY_MAX_PATH * 2 } },
  pathName: { offset: 556, type: { bytes: FCOPY_MAX_PATH * 2 } },
  copyFlags: { offset: 1076, type: "u32" },
  fileSize: { offset: 1080, type: "u64" },
});

/** `struct hv_do_fcopy`: one fragment at `offset`; sent whole, as Hyper-V does. */
export const DoFcopyMessage = defineLayout("hv_do_fcopy", 6196, {
  operation: { offset: 0, type: "u32" },
  offset: { offset: 40, type: "u64" },
  size: { offset: 48, type: "u32" },
  data: { offset: 52, type: { bytes: FCOPY_DATA_FRAGMENT } },
});

// ---------------------------------------------------------------------------------------------
// VSS (Linux drivers/hv/hv_snapshot.c, tools/hv/hv_vss_daemon.c)
// ---------------------------------------------------------------------------------------------

/** `hv_vss_msg` operations. */
export const VssOperation = {
  CREATE: 0,
  DELETE: 1,
  HOT_BACKUP: 2,
  GET_DM_INFO: 3,
  BU_COMPLETE: 4,
  FREEZE: 5,
  THAW: 6,
  AUTO_RECOVER: 7,
} as const;

/** `struct hv_vss_msg` as the host sends it (operation, reserved, flags). */
export const VssMessage = defineLayout("hv_vss_msg", 12, {
  operation: { offset: 0, type: "u8" },
  flags: { offset: 8, type: "u32" },
});
