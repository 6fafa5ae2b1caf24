/**
 * Synthetic video on VMBus (Linux `hyperv_drm`, Windows' in-box driver): `protocol.ts` holds the
 * wire format, `synthvid.ts` the device, which is also the framebuffer source front ends read.
 * @module
 */
export * from "./protocol.ts";
export {
  Synthvid,
  type SynthvidOptions,
  synthvidPacket,
  type SynthvidStats,
  type VideoChange,
  type VideoCursor,
  type VideoFrame,
  type VideoRect,
  type Vram,
} from "./synthvid.ts";
