/**
 * An AHCI 1.0 host bus adapter (the register model of Intel's ICH9 AHCI, 8086:2922) with a SATA
 * disk or an ATAPI CD-ROM on each port, over the shared storage backends.
 *
 * The guest programs the ABAR registers ({@linkcode AhciController.read}/`write`, offsets into
 * BAR5); setting PxCI bits with PxCMD.ST on makes the port fetch each issued command header, its
 * command FIS and PRD table from guest memory, run it against the drive asynchronously, move the
 * data straight between the backend and the guest's regions, post the device's FISes into the
 * received-FIS area and raise PxIS/IS and the interrupt line. Commands run one at a time per
 * port, in slot order; NCQ (READ/WRITE FPDMA QUEUED) completes through Set Device Bits FISes.
 *
 * Guest bytes are hostile: every table and region is bounds-checked against guest RAM (a command
 * list or table outside RAM is a host bus fatal error, a PRD outside RAM a host bus data error),
 * PRD counts and byte counts only ever select views of RAM, and a transfer longer than the PRDs
 * fails the command with ABRT instead of writing past them. Nothing throws to the caller.
 * @module
 */
import type { BusDevice } from "../../machine/bus.ts";
import { type DiskBackend, DiskError } from "../storage/backend/mod.ts";
import { CdTarget } from "./atapi.ts";
import { identifyCdrom, identifyDisk, type IdentifyInfo } from "./identify.ts";
import {
  AHCI_ABAR_SIZE,
  AHCI_PORTS,
  AHCI_SLOTS,
  AHCI_VERSION,
  ATA_ABRT,
  ATA_BSY,
  ATA_DRDY,
  ATA_DRQ,
  ATA_DSC,
  ATA_ERR,
  ATA_IDNF,
  ATA_UNC,
  AtaCmd,
  CAP_ISS_GEN3,
  CAP_S64A,
  CAP_SAM,
  CAP_SCLO,
  CAP_SNCQ,
  CMD_CLO,
  CMD_CR,
  CMD_FR,
  CMD_FRE,
  CMD_POD,
  CMD_ST,
  CMD_SUD,
  CMD_WRITABLE,
  COMMAND_HEADER,
  CT_ACMD,
  CT_CFIS,
  CT_PRDT,
  FIS_D2H,
  FIS_H2D,
  FIS_I,
  FIS_PIO,
  FIS_PIO_D,
  FIS_PIO_SETUP,
  FIS_REG_D2H,
  FIS_REG_H2D,
  FIS_SDB,
  FIS_SET_DEVICE_BITS,
  GHC_AE,
  GHC_HR,
  GHC_IE,
  H2D_C,
  HBA_BOHC,
  HBA_CAP,
  HBA_CAP2,
  HBA_GHC,
  HBA_IS,
  HBA_PI,
  HBA_VS,
  HDR_WRITE,
  IS_DHRS,
  IS_DPS,
  IS_HBDS,
  IS_HBFS,
  IS_MASK,
  IS_PSS,
  IS_SDBS,
  IS_TFES,
  PORT_BASE,
  PORT_STRIDE,
  PRD_DBC_MASK,
  PRD_ENTRY,
  PRD_I,
  PxCI,
  PxCLB,
  PxCLBU,
  PxCMD,
  PxFB,
  PxFBU,
  PxIE,
  PxIS,
  PxSACT,
  PxSCTL,
  PxSERR,
  PxSIG,
  PxSNTF,
  PxSSTS,
  PxTFD,
  RFIS_PSFIS,
  RFIS_RFIS,
  RFIS_SDBFIS,
  SCTL_DET_MASK,
  SIG_ATA,
  SIG_ATAPI,
  SSTS_ONLINE,
} from "./protocol.ts";
import { ScatterGather } from "./sg.ts";

/** What DMA may touch: guest RAM (`GuestMemory` satisfies it). */
export interface AhciMemory {
  /** A view of `[gpa, gpa+length)` when it is wholly RAM, else undefined. */
  trySlice(gpa: number, length: number): Uint8Array | undefined;
}

/** A drive on a port. */
export type AhciDrive =
  | { readonly kind: "disk"; readonly backend: DiskBackend; readonly serial?: string }
  | { readonly kind: "cdrom"; readonly backend: DiskBackend | undefined; readonly serial?: string };

