/**
 * hv_sock: AF_VSOCK sockets between host and guest over VMBus, one channel per connection
 * (Linux `net/vmw_vsock/hyperv_transport.c`).
 *
 * - `protocol.ts`: service ids, offer data, the pipe packet header.
 * - `connection.ts`: one connection as a connection-scoped VMBus device, with backpressure and
 *   the close order Linux waits for.
 * - `host.ts`: the switchboard of one boot (guest connect requests, host connects).
 * - `unix_backend.ts`: `--vsock PATH` in Firecracker's convention.
 *
 * ```ts
 * const backend = await VsockUnixBackend.listen(path); // once
 * const vsock = backend.newBoot(); // every boot
 * const server = new VmbusServer(memory, synic, { vpCount, ...vsock.serverOptions });
 * const detach = vsock.attach(server); // at the end of the boot: detach()
 * ```
 * @module
 */
export * from "./protocol.ts";
export {
  type ConnectionOwner,
  type ConnectionState,
  type HostStream,
  HvsockConnection,
  type HvsockConnectionOptions,
} from "./connection.ts";
export {
  type HvsockBackend,
  type HvsockConnectionInfo,
  HvsockHost,
  type HvsockHostOptions,
} from "./host.ts";
export {
  type ConnectLine,
  MAX_CONNECT_LINE,
  parseConnectLine,
  VsockUnixBackend,
} from "./unix_backend.ts";
