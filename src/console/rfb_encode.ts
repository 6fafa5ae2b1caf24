/**
 * RFB rectangle encoders over XRGB8888 frames: pixels converted to the client's format, Raw,
 * the tile data of ZRLE (before zlib, which the connection's stream adds), and the cursor
 * pseudo-encoding. Pure functions of their inputs.
 * @module
 */
import type { CursorImage, Framebuffer, Rect } from "./framebuffer.ts";
import type { PixelFormat } from "./rfb_protocol.ts";

/** ZRLE tile edge. */
const TILE = 64;

/** The 8-bit colour map this server installs for colour-map clients: BGR233. */
export const COLOUR_MAP_233: PixelFormat = {
  bitsPerPixel: 8,
  depth: 8,
  bigEndian: false,
  trueColour: true,
  redMax: 7,
  greenMax: 7,
  blueMax: 3,
  redShift: 5,
  greenShift: 2,
  blueShift: 0,
};

/** Converts and writes pixels in one client's format. */
export class PixelEncoder {
  /** Bytes of a PIXEL. */
  readonly bytesPerPixel: number;
  /** Bytes of a ZRLE CPIXEL. */
  readonly cpixelBytes: number;
  /** First byte of a PIXEL's encoding that a CPIXEL keeps. */
  readonly #cpixelFrom: number;
  readonly #bigEndian: boolean;
  readonly #r = new Uint32Array(256);
  readonly #g = new Uint32Array(256);
  readonly #b = new Uint32Array(256);
  /** Client format equals the frame's bytes (a copy does). */
  readonly native: boolean;

  /** An encoder for `format` (a colour-map format must be given as `COLOUR_MAP_233`). */
  constructor(format: PixelFormat) {
    this.bytesPerPixel = format.bitsPerPixel >> 3;
    this.#bigEndian = format.bigEndian && this.bytesPerPixel > 1;
    for (let v = 0; v < 256; v++) {
      this.#r[v] = (Math.round(v * format.redMax / 255) << format.redShift) >>> 0;
      this.#g[v] = (Math.round(v * format.greenMax / 255) << format.greenShift) >>> 0;
      this.#b[v] = (Math.round(v * format.blueMax / 255) << format.blueShift) >>> 0;
    }
    const colours = ((format.redMax << format.redShift) | (format.greenMax << format.greenShift) |
      (format.blueMax << format.blueShift)) >>> 0;
    this.cpixelBytes = this.bytesPerPixel;
    this.#cpixelFrom = 0;
    if (format.trueColour && format.bitsPerPixel === 32 && format.depth <= 24) {
      if ((colours & 0xff000000) === 0) {
        this.cpixelBytes = 3;
        this.#cpixelFrom = this.#bigEndian ? 1 : 0; // least significant 3 bytes
      } else if ((colours & 0xff) === 0) {
        this.cpixelBytes = 3;
        this.#cpixelFrom = this.#bigEndian ? 0 : 1; // most significant 3 bytes
      }
    }
    this.native = this.bytesPerPixel === 4 && !this.#bigEndian && format.redShift === 16 &&
      format.greenShift === 8 && format.blueShift === 0 && format.redMax === 255 &&
      format.greenMax === 255 && format.blueMax === 255;
  }