/** What the controller needs from the machine. */
export interface AhciDeps {
  readonly memory: AhciMemory;
  /** The interrupt output with level semantics (INTx). */
  setInterrupt(level: boolean): void;
  /** Called for every new enabled interrupt event while GHC.IE is set (one MSI each). */
  pulse?(): void;
  /** Called after each command with its opcode (ATAPI: 0xA0 and the CDB's first byte). */
  trace?(
    port: number,
    command: number,
    packet: number | undefined,
    status: number,
    bytes: number,
  ): void;
}

/** Per-port counters, for tests and the control socket. */
export interface AhciPortStats {
  commands: number;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
}

const NCQ_DEPTH = 32;
const TWO_32 = 0x1_0000_0000;
/** Status of a ready ATA device. */
const STATUS_OK = ATA_DRDY | ATA_DSC;

interface Port {
  readonly index: number;
  readonly drive: AhciDrive | undefined;
  readonly cd: CdTarget | undefined;
  readonly identify: Uint8Array | undefined;
  clb: number;
  clbu: number;
  fb: number;
  fbu: number;
  is: number;
  ie: number;
  cmd: number;
  tfd: number;
  sig: number;
  ssts: number;
  sctl: number;
  serr: number;
  sact: number;
  ci: number;
  /** Slots handed to the engine and not yet completed. */
  busy: number;
  /** Bumped when the port stops or resets, so stale completions are dropped. */
  generation: number;
  /** The signature D2H FIS was posted since the last reset. */
  initD2hSent: boolean;
  /** The engine runs (one command at a time). */
  running: boolean;
  readonly stats: AhciPortStats;
}

/** Outcome of one ATA command. */
interface AtaResult {
  status: number;
  error: number;
  /** Bytes moved (PRDBC). */
  transferred: number;
  /** PIO data-in: post a PIO setup FIS too. */
  pioIn?: boolean;
  /** ATAPI interrupt reason in the count register. */
  count?: number;
}

const abort = (status = STATUS_OK): AtaResult => ({
  status: status | ATA_ERR,
  error: ATA_ABRT,
  transferred: 0,
});

/** The AHCI host bus adapter. */
export class AhciController implements BusDevice {
  readonly #ports: Port[];
  readonly #deps: AhciDeps;
  #ghc = GHC_AE;
  #is = 0;
  #irqLevel = false;
  readonly #inflight = new Set<Promise<void>>();

