/**
 * The synthetic NIC (netvsc): NVSP + RNDIS over VMBus for Linux `hv_netvsc` and Windows
 * netvsc, on a host network backend. Parts kept apart, as in OpenVMM (`netvsp` /
 * `net_backend`):
 *
 * - `protocol.ts`: NVSP, RNDIS and NDIS layouts and constants (no I/O);
 * - `rndis.ts`: the RNDIS control plane (INIT, QUERY, SET, RESET, KEEPALIVE, indications);
 * - `netvsp.ts`: the `VmbusDevice` (NVSP setup, buffers, data path both ways, sub-channels);
 * - `backend.ts`: the backend interface; `tap.ts`: the TAP backend and the `--net` parser;
 * - `buffers.ts`: host-address views of guest buffers for allocation-free copies.
 *
 * ```ts
 * const backend = openTap({ name: "hdtap0", queues: 1 });
 * server.addDevice(new NetvspDevice(backend, { mac, mtu: 1500 }));
 * ```
 * @module
 */
export * from "./protocol.ts";
export * from "./backend.ts";
export {
  type NetQueueStats,
  NetvspDevice,
  netvspInstanceId,
  type NetvspOptions,
  type NetvspStats,
} from "./netvsp.ts";
export { handleRndisControl, type RndisConfig, type RndisState } from "./rndis.ts";
export {
  DEFAULT_MAC,
  type FdWatcher,
  formatMac,
  type NetSpec,
  openTap,
  parseMac,
  parseNetSpec,
  TapBackend,
} from "./tap.ts";
