/**
 * The Dynamic Memory device (Linux `hv_balloon`): version and capability exchange, the guest's
 * status reports, and ballooning: the host asks for pages, the guest hands back page ranges it
 * took out of use, and the host drops their backing (`release`, madvise(MADV_DONTNEED) in the
 * VMM); deflating gives the guest back exactly the ranges it handed over.
 *
 * Order (Linux `balloon_probe`, `balloon_up`, `balloon_down`): the guest opens the channel and
 * sends VERSION_REQUEST (2.0, then 1.0, then 0.3), the host accepts; CAPABILITIES_REPORT, the host
 * accepts; then STATUS_REPORT about every second (after `pressure_report_delay`, 45 s by default).
 * BALLOON_REQUEST(n) is answered by BALLOON_RESPONSEs (more_pages set on all but the last); a
 * guest may give fewer pages (it keeps a floor). UNBALLOON_REQUESTs (more_pages on all but the
 * last) are answered by one UNBALLOON_RESPONSE. One operation at a time.
 *
 * Guest bytes are hostile: a range outside guest RAM, overlapping pages already ballooned, or past
 * the message is dropped (never released); a malformed message is counted and ignored.
 * @module
 */
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import type { GuestMemory } from "../../kvm/guest_memory.ts";
import { getLogger, rateLimited } from "../../util/log.ts";
import {
  decodePageRange,
  DM_CLASS_ID,
  DM_INSTANCE_ID,
  DM_MAX_RANGE_PAGES,
  DM_MAX_UNBALLOON_RANGES,
  DM_RANGE_SIZE,
  DmBalloon,
  DmBalloonResponse,
  DmCapabilities,
  DmCapabilitiesResponse,
  DmHeader,
  DmMessageType,
  DmStatus,
  DmUnballoonRequest,
  DmVersion,
  DmVersionRequest,
  DmVersionResponse,
  encodePageRange,
  type PageRange,
} from "./protocol.ts";

/** 4 KiB. */
export const DM_PAGE_SIZE = 4096;

/** Options of `DynamicMemoryDevice`. */
export interface DynamicMemoryOptions {
  /** Drops the host backing of guest bytes `[gpa, gpa + bytes)` (they read as zero later). */
  readonly release: (gpa: number, bytes: number) => void;
  /** Wait for the guest's answers in ms (default 120 000). */
  readonly timeoutMs?: number;
}

/** The guest's last status report. */
export interface DmGuestStatus {
  /** Pages the guest reports available. */
  readonly availablePages: number;
  /** Pages the guest reports committed (in use). */
  readonly committedPages: number;
  /** `performance.now()` of the report. */
  readonly at: number;
}

/** What the device knows, for `{"cmd":"memory"}`. */
export interface DmInfo {
  readonly state: string;
  readonly version: string | undefined;
  readonly status: DmGuestStatus | undefined;
  readonly balloonedPages: number;
  readonly statusReports: number;
  readonly malformed: number;
}

interface Op {
  readonly kind: "balloon" | "unballoon";
  pages: number;
  readonly resolve: (pages: number) => void;
  readonly reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

const logger = getLogger("dev", "balloon");

/** The Dynamic Memory VMBus device. */
export class DynamicMemoryDevice implements VmbusDevice {
  readonly classId = DM_CLASS_ID;
  readonly instanceId = DM_INSTANCE_ID;
  readonly name = "balloon";
  readonly #memory: GuestMemory;
  readonly #release: (gpa: number, bytes: number) => void;
  readonly #timeoutMs: number;
  #channel: Channel | undefined;
  #state: "closed" | "negotiating" | "ready" = "closed";
  #version: number | undefined;
  #status: DmGuestStatus | undefined;
  #statusReports = 0;
  #malformed = 0;
  #transId = 0;
  #op: Op | undefined;
  /** Ballooned ranges, in the order the guest gave them. */
  #ranges: PageRange[] = [];
  #balloonedPages = 0;
  /** One bit per guest page: set while ballooned. */
  readonly #bitmap: Uint8Array;
  readonly #warn = rateLimited();

  constructor(memory: GuestMemory, options: DynamicMemoryOptions) {
    this.#memory = memory;
    this.#release = options.release;
    this.#timeoutMs = options.timeoutMs ?? 120_000;
    let end = 0;
    for (const r of memory.regions) end = Math.max(end, r.gpa + r.bytes.length);
    this.#bitmap = new Uint8Array(Math.ceil(end / DM_PAGE_SIZE / 8));
  }

  /** Pages the guest has ballooned (host backing dropped). */
  get balloonedPages(): number {
    return this.#balloonedPages;
  }

  /** True once versions and capabilities were exchanged. */
  get isReady(): boolean {
    return this.#state === "ready";
  }

  /** State, version, last guest status and counters. */
  info(): DmInfo {
    const v = this.#version;
    return {
      state: this.#state,
      version: v === undefined ? undefined : `${v >>> 16}.${v & 0xffff}`,
      status: this.#status,
      balloonedPages: this.#balloonedPages,
      statusReports: this.#statusReports,
      malformed: this.#malformed,
    };
  }

