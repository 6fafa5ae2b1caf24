/**
 * PNG for screendumps: an encoder (8-bit RGB, filter "none" on every row, zlib from
 * `node:zlib`) and a decoder of 8-bit RGB/RGBA truecolour images with any row filter, so tests
 * can check pixels of what the encoder wrote (and of PNGs from other tools).
 * @module
 */
import { deflateSync, inflateSync } from "node:zlib";

const SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO 3309) of `bytes`, as PNG chunks carry it. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

/** Encodes `rgb` (`width * height * 3` bytes, rows top to bottom) as a PNG file. */
export function encodePng(width: number, height: number, rgb: Uint8Array): Uint8Array {
  if (!(width > 0 && height > 0 && rgb.length === width * height * 3)) {
    throw new RangeError(`PNG: ${rgb.length} bytes do not hold ${width}x${height} RGB pixels`);
  }
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, width);
  dv.setUint32(4, height);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  const row = width * 3;
  const raw = new Uint8Array((row + 1) * height);
  for (let y = 0; y < height; y++) raw.set(rgb.subarray(y * row, y * row + row), y * (row + 1) + 1);
  const idat = deflateSync(raw, { level: 6 });
  const parts = [
    SIGNATURE,
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(idat.buffer, idat.byteOffset, idat.byteLength)),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A decoded image: RGB, 3 bytes per pixel. */
export interface DecodedPng {
  readonly width: number;
  readonly height: number;
  readonly rgb: Uint8Array;
}

/**
 * Decodes an 8-bit truecolour (RGB or RGBA, alpha dropped) non-interlaced PNG. Throws `Error`
 * with the reason for anything else or a damaged file (bad signature, CRC, size).
 */
export function decodePng(file: Uint8Array): DecodedPng {
  if (file.length < 8 || SIGNATURE.some((b, i) => file[i] !== b)) {
    throw new Error("PNG: bad signature");
  }
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  let width = 0, height = 0, channels = 0;
  const idat: Uint8Array[] = [];
  for (let at = 8; at + 12 <= file.length;) {
    const len = dv.getUint32(at);
    if (at + 12 + len > file.length) throw new Error("PNG: truncated chunk");
    const type = String.fromCharCode(...file.subarray(at + 4, at + 8));
    const data = file.subarray(at + 8, at + 8 + len);
    if (crc32(file.subarray(at + 4, at + 8 + len)) !== dv.getUint32(at + 8 + len)) {
      throw new Error(`PNG: CRC mismatch in ${type}`);
    }
    if (type === "IHDR") {
      const h = new DataView(data.buffer, data.byteOffset, data.byteLength);
      width = h.getUint32(0);
      height = h.getUint32(4);
      if (data[8] !== 8 || (data[9] !== 2 && data[9] !== 6) || data[12] !== 0) {
        throw new Error("PNG: only 8-bit non-interlaced RGB/RGBA is supported");
      }
      channels = data[9] === 2 ? 3 : 4;
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    at += 12 + len;
  }
  if (!width || !height) throw new Error("PNG: no IHDR");
  const joined = new Uint8Array(idat.reduce((n, d) => n + d.length, 0));
  let o = 0;
  for (const d of idat) {
    joined.set(d, o);
    o += d.length;
  }
  const raw = inflateSync(joined);
  const stride = width * channels;
  if (raw.length < (stride + 1) * height) throw new Error("PNG: image data too short");
  const pix = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const src = y * (stride + 1) + 1;
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? pix[y * stride + x - channels]! : 0;
      const b = y > 0 ? pix[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? pix[(y - 1) * stride + x - channels]! : 0;
      let pred = 0;
      if (filter === 1) pred = a;
      else if (filter === 2) pred = b;
      else if (filter === 3) pred = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
        pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new Error(`PNG: bad filter ${filter}`);
      pix[y * stride + x] = (raw[src + x]! + pred) & 0xff;
    }
  }
  if (channels === 3) return { width, height, rgb: pix };
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < pix.length; i += 4, j += 3) rgb.set(pix.subarray(i, i + 3), j);
  return { width, height, rgb };
}
