/**
 * The control socket (`--control PATH`): a unix socket speaking JSON lines. Each request is one
 * JSON object with a `cmd`; each answer is one JSON object with `ok` and the result or `error`.
 *
 * ```
 * {"cmd":"status"}                         → {"ok":true,"boots":1,"heartbeat":{…},"exits":[…],…}
 * {"cmd":"shutdown"} / {"cmd":"reboot"}    → {"ok":true,"status":0}  (through the shutdown IC)
 * {"cmd":"kvp-get","key":"K","pool":0}     → {"ok":true,"value":"V"}
 * {"cmd":"kvp-set","key":"K","value":"V"}  → {"ok":true}
 * {"cmd":"channels"}                       → {"ok":true,"channels":[{relid,device,state,ringFill,…}]}
 * {"cmd":"disks"}                          → {"ok":true,"disks":[DiskStatus,…]}
 * {"cmd":"send-keys","keys":"ctrl-alt-delete"} → {"ok":true,"events":6,"route":"synthetic"}
 * {"cmd":"type","text":"ls\n"}             → {"ok":true,"events":6,"route":"ps2"}
 * {"cmd":"pointer","x":16384,"y":8192,"buttons":1} → {"ok":true,"route":"synthetic"}
 * {"cmd":"input"}                          → {"ok":true,"keyRoute":"synthetic",…}
 * {"cmd":"screendump","path":"FILE.png"}   → {"ok":true,"width":W,"height":H}
 * {"cmd":"pci"}                            → {"ok":true,"devices":[PciDeviceStatus,…]}
 * {"cmd":"copy-to-guest",…} {"cmd":"freeze"} {"cmd":"thaw"} {"cmd":"snapshot",…}
 * {"cmd":"memory"} {"cmd":"balloon","target":"768M"}
 *                                          → see `guest_services.ts`
 * {"cmd":"guest-ip"[,"mac":"52:54:…"]}     → {"ok":true,"adapters":[{mac,addresses,subnets,gateways}]}
 * ```
 *
 * `send-keys` takes space-separated combos of key names (`ctrl-alt-delete`, `shift-a b ret`);
 * each combo presses its keys in order and releases them in reverse. `type` types text on a US
 * layout. `pointer` moves the pointer to an absolute position (0..32767 on both axes) with the
 * given buttons (bit 0 left, 1 right, 2 middle). All go through the input router: the synthetic
 * keyboard and mouse once the guest's drivers connected, PS/2 before. `events` counts the key
 * transitions the route took (fewer than sent means the device dropped some).
 *
 * `screendump` writes the display's visible screen (`--display bochs`) as a PNG; it refuses
 * while the guest has set no mode, and never overwrites anything but `path` itself. `pci`
 * lists the functions on bus 0 with their BARs where the guest put them.
 *
 * `disks` lists the SCSI disks by LUN (an empty list without `--disk`), each as
 * `{"lun":0,"path":"disk.raw","format":"raw","readonly":false,"reads":n,"writes":n,
 * "flushes":n,"bytesRead":n,"bytesWritten":n,"inFlight":n}` (see `DiskStatus`). Counters start
 * at 0 when the VMM starts and survive guest reboots; `flushes` counts host fdatasync calls that
 * returned success for the guest's SYNCHRONIZE CACHE or FUA writes, so a guest test can check
 * that its `sync` reached the host.
 *
 * `status`'s `exits` has one object per vCPU, counted since the boot started: exits that reached
 * user space by kind (`io`, `mmio`, `rdmsr`, `wrmsr`, `intr` for kicks and thread-timer signals,
 * `hlt`, `other`), `hypercall`s, synthetic timers expired on the vCPU's thread (`stimer`),
 * channel doorbells that exited because no eventfd took them (`doorbell`), and
 * `msrWrites` by Hyper-V MSR index (`{"0x40000095":n}`): what an idle guest costs, exit by exit.
 * With VMBus, `doorbells` counts channel doorbells KVM completed through eventfds (no exit).
 * With the enlightenments, `hypercalls` has one `HypercallStatus` per vCPU: what shows that PV
 * TLB flushes and IPIs were made, succeeded and reached their targets.
 * @module
 */
