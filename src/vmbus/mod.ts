/**
 * VMBus host: the control plane (version negotiation, offers, GPADLs, open/close, rescind,
 * unload), the host side of channel ring buffers, and the interface synthetic devices implement.
 *
 * Layering: `src/devices/*` implement `VmbusDevice` and talk through `Channel`; the server talks
 * down to the SynIC through `SynicPort` and is driven by `onPostMessage`, `onSignalEvent` and
 * `onMessageSlotFree`. Everything is synchronous and runs on the main thread.
 *
 * Decisions:
 * - Protocol versions 0.13 through 6.0 are accepted as requested (6.0 grants no feature flags).
 * - No monitored notification: every offer has monitor_allocated = 0 (monitor id 0xff), so guests
 *   signal each channel with HvSignalEvent on its own connection id (0x2000 + relid, 1.1+) and
 *   the host never needs to scan monitor pages. Throughput batching comes from the ring
 *   interrupt mask instead (the host masks while it drains).
 * - 5.0+ guests are told to post messages on connection id 1 (both 1 and 4 are accepted).
 * - Pre-2.4 guests get host-to-guest interrupts through the interrupt page (event flag 0 on
 *   VP 0); 0.13 guests also signal the host through it (connection id 2).
 * - Sub-channels are offered on the device's request and rescinded when the primary closes.
 *
 * Device tests: `src/vmbus/testing/mod.ts` has `LoopbackGuest`, a scripted Linux-like guest.
 * @module
 */
export * from "./protocol.ts";
export * from "./guid.ts";
export {
  Gpadl,
  GpadlError,
  type GpadlErrorCode,
  type GpadlState,
  GpadlTable,
  type GpaRange,
  parseGpaRanges,
  SgBuffer,
} from "./gpadl.ts";
export {
  DESCRIPTOR_SIZE,
  IncomingRing,
  OutgoingRing,
  PACKET_TRAILER_SIZE,
  packetSize,
  RingData,
  RingError,
  type RingErrorCode,
  RingPacket,
  type RingPair,
  WriteResult,
} from "./ring.ts";
export type { SendOptions, TransferPageRange, VmbusDevice } from "./device.ts";
export { Channel, type ChannelState, type OpenParams } from "./channel.ts";
export {
  type ChannelInfo,
  type ConnectionInfo,
  type HvsockConnectRequest,
  type SynicPort,
  vmbusOwnsConnection,
  VmbusServer,
  type VmbusServerOptions,
  type VmbusStats,
} from "./server.ts";
