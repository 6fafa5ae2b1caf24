/**
 * What a screen front end (VNC, the web console, screendump) reads: a framebuffer of 32-bit
 * XRGB8888 pixels (bytes B, G, R, X in memory, the format of bochs-display and synthvid) and
 * change notifications. Display devices (bochs display, synthvid) provide a `FramebufferSource`;
 * front ends subscribe and read only what changed, only while someone looks.
 *
 * Sources that know what the guest touched (synthvid's DIRT) report damage as it happens.
 * Sources that cannot (a dumb linear framebuffer) implement `scan()`: the front end calls it when
 * a viewer waits for an update, and the source compares against its own shadow copy.
 * @module
 */

/** A rectangle in pixels. */
export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** One frame: `height` rows of `stride` bytes, each pixel 4 bytes B, G, R, X. */
export interface Framebuffer {
  readonly width: number;
  readonly height: number;
  /** Bytes from one row to the next (≥ 4·width). */
  readonly stride: number;
  /** The pixels (may be a live view of guest memory). */
  readonly data: Uint8Array;
}

/** A pointer image: `width`·`height` XRGB8888 pixels and a 1-bit-per-pixel visibility mask. */
export interface CursorImage {
  readonly width: number;
  readonly height: number;
  readonly hotX: number;
  readonly hotY: number;
  /** 4 bytes a pixel, B, G, R, X. */
  readonly pixels: Uint8Array;
  /** Rows of ceil(width/8) bytes, most significant bit first; 1 = visible. */
  readonly mask: Uint8Array;
}

/** A change a source reports. */
export type DisplayChange =
  | { readonly kind: "damage"; readonly rect: Rect }
  /** `rect` now holds what was at (`fromX`, `fromY`) (a scroll or window move). */
  | { readonly kind: "copy"; readonly rect: Rect; readonly fromX: number; readonly fromY: number }
  | { readonly kind: "resize" }
  | { readonly kind: "cursor" };

/** A display as front ends see it. */
export interface FramebufferSource {
  /** The current frame. */
  frame(): Framebuffer;
  /** The pointer image, if the source has one. */
  cursor?(): CursorImage | undefined;
  /** Calls `listener` for every change until the returned function is called. */
  subscribe(listener: (change: DisplayChange) => void): () => void;
  /** Finds what changed since the last call (sources without damage tracking). */
  scan?(): Rect[];
}

/** Clips `r` to a `width`×`height` frame; undefined when nothing is left. */
export function clipRect(r: Rect, width: number, height: number): Rect | undefined {
  const x0 = Math.max(0, Math.floor(r.x)), y0 = Math.max(0, Math.floor(r.y));
  const x1 = Math.min(width, Math.floor(r.x + r.width));
  const y1 = Math.min(height, Math.floor(r.y + r.height));
  if (x1 <= x0 || y1 <= y0) return undefined;
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/** The smallest rectangle holding `a` and `b`. */
export function unionRect(a: Rect, b: Rect): Rect {
  const x0 = Math.min(a.x, b.x), y0 = Math.min(a.y, b.y);
  const x1 = Math.max(a.x + a.width, b.x + b.width);
  const y1 = Math.max(a.y + a.height, b.y + b.height);
  return { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
}

/**
 * A framebuffer in host memory that the owner draws into and reports damage for: for tests, for
 * the blank screen shown before a display device exists, and as a shadow for other sources.
 */
export class MemoryFramebuffer implements FramebufferSource {
  #frame: Framebuffer;
  #cursor: CursorImage | undefined;
  readonly #listeners = new Set<(c: DisplayChange) => void>();

  /** A black `width`×`height` frame. */
  constructor(width: number, height: number) {
    this.#frame = { width, height, stride: width * 4, data: new Uint8Array(width * height * 4) };
  }

  /** @inheritdoc */
  frame(): Framebuffer {
    return this.#frame;
  }

  /** @inheritdoc */
  cursor(): CursorImage | undefined {
    return this.#cursor;
  }

  /** @inheritdoc */
  subscribe(listener: (change: DisplayChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Fills `rect` with colour `rgb` (0xRRGGBB) and reports it. */
  fill(rect: Rect, rgb: number): void {
    const f = this.#frame;
    const r = clipRect(rect, f.width, f.height);
    if (!r) return;
    const px = new Uint32Array(f.data.buffer, f.data.byteOffset, f.data.byteLength >> 2);
    for (let y = r.y; y < r.y + r.height; y++) {
      px.fill(rgb & 0xffffff, y * f.width + r.x, y * f.width + r.x + r.width);
    }
    this.damage(r);
  }

  /** Reports `rect` changed (after writing `frame().data` directly). */
  damage(rect: Rect): void {
    this.#emit({ kind: "damage", rect });
  }

  /** Moves `rect`'s pixels from (`fromX`, `fromY`) and reports it as a copy. */
  copy(rect: Rect, fromX: number, fromY: number): void {
    const f = this.#frame;
    const rows = [];
    for (let y = 0; y < rect.height; y++) {
      const at = (fromY + y) * f.stride + fromX * 4;
      rows.push(f.data.slice(at, at + rect.width * 4));
    }
    rows.forEach((row, y) => f.data.set(row, (rect.y + y) * f.stride + rect.x * 4));
    this.#emit({ kind: "copy", rect, fromX, fromY });
  }

  /** Changes the size (contents become black) and reports it. */
  resize(width: number, height: number): void {
    this.#frame = { width, height, stride: width * 4, data: new Uint8Array(width * height * 4) };
    this.#emit({ kind: "resize" });
  }

  /** Sets the pointer image and reports it. */
  setCursor(cursor: CursorImage | undefined): void {
    this.#cursor = cursor;
    this.#emit({ kind: "cursor" });
  }

  #emit(c: DisplayChange): void {
    for (const l of this.#listeners) l(c);
  }
}