import type { IntegrationComponents } from "../devices/ic/mod.ts";
import {
  type InputRouter,
  type KeyEvent,
  KeyNameError,
  parseKeyCombos,
  textToKeys,
} from "../devices/input/mod.ts";
import type { ScsiController } from "../devices/storage/mod.ts";
import type { ExitSnapshot } from "../kvm/exit_counters.ts";
import type { HypercallSnapshot } from "../hyperv/mod.ts";
import type { VmbusServer } from "../vmbus/mod.ts";
import type { DynamicMemoryDevice } from "../devices/balloon/mod.ts";
import { getLogger } from "../util/log.ts";
import { guestServicesCommand, guestServicesStatus } from "./guest_services.ts";
import { listenUnixSocket } from "../util/unix_socket.ts";
import type { NetStatus } from "./net.ts";

const log = getLogger("cli", "control");

/** What the control socket can reach in the running VM; replaced at every (re)boot. */
export interface ControlTarget {
  boots: number;
  cpus: number;
  vmbus: VmbusServer | undefined;
  ics: IntegrationComponents | undefined;
  /** The SCSI controller of `--disk` (undefined without disks). */
  scsi: ScsiController | undefined;
  /** The Dynamic Memory device and the boot RAM size (`memory`, `balloon`). */
  balloon?: DynamicMemoryDevice | undefined;
  memoryBytes?: number;
  /** Host input for the guest's keyboard and pointer (`send-keys`, `type`, `pointer`). */
  input?: InputRouter;
  /** Exit counters of each vCPU since this boot started (`status`'s `exits`). */
  exits?: () => ExitSnapshot[];
  /** Channel doorbells KVM completed through eventfds this boot (`status`'s `doorbells`). */
  doorbells?: () => number;
  /** Writes the screen to `path` as PNG (absent without a display); throws with the reason. */
  screendump?: (path: string) => Promise<{ width: number; height: number }>;
  /** The PCI functions (`pci`). */
  pci?: () => PciDeviceStatus[];
  /** Hypercall counters of each vCPU this boot (`status`'s `hypercalls`). */
  hypercalls?: () => HypercallStatus[];
  /** The synthetic NICs: link, negotiated NVSP, per-queue counters (`status`'s `net`). */
  net?: () => NetStatus[];
}

/** One function in the `pci` reply. */
export interface PciDeviceStatus {
  /** "00:01.3". */
  bdf: string;
  /** Registry/board name ("i440fx", "bochs-display"). */
  name: string;
  vendor: string;
  device: string;
  /** Class code, subclass and prog-if ("0x030000"). */
  class: string;
  /** Implemented BARs: index, kind, size and where the guest mapped it (null: unmapped). */
  bars: { index: number; kind: string; size: number; base: string | null }[];
  /** INTx pin (A-D) and the IOAPIC GSI it reaches, or null. */
  interrupt: { pin: string; gsi: number } | null;
  /** MSI enabled by the guest. */
  msi: boolean;
  /** MSI-X enabled by the guest (false without the capability). */
  msix: boolean;
}

/**
 * One vCPU in `status`'s `hypercalls`: its calls by name and result (`{"HvSendSyntheticClusterIpi":
 * {"HV_STATUS_SUCCESS":n}}`), the VPs its flush and IPI calls targeted (`flushTargets`,
 * `ipiTargets`, indexed by VP), and the remote TLB flush requests it served (`flushesServed`).
 */
export type HypercallStatus = HypercallSnapshot & { flushesServed: number };