  /** The client pixel value of an 0xRRGGBB colour. */
  convert(rgb: number): number {
    return (this.#r[(rgb >> 16) & 0xff]! | this.#g[(rgb >> 8) & 0xff]! | this.#b[rgb & 0xff]!) >>>
      0;
  }

  /** Writes a PIXEL; returns the offset after it. */
  writePixel(out: Uint8Array, at: number, value: number): number {
    const n = this.bytesPerPixel;
    for (let i = 0; i < n; i++) {
      const shift = this.#bigEndian ? (n - 1 - i) * 8 : i * 8;
      out[at + i] = (value >>> shift) & 0xff;
    }
    return at + n;
  }

  /** Writes a CPIXEL; returns the offset after it. */
  writeCpixel(out: Uint8Array, at: number, value: number): number {
    if (this.cpixelBytes === this.bytesPerPixel) return this.writePixel(out, at, value);
    const from = this.#cpixelFrom;
    for (let i = 0; i < 3; i++) {
      const k = from + i;
      const shift = this.#bigEndian ? (3 - k) * 8 : k * 8;
      out[at + i] = (value >>> shift) & 0xff;
    }
    return at + 3;
  }
}

/** The 0xRRGGBB colour of pixel (x, y). */
function rgbAt(fb: Framebuffer, x: number, y: number): number {
  const d = fb.data;
  const i = y * fb.stride + x * 4;
  return d[i]! | (d[i + 1]! << 8) | (d[i + 2]! << 16);
}

/** Raw encoding of `r` (the rectangle's pixels, row by row). */
export function encodeRaw(fb: Framebuffer, r: Rect, enc: PixelEncoder): Uint8Array {
  const bpp = enc.bytesPerPixel;
  const out = new Uint8Array(r.width * r.height * bpp);
  if (enc.native) {
    for (let y = 0; y < r.height; y++) {
      const from = (r.y + y) * fb.stride + r.x * 4;
      out.set(fb.data.subarray(from, from + r.width * 4), y * r.width * 4);
    }
    return out;
  }
  let at = 0;
  for (let y = r.y; y < r.y + r.height; y++) {
    for (let x = r.x; x < r.x + r.width; x++) {
      at = enc.writePixel(out, at, enc.convert(rgbAt(fb, x, y)));
    }
  }
  return out;
}

function runLengthBytes(len: number): number {
  return Math.floor((len - 1) / 255) + 1;
}

function writeRunLength(out: Uint8Array, at: number, len: number): number {
  let rest = len - 1;
  while (rest >= 255) {
    out[at++] = 255;
    rest -= 255;
  }
  out[at++] = rest;
  return at;
}

/**
 * The ZRLE data of `r` before compression: 64×64 tiles, each solid, packed palette, plain RLE,
 * palette RLE or raw, whichever is smallest.
 */
export function encodeZrleTiles(fb: Framebuffer, r: Rect, enc: PixelEncoder): Uint8Array {
  const cp = enc.cpixelBytes;
  const tiles = Math.ceil(r.width / TILE) * Math.ceil(r.height / TILE);
  const out = new Uint8Array(tiles + r.width * r.height * cp);
  const px = new Uint32Array(TILE * TILE);
  const runValue = new Uint32Array(TILE * TILE);
  const runLen = new Uint32Array(TILE * TILE);
  const palette = new Map<number, number>();
  let at = 0;
  for (let ty = r.y; ty < r.y + r.height; ty += TILE) {
    const th = Math.min(TILE, r.y + r.height - ty);
    for (let tx = r.x; tx < r.x + r.width; tx += TILE) {
      const tw = Math.min(TILE, r.x + r.width - tx);
      const n = tw * th;
      palette.clear();
      let runs = 0;
      let k = 0;
      for (let y = 0; y < th; y++) {
        for (let x = 0; x < tw; x++, k++) {
          const v = enc.convert(rgbAt(fb, tx + x, ty + y));
          px[k] = v;
          if (palette.size <= 16 && !palette.has(v)) palette.set(v, palette.size);
          if (runs > 0 && runValue[runs - 1] === v) runLen[runs - 1]!++;
          else {
            runValue[runs] = v;
            runLen[runs] = 1;
            runs++;
          }
        }
      }
      if (palette.size === 1) {
        out[at++] = 1;
        at = enc.writeCpixel(out, at, px[0]!);
        continue;
      }
      const rawSize = n * cp;
      let plainRle = 0, paletteRle = 0;
      for (let i = 0; i < runs; i++) {
        const lb = runLengthBytes(runLen[i]!);
        plainRle += cp + lb;
        paletteRle += runLen[i] === 1 ? 1 : 1 + lb;
      }
      let best = "raw", bestSize = rawSize;
      if (plainRle < bestSize) [best, bestSize] = ["rle", plainRle];
      let bits = 0;
      if (palette.size <= 16) {
        bits = palette.size <= 2 ? 1 : palette.size <= 4 ? 2 : 4;
        const packed = palette.size * cp + th * Math.ceil(tw * bits / 8);
        if (packed < bestSize) [best, bestSize] = ["packed", packed];
        const prle = palette.size * cp + paletteRle;
        if (palette.size <= 127 && prle < bestSize) [best, bestSize] = ["prle", prle];
      }
      switch (best) {
        case "raw":
          out[at++] = 0;
          for (let i = 0; i < n; i++) at = enc.writeCpixel(out, at, px[i]!);
          break;
        case "rle":
          out[at++] = 128;
          for (let i = 0; i < runs; i++) {
            at = enc.writeCpixel(out, at, runValue[i]!);
            at = writeRunLength(out, at, runLen[i]!);
          }
          break;
        case "packed": {
          out[at++] = palette.size;
          for (const v of palette.keys()) at = enc.writeCpixel(out, at, v);
          for (let y = 0; y < th; y++) {
            let byte = 0, used = 0;
            for (let x = 0; x < tw; x++) {
              byte = (byte << bits) | palette.get(px[y * tw + x]!)!;
              used += bits;
              if (used === 8) {
                out[at++] = byte;
                byte = 0;
                used = 0;
              }
            }
            if (used > 0) out[at++] = byte << (8 - used);
          }
          break;
        }
        case "prle":
          out[at++] = 128 + palette.size;
          for (const v of palette.keys()) at = enc.writeCpixel(out, at, v);
          for (let i = 0; i < runs; i++) {
            const idx = palette.get(runValue[i]!)!;
            if (runLen[i] === 1) out[at++] = idx;
            else {
              out[at++] = idx | 128;
              at = writeRunLength(out, at, runLen[i]!);
            }
          }
          break;
      }
    }
  }
  return out.subarray(0, at);
}

/** The cursor pseudo-encoding body: pixels in the client's format, then the mask. */
export function encodeCursor(c: CursorImage, enc: PixelEncoder): Uint8Array {
  const n = c.width * c.height;
  const maskBytes = Math.ceil(c.width / 8) * c.height;
  const out = new Uint8Array(n * enc.bytesPerPixel + maskBytes);
  let at = 0;
  for (let i = 0; i < n; i++) {
    const rgb = c.pixels[i * 4]! | (c.pixels[i * 4 + 1]! << 8) | (c.pixels[i * 4 + 2]! << 16);
    at = enc.writePixel(out, at, enc.convert(rgb));
  }
  out.set(c.mask.subarray(0, maskBytes), at);
  return out;
}

/** A 12×19 arrow, black with a white outline, for sources without a pointer image. */
export function defaultCursor(): CursorImage {
  const rows = [
    "X...........",
    "XX..........",
    "XoX.........",
    "XooX........",
    "XoooX.......",
    "XooooX......",
    "XoooooX.....",
    "XooooooX....",
    "XoooooooX...",
    "XooooooooX..",
    "XoooooooooX.",
    "XooooooXXXXX",
    "XoooXooX....",
    "XooXXooX....",
    "XoX..XooX...",
    "XX...XooX...",
    "X.....XooX..",
    "......XooX..",
    ".......XX...",
  ];
  const width = 12, height = rows.length;
  const pixels = new Uint8Array(width * height * 4);
  const mask = new Uint8Array(Math.ceil(width / 8) * height);
  rows.forEach((row, y) => {
    for (let x = 0; x < width; x++) {
      const ch = row[x];
      if (ch === ".") continue;
      const v = ch === "X" ? 0xff : 0x00; // outline white, body black
      pixels.fill(v, (y * width + x) * 4, (y * width + x) * 4 + 3);
      mask[y * Math.ceil(width / 8) + (x >> 3)]! |= 0x80 >> (x & 7);
    }
  });
  return { width, height, hotX: 0, hotY: 0, pixels, mask };
}
