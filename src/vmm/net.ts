/**
 * The VMM's side of `--net`: tap backends opened once for the whole run (they outlive guest
 * resets, like disks), and per boot one synthetic NIC each on the VMBus server, with its tap
 * watched by that boot's event loop. `status` on the control socket reads `NetStatus`.
 * @module
 */
import {
  formatMac,
  type NetQueueStats,
  type NetSpec,
  NetvspDevice,
  netvspInstanceId,
  openTap,
  type TapBackend,
} from "../devices/net/mod.ts";
import type { VmbusServer } from "../vmbus/mod.ts";
import type { EventLoop } from "../util/event_loop.ts";

/** One NIC in `status`. */
export interface NetStatus {
  backend: string;
  mac: string;
  mtu: number;
  link: "up" | "down";
  /** NVSP version the guest negotiated (0: the guest's driver is not bound). */
  nvsp: number;
  queues: NetQueueStats[];
  rxDropped: number;
  txDropped: number;
  malformed: number;
  /** Guest frames sent with segmentation (LSO) or checksum offload. */
  txLso: number;
  txCsum: number;
}

/** The open taps of a run. */
export interface NetBackends {
  /** Adds one NIC per tap to `server`, watching the taps with `loop`; `close` detaches. */
  attach(server: VmbusServer, loop: EventLoop): { status(): NetStatus[]; close(): void };
  close(): void;
}

/** Opens every `--net` tap (throws `UsageError` with one line on any failure). */
export function openNetBackends(specs: readonly NetSpec[]): NetBackends {
  const taps: TapBackend[] = [];
  try {
    for (const s of specs) taps.push(openTap(s));
  } catch (e) {
    taps.forEach((t) => t.close());
    throw e;
  }
  return {
    attach(server, loop) {
      const nics = taps.map((tap, i) => {
        tap.bind(loop);
        const nic = new NetvspDevice(tap, {
          mac: tap.spec.mac,
          mtu: tap.spec.mtu,
          instanceId: netvspInstanceId(i),
          name: `netvsp${i}`,
        });
        server.addDevice(nic);
        return nic;
      });
      return {
        status: () =>
          nics.map((n) => ({
            backend: n.backend.description,
            mac: formatMac(n.mac),
            mtu: n.mtu,
            link: n.linkUp ? "up" : "down",
            nvsp: n.version,
            queues: n.queueStats(),
            rxDropped: n.stats.rxDropped,
            txDropped: n.stats.txDropped,
            malformed: n.stats.malformed,
            txLso: n.stats.txLso,
            txCsum: n.stats.txCsum,
          })),
        close() {
          for (const n of nics) n.close();
          for (const t of taps) t.bind(undefined);
        },
      };
    },
    close() {
      taps.forEach((t) => t.close());
    },
  };
}