/** One disk in the `disks` reply. Counters count commands the backend completed successfully. */
export interface DiskStatus {
  /** SCSI LUN the guest sees. */
  lun: number;
  /** Image path ("" for a backend without a file). */
  path: string;
  /** `raw` or `qcow2`. */
  format: string;
  /** True when the guest sees the disk write-protected. */
  readonly: boolean;
  /** READ commands completed. */
  reads: number;
  /** WRITE / WRITE SAME commands completed. */
  writes: number;
  /** Flushes completed: host fdatasync returned success (SYNCHRONIZE CACHE, FUA writes). */
  flushes: number;
  /** Bytes returned by those reads. */
  bytesRead: number;
  /** Bytes stored by those writes. */
  bytesWritten: number;
  /** SCSI commands in flight right now. */
  inFlight: number;
}

/** The `disks` reply body: every disk of `controller`, by LUN. */
export function diskStatus(controller: ScsiController | undefined): DiskStatus[] {
  if (!controller) return [];
  const out: DiskStatus[] = [];
  for (const lun of controller.luns()) {
    const d = controller.get(lun)!;
    const s = d.stats;
    out.push({
      lun,
      path: d.backend.path ?? "",
      format: d.backend.format,
      readonly: d.info.readOnly,
      reads: s.reads,
      writes: s.writes,
      flushes: s.flushes,
      bytesRead: s.bytesRead,
      bytesWritten: s.bytesWritten,
      inFlight: d.inflight,
    });
  }
  return out;
}

/** Largest request line accepted (bytes). */
const MAX_LINE = 64 * 1024;