  /**
   * Asks the guest for `pages` 4 KiB pages; resolves how many it gave (possibly fewer: Linux
   * keeps a floor). Rejects when not ready, busy, on timeout or when the channel closes.
   */
  inflate(pages: number): Promise<number> {
    if (!Number.isInteger(pages) || pages <= 0 || pages > 0xffff_ffff) {
      return Promise.reject(new RangeError(`cannot balloon ${pages} pages`));
    }
    return this.#start("balloon", pages, (ch) => {
      const msg = DmBalloon.encode({
        type: DmMessageType.BALLOON_REQUEST,
        size: DmBalloon.size,
        transId: ++this.#transId,
        numPages: pages,
      });
      return ch.send(msg);
    });
  }

  /**
   * Gives up to `pages` ballooned pages back to the guest (the ranges it handed over, newest
   * first); resolves how many. Zero when nothing is ballooned.
   */
  deflate(pages: number): Promise<number> {
    if (!Number.isInteger(pages) || pages <= 0) {
      return Promise.reject(new RangeError(`cannot give back ${pages} pages`));
    }
    if (this.#balloonedPages === 0) return Promise.resolve(0);
    const give: PageRange[] = [];
    let left = Math.min(pages, this.#balloonedPages);
    const ranges = this.#ranges;
    while (left > 0 && ranges.length > 0) {
      const r = ranges[ranges.length - 1]!;
      if (r.pages <= left) {
        ranges.pop();
        give.push(r);
        left -= r.pages;
      } else {
        // Linux frees page by page, so a range may be split.
        const keep = r.pages - left;
        ranges[ranges.length - 1] = { startPfn: r.startPfn, pages: keep };
        give.push({ startPfn: r.startPfn + keep, pages: left });
        left = 0;
      }
    }
    const total = give.reduce((n, r) => n + r.pages, 0);
    return this.#start("unballoon", total, (ch) => {
      // The pages are the guest's again from the first message on.
      for (const r of give) this.#mark(r, false);
      for (let i = 0; i < give.length; i += DM_MAX_UNBALLOON_RANGES) {
        const part = give.slice(i, i + DM_MAX_UNBALLOON_RANGES);
        const more = i + DM_MAX_UNBALLOON_RANGES < give.length;
        const size = DmUnballoonRequest.size + part.length * DM_RANGE_SIZE;
        const msg = new Uint8Array(size);
        DmUnballoonRequest.encode({
          type: DmMessageType.UNBALLOON_REQUEST,
          size,
          transId: ++this.#transId,
          moreFlags: more ? 1 : 0,
          rangeCount: part.length,
        }, msg);
        part.forEach((r, j) =>
          encodePageRange(msg, DmUnballoonRequest.size + j * DM_RANGE_SIZE, r)
        );
        if (!ch.send(msg)) {
          // The guest's ring is full: it already has what was sent; the rest stays ballooned.
          for (const r of give.slice(i)) {
            this.#mark(r, true);
            this.#ranges.push(r);
          }
          return i > 0;
        }
      }
      return true;
    });
  }

  #start(kind: Op["kind"], pages: number, send: (ch: Channel) => boolean): Promise<number> {
    const ch = this.#channel;
    if (!ch || this.#state !== "ready") {
      return Promise.reject(new Error("the guest's balloon driver (hv_balloon) is not connected"));
    }
    if (this.#op) return Promise.reject(new Error(`a ${this.#op.kind} operation is running`));
    return new Promise((resolve, reject) => {
      const op: Op = { kind, pages: 0, resolve, reject, timer: undefined };
      this.#op = op;
      if (!send(ch)) {
        this.#op = undefined;
        reject(new Error("the guest is not reading its balloon channel"));
        return;
      }
      if (kind === "unballoon") op.pages = pages;
      op.timer = setTimeout(() => {
        if (this.#op !== op) return;
        this.#op = undefined;
        reject(new Error(`the guest did not finish the ${kind} in ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
    });
  }

  #finish(): void {
    const op = this.#op;
    if (!op) return;
    this.#op = undefined;
    clearTimeout(op.timer);
    op.resolve(op.pages);
  }

  // ---- VmbusDevice ------------------------------------------------------------------------------

  onOpen(channel: Channel): boolean {
    this.#channel = channel;
    this.#state = "negotiating";
    return true;
  }

  onClose(channel: Channel): void {
    if (channel !== this.#channel) return;
    this.#channel = undefined;
    this.#state = "closed";
    const op = this.#op;
    if (op) {
      this.#op = undefined;
      clearTimeout(op.timer);
      op.reject(new Error("the guest closed the balloon channel"));
    }
    // Ballooned pages stay dropped: a guest that reconnects starts from its own view (Linux
    // reboots or reloads hv_balloon with every page its own); forget the host's bookkeeping.
    this.#ranges = [];
    this.#balloonedPages = 0;
    this.#bitmap.fill(0);
  }

  onPacket(channel: Channel, packet: RingPacket): boolean {
    if (channel !== this.#channel) return true;
    const p = packet.payload;
    const hdr = DmHeader.decode(p);
    if (!hdr || hdr.size < DmHeader.size || hdr.size > p.length) {
      this.#bad(`a ${p.length}-byte message with header size ${hdr?.size}`);
      return true;
    }
    const msg = p.subarray(0, hdr.size);
    switch (hdr.type) {
      case DmMessageType.VERSION_REQUEST:
        return this.#onVersion(channel, msg);
      case DmMessageType.CAPABILITIES_REPORT:
        return this.#onCapabilities(channel, msg);
      case DmMessageType.STATUS_REPORT: {
        const s = DmStatus.decode(msg);
        if (!s) return this.#bad(`STATUS_REPORT of ${msg.length} bytes`);
        this.#statusReports++;
        this.#status = {
          availablePages: Number(s.numAvail),
          committedPages: Number(s.numCommitted),
          at: performance.now(),
        };
        return true;
      }
      case DmMessageType.BALLOON_RESPONSE:
        return this.#onBalloonResponse(msg);
      case DmMessageType.UNBALLOON_RESPONSE:
        if (this.#op?.kind === "unballoon") this.#finish();
        else this.#bad("UNBALLOON_RESPONSE with no unballoon running");
        return true;
      default:
        return this.#bad(`message type ${hdr.type}`);
    }
  }

  #onVersion(ch: Channel, msg: Uint8Array): boolean {
    const v = DmVersionRequest.decode(msg);
    if (!v) return this.#bad(`VERSION_REQUEST of ${msg.length} bytes`);
    const ok = v.version === DmVersion.WIN10 || v.version === DmVersion.WIN8 ||
      v.version === DmVersion.WIN7;
    if (ok) this.#version = v.version;
    ch.send(DmVersionResponse.encode({
      type: DmMessageType.VERSION_RESPONSE,
      size: DmVersionResponse.size,
      transId: ++this.#transId,
      isAccepted: ok ? 1n : 0n,
    }));
    return true;
  }

  #onCapabilities(ch: Channel, msg: Uint8Array): boolean {
    const c = DmCapabilities.decode(msg);
    if (!c) return this.#bad(`CAPABILITIES_REPORT of ${msg.length} bytes`);
    ch.send(DmCapabilitiesResponse.encode({
      type: DmMessageType.CAPABILITIES_RESPONSE,
      size: DmCapabilitiesResponse.size,
      transId: ++this.#transId,
      isAccepted: 1n,
    }));
    this.#state = "ready";
    logger.info("guest balloon driver connected (DM {v}, caps 0x{caps})", {
      v: this.info().version ?? "?",
      caps: c.caps.toString(16),
    });
    return true;
  }

  #onBalloonResponse(msg: Uint8Array): boolean {
    const r = DmBalloonResponse.decode(msg);
    if (!r) return this.#bad(`BALLOON_RESPONSE of ${msg.length} bytes`);
    const op = this.#op;
    if (op?.kind !== "balloon") return this.#bad("BALLOON_RESPONSE with no balloon running");
    const more = (r.moreAndCount & 1) !== 0;
    const count = r.moreAndCount >>> 1;
    const fits = Math.floor((msg.length - DmBalloonResponse.size) / DM_RANGE_SIZE);
    if (count > fits) this.#bad(`BALLOON_RESPONSE claims ${count} ranges, carries ${fits}`);
    for (let i = 0; i < Math.min(count, fits); i++) {
      const range = decodePageRange(msg, DmBalloonResponse.size + i * DM_RANGE_SIZE);
      if (!this.#acceptable(range)) {
        this.#bad(`ballooned range ${range.startPfn}+${range.pages} is not free guest RAM`);
        continue;
      }
      this.#mark(range, true);
      this.#ranges.push(range);
      op.pages += range.pages;
      this.#release(range.startPfn * DM_PAGE_SIZE, range.pages * DM_PAGE_SIZE);
    }
    if (!more) this.#finish();
    return true;
  }

  /** In guest RAM and not ballooned already. */
  #acceptable(r: PageRange): boolean {
    if (r.pages === 0 || r.pages > DM_MAX_RANGE_PAGES) return false;
    const gpa = r.startPfn * DM_PAGE_SIZE;
    const bytes = r.pages * DM_PAGE_SIZE;
    if (!Number.isSafeInteger(gpa + bytes) || !this.#memory.contains(gpa, bytes)) return false;
    for (let pfn = r.startPfn; pfn < r.startPfn + r.pages; pfn++) {
      if (this.#bitmap[pfn >>> 3]! & (1 << (pfn & 7))) return false;
    }
    return true;
  }

  #mark(r: PageRange, on: boolean): void {
    for (let pfn = r.startPfn; pfn < r.startPfn + r.pages; pfn++) {
      if (on) this.#bitmap[pfn >>> 3]! |= 1 << (pfn & 7);
      else this.#bitmap[pfn >>> 3]! &= ~(1 << (pfn & 7));
    }
    this.#balloonedPages += on ? r.pages : -r.pages;
  }

  #bad(what: string): boolean {
    this.#malformed++;
    this.#warn((n) =>
      logger.warn(`balloon: ${what}; ignored${n > 0 ? ` (${n} similar lines suppressed)` : ""}`)
    );
    return true;
  }
}
