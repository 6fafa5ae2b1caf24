/**
 * Synthetic video (`VmbusDevice` + `FramebufferSource`) for Linux `hyperv_drm` and Windows: the
 * guest negotiates a version (3.5 under VMBus 5.x, also 3.2/3.0), asks for the resolutions,
 * places the VRAM in the VMBus MMIO space (VRAM_LOCATION: the host maps its VRAM memory there
 * before acknowledging), describes the mode (SITUATION_UPDATE), draws into VRAM and reports
 * dirty rectangles (DIRT, once the host asked for them with FEATURE_CHANGE).
 *
 * The frame front ends read is a view of the VRAM at the guest's offset, pitch and size, checked
 * to lie inside the VRAM; a mode or dirty rectangle that does not is ignored (counted, logged
 * rate-limited) and the channel goes on.
 * @module
 */
import { getLogger, rateLimited } from "../../util/log.ts";
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import { OfferFlags, VmPacketType } from "../../vmbus/protocol.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import {
  BODY,
  CURSOR_COMPLETE,
  CURSOR_MAX,
  Dirt,
  DirtRect,
  FeatureChange,
  MAX_RESOLUTIONS,
  PIPE_MSG_DATA,
  PointerShape,
  ResolutionRequest,
  ResolutionResponse,
  SituationUpdate,
  SituationUpdateAck,
  SYNTHVID_CLASS_ID,
  SYNTHVID_INSTANCE_ID,
  SynthvidHeader,
  SynthvidMessage,
  SynthvidVersion,
  VersionRequest,
  VersionResponse,
  VramLocation,
  VramLocationAck,
} from "./protocol.ts";

/** A rectangle in pixels (structurally the console layer's `Rect`). */
export interface VideoRect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** One frame: `height` rows of `stride` bytes, 4-byte B, G, R, X pixels. */
export interface VideoFrame {
  readonly width: number;
  readonly height: number;
  readonly stride: number;
  readonly data: Uint8Array;
}

/** A pointer image (structurally the console layer's `CursorImage`). */
export interface VideoCursor {
  readonly width: number;
  readonly height: number;
  readonly hotX: number;
  readonly hotY: number;
  readonly pixels: Uint8Array;
  readonly mask: Uint8Array;
}

/** What the device reports to front ends (the console layer's `DisplayChange`). */
export type VideoChange =
  | { readonly kind: "damage"; readonly rect: VideoRect }
  | { readonly kind: "resize" }
  | { readonly kind: "cursor" };

/** The VRAM: host memory the VMM maps into the guest where the guest asks. */
export interface Vram {
  /** The VRAM bytes (`mmioMegabytes` MiB). */
  readonly bytes: Uint8Array;
  /** Maps the VRAM at guest physical `gpa` (moving it if mapped elsewhere); false to refuse. */
  map(gpa: number): boolean;
}

/** Options of `Synthvid`. */
export interface SynthvidOptions {
  readonly vram: Vram;
  /** Instance id (default Hyper-V's). */
  readonly instanceId?: string;
  /** Resolution offered as the default (must fit the VRAM); default 1024×768. */
  readonly defaultResolution?: { width: number; height: number };
}

/** Counters. */
export interface SynthvidStats {
  dirtRects: number;
  modeChanges: number;
  malformed: number;
}

/** Modes offered besides the default, largest last. */
const MODES: readonly [number, number][] = [
  [800, 600],
  [1024, 768],
  [1152, 864],
  [1280, 720],
  [1280, 1024],
  [1440, 900],
  [1600, 1200],
  [1920, 1080],
];

const EMPTY = new Uint8Array(0);

function pipeUserDefined(): Uint8Array {
  const ud = new Uint8Array(4);
  ud[0] = 4; // VMBUS_PIPE_TYPE_MESSAGE
  return ud;
}

/** Builds one synthvid packet. */
export function synthvidPacket(type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(BODY + body.length);
  SynthvidHeader.encode(
    { pipeType: PIPE_MSG_DATA, pipeSize: 8 + body.length, type, size: 8 + body.length },
    out,
  );
  out.set(body, BODY);
  return out;
}

