/**
 * RFB 3.8 (RFC 6143) wire constants and layouts. No I/O; sizes pinned by
 * `tests/unit/console/rfb_test.ts`.
 * @module
 */
import { defineLayout } from "../util/layout.ts";

/** The version string the server sends and the clients it accepts. */
export const RFB_VERSION_3_8 = "RFB 003.008\n";

/** Security types. */
export const SecurityType = { INVALID: 0, NONE: 1, VNC_AUTH: 2 } as const;

/** Client-to-server message types (an open enum). */
export const ClientMessage = {
  SET_PIXEL_FORMAT: 0,
  SET_ENCODINGS: 2,
  FRAMEBUFFER_UPDATE_REQUEST: 3,
  KEY_EVENT: 4,
  POINTER_EVENT: 5,
  CLIENT_CUT_TEXT: 6,
  /** QEMU client messages (extended key event is submessage 0). */
  QEMU: 255,
} as const;

/** Server-to-client message types. */
export const ServerMessage = {
  FRAMEBUFFER_UPDATE: 0,
  SET_COLOUR_MAP_ENTRIES: 1,
  BELL: 2,
  SERVER_CUT_TEXT: 3,
} as const;

/** Encodings and pseudo-encodings (i32). */
export const Encoding = {
  RAW: 0,
  COPY_RECT: 1,
  ZRLE: 16,
  CURSOR: -239,
  DESKTOP_SIZE: -223,
  /** QEMU extended key event: the client sends scan codes along with keysyms. */
  QEMU_EXTENDED_KEY_EVENT: -258,
} as const;

/** PIXEL_FORMAT (16 bytes). */
export const PixelFormatLayout = defineLayout("PIXEL_FORMAT", 16, {
  bitsPerPixel: { offset: 0, type: "u8" },
  depth: { offset: 1, type: "u8" },
  bigEndian: { offset: 2, type: "u8" },
  trueColour: { offset: 3, type: "u8" },
  // The maxima and the whole of RFB are big-endian: read with `be16`.
  redMax: { offset: 4, type: "u16" },
  greenMax: { offset: 6, type: "u16" },
  blueMax: { offset: 8, type: "u16" },
  redShift: { offset: 10, type: "u8" },
  greenShift: { offset: 11, type: "u8" },
  blueShift: { offset: 12, type: "u8" },
});

/** Bytes of each fixed-size client message, including its type byte (0: variable). */
export const CLIENT_MESSAGE_SIZE: Readonly<Record<number, number>> = {
  [ClientMessage.SET_PIXEL_FORMAT]: 20,
  [ClientMessage.SET_ENCODINGS]: 4, // + 4 per encoding
  [ClientMessage.FRAMEBUFFER_UPDATE_REQUEST]: 10,
  [ClientMessage.KEY_EVENT]: 8,
  [ClientMessage.POINTER_EVENT]: 6,
  [ClientMessage.CLIENT_CUT_TEXT]: 8, // + length
  [ClientMessage.QEMU]: 2, // + submessage
};

/** A pixel format as RFB describes it. */
export interface PixelFormat {
  bitsPerPixel: number;
  depth: number;
  bigEndian: boolean;
  trueColour: boolean;
  redMax: number;
  greenMax: number;
  blueMax: number;
  redShift: number;
  greenShift: number;
  blueShift: number;
}

/** The server's own format: 32 bpp, depth 24, little-endian XRGB8888 (the framebuffer's). */
export const NATIVE_PIXEL_FORMAT: PixelFormat = {
  bitsPerPixel: 32,
  depth: 24,
  bigEndian: false,
  trueColour: true,
  redMax: 255,
  greenMax: 255,
  blueMax: 255,
  redShift: 16,
  greenShift: 8,
  blueShift: 0,
};

/** Encodes `f` as PIXEL_FORMAT (big-endian maxima) into 16 bytes at `at` of `out`. */
export function writePixelFormat(f: PixelFormat, out: Uint8Array, at: number): void {
  const dv = new DataView(out.buffer, out.byteOffset + at, 16);
  dv.setUint8(0, f.bitsPerPixel);
  dv.setUint8(1, f.depth);
  dv.setUint8(2, f.bigEndian ? 1 : 0);
  dv.setUint8(3, f.trueColour ? 1 : 0);
  dv.setUint16(4, f.redMax);
  dv.setUint16(6, f.greenMax);
  dv.setUint16(8, f.blueMax);
  dv.setUint8(10, f.redShift);
  dv.setUint8(11, f.greenShift);
  dv.setUint8(12, f.blueShift);
}

/** Decodes PIXEL_FORMAT, or a reason it cannot be served. */
export function readPixelFormat(b: Uint8Array, at: number): PixelFormat | string {
  const dv = new DataView(b.buffer, b.byteOffset + at, 16);
  const f: PixelFormat = {
    bitsPerPixel: dv.getUint8(0),
    depth: dv.getUint8(1),
    bigEndian: dv.getUint8(2) !== 0,
    trueColour: dv.getUint8(3) !== 0,
    redMax: dv.getUint16(4),
    greenMax: dv.getUint16(6),
    blueMax: dv.getUint16(8),
    redShift: dv.getUint8(10),
    greenShift: dv.getUint8(11),
    blueShift: dv.getUint8(12),
  };
  if (![8, 16, 32].includes(f.bitsPerPixel)) return `bits-per-pixel ${f.bitsPerPixel}`;
  if (!f.trueColour) return f.bitsPerPixel === 8 ? f : "colour map above 8 bits per pixel";
  for (
    const [max, shift] of [[f.redMax, f.redShift], [f.greenMax, f.greenShift], [
      f.blueMax,
      f.blueShift,
    ]] as const
  ) {
    if (max === 0 || (max & (max + 1)) !== 0) return `colour maximum ${max}`;
    if (shift + Math.log2(max + 1) > f.bitsPerPixel) return `colour shift ${shift}`;
  }
  return f;
}
