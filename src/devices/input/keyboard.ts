/**
 * The synthetic keyboard (`VmbusDevice`) for Linux `hyperv_keyboard` and Windows' in-box VSC.
 * The guest opens the channel and asks for version 1.0; the host accepts it in-band, and from
 * then on sends one keystroke packet per key press or release, carrying the set-1 make code, an
 * E0/E1 prefix flag and a break flag (Linux turns them back into set-1 bytes for atkbd).
 *
 * Keys sent while the guest's ring is full wait in a bounded queue (`MAX_QUEUED_KEYS`) and go out
 * once the guest makes room; beyond that they are dropped and counted. A packet the guest sends
 * that cannot be a keyboard message is ignored (rate-limited log); the channel goes on.
 * @module
 */
import { getLogger, rateLimited } from "../../util/log.ts";
import type { Channel } from "../../vmbus/channel.ts";
import type { VmbusDevice } from "../../vmbus/device.ts";
import { VmPacketType } from "../../vmbus/protocol.ts";
import type { RingPacket } from "../../vmbus/ring.ts";
import {
  KBD_PROTOCOL_ACCEPTED,
  KbdInfo,
  KbdKeystroke,
  KbdLedIndicators,
  KbdMessageType,
  KbdProtocolRequest,
  KbdProtocolResponse,
  KEYBOARD_CLASS_ID,
  KEYBOARD_INSTANCE_ID,
  SYNTH_KBD_VERSION,
} from "./protocol.ts";

/** Keys kept while the guest's ring is full. */
export const MAX_QUEUED_KEYS = 512;

/** Counters of the keyboard. */
export interface SyntheticKeyboardStats {
  /** Keystroke packets written to the guest. */
  keysSent: number;
  /** Keys dropped: channel not ready, or the queue was full. */
  keysDropped: number;
  /** Guest packets ignored as malformed or unknown. */
  malformed: number;
  /** Protocol requests refused (unknown version). */
  refused: number;
}

/** Where the keyboard is in its life cycle. */
export type SyntheticKeyboardState = "closed" | "opened" | "ready";

/** The synthetic keyboard. */
export class SyntheticKeyboard implements VmbusDevice {
  /** @inheritdoc */
  readonly classId = KEYBOARD_CLASS_ID;
  /** @inheritdoc */
  readonly instanceId: string;
  /** @inheritdoc */
  readonly name = "keyboard";
  /** Counters. */
  readonly stats: SyntheticKeyboardStats = {
    keysSent: 0,
    keysDropped: 0,
    malformed: 0,
    refused: 0,
  };
  /** LED bits the guest last reported (Windows sends them; Linux never does). */
  leds = 0;
  #channel: Channel | undefined;
  #state: SyntheticKeyboardState = "closed";
  readonly #queue: Uint8Array[] = [];
  readonly #log = getLogger("dev", "keyboard");
  readonly #warn = rateLimited();

  /** A keyboard with Hyper-V's instance id unless `instanceId` says otherwise. */
  constructor(options: { instanceId?: string } = {}) {
    this.instanceId = options.instanceId ?? KEYBOARD_INSTANCE_ID;
  }

  /** `ready` once the guest's protocol request was accepted: keys reach the guest from then. */
  get state(): SyntheticKeyboardState {
    return this.#state;
  }

  /** True when keys go to the guest. */
  get isReady(): boolean {
    return this.#state === "ready";
  }

  /**
   * Sends one key press (`down`) or release. `scanCode` is a set-1 make code, with 0xE0 or 0xE1
   * in the high byte for prefixed keys (0xE04B is the arrow left). Returns false when the key
   * was dropped (channel not ready, or too many keys waiting for ring space).
   */
  sendKey(scanCode: number, down: boolean): boolean {
    if (this.#state !== "ready") {
      this.stats.keysDropped++;
      return false;
    }
    const prefix = (scanCode >> 8) & 0xff;
    let info = down ? 0 : KbdInfo.IS_BREAK;
    if (prefix === 0xe0) info |= KbdInfo.IS_E0;
    else if (prefix === 0xe1) info |= KbdInfo.IS_E1;
    const packet = KbdKeystroke.encode({
      type: KbdMessageType.EVENT,
      makeCode: scanCode & 0x7f,
      info,
    });
    if (this.#queue.length > 0) return this.#enqueue(packet);
    if (this.#channel!.send(packet)) {
      this.stats.keysSent++;
      return true;
    }
    return this.#enqueue(packet);
  }

  /** @inheritdoc */
  onOpen(channel: Channel): boolean {
    this.#channel = channel;
    this.#state = "opened";
    this.#queue.length = 0;
    return true;
  }

  /** @inheritdoc */
  onPacket(channel: Channel, packet: RingPacket): boolean | void {
    if (packet.type === VmPacketType.COMP) return;
    if (packet.type !== VmPacketType.DATA_INBAND || packet.payloadLength < 4) {
      return this.#malformed(`packet type ${packet.type}, ${packet.payloadLength} bytes`);
    }
    const data = packet.data;
    const at = packet.payloadOffset;
    const type = KbdProtocolRequest.get(data, at, "type");
    switch (type) {
      case KbdMessageType.PROTOCOL_REQUEST: {
        if (packet.payloadLength < KbdProtocolRequest.size) {
          return this.#malformed(`short protocol request (${packet.payloadLength} bytes)`);
        }
        const version = KbdProtocolRequest.get(data, at, "version");
        const accepted = version === SYNTH_KBD_VERSION;
        const answer = KbdProtocolResponse.encode({
          type: KbdMessageType.PROTOCOL_RESPONSE,
          status: accepted ? KBD_PROTOCOL_ACCEPTED : 0,
        });
        // Answer before anything else; when the ring is full, read this packet again later.
        if (!channel.send(answer)) return false;
        if (accepted) {
          this.#state = "ready";
          this.#log.debug("guest keyboard driver connected (version 1.0)");
        } else {
          this.stats.refused++;
          this.#warn((n) =>
            this.#log.warning("refused keyboard protocol version 0x{v}{more}", {
              v: version.toString(16),
              more: n > 0 ? ` (${n} similar suppressed)` : "",
            })
          );
        }
        return;
      }
      case KbdMessageType.LED_INDICATORS:
        if (packet.payloadLength >= KbdLedIndicators.size) {
          this.leds = KbdLedIndicators.get(data, at, "flags");
        }
        return;
      default:
        return this.#malformed(`unknown message type ${type}`);
    }
  }

  /** @inheritdoc */
  onWritable(channel: Channel): void {
    while (this.#queue.length > 0) {
      if (!channel.send(this.#queue[0]!)) return;
      this.#queue.shift();
      this.stats.keysSent++;
    }
  }

  /** @inheritdoc */
  onClose(_channel: Channel): void {
    this.#channel = undefined;
    this.#state = "closed";
    this.stats.keysDropped += this.#queue.length;
    this.#queue.length = 0;
  }

  #enqueue(packet: Uint8Array): boolean {
    if (this.#queue.length >= MAX_QUEUED_KEYS) {
      this.stats.keysDropped++;
      return false;
    }
    this.#queue.push(packet);
    return true;
  }

  #malformed(what: string): void {
    this.stats.malformed++;
    this.#warn((n) =>
      this.#log.warning("ignored a keyboard packet from the guest: {what}{more}", {
        what,
        more: n > 0 ? ` (${n} similar suppressed)` : "",
      })
    );
  }
}