/** The synthetic video device. */
export class Synthvid implements VmbusDevice {
  /** @inheritdoc */
  readonly classId = SYNTHVID_CLASS_ID;
  /** @inheritdoc */
  readonly instanceId: string;
  /** @inheritdoc */
  readonly name = "synthvid";
  /** @inheritdoc */
  readonly channelFlags = OfferFlags.NAMED_PIPE_MODE;
  /** @inheritdoc */
  readonly userDefined = pipeUserDefined();
  /** @inheritdoc */
  readonly mmioMegabytes: number;
  /** Counters. */
  readonly stats: SynthvidStats = { dirtRects: 0, modeChanges: 0, malformed: 0 };
  readonly #vram: Vram;
  readonly #default: { width: number; height: number };
  #version = 0;
  #vramGpa: number | undefined;
  #frame: VideoFrame;
  #active = false;
  #cursor: VideoCursor | undefined;
  readonly #listeners = new Set<(c: VideoChange) => void>();
  readonly #log = getLogger("dev", "synthvid");
  readonly #warn = rateLimited();

  /** A device over `options.vram`. */
  constructor(options: SynthvidOptions) {
    this.#vram = options.vram;
    this.instanceId = options.instanceId ?? SYNTHVID_INSTANCE_ID;
    this.mmioMegabytes = Math.max(1, Math.floor(this.#vram.bytes.length / (1 << 20)));
    const d = options.defaultResolution ?? { width: 1024, height: 768 };
    this.#default = d.width * d.height * 4 <= this.#vram.bytes.length
      ? d
      : { width: 640, height: 480 };
    this.#frame = this.#frameOf(
      0,
      this.#default.width,
      this.#default.height,
      this.#default.width * 4,
    );
  }

  /** Negotiated version (0 before). */
  get version(): number {
    return this.#version;
  }

  /** Where the guest put the VRAM (undefined before VRAM_LOCATION). */
  get vramGpa(): number | undefined {
    return this.#vramGpa;
  }

  /** True once the guest described an active mode: its driver owns the screen. */
  get active(): boolean {
    return this.#active;
  }

  /** The current frame (a view of the VRAM). */
  frame(): VideoFrame {
    return this.#frame;
  }

  /** The guest's pointer image, if it sent one. */
  cursor(): VideoCursor | undefined {
    return this.#cursor;
  }

  /** Calls `listener` for damage, mode and pointer changes. */
  subscribe(listener: (c: VideoChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** @inheritdoc */
  onOpen(_channel: Channel): boolean {
    this.#version = 0;
    return true;
  }

  /** @inheritdoc */
  onClose(_channel: Channel): void {
    this.#version = 0;
    if (this.#active) {
      this.#active = false;
      this.#emit({ kind: "resize" });
    }
  }

  /** @inheritdoc */
  onPacket(channel: Channel, packet: RingPacket): boolean | void {
    if (packet.type === VmPacketType.COMP) return;
    const len = packet.payloadLength;
    if (packet.type !== VmPacketType.DATA_INBAND || len < BODY) {
      return this.#malformed(`packet type ${packet.type}, ${len} bytes`);
    }
    const data = packet.data;
    const at = packet.payloadOffset;
    if (SynthvidHeader.get(data, at, "pipeType") !== PIPE_MSG_DATA) return;
    const type = SynthvidHeader.get(data, at, "type");
    const body = data.subarray(at + BODY, at + len);
    switch (type) {
      case SynthvidMessage.VERSION_REQUEST:
        return this.#version_(channel, body);
      case SynthvidMessage.RESOLUTION_REQUEST:
        return this.#resolutions(channel, body);
      case SynthvidMessage.VRAM_LOCATION:
        return this.#vramLocation(channel, body);
      case SynthvidMessage.SITUATION_UPDATE:
        return this.#situation(channel, body);
      case SynthvidMessage.DIRT:
        return this.#dirt(body);
      case SynthvidMessage.POINTER_SHAPE:
        return this.#pointerShape(body);
      case SynthvidMessage.POINTER_POSITION:
      case SynthvidMessage.BIOS_INFO_REQUEST:
        return; // the host draws no pointer of its own; no BIOS info to give
      default:
        return this.#malformed(`unknown message type ${type}`);
    }
  }

  #version_(channel: Channel, body: Uint8Array): boolean | void {
    if (body.length < VersionRequest.size) return this.#malformed("short version request");
    const v = VersionRequest.get(body, 0, "version");
    const ok = v === SynthvidVersion.WIN10 || v === SynthvidVersion.WIN8 ||
      v === SynthvidVersion.WIN7;
    const answer = synthvidPacket(
      SynthvidMessage.VERSION_RESPONSE,
      VersionResponse.encode({ version: v, isAccepted: ok ? 1 : 0, maxVideoOutputs: 1 }),
    );
    if (!channel.send(answer)) return false;
    if (ok) this.#version = v;
  }

  #resolutions(channel: Channel, body: Uint8Array): boolean | void {
    if (body.length < ResolutionRequest.size) return this.#malformed("short resolution request");
    const max = Math.min(MAX_RESOLUTIONS, ResolutionRequest.get(body, 0, "maximumResolutionCount"));
    const fits = MODES.filter(([w, h]) => w * h * 4 <= this.#vram.bytes.length);
    const d = this.#default;
    if (!fits.some(([w, h]) => w === d.width && h === d.height)) fits.unshift([d.width, d.height]);
    const list = fits.slice(0, Math.max(1, max));
    let index = list.findIndex(([w, h]) => w === d.width && h === d.height);
    if (index < 0) index = 0;
    const out = new Uint8Array(ResolutionResponse.size + 4 * list.length);
    ResolutionResponse.encode({
      resolutionCount: list.length,
      defaultResolutionIndex: index,
      isStandard: 0,
    }, out);
    const dv = new DataView(out.buffer);
    list.forEach(([w, h], i) => {
      dv.setUint16(ResolutionResponse.size + i * 4, w, true);
      dv.setUint16(ResolutionResponse.size + i * 4 + 2, h, true);
    });
    if (!channel.send(synthvidPacket(SynthvidMessage.RESOLUTION_RESPONSE, out))) return false;
  }

  #vramLocation(channel: Channel, body: Uint8Array): boolean | void {
    if (body.length < VramLocation.size) return this.#malformed("short VRAM location");
    const ctx = VramLocation.get(body, 0, "userCtx");
    const specified = VramLocation.get(body, 0, "isVramGpaSpecified") !== 0;
    const gpa = VramLocation.get(body, 0, "vramGpa");
    let ack = ctx;
    if (specified) {
      const ok = gpa % 4096n === 0n && gpa < 1n << 52n && this.#vram.map(Number(gpa));
      if (ok) {
        this.#vramGpa = Number(gpa);
        this.#log.info("VRAM mapped at 0x{gpa} ({mib} MiB)", {
          gpa: gpa.toString(16),
          mib: this.#vram.bytes.length >> 20,
        });
      } else {
        ack = ~ctx & 0xffff_ffff_ffff_ffffn; // not echoed: the guest sees the refusal
        this.#malformed(`VRAM location 0x${gpa.toString(16)} refused`);
      }
    }
    const answer = synthvidPacket(
      SynthvidMessage.VRAM_LOCATION_ACK,
      VramLocationAck.encode({ userCtx: ack }),
    );
    if (!channel.send(answer)) return false;
    // Ask for dirty rectangles: without them Linux never says what it drew.
    channel.send(synthvidPacket(
      SynthvidMessage.FEATURE_CHANGE,
      FeatureChange.encode({
        isDirtNeeded: 1,
        isPtrPosNeeded: 0,
        isPtrShapeNeeded: 0,
        isSituNeeded: 1,
      }),
    ));
  }

  #situation(channel: Channel, body: Uint8Array): boolean | void {
    if (body.length < SituationUpdate.size) return this.#malformed("short situation update");
    const s = SituationUpdate.decode(body)!;
    const ackPacket = synthvidPacket(
      SynthvidMessage.SITUATION_UPDATE_ACK,
      SituationUpdateAck.encode({ userCtx: s.userCtx }),
    );
    if (!channel.send(ackPacket)) return false;
    if (s.videoOutputCount < 1) return this.#malformed("situation update without an output");
    const w = s.widthPixels, h = s.heightPixels, pitch = s.pitchBytes, off = s.vramOffset;
    const size = this.#vram.bytes.length;
    const fits = s.depthBits === 32 && w >= 1 && h >= 1 && w <= 8192 && h <= 8192 &&
      pitch >= w * 4 && off + pitch * (h - 1) + w * 4 <= size;
    if (!fits) {
      return this.#malformed(
        `mode ${w}x${h}x${s.depthBits} pitch ${pitch} at ${off} does not fit the VRAM`,
      );
    }
    this.#frame = this.#frameOf(off, w, h, pitch);
    this.#active = s.active !== 0;
    this.stats.modeChanges++;
    this.#log.info("guest mode {w}x{h}, pitch {pitch}, offset {off}", { w, h, pitch, off });
    this.#emit({ kind: "resize" });
  }

  #dirt(body: Uint8Array): void {
    if (body.length < Dirt.size) return this.#malformed("short dirt");
    const count = Dirt.get(body, 0, "dirtCount");
    if (Dirt.size + count * DirtRect.size > body.length) {
      return this.#malformed(`dirt with ${count} rectangles in ${body.length} bytes`);
    }
    const f = this.#frame;
    for (let i = 0; i < count; i++) {
      const r = DirtRect.decode(body, Dirt.size + i * DirtRect.size)!;
      const x1 = Math.max(0, r.x1), y1 = Math.max(0, r.y1);
      const x2 = Math.min(f.width, r.x2), y2 = Math.min(f.height, r.y2);
      if (x2 <= x1 || y2 <= y1) continue;
      this.stats.dirtRects++;
      if (this.stats.dirtRects <= 40) {
        let lit = 0;
        for (let y = y1; y < y2; y++) {
          for (let x = x1 * 4; x < x2 * 4; x++) if (f.data[y * f.stride + x]) lit++;
        }
        this.#log.info("dirt {x1},{y1}-{x2},{y2}: {lit} non-zero bytes in VRAM", {
          x1,
          y1,
          x2,
          y2,
          lit,
        });
      }
      this.#emit({ kind: "damage", rect: { x: x1, y: y1, width: x2 - x1, height: y2 - y1 } });
    }
  }

  #pointerShape(body: Uint8Array): void {
    if (body.length < PointerShape.size) return this.#malformed("short pointer shape");
    const s = PointerShape.decode(body)!;
    if (s.partIdx !== CURSOR_COMPLETE || !s.isArgb) return; // multi-part shapes: not drawn
    const { width, height } = s;
    if (width < 1 || height < 1 || width > CURSOR_MAX || height > CURSOR_MAX) {
      return this.#malformed(`pointer shape ${width}x${height}`);
    }
    const need = width * height * 4;
    if (PointerShape.size + need > body.length) return this.#malformed("pointer shape data short");
    const argb = body.subarray(PointerShape.size, PointerShape.size + need);
    const rowMask = Math.ceil(width / 8);
    const mask = new Uint8Array(rowMask * height);
    for (let i = 0; i < width * height; i++) {
      if (argb[i * 4 + 3]! >= 0x80) {
        mask[Math.floor(i / width) * rowMask + ((i % width) >> 3)]! |= 0x80 >> (i % width & 7);
      }
    }
    this.#cursor = {
      width,
      height,
      hotX: Math.min(s.hotX, width - 1),
      hotY: Math.min(s.hotY, height - 1),
      pixels: argb.slice(),
      mask,
    };
    this.#emit({ kind: "cursor" });
  }

  #frameOf(offset: number, width: number, height: number, stride: number): VideoFrame {
    const bytes = this.#vram.bytes;
    const end = Math.min(bytes.length, offset + stride * height);
    return { width, height, stride, data: end > offset ? bytes.subarray(offset, end) : EMPTY };
  }

  #emit(c: VideoChange): void {
    for (const l of this.#listeners) l(c);
  }

  #malformed(what: string): void {
    this.stats.malformed++;
    this.#warn((n) =>
      this.#log.warning("synthvid: ignored a guest message: {what}{more}", {
        what,
        more: n > 0 ? ` (${n} similar suppressed)` : "",
      })
    );
  }
}
