/**
 * synthvid wire format: the synthetic video device that Linux `hyperv_drm`
 * (drivers/gpu/drm/hyperv/hyperv_drm_proto.c) and Windows' in-box driver talk to. Every message
 * is a pipe header `{u32 type = DATA, u32 size}` then a synthvid header `{u32 type, u32 size}`
 * (Linux puts 8 + body in both sizes) then the body, all packed. Layouts and constants only;
 * sizes pinned by `tests/unit/devices/video/synthvid_test.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";

/** VMBus class id of synthetic video (`HV_SYNTHVID_GUID`). */
export const SYNTHVID_CLASS_ID = "da0a7802-e377-4aac-8e77-0558eb1073f8";
/** Instance id Hyper-V gives the video device. */
export const SYNTHVID_INSTANCE_ID = "5620e0c7-8062-4dce-aeb7-520c7ef76171";

/** `SYNTHVID_VERSION(major, minor)`: minor in the high half. */
export function synthvidVersion(major: number, minor: number): number {
  return ((minor << 16) | major) >>> 0;
}

/** Versions: 3.0 (Win7), 3.2 (Win8), 3.5 (Win10, what Linux 6.1 asks under VMBus 5.x). */
export const SynthvidVersion = {
  WIN7: synthvidVersion(3, 0),
  WIN8: synthvidVersion(3, 2),
  WIN10: synthvidVersion(3, 5),
} as const;

/** Pipe message type of every synthvid packet. */
export const PIPE_MSG_DATA = 1;

/** Message types (open enum). */
export const SynthvidMessage = {
  ERROR: 0,
  VERSION_REQUEST: 1,
  VERSION_RESPONSE: 2,
  VRAM_LOCATION: 3,
  VRAM_LOCATION_ACK: 4,
  SITUATION_UPDATE: 5,
  SITUATION_UPDATE_ACK: 6,
  POINTER_POSITION: 7,
  POINTER_SHAPE: 8,
  FEATURE_CHANGE: 9,
  DIRT: 10,
  BIOS_INFO_REQUEST: 11,
  BIOS_INFO_RESPONSE: 12,
  RESOLUTION_REQUEST: 13,
  RESOLUTION_RESPONSE: 14,
} as const;

/** Pipe header + synthvid header. */
export const SynthvidHeader = defineLayout("pipe_msg_hdr+synthvid_msg_hdr", 16, {
  pipeType: { offset: 0, type: "u32" },
  pipeSize: { offset: 4, type: "u32" },
  type: { offset: 8, type: "u32" },
  size: { offset: 12, type: "u32" },
});

/** Offset of a message body. */
export const BODY = SynthvidHeader.size;

/** `synthvid_version_req`. */
export const VersionRequest = defineLayout("synthvid_version_req", 4, {
  version: { offset: 0, type: "u32" },
});

/** `synthvid_version_resp`. */
export const VersionResponse = defineLayout("synthvid_version_resp", 6, {
  version: { offset: 0, type: "u32" },
  isAccepted: { offset: 4, type: "u8" },
  maxVideoOutputs: { offset: 5, type: "u8" },
});

/** `synthvid_vram_location` (guest → host). */
export const VramLocation = defineLayout("synthvid_vram_location", 17, {
  userCtx: { offset: 0, type: "u64" },
  isVramGpaSpecified: { offset: 8, type: "u8" },
  vramGpa: { offset: 9, type: "u64" },
});

/** `synthvid_vram_location_ack` (must echo `userCtx`). */
export const VramLocationAck = defineLayout("synthvid_vram_location_ack", 8, {
  userCtx: { offset: 0, type: "u64" },
});

/** `synthvid_situation_update` with its one `video_output_situation`. */
export const SituationUpdate = defineLayout("synthvid_situation_update", 27, {
  userCtx: { offset: 0, type: "u64" },
  videoOutputCount: { offset: 8, type: "u8" },
  active: { offset: 9, type: "u8" },
  vramOffset: { offset: 10, type: "u32" },
  depthBits: { offset: 14, type: "u8" },
  widthPixels: { offset: 15, type: "u32" },
  heightPixels: { offset: 19, type: "u32" },
  pitchBytes: { offset: 23, type: "u32" },
});

/** `synthvid_situation_update_ack`. */
export const SituationUpdateAck = defineLayout("synthvid_situation_update_ack", 8, {
  userCtx: { offset: 0, type: "u64" },
});

/** `synthvid_pointer_position`. */
export const PointerPosition = defineLayout("synthvid_pointer_position", 10, {
  isVisible: { offset: 0, type: "u8" },
  videoOutput: { offset: 1, type: "u8" },
  imageX: { offset: 2, type: "i32" },
  imageY: { offset: 6, type: "i32" },
});

/** `synthvid_pointer_shape` header; ARGB data follows at offset 18. */
export const PointerShape = defineLayout("synthvid_pointer_shape", 18, {
  partIdx: { offset: 0, type: "u8" },
  isArgb: { offset: 1, type: "u8" },
  width: { offset: 2, type: "u32" },
  height: { offset: 6, type: "u32" },
  hotX: { offset: 10, type: "u32" },
  hotY: { offset: 14, type: "u32" },
});

/** `part_idx` of a shape sent in one piece. */
export const CURSOR_COMPLETE = 0xff;
/** Largest pointer image edge. */
export const CURSOR_MAX = 96;

/** `synthvid_feature_change` (host → guest). */
export const FeatureChange = defineLayout("synthvid_feature_change", 4, {
  isDirtNeeded: { offset: 0, type: "u8" },
  isPtrPosNeeded: { offset: 1, type: "u8" },
  isPtrShapeNeeded: { offset: 2, type: "u8" },
  isSituNeeded: { offset: 3, type: "u8" },
});

/** `synthvid_dirt` header; `count` rects of 16 bytes follow at offset 2. */
export const Dirt = defineLayout("synthvid_dirt", 2, {
  videoOutput: { offset: 0, type: "u8" },
  dirtCount: { offset: 1, type: "u8" },
});

/** One dirty rectangle: corners, right and bottom exclusive. */
export const DirtRect = defineLayout("rect", 16, {
  x1: { offset: 0, type: "i32" },
  y1: { offset: 4, type: "i32" },
  x2: { offset: 8, type: "i32" },
  y2: { offset: 12, type: "i32" },
});

/** `synthvid_supported_resolution_req`. */
export const ResolutionRequest = defineLayout("synthvid_supported_resolution_req", 1, {
  maximumResolutionCount: { offset: 0, type: "u8" },
});

/** Fixed part of `synthvid_supported_resolution_resp`; `{u16 w, u16 h}[count]` follows. */
export const ResolutionResponse = defineLayout("synthvid_supported_resolution_resp", 131, {
  edid: { offset: 0, type: { bytes: 128 } },
  resolutionCount: { offset: 128, type: "u8" },
  defaultResolutionIndex: { offset: 129, type: "u8" },
  isStandard: { offset: 130, type: "u8" },
});

/** Most resolutions a response lists. */
export const MAX_RESOLUTIONS = 64;
