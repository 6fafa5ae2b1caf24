/**
 * What the synthetic NIC needs from a host network backend (TAP, or the in-memory loopback of the
 * unit tests): per queue, read one frame, write one frame with its offload description, and be
 * told when frames wait. Frames and offload metadata travel through buffers and records the
 * device owns and reuses, so no call allocates.
 * @module
 */

/** Offload work a transmitted frame still needs (the guest's LSO/checksum PPIs, virtio-style). */
export interface TxOffload {
  /** 0: frame complete; 1: fill in a checksum at `csumStart + csumOffset` (partial sum there). */
  needsCsum: number;
  /** Offset of the L4 header (checksum coverage starts there). */
  csumStart: number;
  /** Offset of the checksum field from `csumStart` (16 TCP, 6 UDP). */
  csumOffset: number;
  /** 0 none, 1 TCPv4, 4 TCPv6 (`VIRTIO_NET_HDR_GSO_*`). */
  gsoType: number;
  /** Segment payload size. */
  gsoSize: number;
  /** Bytes of headers (Ethernet + IP + TCP) in front of the payload. */
  hdrLen: number;
}

/** What the backend knows about a received frame. */
export interface RxInfo {
  /** The host checked (or never damaged) the L4 checksum. */
  csumValid: boolean;
}

/** One queue of a backend. */
export interface NetQueue {
  /**
   * Reads one frame into scratch memory at host address `dst` (at most `max` bytes); returns its
   * length, 0 when no frame waits, -1 on a hard error. Fills `info`.
   */
  read(dst: number, max: number, info: RxInfo): number;
  /**
   * Writes the frame at host address `frame` (`length` bytes). `headroom` writable bytes precede
   * it for the backend's own header. Returns false when the frame was dropped.
   */
  write(frame: number, length: number, headroom: number, offload: TxOffload): boolean;
  /** Calls `onReadable` while frames wait (level-triggered); `undefined` stops watching. */
  watch(onReadable: (() => void) | undefined): void;
}

/** A network backend. */
export interface NetBackend {
  /** Queues, at least one. */
  readonly queues: readonly NetQueue[];
  /** Short description for `status` (e.g. `tap:hdtap0`). */
  readonly description: string;
  /** The backend's own header bytes a write needs in front of the frame. */
  readonly headroom: number;
  /** Stops watching and closes host resources (safe twice). */
  close(): void;
}

/** A fresh `TxOffload` with nothing to do. */
export function noOffload(): TxOffload {
  return { needsCsum: 0, csumStart: 0, csumOffset: 0, gsoType: 0, gsoSize: 0, hdrLen: 0 };
}

/** `VIRTIO_NET_HDR_GSO_*` values used in `TxOffload.gsoType`. */
export const GsoType = { NONE: 0, TCPV4: 1, TCPV6: 4 } as const;
