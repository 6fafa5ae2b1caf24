/**
 * Control-socket commands of the guest-service ICs (file copy and VSS):
 *
 * ```
 * {"cmd":"copy-to-guest","src":HOSTPATH,"dst":GUESTPATH,"overwrite":false}
 *     → {"ok":true,"bytes":n,"seconds":s}   (progress meanwhile in status's "fcopy")
 * {"cmd":"freeze"} → {"ok":true}            {"cmd":"thaw"} → {"ok":true,"frozenMs":n}
 * {"cmd":"snapshot","disk":LUN,"path":FILE}
 *     → {"ok":true,"path":FILE,"bytes":n,"frozenMs":n}
 * {"cmd":"memory"} → {"ok":true,"bootBytes":n,"balloonedBytes":n,"guestBytes":n,
 *                     "guest":{"availableBytes":n,"committedBytes":n,"ageMs":n}|null,"hostRssBytes":n}
 * {"cmd":"balloon","target":"768M"} → {"ok":true,"changedBytes":n,"guestBytes":n}
 * ```
 *
 * `balloon` moves the guest's memory toward `target` (bytes or a size like `768M`): it takes
 * pages from the guest (Linux gives fewer when it reaches its floor) or gives ballooned ones back.
 *
 * `snapshot` freezes the guest's file systems (VSS), flushes the disk's backend, copies its
 * image file (raw or qcow2, as it is) to a new file FILE, thaws, and reports how long the guest
 * was frozen. FILE must not exist (nothing is overwritten). Guest failures come back as
 * `{"ok":false,"error":…}` with the guest's status explained.
 * @module
 */
import type { IntegrationComponents } from "../devices/ic/mod.ts";
import type { ScsiController } from "../devices/storage/mod.ts";
import { DM_PAGE_SIZE, type DynamicMemoryDevice, hostRssBytes } from "../devices/balloon/mod.ts";
import { parseSize } from "./config.ts";

/** What the guest-service commands need from the running VM. */
export interface GuestServicesTarget {
  ics: IntegrationComponents | undefined;
  scsi: ScsiController | undefined;
  balloon?: DynamicMemoryDevice | undefined;
  memoryBytes?: number;
}

/** The `status` fields of the guest services. */
export function guestServicesStatus(target: GuestServicesTarget): Record<string, unknown> {
  const ics = target.ics;
  if (!ics) return {};
  return {
    fcopy: ics.fcopy.progress ?? null,
    vss: { state: ics.vss.state, frozen: ics.vss.frozen },
  };
}

/** Answers a guest-service command, or returns undefined for any other `cmd`. */
export async function guestServicesCommand(
  req: Record<string, unknown>,
  target: GuestServicesTarget,
): Promise<Record<string, unknown> | undefined> {
  const ics = target.ics;
  switch (req.cmd) {
    case "copy-to-guest": {
      if (!ics) return { ok: false, error: "no VMBus" };
      if (typeof req.src !== "string" || typeof req.dst !== "string") {
        return { ok: false, error: "copy-to-guest needs string src (host) and dst (guest) paths" };
      }
      if (req.overwrite !== undefined && typeof req.overwrite !== "boolean") {
        return { ok: false, error: "copy-to-guest: overwrite must be true or false" };
      }
      const r = await ics.fcopy.copyToGuest(req.src, req.dst, {
        overwrite: req.overwrite === true,
        createPath: req.createPath === true,
      });
      return { ok: true, bytes: r.bytes, seconds: r.seconds };
    }
    case "freeze":
      if (!ics) return { ok: false, error: "no VMBus" };
      await ics.vss.freeze();
      return { ok: true };
    case "thaw": {
      if (!ics) return { ok: false, error: "no VMBus" };
      const ms = await ics.vss.thaw();
      return { ok: true, ...(ms !== undefined ? { frozenMs: Math.round(ms) } : {}) };
    }
    case "snapshot":
      return await snapshot(req, target);
    case "memory":
      return memoryInfo(target);
    case "balloon":
      return await balloonTo(req, target);
    default:
      return undefined;
  }
}

async function snapshot(
  req: Record<string, unknown>,
  target: GuestServicesTarget,
): Promise<Record<string, unknown>> {
  const { ics, scsi } = target;
  if (!ics) return { ok: false, error: "no VMBus" };
  if (typeof req.disk !== "number" || typeof req.path !== "string") {
    return { ok: false, error: "snapshot needs disk (a LUN number) and path (a new file)" };
  }
  const disk = scsi?.get(req.disk);
  const image = disk?.backend.path;
  if (!disk || !image) return { ok: false, error: `no disk at LUN ${req.disk}` };
  const out = req.path;
  let exists = true;
  try {
    await Deno.lstat(out);
  } catch {
    exists = false;
  }
  if (exists) return { ok: false, error: `${out} exists; snapshot writes a new file only` };
  await ics.vss.freeze();
  const t0 = performance.now();
  let bytes = 0;
  try {
    // The guest's own flushes came before FREEZE's answer; this one covers backend caches.
    await disk.backend.flush();
    await Deno.copyFile(image, out);
    bytes = (await Deno.stat(out)).size;
  } catch (e) {
    await ics.vss.thaw().catch(() => {});
    await Deno.remove(out).catch(() => {});
    return { ok: false, error: `snapshot of ${image} failed: ${(e as Error).message}` };
  }
  const frozenMs = await ics.vss.thaw();
  return {
    ok: true,
    path: out,
    format: disk.backend.format,
    bytes,
    frozenMs: Math.round(frozenMs ?? performance.now() - t0),
  };
}

function memoryInfo(target: GuestServicesTarget): Record<string, unknown> {
  const b = target.balloon;
  if (!b || target.memoryBytes === undefined) return { ok: false, error: "no balloon device" };
  const info = b.info();
  const ballooned = info.balloonedPages * DM_PAGE_SIZE;
  return {
    ok: true,
    driver: info.state,
    version: info.version ?? null,
    bootBytes: target.memoryBytes,
    balloonedBytes: ballooned,
    guestBytes: target.memoryBytes - ballooned,
    guest: info.status
      ? {
        availableBytes: info.status.availablePages * DM_PAGE_SIZE,
        committedBytes: info.status.committedPages * DM_PAGE_SIZE,
        ageMs: Math.round(performance.now() - info.status.at),
      }
      : null,
    statusReports: info.statusReports,
    hostRssBytes: hostRssBytes() ?? null,
  };
}

async function balloonTo(
  req: Record<string, unknown>,
  target: GuestServicesTarget,
): Promise<Record<string, unknown>> {
  const b = target.balloon;
  if (!b || target.memoryBytes === undefined) return { ok: false, error: "no balloon device" };
  let want: number;
  try {
    want = typeof req.target === "number" ? req.target : parseSize(String(req.target), "target");
  } catch (e) {
    return { ok: false, error: `balloon: ${(e as Error).message}` };
  }
  if (!Number.isSafeInteger(want) || want <= 0 || want > target.memoryBytes) {
    return { ok: false, error: `balloon: target must be between 1 byte and the boot RAM` };
  }
  const now = target.memoryBytes - b.balloonedPages * DM_PAGE_SIZE;
  const pages = Math.floor(Math.abs(now - want) / DM_PAGE_SIZE);
  let changed = 0;
  if (pages > 0 && want < now) changed = -(await b.inflate(pages));
  else if (pages > 0) changed = await b.deflate(pages);
  return {
    ok: true,
    changedBytes: changed * DM_PAGE_SIZE,
    guestBytes: target.memoryBytes - b.balloonedPages * DM_PAGE_SIZE,
  };
}
