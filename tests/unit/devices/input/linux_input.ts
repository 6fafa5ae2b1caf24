/**
 * Linux 6.1's `hyperv_keyboard` and `hid_hyperv` probe and receive paths, written from
 * drivers/input/serio/hyperv-keyboard.c and drivers/hid/hid-hyperv.c, as scripted guests over a
 * `LoopbackGuest`. They apply the drivers' own checks to every host packet (in-band only, the
 * size limits, the descriptor bounds) and record what the guest's input layer would see.
 */
import type { GuestChannel, GuestOffer, LoopbackGuest } from "../../../../src/vmbus/testing/mod.ts";
import type { GuestPacket } from "../../../../src/vmbus/testing/guest_ring.ts";

const VM_PKT_DATA_INBAND = 6;
const VM_PKT_COMP = 11;

/** hyperv-keyboard.c: probe, then serio bytes as atkbd receives them. */
export class LinuxKeyboard {
  readonly ch: GuestChannel;
  /** Bytes given to `serio_interrupt` (after `started`). */
  readonly serio: number[] = [];
  /** `dev_err` lines. */
  readonly errors: string[] = [];
  accepted: boolean | undefined;

  constructor(guest: LoopbackGuest, offer: GuestOffer) {
    // KBD_VSC_SEND/RECV_RING_BUFFER_SIZE: VMBUS_RING_SIZE(36 KiB) = 10 pages each.
    this.ch = guest.open(offer, { sendPages: 10, recvPages: 10 });
  }

  /** hv_kbd_connect_to_vsp: PROTOCOL_REQUEST [C], wait for the in-band response. */
  connect(version = 0x10000): boolean | undefined {
    const req = new Uint8Array(8);
    const dv = new DataView(req.buffer);
    dv.setUint32(0, 1, true);
    dv.setUint32(4, version, true);
    this.ch.send(req, { completionRequested: true });
    this.pump();
    return this.accepted;
  }

  /** hv_kbd_on_channel_callback over everything the host wrote. */
  pump(): void {
    for (const p of this.ch.receive()) this.#packet(p);
  }

  #packet(p: GuestPacket): void {
    if (p.type === VM_PKT_COMP) return;
    if (p.type !== VM_PKT_DATA_INBAND) {
      this.errors.push(`unhandled packet type ${p.type}`);
      return;
    }
    const msg = p.payload;
    if (msg.length <= 4) {
      this.errors.push(`Illegal packet size ${msg.length}`);
      return;
    }
    const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
    const type = dv.getUint32(0, true);
    if (type === 2) {
      if (msg.length < 8) return void this.errors.push("Illegal protocol response");
      this.accepted = (dv.getUint32(4, true) & 1) !== 0;
    } else if (type === 3) {
      if (msg.length < 12) return void this.errors.push("Illegal keyboard event");
      const info = dv.getUint32(8, true);
      if (this.accepted) {
        if (info & 4) this.serio.push(0xe0);
        if (info & 8) this.serio.push(0xe1);
        let code = dv.getUint16(4, true);
        if (info & 2) code |= 0x80;
        this.serio.push(code);
      }
    } else {
      this.errors.push(`unhandled message type ${type}`);
    }
  }
}

/** One HID input report as hid_input_report receives it. */
export interface HidReport {
  readonly bytes: Uint8Array;
}

/** hid-hyperv.c: probe (version, device info, ACK), then input reports. */
export class LinuxMouse {
  readonly ch: GuestChannel;
  readonly errors: string[] = [];
  readonly reports: Uint8Array[] = [];
  approved: boolean | undefined;
  devInfoStatus: number | undefined;
  vendor = 0;
  product = 0;
  reportDescriptor: Uint8Array | undefined;
  initComplete = false;
  /** Completions of the wait_event (response, device info). */
  #completions = 0;

  constructor(guest: LoopbackGuest, offer: GuestOffer) {
    this.ch = guest.open(offer, { sendPages: 10, recvPages: 10 });
  }

