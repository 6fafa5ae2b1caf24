/**
 * `/dev/kvm`: API version, capability probes, supported CPUID, VM creation, and what kind of KVM
 * this host has (real hardware virtualization, PVM, or none).
 * @module
 */
import { C, check, close, libc, open, SysError } from "../../ffi/libc.ts";
import { KVM, KVM_IOCTL, KVM_STRUCT } from "../../ffi/kvm_abi.ts";
import { UsageError } from "../util/errors.ts";
import { Vm } from "./vm.ts";
import { PVM_MODULE_PATH } from "./host_support.ts";

/** One CPUID leaf as KVM reports and takes it. */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** What backs `/dev/kvm` on this host. */
export type KvmFlavour = "hardware" | "pvm" | "absent";

/** Detects the host's KVM: PVM (`kvm_pvm` module) cannot run stock 64-bit guests. */
export function kvmFlavour(): KvmFlavour {
  try {
    Deno.statSync("/dev/kvm");
  } catch {
    return "absent";
  }
  try {
    Deno.statSync(PVM_MODULE_PATH);
    return "pvm";
  } catch {
    return "hardware";
  }
}

/** An open `/dev/kvm`. */
export class Kvm {
  #fd: number;

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /** Opens `/dev/kvm` (or `path`), with errors that say what to do. */
  static open(path = "/dev/kvm"): Kvm {
    let fd: number;
    try {
      fd = open(path, C.O_RDWR);
    } catch (e) {
      if (e instanceof SysError && e.code === "ENOENT") {
        throw new UsageError(
          `'${path}' not found: this host has no KVM. Load kvm-intel or kvm-amd, or run the tests ` +
            "through the nested test machine (deno task test).",
        );
      }
      if (e instanceof SysError && (e.code === "EACCES" || e.code === "EPERM")) {
        throw new UsageError(
          `no permission to open '${path}': run as root or add your user to the 'kvm' group.`,
        );
      }
      throw e;
    }
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== KVM.KVM_API_VERSION) {
      kvm.close();
      throw new UsageError(
        `unsupported KVM API version ${version} (expected ${KVM.KVM_API_VERSION})`,
      );
    }
    return kvm;
  }

  /** The file descriptor. */
  get fd(): number {
    return this.#fd;
  }

  /** KVM_GET_API_VERSION. */
  apiVersion(): number {
    return check(
      "ioctl(KVM_GET_API_VERSION)",
      libc.ioctl_int(this.#fd, BigInt(KVM_IOCTL.KVM_GET_API_VERSION), 0n),
    );
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific value. */
  checkExtension(cap: number): number {
    const r = libc.ioctl_int(this.#fd, BigInt(KVM_IOCTL.KVM_CHECK_EXTENSION), BigInt(cap));
    return r < 0 ? 0 : r;
  }

  /** Size of the per-vCPU `kvm_run` mapping. */
  vcpuMmapSize(): number {
    return check(
      "ioctl(KVM_GET_VCPU_MMAP_SIZE)",
      libc.ioctl_int(this.#fd, BigInt(KVM_IOCTL.KVM_GET_VCPU_MMAP_SIZE), 0n),
    );
  }

  /** KVM_GET_SUPPORTED_CPUID. */
  supportedCpuid(): CpuidEntry[] {
    return readCpuid2(
      (buf) => libc.ioctl_buf(this.#fd, BigInt(KVM_IOCTL.KVM_GET_SUPPORTED_CPUID), buf),
      "KVM_GET_SUPPORTED_CPUID",
    );
  }

  /** KVM_CREATE_VM. */
  createVm(): Vm {
    const fd = check(
      "ioctl(KVM_CREATE_VM)",
      libc.ioctl_int(this.#fd, BigInt(KVM_IOCTL.KVM_CREATE_VM), 0n),
    );
    return new Vm(fd, this);
  }

  /** Closes `/dev/kvm`; safe to call twice. */
  close(): void {
    close(this.#fd);
    this.#fd = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

const CPUID_MAX = 256;

/** Runs a kvm_cpuid2-returning ioctl with room for 256 entries and decodes the result. */
export function readCpuid2(
  ioctl: (buf: Uint8Array<ArrayBuffer>) => number,
  name: string,
): CpuidEntry[] {
  const E = KVM_STRUCT.kvm_cpuid_entry2;
  const buf = new Uint8Array(KVM_STRUCT.kvm_cpuid2.size + CPUID_MAX * E.size);
  const dv = new DataView(buf.buffer);
  dv.setUint32(KVM_STRUCT.kvm_cpuid2.nent, CPUID_MAX, true);
  check(`ioctl(${name})`, ioctl(buf));
  const n = dv.getUint32(KVM_STRUCT.kvm_cpuid2.nent, true);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const b = KVM_STRUCT.kvm_cpuid2.entries + i * E.size;
    out.push({
      function: dv.getUint32(b + E.function, true),
      index: dv.getUint32(b + E.index, true),
      flags: dv.getUint32(b + E.flags, true),
      eax: dv.getUint32(b + E.eax, true),
      ebx: dv.getUint32(b + E.ebx, true),
      ecx: dv.getUint32(b + E.ecx, true),
      edx: dv.getUint32(b + E.edx, true),
    });
  }
  return out;
}

/** Encodes CPUID entries as a kvm_cpuid2 for KVM_SET_CPUID2. */
export function encodeCpuid2(entries: readonly CpuidEntry[]): Uint8Array<ArrayBuffer> {
  const E = KVM_STRUCT.kvm_cpuid_entry2;
  const buf = new Uint8Array(KVM_STRUCT.kvm_cpuid2.size + entries.length * E.size);
  const dv = new DataView(buf.buffer);
  dv.setUint32(KVM_STRUCT.kvm_cpuid2.nent, entries.length, true);
  entries.forEach((e, i) => {
    const b = KVM_STRUCT.kvm_cpuid2.entries + i * E.size;
    dv.setUint32(b + E.function, e.function, true);
    dv.setUint32(b + E.index, e.index, true);
    dv.setUint32(b + E.flags, e.flags, true);
    dv.setUint32(b + E.eax, e.eax >>> 0, true);
    dv.setUint32(b + E.ebx, e.ebx >>> 0, true);
    dv.setUint32(b + E.ecx, e.ecx >>> 0, true);
    dv.setUint32(b + E.edx, e.edx >>> 0, true);
  });
  return buf;
}
