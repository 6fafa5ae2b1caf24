/**
 * hv_sock wire format (Linux `net/vmw_vsock/hyperv_transport.c`, Windows AF_HYPERV): one VMBus
 * channel per connection, offered with the service id as `if_type` and an endpoint id as
 * `if_instance`; every packet in either direction is in-band, `{u32 pkt_type = 1, u32 data_size}`
 * then the data padded to 8 bytes. `data_size` 0 is a FIN (the sender shut down its write side).
 * Layouts, constants and pure codecs only, no I/O.
 *
 * Linux accepts only service ids of the form `<port as u32 LE>-facb-11e6-bd58-64006a7986d3`
 * (`is_valid_srv_id`), so AF_VSOCK port P is the GUID whose Data1 is P. Sizes are pinned by
 * `tests/unit/devices/hvsock/protocol_test.ts`.
 * @module
 */
import { defineLayout } from "../../util/layout.ts";
import { OfferFlags } from "../../vmbus/mod.ts";

/** The tail every Linux hv_sock service id shares (`srv_id_template` after Data1). */
export const SERVICE_ID_SUFFIX = "-facb-11e6-bd58-64006a7986d3";

/**
 * Offer `chn_flags` of an hv_sock channel: TLNPI_PROVIDER_OFFER marks it as a socket (without it
 * no driver claims the offer), plus ENUMERATE_DEVICE_INTERFACE and NAMED_PIPE_MODE as Hyper-V
 * sends them (0x2011).
 */
export const HVSOCK_CHANNEL_FLAGS = OfferFlags.TLNPI_PROVIDER_OFFER |
  OfferFlags.NAMED_PIPE_MODE | OfferFlags.ENUMERATE_DEVICE_INTERFACE;

/** The hv_sock part of the offer's 120 user-defined bytes. */
export const HvsockOfferData = defineLayout("hvsock_offer_user_def", 26, {
  /** 0: byte mode. */
  pipeMode: { offset: 0, type: "u32" },
  /** 1 when the host connects and a guest listener accepts (`conn_from_host` in Linux). */
  isForGuestAccept: { offset: 4, type: "u8" },
  /** 1 for a Windows container's socket. */
  isForGuestContainer: { offset: 5, type: "u8" },
  /** Offer version (RS5 = 1). */
  version: { offset: 6, type: "u32" },
  /** Silo of the connection (zero: the VM itself). */
  siloId: { offset: 10, type: { bytes: 16 } },
});

/** `struct vmpipe_proto_header`: the 8 bytes before each packet's data. */
export const PipeDataHeader = defineLayout("vmpipe_proto_header", 8, {
  pktType: { offset: 0, type: "u32" },
  dataSize: { offset: 4, type: "u32" },
});

/** `pkt_type` of a data packet (the only type Linux sends or accepts). */
export const PIPE_PKT_TYPE_DATA = 1;

/** Largest `data_size` either side may send (`HVS_MTU_SIZE`); Linux's receive buffer holds it. */
export const HVSOCK_MTU = 16 * 1024;

/**
 * Largest data Linux itself puts in one packet (a page minus the pipe header): the guest's
 * `pending_send_sz` wakes the host when a packet this big fits.
 */
export const LINUX_SEND_CHUNK = 4096 - PipeDataHeader.size;

/** The service id Linux uses for AF_VSOCK port `port` (an unsigned 32-bit number). */
export function serviceIdForPort(port: number): string {
  return (port >>> 0).toString(16).padStart(8, "0") + SERVICE_ID_SUFFIX;
}

/**
 * The AF_VSOCK port of a Linux-style service or endpoint id, or undefined for any other GUID
 * (Windows services use arbitrary GUIDs). `id` is canonical text as `formatGuid` writes it.
 */
export function portOfServiceId(id: string): number | undefined {
  const lower = id.toLowerCase();
  if (lower.length !== 36 || !lower.endsWith(SERVICE_ID_SUFFIX)) return undefined;
  const head = lower.slice(0, 8);
  if (!/^[0-9a-f]{8}$/.test(head)) return undefined;
  return parseInt(head, 16);
}

/** The offer user-defined bytes of a connection (`forGuestAccept`: the host connects). */
export function offerUserDefined(forGuestAccept: boolean): Uint8Array {
  return HvsockOfferData.encode({ pipeMode: 0, isForGuestAccept: forGuestAccept ? 1 : 0 });
}

/** One parsed guest packet: data (a view into the packet payload) or a FIN. */
export type PipePacket =
  | { readonly kind: "data"; readonly data: Uint8Array }
  | { readonly kind: "fin" }
  | { readonly kind: "bad"; readonly why: string };

/**
 * Parses a guest packet's payload: the pipe header, then `data_size` bytes that must lie inside
 * the payload and not exceed the MTU. The data is a view into `payload`, valid as long as it is.
 */
export function parsePipePacket(payload: Uint8Array): PipePacket {
  if (payload.length < PipeDataHeader.size) {
    return { kind: "bad", why: `a ${payload.length}-byte packet has no pipe header` };
  }
  const type = PipeDataHeader.get(payload, 0, "pktType");
  if (type !== PIPE_PKT_TYPE_DATA) return { kind: "bad", why: `packet type ${type}` };
  const size = PipeDataHeader.get(payload, 0, "dataSize");
  if (size > HVSOCK_MTU || size > payload.length - PipeDataHeader.size) {
    return {
      kind: "bad",
      why: `data size ${size} in a ${payload.length}-byte packet (limit ${HVSOCK_MTU})`,
    };
  }
  if (size === 0) return { kind: "fin" };
  return {
    kind: "data",
    data: payload.subarray(PipeDataHeader.size, PipeDataHeader.size + size),
  };
}

/**
 * Writes the pipe header for `dataSize` bytes at the start of `packet` (whose data follows from
 * byte 8) and returns the packet's first `8 + dataSize` bytes.
 */
export function framePipePacket(packet: Uint8Array, dataSize: number): Uint8Array {
  PipeDataHeader.encode({ pktType: PIPE_PKT_TYPE_DATA, dataSize }, packet, 0);
  return packet.subarray(0, PipeDataHeader.size + dataSize);
}