  /** `drives[i]` sits on port i (at most six; undefined: nothing attached). */
  constructor(drives: readonly (AhciDrive | undefined)[], deps: AhciDeps) {
    if (drives.length > AHCI_PORTS) throw new RangeError(`AHCI has ${AHCI_PORTS} ports`);
    this.#deps = deps;
    this.#ports = Array.from({ length: AHCI_PORTS }, (_, i) => {
      const drive = drives[i];
      const info: IdentifyInfo = {
        serial: drive?.serial ?? `HDNO-AHCI-${i}`,
        model: drive?.kind === "cdrom" ? "hyperdeno DVD-ROM" : "hyperdeno SATA disk",
        firmware: "1.0",
      };
      const port: Port = {
        index: i,
        drive,
        cd: drive?.kind === "cdrom" ? new CdTarget(drive.backend) : undefined,
        identify: drive?.kind === "disk"
          ? identifyDisk(
            info,
            Math.floor(drive.backend.size / drive.backend.sectorSize),
            drive.backend.sectorSize,
            NCQ_DEPTH,
          )
          : drive?.kind === "cdrom"
          ? identifyCdrom(info)
          : undefined,
        clb: 0,
        clbu: 0,
        fb: 0,
        fbu: 0,
        is: 0,
        ie: 0,
        cmd: 0,
        tfd: 0,
        sig: 0,
        ssts: 0,
        sctl: 0,
        serr: 0,
        sact: 0,
        ci: 0,
        busy: 0,
        generation: 0,
        initD2hSent: false,
        running: false,
        stats: { commands: 0, errors: 0, bytesRead: 0, bytesWritten: 0 },
      };
      port.cmd = drive ? CMD_SUD | CMD_POD : 0;
      this.#resetPort(port);
      return port;
    });
  }

  /** Counters of port `i`. */
  stats(i: number): AhciPortStats {
    return { ...this.#ports[i]!.stats };
  }

  /** Resolves when no command is in flight (tests, orderly shutdown). */
  async idle(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.all([...this.#inflight]);
  }

  // --- Registers ---

  /** ABAR read of 1-8 bytes at `offset`. */
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      const word = this.#readReg(at & ~3);
      data[i] = (word >>> ((at & 3) * 8)) & 0xff;
    }
  }

  /** ABAR write of 1-8 bytes at `offset` (registers are dwords; narrower writes merge). */
  write(offset: number, data: Uint8Array): void {
    let i = 0;
    while (i < data.length) {
      const at = offset + i;
      const base = at & ~3;
      let value = 0;
      let mask = 0;
      for (let b = at & 3; b < 4 && i < data.length; b++, i++) {
        value |= data[i]! << (b * 8);
        mask |= 0xff << (b * 8);
      }
      this.#writeReg(base, value >>> 0, mask >>> 0);
    }
  }

  #portOf(offset: number): [Port, number] | undefined {
    if (offset < PORT_BASE || offset >= AHCI_ABAR_SIZE) return undefined;
    const i = Math.floor((offset - PORT_BASE) / PORT_STRIDE);
    const port = this.#ports[i];
    return port ? [port, (offset - PORT_BASE) % PORT_STRIDE] : undefined;
  }

  #readReg(offset: number): number {
    switch (offset) {
      case HBA_CAP:
        return (CAP_S64A | CAP_SNCQ | CAP_SCLO | CAP_ISS_GEN3 | CAP_SAM |
          ((AHCI_SLOTS - 1) << 8) | (AHCI_PORTS - 1)) >>> 0;
      case HBA_GHC:
        return this.#ghc >>> 0;
      case HBA_IS:
        return this.#is >>> 0;
      case HBA_PI:
        return (1 << AHCI_PORTS) - 1;
      case HBA_VS:
        return AHCI_VERSION;
      case HBA_CAP2:
      case HBA_BOHC:
        return 0;
    }
    const p = this.#portOf(offset);
    if (!p) return 0;
    const [port, reg] = p;
    switch (reg) {
      case PxCLB:
        return port.clb;
      case PxCLBU:
        return port.clbu;
      case PxFB:
        return port.fb;
      case PxFBU:
        return port.fbu;
      case PxIS:
        return port.is >>> 0;
      case PxIE:
        return port.ie >>> 0;
      case PxCMD:
        return port.cmd >>> 0;
      case PxTFD:
        return port.tfd;
      case PxSIG:
        return port.sig >>> 0;
      case PxSSTS:
        return port.ssts;
      case PxSCTL:
        return port.sctl;
      case PxSERR:
        return port.serr >>> 0;
      case PxSACT:
        return port.sact >>> 0;
      case PxCI:
        return port.ci >>> 0;
      case PxSNTF:
        return 0;
      default:
        return 0;
    }
  }

  #writeReg(offset: number, value: number, mask: number): void {
    const merge = (old: number) => ((old & ~mask) | (value & mask)) >>> 0;
    switch (offset) {
      case HBA_GHC: {
        const v = merge(this.#ghc);
        if (v & GHC_HR) {
          this.#resetHba();
          return;
        }
        this.#ghc = (GHC_AE | (v & GHC_IE)) >>> 0;
        this.#updateIrq();
        return;
      }
      case HBA_IS:
        this.#is = (this.#is & ~(value & mask)) >>> 0;
        this.#updateIrq();
        return;
    }
    const p = this.#portOf(offset);
    if (!p) return;
    const [port, reg] = p;
    switch (reg) {
      case PxCLB:
        port.clb = merge(port.clb) & ~0x3ff;
        return;
      case PxCLBU:
        port.clbu = merge(port.clbu);
        return;
      case PxFB:
        port.fb = merge(port.fb) & ~0xff;
        return;
      case PxFBU:
        port.fbu = merge(port.fbu);
        return;
      case PxIS:
        port.is = (port.is & ~(value & mask)) >>> 0;
        this.#updatePortIs(port);
        return;
      case PxIE:
        port.ie = merge(port.ie) & IS_MASK;
        this.#updatePortIs(port);
        return;
      case PxCMD:
        this.#writeCmd(port, merge(port.cmd));
        return;
      case PxSCTL: {
        const v = merge(port.sctl);
        const wasReset = (port.sctl & SCTL_DET_MASK) === 1;
        port.sctl = v & 0xfff;
        if ((v & SCTL_DET_MASK) === 1) {
          // COMRESET asserted: the link is down until software releases it.
          port.ssts = 0;
          port.tfd = ATA_BSY;
        } else if (wasReset) {
          this.#resetPort(port);
          this.#postInitD2h(port);
        }
        return;
      }
      case PxSERR:
        port.serr = (port.serr & ~(value & mask)) >>> 0;
        return;
      case PxSACT:
        if (port.cmd & CMD_ST) port.sact = (port.sact | (value & mask)) >>> 0;
        return;
      case PxCI:
        if (port.cmd & CMD_ST) {
          port.ci = (port.ci | (value & mask)) >>> 0;
          this.#kick(port);
        }
        return;
    }
  }

  #writeCmd(port: Port, v: number): void {
    const was = port.cmd;
    let cmd = (was & ~CMD_WRITABLE) | (v & CMD_WRITABLE);
    if (v & CMD_CLO) port.tfd &= ~(ATA_BSY | ATA_DRQ); // self-clearing: never reads back
    if ((cmd & CMD_FRE) && !(was & CMD_FRE)) {
      cmd |= CMD_FR;
      port.cmd = cmd;
      this.#postInitD2h(port);
    }
    if (!(cmd & CMD_FRE)) cmd &= ~CMD_FR;
    if ((cmd & CMD_ST) && !(was & CMD_ST)) cmd |= CMD_CR;
    if (!(cmd & CMD_ST) && (was & CMD_ST)) {
      // Stopping the list engine abandons issued commands: their completions are dropped.
      cmd &= ~CMD_CR;
      port.ci = 0;
      port.sact = 0;
      port.busy = 0;
      port.generation++;
    }
    port.cmd = cmd >>> 0;
    if (cmd & CMD_ST) this.#kick(port);
  }

  #resetHba(): void {
    this.#ghc = GHC_AE;
    this.#is = 0;
    for (const p of this.#ports) {
      p.clb =
        p.clbu =
        p.fb =
        p.fbu =
          0;
      p.ie = 0;
      p.is = 0;
      p.sctl = 0;
      p.cmd = p.drive ? CMD_SUD | CMD_POD : 0;
      this.#resetPort(p);
    }
    this.#updateIrq();
  }

  /** COMRESET (and power-on): the link and the device reset; PxCMD is software's and stays. */
  #resetPort(port: Port): void {
    port.generation++;
    port.serr = 0;
    port.sact = 0;
    port.ci = 0;
    port.busy = 0;
    port.initD2hSent = false;
    if (port.drive) {
      port.ssts = SSTS_ONLINE;
      port.sig = port.drive.kind === "cdrom" ? SIG_ATAPI : SIG_ATA;
      port.tfd = port.drive.kind === "cdrom" ? 0 : STATUS_OK;
    } else {
      port.ssts = 0;
      port.sig = 0xffff_ffff;
      port.tfd = 0x7f;
    }
  }

  // --- Interrupts ---

  #updatePortIs(port: Port): void {
    const bit = 1 << port.index;
    if (port.is & port.ie) this.#is |= bit;
    else this.#is &= ~bit;
    this.#updateIrq();
  }

  #raise(port: Port, bits: number): void {
    port.is = (port.is | bits) >>> 0;
    this.#updatePortIs(port);
    if ((this.#ghc & GHC_IE) && (bits & port.ie)) this.#deps.pulse?.();
  }

  #updateIrq(): void {
    const level = (this.#ghc & GHC_IE) !== 0 && this.#is !== 0;
    if (level !== this.#irqLevel) {
      this.#irqLevel = level;
      this.#deps.setInterrupt(level);
    }
  }

  // --- FIS delivery ---

  #rfis(port: Port, offset: number, length: number): Uint8Array | undefined {
    if (!(port.cmd & CMD_FRE)) return undefined;
    return this.#deps.memory.trySlice(port.fbu * TWO_32 + port.fb + offset, length);
  }

  #postInitD2h(port: Port): void {
    if (port.initD2hSent || !port.drive || !(port.cmd & CMD_FRE)) return;
    const dst = this.#rfis(port, RFIS_RFIS, FIS_D2H.size);
    if (!dst) return;
    port.initD2hSent = true;
    const sig = port.sig;
    FIS_D2H.encode({
      type: FIS_REG_D2H,
      status: port.tfd & 0xff,
      error: 1, // diagnostic passed
      count_lo: sig & 0xff,
      lba0: (sig >>> 8) & 0xff,
      lba1: (sig >>> 16) & 0xff,
      lba2: (sig >>> 24) & 0xff,
    }, dst);
  }

  #postD2h(port: Port, r: AtaResult, interrupt: boolean): void {
    port.tfd = ((r.error & 0xff) << 8) | (r.status & 0xff);
    const dst = this.#rfis(port, RFIS_RFIS, FIS_D2H.size);
    if (dst) {
      FIS_D2H.encode({
        type: FIS_REG_D2H,
        flags: interrupt ? FIS_I : 0,
        status: r.status,
        error: r.error,
        count_lo: r.count ?? 0,
      }, dst);
    }
  }

  #postPioSetup(port: Port, r: AtaResult): void {
    const dst = this.#rfis(port, RFIS_PSFIS, FIS_PIO.size);
    if (dst) {
      FIS_PIO.encode({
        type: FIS_PIO_SETUP,
        flags: FIS_PIO_D | FIS_I,
        status: (r.status & ~ATA_BSY) | ATA_DRQ,
        error: r.error,
        e_status: r.status,
        transfer_count: Math.min(r.transferred, 0xffff),
      }, dst);
    }
  }

  #postSdb(port: Port, tags: number, r: AtaResult): void {
    port.tfd = ((r.error & 0xff) << 8) | (r.status & 0xff);
    const dst = this.#rfis(port, RFIS_SDBFIS, FIS_SDB.size);
    if (dst) {
      FIS_SDB.encode({
        type: FIS_SET_DEVICE_BITS,
        flags: FIS_I,
        status: r.status & 0x77,
        error: r.error,
        sactive: tags,
      }, dst);
    }
  }

  // --- Command engine ---

  #kick(port: Port): void {
    if (port.running || !(port.cmd & CMD_ST)) return;
    const pending = port.ci & ~port.busy;
    if (pending === 0) return;
    port.running = true;
    const job = this.#drain(port).finally(() => {
      port.running = false;
      this.#inflight.delete(job);
      this.#kick(port); // slots issued while the last command ran
    });
    this.#inflight.add(job);
  }

  async #drain(port: Port): Promise<void> {
    while (port.cmd & CMD_ST) {
      const pending = (port.ci & ~port.busy) >>> 0;
      if (pending === 0) return;
      const slot = 31 - Math.clz32(pending & -pending);
      const bit = (1 << slot) >>> 0;
      port.busy = (port.busy | bit) >>> 0;
      const generation = port.generation;
      try {
        await this.#runSlot(port, slot, generation);
      } catch {
        // A bug, not the guest's doing: fail the command rather than the VMM.
        if (port.generation === generation) this.#finish(port, bit, abort(), false, generation);
      }
    }
  }

  /** Completes slot `bit`: clears it, posts the FISes, raises the interrupt. */
  #finish(port: Port, bit: number, r: AtaResult, ncq: boolean, generation: number): void {
    if (port.generation !== generation) return; // stopped or reset meanwhile
    port.busy &= ~bit;
    port.stats.commands++;
    const failed = (r.status & ATA_ERR) !== 0;
    if (failed) port.stats.errors++;
    if (ncq) {
      port.sact = (port.sact & ~bit) >>> 0;
      this.#postSdb(port, bit, r);
      this.#raise(port, IS_SDBS | (failed ? IS_TFES : 0));
      return;
    }
    port.ci = (port.ci & ~bit) >>> 0;
    if (r.pioIn && !failed) this.#postPioSetup(port, r);
    this.#postD2h(port, r, true);
    this.#raise(port, IS_DHRS | (r.pioIn && !failed ? IS_PSS : 0) | (failed ? IS_TFES : 0));
  }

  async #runSlot(port: Port, slot: number, generation: number): Promise<void> {
    const bit = (1 << slot) >>> 0;
    const mem = this.#deps.memory;
    const header = mem.trySlice(port.clbu * TWO_32 + port.clb + slot * 32, COMMAND_HEADER.size);
    if (!header) return this.#fatal(port, bit, generation);
    const flags = COMMAND_HEADER.get(header, 0, "flags");
    const prdtl = COMMAND_HEADER.get(header, 0, "prdtl");
    const ctba = COMMAND_HEADER.get(header, 0, "ctbau") * TWO_32 +
      (COMMAND_HEADER.get(header, 0, "ctba") & ~0x7f);
    const table = mem.trySlice(ctba, CT_PRDT + prdtl * PRD_ENTRY.size);
    if (!table) return this.#fatal(port, bit, generation);
    // Regions: each a view of RAM; a PRD outside RAM is a host bus data error.
    const views: Uint8Array[] = [];
    let interruptOnPrd = false;
    for (let i = 0; i < prdtl; i++) {
      const at = CT_PRDT + i * PRD_ENTRY.size;
      const dba = PRD_ENTRY.get(table, at, "dbau") * TWO_32 +
        (PRD_ENTRY.get(table, at, "dba") & ~1);
      const f = PRD_ENTRY.get(table, at, "flags");
      const v = mem.trySlice(dba, (f & PRD_DBC_MASK) + 1);
      if (!v) {
        if (port.generation !== generation) return;
        port.busy &= ~bit;
        port.ci &= ~bit;
        port.sact &= ~bit;
        port.stats.errors++;
        port.tfd = (ATA_ABRT << 8) | STATUS_OK | ATA_ERR;
        this.#raise(port, IS_HBDS | IS_TFES);
        return;
      }
      if (f & PRD_I) interruptOnPrd = true;
      views.push(v);
    }
    const sg = new ScatterGather(views);
    const cfis = table.subarray(CT_CFIS, CT_CFIS + FIS_H2D.size);
    if (cfis[0] !== FIS_REG_H2D || !(cfis[1]! & H2D_C)) {
      return this.#finish(port, bit, abort(), false, generation);
    }
    const command = cfis[2]!;
    const ncq = command === AtaCmd.READ_FPDMA_QUEUED || command === AtaCmd.WRITE_FPDMA_QUEUED;
    if (ncq) {
      // Queued: the device accepts at once (the HBA clears CI), then completes by SDB FIS.
      port.ci = (port.ci & ~bit) >>> 0;
      port.tfd = STATUS_OK;
    }
    const r = await this.#execute(port, cfis, table.subarray(CT_ACMD, CT_ACMD + 16), sg, flags);
    this.#deps.trace?.(
      port.index,
      command,
      command === AtaCmd.PACKET ? table[CT_ACMD]! : undefined,
      (r.error << 8) | r.status,
      r.transferred,
    );
    if (port.generation !== generation) return;
    COMMAND_HEADER.set(header, 0, "prdbc", r.transferred);
    if (interruptOnPrd && r.transferred > 0) port.is |= IS_DPS;
    this.#finish(port, bit, r, ncq, generation);
  }

  #fatal(port: Port, bit: number, generation: number): void {
    if (port.generation !== generation) return;
    port.busy &= ~bit;
    port.ci &= ~bit;
    port.sact &= ~bit;
    port.stats.errors++;
    port.tfd = (ATA_ABRT << 8) | STATUS_OK | ATA_ERR;
    this.#raise(port, IS_HBFS | IS_TFES);
  }

  /** Runs one ATA command (or ATAPI packet) on the port's drive. */
  async #execute(
    port: Port,
    f: Uint8Array,
    acmd: Uint8Array,
    sg: ScatterGather,
    headerFlags: number,
  ): Promise<AtaResult> {
    const drive = port.drive;
    if (!drive) return abort(0x7f);
    const cmd = f[2]!;
    const lba48 = f[4]! + f[5]! * 2 ** 8 + f[6]! * 2 ** 16 + f[8]! * 2 ** 24 + f[9]! * 2 ** 32 +
      f[10]! * 2 ** 40;
    const lba28 = f[4]! + f[5]! * 2 ** 8 + f[6]! * 2 ** 16 + (f[7]! & 0x0f) * 2 ** 24;
    const count16 = f[12]! | (f[13]! << 8);
    const features16 = f[3]! | (f[11]! << 8);
    if (drive.kind === "cdrom") {
      switch (cmd) {
        case AtaCmd.PACKET: {
          const r = await port.cd!.execute(acmd, sg);
          if (r.senseKey !== 0) {
            return {
              status: ATA_DRDY | ATA_ERR,
              error: (r.senseKey << 4) | ATA_ABRT,
              transferred: 0,
              count: 3,
            };
          }
          return { status: STATUS_OK, error: 0, transferred: r.transferred, count: 3 };
        }
        case AtaCmd.IDENTIFY_PACKET_DEVICE:
          return {
            status: STATUS_OK,
            error: 0,
            transferred: sg.copyIn(port.identify!),
            pioIn: true,
          };
        case AtaCmd.DEVICE_RESET:
        case AtaCmd.SET_FEATURES:
        case AtaCmd.CHECK_POWER_MODE:
        case AtaCmd.IDLE_IMMEDIATE:
        case AtaCmd.STANDBY_IMMEDIATE:
          return { status: STATUS_OK, error: 0, transferred: 0, count: 0xff };
        default:
          // ATA commands to a packet device abort with the signature, as real ATAPI drives do.
          return abort(0);
      }
    }
    const backend = drive.backend;
    const sector = backend.sectorSize;
    const sectors = Math.floor(backend.size / sector);
    const rw = async (lba: number, count: number, write: boolean): Promise<AtaResult> => {
      if (lba + count > sectors) {
        return { status: STATUS_OK | ATA_ERR, error: ATA_IDNF, transferred: 0 };
      }
      if (write !== ((headerFlags & HDR_WRITE) !== 0) && count > 0) return abort();
      const bytes = count * sector;
      const views = sg.cut(bytes);
      if (!views) return abort(); // the PRDs are shorter than the transfer
      try {
        if (write) await backend.writev(lba * sector, views);
        else await backend.readv(lba * sector, views);
      } catch (e) {
        if (!(e instanceof DiskError)) throw e;
        return { status: STATUS_OK | ATA_ERR, error: write ? ATA_ABRT : ATA_UNC, transferred: 0 };
      }
      if (write) port.stats.bytesWritten += bytes;
      else port.stats.bytesRead += bytes;
      return { status: STATUS_OK, error: 0, transferred: bytes };
    };
    switch (cmd) {
      case AtaCmd.IDENTIFY_DEVICE:
        return { status: STATUS_OK, error: 0, transferred: sg.copyIn(port.identify!), pioIn: true };
      case AtaCmd.IDENTIFY_PACKET_DEVICE:
        return abort();
      case AtaCmd.READ_DMA_EXT:
      case AtaCmd.READ_SECTORS_EXT:
        return {
          ...(await rw(lba48, count16 || 0x10000, false)),
          pioIn: cmd === AtaCmd.READ_SECTORS_EXT,
        };
      case AtaCmd.WRITE_DMA_EXT:
      case AtaCmd.WRITE_SECTORS_EXT:
        return await rw(lba48, count16 || 0x10000, true);
      case AtaCmd.READ_DMA:
      case AtaCmd.READ_SECTORS:
        return { ...(await rw(lba28, f[12]! || 0x100, false)), pioIn: cmd === AtaCmd.READ_SECTORS };
      case AtaCmd.WRITE_DMA:
      case AtaCmd.WRITE_SECTORS:
        return await rw(lba28, f[12]! || 0x100, true);
      case AtaCmd.READ_FPDMA_QUEUED:
        return await rw(lba48, features16 || 0x10000, false);
      case AtaCmd.WRITE_FPDMA_QUEUED:
        return await rw(lba48, features16 || 0x10000, true);
      case AtaCmd.FLUSH_CACHE:
      case AtaCmd.FLUSH_CACHE_EXT:
        try {
          await backend.flush();
        } catch (e) {
          if (!(e instanceof DiskError)) throw e;
          return abort();
        }
        return { status: STATUS_OK, error: 0, transferred: 0 };
      case AtaCmd.READ_VERIFY:
      case AtaCmd.READ_VERIFY_EXT: {
        const lba = cmd === AtaCmd.READ_VERIFY ? lba28 : lba48;
        const n = cmd === AtaCmd.READ_VERIFY ? (f[12]! || 0x100) : (count16 || 0x10000);
        if (lba + n > sectors) {
          return { status: STATUS_OK | ATA_ERR, error: ATA_IDNF, transferred: 0 };
        }
        return { status: STATUS_OK, error: 0, transferred: 0 };
      }
      case AtaCmd.SET_FEATURES:
      case AtaCmd.SET_MULTIPLE:
      case AtaCmd.INITIALIZE_DEVICE_PARAMETERS:
      case AtaCmd.IDLE_IMMEDIATE:
      case AtaCmd.STANDBY_IMMEDIATE:
        return { status: STATUS_OK, error: 0, transferred: 0 };
      case AtaCmd.CHECK_POWER_MODE:
        return { status: STATUS_OK, error: 0, transferred: 0, count: 0xff };
      default:
        return abort();
    }
  }
}
