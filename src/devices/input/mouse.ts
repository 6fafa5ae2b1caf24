/**
 * The synthetic mouse (`VmbusDevice`): HID over VMBus for Linux `hid_hyperv` and Windows'
 * in-box VSC, with absolute coordinates. The guest asks for synthhid 2.0; the host approves it,
 * sends the device info (vendor 045E:0621 and an absolute-pointer report descriptor), the guest
 * acknowledges, and from then each pointer state goes out as one 7-byte input report.
 *
 * Pointer states are not queued: when the guest's ring is full only the latest state is kept and
 * sent once the guest makes room (a pointer is a position, not a stream of deltas). Guest
 * packets that cannot be synthhid messages are ignored (rate-limited log); the channel goes on.
 * @module
 */
import { getLogger, rateLimited } from "../../util/log.ts";
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import { OfferFlags, VmPacketType } from "../../vmbus/protocol.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import {
  HID_BODY_OFFSET,
  HID_DESCRIPTOR_LENGTH,
  HID_DT_HID,
  HID_DT_REPORT,
  HidDeviceInfoBody,
  HidHeader,
  HidMessageType,
  HidProtocolResponseBody,
  HV_INPUT_DEV_INFO_SIZE,
  MOUSE_AXIS_MAX,
  MOUSE_CLASS_ID,
  MOUSE_INSTANCE_ID,
  MOUSE_PRODUCT,
  MOUSE_REPORT_DESCRIPTOR,
  MOUSE_VENDOR,
  MouseReport,
  PIPE_MESSAGE_DATA,
  SYNTHHID_VERSION,
} from "./protocol.ts";

/** VMBus pipe mode "message" in the offer's user-defined bytes. */
const PIPE_TYPE_MESSAGE = 4;

/** Counters of the mouse. */
export interface SyntheticMouseStats {
  /** Input reports written to the guest. */
  reportsSent: number;
  /** Pointer states replaced by a newer one before they could be sent. */
  reportsCoalesced: number;
  /** Pointer states dropped because the channel was not ready. */
  reportsDropped: number;
  /** Guest packets ignored as malformed or unknown. */
  malformed: number;
}

/** Where the mouse is in its life cycle. */
export type SyntheticMouseState = "closed" | "opened" | "device-info-sent" | "ready";

/** One pointer state: buttons (`MouseButton` bits), absolute position, wheel steps. */
export interface PointerState {
  /** `MouseButton` bits held down. */
  readonly buttons: number;
  /** X, 0..`MOUSE_AXIS_MAX` across the screen. */
  readonly x: number;
  /** Y, 0..`MOUSE_AXIS_MAX` down the screen. */
  readonly y: number;
  /** Wheel steps since the last report (positive: away from the user). */
  readonly wheel?: number;
}

function pipeUserDefined(): Uint8Array {
  const ud = new Uint8Array(4);
  new DataView(ud.buffer).setUint32(0, PIPE_TYPE_MESSAGE, true);
  return ud;
}

/** Builds one synthhid packet: pipe header, synthhid header, `body`. */
export function hidPacket(type: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(HID_BODY_OFFSET + body.length);
  HidHeader.encode({
    pipeType: PIPE_MESSAGE_DATA,
    pipeSize: 8 + body.length,
    type,
    size: body.length,
  }, out);
  out.set(body, HID_BODY_OFFSET);
  return out;
}

function deviceInfoBody(): Uint8Array {
  const body = new Uint8Array(HidDeviceInfoBody.size + MOUSE_REPORT_DESCRIPTOR.length);
  HidDeviceInfoBody.encode({
    infoSize: HV_INPUT_DEV_INFO_SIZE,
    vendor: MOUSE_VENDOR,
    product: MOUSE_PRODUCT,
    version: 1,
    bLength: HID_DESCRIPTOR_LENGTH,
    bDescriptorType: HID_DT_HID,
    bcdHid: 0x0101,
    bCountryCode: 0,
    bNumDescriptors: 1,
    reportDescriptorType: HID_DT_REPORT,
    reportDescriptorLength: MOUSE_REPORT_DESCRIPTOR.length,
  }, body);
  body.set(MOUSE_REPORT_DESCRIPTOR, HidDeviceInfoBody.size);
  return body;
}

function clampAxis(v: number): number {
  if (!Number.isFinite(v)) return 0;
  return Math.max(0, Math.min(MOUSE_AXIS_MAX, Math.round(v)));
}

/** The synthetic mouse. */
export class SyntheticMouse implements VmbusDevice {
  /** @inheritdoc */
  readonly classId = MOUSE_CLASS_ID;
  /** @inheritdoc */
  readonly instanceId: string;
  /** @inheritdoc */
  readonly name = "mouse";
  /** Offered as a message-mode pipe, like Hyper-V's (Linux ignores the mode). */
  readonly channelFlags = OfferFlags.NAMED_PIPE_MODE;
  /** @inheritdoc */
  readonly userDefined = pipeUserDefined();
  /** Counters. */
  readonly stats: SyntheticMouseStats = {
    reportsSent: 0,
    reportsCoalesced: 0,
    reportsDropped: 0,
    malformed: 0,
  };
  #channel: Channel | undefined;
  #state: SyntheticMouseState = "closed";
  /** The device info answer still to send (its ring was full). */
  #infoPending = false;
  #pendingReport: Uint8Array | undefined;
  readonly #log = getLogger("dev", "mouse");
  readonly #warn = rateLimited();