  /** mousevsc_connect_to_vsp + the rest of mousevsc_probe. Returns 0 or a negative errno. */
  probe(version = 0x20000): number {
    const req = new Uint8Array(20);
    const dv = new DataView(req.buffer);
    dv.setUint32(0, 1, true); // PIPE_MESSAGE_DATA
    dv.setUint32(4, 12, true); // sizeof(synthhid_protocol_request)
    dv.setUint32(8, 0, true); // SYNTH_HID_PROTOCOL_REQUEST
    dv.setUint32(12, 4, true);
    dv.setUint32(16, version, true);
    this.ch.send(req, { completionRequested: true });
    this.pump();
    if (this.#completions < 1) return -110; // ETIMEDOUT
    if (!this.approved) return -19; // ENODEV
    if (this.#completions < 2) return -110;
    if (this.devInfoStatus !== 0) return this.devInfoStatus ?? -110;
    // workaround SA-167
    if (this.reportDescriptor![14] === 0x25) this.reportDescriptor![14] = 0x29;
    this.initComplete = true;
    return 0;
  }

  /** mousevsc_on_channel_callback over everything the host wrote. */
  pump(): void {
    for (const p of this.ch.receive()) {
      if (p.type === VM_PKT_COMP) continue;
      if (p.type !== VM_PKT_DATA_INBAND) {
        this.errors.push(`Unhandled packet type ${p.type}`);
        continue;
      }
      this.#receive(p.payload);
    }
  }

  #receive(msg: Uint8Array): void {
    const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
    if (msg.length < 16) return void this.errors.push("short packet (guest would read past it)");
    if (dv.getUint32(0, true) !== 1) return;
    const pipeSize = dv.getUint32(4, true);
    if (pipeSize + 8 > msg.length) return void this.errors.push("pipe size past the packet");
    const type = dv.getUint32(8, true);
    switch (type) {
      case 1: // PROTOCOL_RESPONSE: memcpy into a 21-byte (24 padded) mousevsc_prt_msg
        if (pipeSize + 12 - 1 > 24) return void this.errors.push("WARN_ON: response too big");
        this.approved = msg[8 + 8 + 4] !== 0;
        this.#completions++;
        return;
      case 2: { // INITIAL_DEVICE_INFO
        if (pipeSize < 49) return void this.errors.push("WARN_ON_ONCE: device info too small");
        this.#completions++;
        const info = msg.subarray(8, 8 + pipeSize); // synthhid_device_info, size pipeSize
        const iv = new DataView(info.buffer, info.byteOffset, info.byteLength);
        this.vendor = iv.getUint16(12, true);
        this.product = iv.getUint16(14, true);
        const descOffset = 40;
        const descSize = pipeSize - descOffset;
        const bLength = info[descOffset]!;
        if (bLength === 0) return void (this.devInfoStatus = -12);
        if (bLength < 9 || bLength > descSize) return void (this.devInfoStatus = -22);
        const rdLen = iv.getUint16(descOffset + 7, true);
        if (rdLen === 0 || rdLen > descSize - bLength) return void (this.devInfoStatus = -22);
        this.reportDescriptor = info.slice(descOffset + bLength, descOffset + bLength + rdLen);
        // The ACK: pipe {1, 9}, synthhid {3, 1}, reserved 0.
        const ack = new Uint8Array(17);
        const av = new DataView(ack.buffer);
        av.setUint32(0, 1, true);
        av.setUint32(4, 9, true);
        av.setUint32(8, 3, true);
        av.setUint32(12, 1, true);
        this.ch.send(ack, { completionRequested: true });
        this.devInfoStatus = 0;
        return;
      }
      case 4: { // INPUT_REPORT
        if (!this.initComplete) return;
        const len = Math.min(dv.getUint32(12, true), 16384);
        if (16 + len > msg.length) return void this.errors.push("report longer than the packet");
        this.reports.push(msg.slice(16, 16 + len));
        return;
      }
      default:
        this.errors.push(`unsupported hid msg type ${type}`);
    }
  }
}
