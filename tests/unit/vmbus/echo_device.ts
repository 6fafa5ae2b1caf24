/**
 * A small VMBus device for tests: echoes in-band packets back as completions (or as in-band
 * packets), and obeys a few text commands so tests can drive device-side features:
 * `sub:N` enables N sub-channels, `hold:H` acquires GPADL H, `drop:H` releases it, `burst:N:L`
 * sends N packets of L bytes.
 * @module
 */
import type { Channel } from "../../../src/vmbus/channel.ts";
import type { VmbusDevice } from "../../../src/vmbus/device.ts";
import type { RingPacket } from "../../../src/vmbus/ring.ts";

const text = new TextDecoder();

/** Echo device. */
export class EchoDevice implements VmbusDevice {
  readonly classId: string;
  readonly instanceId: string;
  readonly name: string;
  readonly maxSubChannels: number;
  readonly userDefined = new Uint8Array([1, 2, 3]);
  readonly mmioMegabytes = 0;
  /** Refuse opens. */
  refuseOpen = false;
  /** Throw from onPacket. */
  throwOnPacket = false;
  /** Return false from onPacket when the echo does not fit (else drop it). */
  backpressure = true;
  readonly opened: Channel[] = [];
  readonly closed: Channel[] = [];
  readonly received: { relid: number; type: number; payload: Uint8Array; tid: bigint }[] = [];
  readonly teardownRequests: number[] = [];
  readonly retargets: number[] = [];
  writable = 0;
  /** Packets waiting for ring space (sent on onWritable). */
  readonly backlog: { ch: Channel; payload: Uint8Array }[] = [];

  constructor(instance = 1, maxSubChannels = 0) {
    this.classId = "8a8f1e2c-0000-4000-8000-00000000e40d";
    this.instanceId = `00000000-0000-4000-8000-${instance.toString(16).padStart(12, "0")}`;
    this.name = `echo${instance}`;
    this.maxSubChannels = maxSubChannels;
  }

  onOpen(channel: Channel): boolean {
    if (this.refuseOpen) return false;
    this.opened.push(channel);
    return true;
  }

  onPacket(channel: Channel, packet: RingPacket): boolean {
    if (this.throwOnPacket) throw new Error("echo device bug");
    const payload = packet.payload.slice();
    this.received.push({
      relid: channel.relid,
      type: packet.type,
      payload,
      tid: packet.transactionId,
    });
    const cmd = text.decode(payload).replace(/\0+$/, "");
    if (cmd.startsWith("sub:")) {
      channel.complete(
        packet,
        new Uint8Array([channel.enableSubChannels(Number(cmd.slice(4))) ? 1 : 0]),
      );
      return true;
    }
    if (cmd.startsWith("hold:")) {
      const ok = channel.acquireGpadl(Number(cmd.slice(5))) !== undefined;
      channel.complete(packet, new Uint8Array([ok ? 1 : 0]));
      return true;
    }
    if (cmd.startsWith("drop:")) {
      channel.releaseGpadl(Number(cmd.slice(5)));
      return true;
    }
    if (cmd.startsWith("burst:")) {
      const [, n, len] = cmd.split(":");
      for (let i = 0; i < Number(n); i++) {
        const p = new Uint8Array(Number(len)).fill(i & 0xff);
        if (!channel.send(p)) this.backlog.push({ ch: channel, payload: p });
      }
      return true;
    }
    if (packet.type === 6 && packet.completionRequested) {
      if (!channel.complete(packet, payload)) return this.backpressure ? false : true;
    }
    return true;
  }

  onClose(channel: Channel): void {
    this.closed.push(channel);
  }

  onWritable(_channel: Channel): void {
    this.writable++;
    while (this.backlog.length > 0) {
      const { ch, payload } = this.backlog[0]!;
      if (!ch.send(payload)) return;
      this.backlog.shift();
    }
  }

  onGpadlTeardown(channel: Channel, gpadlId: number): void {
    this.teardownRequests.push(gpadlId);
    channel.releaseGpadl(gpadlId);
  }

  onRetarget(_channel: Channel, targetVp: number): void {
    this.retargets.push(targetVp);
  }
}

/** Encodes a text command as a packet payload. */
export function cmd(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}