  /** A mouse with Hyper-V's instance id unless `instanceId` says otherwise. */
  constructor(options: { instanceId?: string } = {}) {
    this.instanceId = options.instanceId ?? MOUSE_INSTANCE_ID;
  }

  /** Life-cycle state: `ready` once the guest acknowledged the device info. */
  get state(): SyntheticMouseState {
    return this.#state;
  }

  /** True when pointer states reach the guest. */
  get isReady(): boolean {
    return this.#state === "ready";
  }

  /**
   * Sends a pointer state. Returns false when it was dropped (channel not ready); a state that
   * waits for ring space replaces any older waiting one.
   */
  sendPointer(p: PointerState): boolean {
    if (this.#state !== "ready") {
      this.stats.reportsDropped++;
      return false;
    }
    const wheel = Math.max(-32767, Math.min(32767, Math.round(p.wheel ?? 0)));
    const report = hidPacket(
      HidMessageType.INPUT_REPORT,
      MouseReport.encode({
        buttons: p.buttons & 0x1f,
        x: clampAxis(p.x),
        y: clampAxis(p.y),
        wheel: wheel & 0xffff,
      }),
    );
    if (this.#pendingReport) {
      this.#pendingReport = report;
      this.stats.reportsCoalesced++;
      return true;
    }
    if (this.#channel!.send(report)) {
      this.stats.reportsSent++;
    } else {
      this.#pendingReport = report;
    }
    return true;
  }

  /** @inheritdoc */
  onOpen(channel: Channel): boolean {
    this.#channel = channel;
    this.#state = "opened";
    this.#infoPending = false;
    this.#pendingReport = undefined;
    return true;
  }

  /** @inheritdoc */
  onPacket(channel: Channel, packet: RingPacket): boolean | void {
    if (packet.type === VmPacketType.COMP) return;
    const len = packet.payloadLength;
    if (packet.type !== VmPacketType.DATA_INBAND || len < HidHeader.size) {
      return this.#malformed(`packet type ${packet.type}, ${len} bytes`);
    }
    const data = packet.data;
    const at = packet.payloadOffset;
    if (HidHeader.get(data, at, "pipeType") !== PIPE_MESSAGE_DATA) {
      return this.#malformed("pipe message that is not DATA");
    }
    const type = HidHeader.get(data, at, "type");
    switch (type) {
      case HidMessageType.PROTOCOL_REQUEST: {
        if (len < HID_BODY_OFFSET + 4) return this.#malformed("short protocol request");
        if (this.#infoPending) return false; // still answering the previous request
        const version = data[at + HID_BODY_OFFSET]! | (data[at + HID_BODY_OFFSET + 1]! << 8) |
          (data[at + HID_BODY_OFFSET + 2]! << 16) | (data[at + HID_BODY_OFFSET + 3]! << 24);
        const approved = (version >>> 0) === SYNTHHID_VERSION;
        const answer = hidPacket(
          HidMessageType.PROTOCOL_RESPONSE,
          HidProtocolResponseBody.encode({ version: version >>> 0, approved: approved ? 1 : 0 }),
        );
        if (!channel.send(answer)) return false;
        if (!approved) {
          this.#malformed(`unsupported synthhid version 0x${(version >>> 0).toString(16)}`);
          return;
        }
        this.#infoPending = true;
        this.#sendDeviceInfo(channel);
        return;
      }
      case HidMessageType.INITIAL_DEVICE_INFO_ACK:
        if (this.#state === "device-info-sent") {
          this.#state = "ready";
          this.#log.debug("guest mouse driver connected (synthhid 2.0)");
        }
        return;
      default:
        return this.#malformed(`unknown synthhid message type ${type}`);
    }
  }

  /** @inheritdoc */
  onWritable(channel: Channel): void {
    if (this.#infoPending) this.#sendDeviceInfo(channel);
    if (this.#infoPending) return;
    const r = this.#pendingReport;
    if (r && channel.send(r)) {
      this.#pendingReport = undefined;
      this.stats.reportsSent++;
    }
    if (!this.#infoPending) channel.resume();
  }

  /** @inheritdoc */
  onClose(_channel: Channel): void {
    this.#channel = undefined;
    this.#state = "closed";
    this.#infoPending = false;
    if (this.#pendingReport) this.stats.reportsDropped++;
    this.#pendingReport = undefined;
  }

  #sendDeviceInfo(channel: Channel): void {
    if (!channel.send(hidPacket(HidMessageType.INITIAL_DEVICE_INFO, deviceInfoBody()))) return;
    this.#infoPending = false;
    this.#state = "device-info-sent";
  }

  #malformed(what: string): void {
    this.stats.malformed++;
    this.#warn((n) =>
      this.#log.warning("ignored a mouse packet from the guest: {what}{more}", {
        what,
        more: n > 0 ? ` (${n} similar suppressed)` : "",
      })
    );
  }
}
