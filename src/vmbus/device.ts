/**
 * What a synthetic device implements to sit on VMBus. The server owns the control plane (offers,
 * GPADLs, open/close, rescind); the device sees typed callbacks and talks through its `Channel`.
 *
 * All callbacks run synchronously on the main thread, from inside the server's entry points. A
 * callback that throws is logged and counted (`VmbusServer.stats.deviceErrors`); it never
 * reaches the guest or the vCPU loop.
 * @module
 */
import type { Channel } from "./channel.ts";
import type { RingPacket } from "./ring.ts";

/** A VMBus device: offer identity plus channel callbacks. */
export interface VmbusDevice {
  /** Interface type GUID (`if_type`), canonical text, e.g. storage `ba6163d9-04a1-4d29-b605-72e2ffb1dc7f`. */
  readonly classId: string;
  /** Instance GUID (`if_instance`), canonical text; unique per `classId`. */
  readonly instanceId: string;
  /** Short name for logs. */
  readonly name?: string;
  /** MMIO space the device wants, in MiB (`mmio_megabytes`). */
  readonly mmioMegabytes?: number;
  /** Optional MMIO space in MiB (`mmio_megabytes_optional`). */
  readonly mmioMegabytesOptional?: number;
  /** Up to 120 bytes of offer user-defined data (pipe offers: pipe mode in the first u32). */
  readonly userDefined?: Uint8Array;
  /** Offer `chn_flags` (`OfferFlags`), e.g. `NAMED_PIPE_MODE`; default 0. */
  readonly channelFlags?: number;
  /** Sub-channels the device accepts (`Channel.enableSubChannels`); default 0. */
  readonly maxSubChannels?: number;
  /**
   * True for a device that exists for one guest connection only (an hv_sock connection): when
   * the guest unloads VMBus, contacts the host again or the VM resets, the server forgets it
   * (after `onClose` if it was open) instead of offering it again, and calls `onDisconnect`.
   */
  readonly connectionScoped?: boolean;

  /**
   * The guest opened `channel` (primary or sub-channel): rings are ready. Return `false` (or
   * throw) to refuse; the guest then sees a failed OPENCHANNEL_RESULT. The device may send
   * packets from here (host-initiated protocols such as the ICs negotiate first).
   */
  onOpen(channel: Channel): boolean | void;

  /**
   * A packet arrived. `packet` and its payload view are only valid during this call. Return
   * `false` to leave the packet in the ring and stop reading (typically because a reply did not
   * fit): it is offered again after the guest makes room (`onWritable`) or on
   * `Channel.resume()`.
   */
  onPacket(channel: Channel, packet: RingPacket): boolean | void;

  /**
   * The channel closed: the guest closed it, the guest unloaded VMBus, the channel was
   * rescinded, its primary closed, or its ring turned out corrupt. Called once per `onOpen`
   * that succeeded. Afterwards sends fail and GPADL acquisitions are released.
   *
   * A device that still has work in flight touching guest memory (disk reads into guest pages)
   * returns a Promise that settles when that work is done: until then the server keeps the
   * channel's ring GPADL and the device's GPADLs (the guest's close completes with their
   * teardown), holds UNLOAD_RESPONSE, and `VmbusServer.settled()` waits for it.
   */
  onClose(channel: Channel): void | Promise<void>;

  /** A send that returned false can now be retried (the guest freed ring space). */
  onWritable?(channel: Channel): void;

  /**
   * The guest wants to tear down GPADL `gpadlId`, which this device acquired on `channel`
   * (`Channel.acquireGpadl`). Release it soon; the guest waits for GPADL_TORNDOWN until then.
   */
  onGpadlTeardown?(channel: Channel, gpadlId: number): void;

  /** The guest moved the channel's interrupt to `targetVp` (MODIFYCHANNEL). */
  onRetarget?(channel: Channel, targetVp: number): void;

  /** A `connectionScoped` device was dropped with the guest's connection (see there). */
  onDisconnect?(): void;
}

/** Options of `Channel.send`. */
export interface SendOptions {
  /** Ask the guest for a completion packet carrying `transactionId`. */
  readonly completionRequested?: boolean;
  /** Transaction id (u64); default 0. */
  readonly transactionId?: bigint;
}

/** One range of a transfer-page packet (offsets into a transfer page set). */
export interface TransferPageRange {
  /** Bytes in the range. */
  readonly byteCount: number;
  /** Offset of the range in the page set. */
  readonly byteOffset: number;
}
