/**
 * The bochs display as a framebuffer source for the console front ends. A dumb linear
 * framebuffer reports no damage, so `scan()` compares the visible screen with a shadow copy in
 * 64×16 tiles; the VNC server calls it only while a viewer waits for an update. Depths other
 * than 32 bpp are converted into the shadow (which is then the frame shown).
 * @module
 */
import type {
  CursorImage,
  DisplayChange,
  Framebuffer,
  FramebufferSource,
  Rect,
} from "../console/mod.ts";
import { type BochsDisplay, type ScreenGeometry, screenPixels } from "../devices/display/bochs.ts";
import { encodePng } from "../util/png.ts";

const TILE_W = 64;
const TILE_H = 16;
/** What viewers see while the guest has set no mode. */
const OFF = { width: 640, height: 480 };

/** The bochs display's visible screen, scanned for changes. */
export class BochsScreen implements FramebufferSource {
  readonly #display: BochsDisplay;
  readonly #vram: Uint8Array;
  readonly #listeners = new Set<(c: DisplayChange) => void>();
  #geometry = "";
  #frame: Framebuffer;
  /** What viewers were last given, 4 bytes a pixel, tightly packed. */
  #shadow: Uint8Array;

  /** The screen of `display` over its framebuffer memory `vram`. */
  constructor(display: BochsDisplay, vram: Uint8Array) {
    this.#display = display;
    this.#vram = vram;
    this.#shadow = new Uint8Array(OFF.width * OFF.height * 4);
    this.#frame = { ...OFF, stride: OFF.width * 4, data: this.#shadow };
    this.#refresh();
  }

  /** True while the guest has a mode set. */
  get hasMode(): boolean {
    return typeof this.#display.screen() !== "string";
  }

  /** @inheritdoc */
  frame(): Framebuffer {
    this.#refresh(); // a mode set since the last scan (viewers connecting read this first)
    return this.#frame;
  }

  /** @inheritdoc */
  cursor(): CursorImage | undefined {
    return undefined;
  }

  /** @inheritdoc */
  subscribe(listener: (change: DisplayChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** @inheritdoc */
  scan(): Rect[] {
    if (this.#refresh()) return [];
    const g = this.#display.screen();
    if (typeof g === "string") return [];
    const f = this.#frame;
    const live = g.bpp === 32 && !g.bigEndian ? f.data : convert(this.#vram, g);
    const out: Rect[] = [];
    const rowBytes = f.width * 4;
    for (let ty = 0; ty < f.height; ty += TILE_H) {
      const th = Math.min(TILE_H, f.height - ty);
      let runStart = -1;
      for (let tx = 0; tx <= f.width; tx += TILE_W) {
        const tw = Math.min(TILE_W, f.width - tx);
        let changed = false;
        if (tw > 0) {
          for (let y = ty; y < ty + th && !changed; y++) {
            const a = y * f.stride + tx * 4, b = y * rowBytes + tx * 4;
            for (let i = 0; i < tw * 4; i += 4) {
              if (
                live[a + i] !== this.#shadow[b + i] ||
                live[a + i + 1] !== this.#shadow[b + i + 1] ||
                live[a + i + 2] !== this.#shadow[b + i + 2]
              ) {
                changed = true;
                break;
              }
            }
          }
        }
        if (changed) {
          for (let y = ty; y < ty + th; y++) {
            const a = y * f.stride + tx * 4;
            this.#shadow.set(live.subarray(a, a + tw * 4), y * rowBytes + tx * 4);
          }
          if (runStart < 0) runStart = tx;
        } else if (runStart >= 0) {
          out.push({ x: runStart, y: ty, width: tx - runStart, height: th });
          runStart = -1;
        }
      }
    }
    if (!(g.bpp === 32 && !g.bigEndian)) this.#frame = { ...this.#frame, data: this.#shadow };
    return out;
  }

  /** Follows a mode change; true (and viewers told) when the geometry changed. */
  #refresh(): boolean {
    const g = this.#display.screen();
    const key = typeof g === "string" ? "off" : JSON.stringify(g);
    if (key === this.#geometry) return false;
    this.#geometry = key;
    if (typeof g === "string") {
      this.#shadow = new Uint8Array(OFF.width * OFF.height * 4);
      this.#frame = { ...OFF, stride: OFF.width * 4, data: this.#shadow };
    } else {
      this.#shadow = new Uint8Array(g.width * g.height * 4);
      if (g.bpp === 32 && !g.bigEndian) {
        const end = g.offset + (g.height - 1) * g.stride + g.width * 4;
        this.#frame = {
          width: g.width,
          height: g.height,
          stride: g.stride,
          data: this.#vram.subarray(g.offset, end),
        };
        for (let y = 0; y < g.height; y++) {
          const a = y * g.stride;
          this.#shadow.set(this.#frame.data.subarray(a, a + g.width * 4), y * g.width * 4);
        }
      } else {
        this.#shadow.set(convert(this.#vram, g));
        this.#frame = { width: g.width, height: g.height, stride: g.width * 4, data: this.#shadow };
      }
    }
    for (const l of this.#listeners) l({ kind: "resize" });
    return true;
  }
}

/** The screen of `g` as tightly packed B, G, R, X pixels. */
function convert(vram: Uint8Array, g: ScreenGeometry): Uint8Array {
  const rgb = screenPixels(vram, g);
  const out = new Uint8Array(g.width * g.height * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    out[j] = rgb[i + 2]!;
    out[j + 1] = rgb[i + 1]!;
    out[j + 2] = rgb[i]!;
  }
  return out;
}

/**
 * `screendump` of a framebuffer source (synthvid): the frame as a PNG at `path`, written to a
 * temporary file beside it and renamed, so a failure never leaves a half-written file.
 */
export async function dumpFrame(
  source: FramebufferSource,
  path: string,
): Promise<{ width: number; height: number }> {
  const f = source.frame();
  const rgb = new Uint8Array(f.width * f.height * 3);
  for (let y = 0, o = 0; y < f.height; y++) {
    for (let x = 0, i = y * f.stride; x < f.width; x++, i += 4) {
      rgb[o++] = f.data[i + 2] ?? 0;
      rgb[o++] = f.data[i + 1] ?? 0;
      rgb[o++] = f.data[i] ?? 0;
    }
  }
  const tmp = `${path}.${Deno.pid}.tmp`;
  try {
    await Deno.writeFile(tmp, encodePng(f.width, f.height, rgb), { createNew: true });
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`screendump: cannot write '${path}': ${(e as Error).message}`);
  }
  return { width: f.width, height: f.height };
}