/** Answers one request; never throws (errors become `{ok:false,error}`). */
export async function handleControlRequest(
  line: string,
  target: ControlTarget | undefined,
): Promise<Record<string, unknown>> {
  let req: Record<string, unknown>;
  try {
    const v = JSON.parse(line);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not an object");
    req = v;
  } catch (e) {
    return { ok: false, error: `bad request: ${(e as Error).message}` };
  }
  if (!target) return { ok: false, error: "the VM is not running" };
  const ics = target.ics;
  try {
    switch (req.cmd) {
      case "status":
        return {
          ok: true,
          boots: target.boots,
          cpus: target.cpus,
          vmbus: target.vmbus?.connection ? "connected" : "not connected",
          heartbeat: ics?.heartbeat.health ?? null,
          ...(target.exits ? { exits: target.exits() } : {}),
          ...(target.doorbells ? { doorbells: target.doorbells() } : {}),
          ...(target.hypercalls ? { hypercalls: target.hypercalls() } : {}),
          ...guestServicesStatus(target),
          ...(target.net ? { net: target.net() } : {}),
        };
      case "shutdown":
      case "reboot": {
        if (!ics?.shutdown.isReady) {
          return { ok: false, error: "the guest's shutdown IC is not ready" };
        }
        const r = await ics.shutdown.request(req.cmd === "shutdown" ? "poweroff" : "reboot");
        return { ok: r.accepted, status: r.status };
      }
      case "kvp-get": {
        if (!ics) return { ok: false, error: "no VMBus" };
        if (typeof req.key !== "string") return { ok: false, error: "kvp-get needs a string key" };
        const pool = typeof req.pool === "number" ? req.pool : 0;
        const found = await ics.kvp.lookup(pool, req.key);
        return { ok: true, value: found ?? null };
      }
      case "kvp-set": {
        if (!ics) return { ok: false, error: "no VMBus" };
        if (typeof req.key !== "string" || typeof req.value !== "string") {
          return { ok: false, error: "kvp-set needs string key and value" };
        }
        await ics.kvp.set(0, req.key, req.value);
        return { ok: true };
      }
      case "channels":
        return { ok: true, channels: target.vmbus?.channels() ?? [] };
      case "disks":
        return { ok: true, disks: diskStatus(target.scsi) };
      case "send-keys":
      case "type":
        return sendKeys(target.input, req);
      case "pointer": {
        const input = target.input;
        if (!input) return { ok: false, error: "this VM has no input devices" };
        const { x, y, buttons = 0, wheel = 0 } = req;
        if (
          typeof x !== "number" || typeof y !== "number" || typeof buttons !== "number" ||
          typeof wheel !== "number"
        ) {
          return { ok: false, error: "pointer needs numbers x and y (0..32767), buttons, wheel" };
        }
        const route = input.pointerRoute;
        return { ok: input.pointer(x, y, buttons, wheel), route };
      }
      case "input":
        return target.input
          ? { ok: true, ...target.input.status() }
          : { ok: false, error: "this VM has no input devices" };
      case "screendump": {
        if (typeof req.path !== "string" || req.path === "") {
          return { ok: false, error: "screendump needs a string path" };
        }
        if (!target.screendump) {
          return { ok: false, error: "no display (start with --display bochs)" };
        }
        const size = await target.screendump(req.path);
        return { ok: true, width: size.width, height: size.height };
      }
      case "pci":
        return { ok: true, devices: target.pci?.() ?? [] };
      case "guest-ip": {
        // Each NIC's addresses, asked through KVP (the guest's hv_kvp_daemon answers by MAC).
        if (!ics) return { ok: false, error: "no VMBus" };
        const macs = typeof req.mac === "string" ? [req.mac] : target.net?.().map((n) => n.mac);
        if (!macs?.length) return { ok: false, error: "no --net NIC to ask about" };
        const adapters = [];
        for (const mac of macs) {
          const info = await ics.kvp.ipInfo(mac);
          adapters.push({
            mac,
            addresses: info?.addresses ?? [],
            subnets: info?.subnets ?? [],
            gateways: info?.gateways ?? [],
          });
        }
        return { ok: true, adapters };
      }
      default:
        return (await guestServicesCommand(req, target)) ??
          { ok: false, error: `unknown cmd ${JSON.stringify(req.cmd)}` };
    }
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

function sendKeys(
  input: InputRouter | undefined,
  req: Record<string, unknown>,
): Record<string, unknown> {
  if (!input) return { ok: false, error: "this VM has no input devices" };
  let events: KeyEvent[];
  try {
    if (req.cmd === "type") {
      if (typeof req.text !== "string") return { ok: false, error: "type needs a string text" };
      events = textToKeys(req.text);
    } else {
      if (typeof req.keys !== "string") {
        return { ok: false, error: "send-keys needs a string keys, e.g. ctrl-alt-delete" };
      }
      events = parseKeyCombos(req.keys);
    }
  } catch (e) {
    if (e instanceof KeyNameError) return { ok: false, error: e.message };
    throw e;
  }
  const route = input.keyRoute;
  let sent = 0;
  for (const e of events) if (input.key(e.scanCode, e.down)) sent++;
  return { ok: sent > 0, events: sent, route };
}

/**
 * Serves the control socket at `path` until `close()`, under `listenUnixSocket`'s rule: an
 * existing file or a live socket at `path` is refused (UsageError), never replaced.
 */
export async function serveControl(
  path: string,
  getTarget: () => ControlTarget | undefined,
): Promise<{ close(): void }> {
  const socket = await listenUnixSocket(path, "--control");
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const conn of socket.listener) {
      conns.add(conn);
      serveConn(conn, getTarget).finally(() => conns.delete(conn));
    }
  })().catch(() => {});
  return {
    close() {
      socket.close();
      for (const c of conns) c.close();
    },
  };
}

async function serveConn(
  conn: Deno.Conn,
  getTarget: () => ControlTarget | undefined,
): Promise<void> {
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  let buf = "";
  try {
    for await (const chunk of conn.readable) {
      buf += dec.decode(chunk, { stream: true });
      if (buf.length > MAX_LINE && !buf.includes("\n")) {
        await conn.write(
          enc.encode(JSON.stringify({ ok: false, error: "request too long" }) + "\n"),
        );
        return;
      }
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line === "") continue;
        const answer = await handleControlRequest(line, getTarget());
        await conn.write(
          enc.encode(
            JSON.stringify(answer, (_k, v) => typeof v === "bigint" ? String(v) : v) + "\n",
          ),
        );
      }
    }
  } catch (e) {
    log.debug("control connection ended: {error}", { error: String(e) });
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}
