/**
 * Firmware boot options (`--firmware uefi`, `--firmware-code`, `--efi-vars`) and loading them:
 * Debian's OVMF by default, the code image checked and placed below 4 GiB, the per-VM variable
 * store opened (or created from the firmware's template) and locked. Every problem is one
 * `UsageError` line that names the file and what to do.
 * @module
 */
import { UsageError } from "../util/errors.ts";
import { type FlashLayout, flashLayout } from "../machine/firmware/flash_layout.ts";
import { FV_HEADER, FV_SIGNATURE } from "../machine/firmware/pflash_protocol.ts";
import { EfiVarsFile } from "../machine/firmware/vars_file.ts";

/** Debian `ovmf`'s non-SMM 4 MiB build: the one that runs on the i440FX board. */
export const DEFAULT_OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd";

/** What `--firmware uefi` asks for. */
export interface FirmwareSpec {
  readonly kind: "uefi";
  /** The code image (`--firmware-code`). */
  readonly codePath: string;
  /** The variable store (`--efi-vars`); absent: a volatile copy of the template. */
  readonly varsPath?: string;
  /** The empty store the vars file starts from: the code image's sibling VARS file. */
  readonly varsTemplate: string;
}

/** The template next to a code image: `…/OVMF_CODE_4M.fd` → `…/OVMF_VARS_4M.fd`. */
export function varsTemplateFor(codePath: string): string {
  const slash = codePath.lastIndexOf("/");
  const dir = slash >= 0 ? codePath.slice(0, slash + 1) : "";
  const base = codePath.slice(slash + 1);
  if (!base.includes("CODE")) return `${dir}OVMF_VARS_4M.fd`;
  return dir + base.replace("CODE", "VARS").replace(/\.(secboot|ms|snakeoil)\.fd$/, ".fd");
}

/**
 * Parses the firmware flags. `--firmware` is `uefi` or `none` (the default: direct Linux boot,
 * which needs `--kernel`); `--firmware-code` and `--efi-vars` only go with `uefi`.
 */
export function parseFirmwareOptions(
  v: {
    firmware?: string | undefined;
    firmwareCode?: string | undefined;
    efiVars?: string | undefined;
  },
  hasKernel: boolean,
): FirmwareSpec | undefined {
  const kind = v.firmware ?? "none";
  if (kind !== "uefi" && kind !== "none") {
    throw new UsageError(`--firmware: '${kind}' is not one of uefi, none`);
  }
  if (kind === "none") {
    for (const [flag, val] of [["--firmware-code", v.firmwareCode], ["--efi-vars", v.efiVars]]) {
      if (val !== undefined) throw new UsageError(`${flag} needs --firmware uefi`);
    }
    if (!hasKernel) {
      throw new UsageError("boot: --kernel PATH or --firmware uefi is required (see --help)");
    }
    return undefined;
  }
  if (hasKernel) {
    throw new UsageError(
      "--kernel boots Linux directly and --firmware uefi boots from disks; give one of them " +
        "(under UEFI, put the kernel on a --disk or ISO)",
    );
  }
  const codePath = v.firmwareCode ?? DEFAULT_OVMF_CODE;
  if (codePath === "" || v.efiVars === "") {
    throw new UsageError("--firmware-code and --efi-vars need a file name");
  }
  return {
    kind: "uefi",
    codePath,
    varsTemplate: varsTemplateFor(codePath),
    ...(v.efiVars !== undefined ? { varsPath: v.efiVars } : {}),
  };
}

/** The firmware, read and placed. */
export interface LoadedFirmware {
  /** The code image, mapped read-only at `layout.codeGpa`. */
  readonly code: Uint8Array;
  /** The variable store contents, the flash device's bytes at `layout.varsGpa`. */
  readonly vars: Uint8Array;
  /** The open, locked vars file; absent for a volatile store. */
  readonly varsFile: EfiVarsFile | undefined;
  readonly layout: FlashLayout;
}

function readCode(path: string): Uint8Array {
  let real: string;
  try {
    real = Deno.realPathSync(path);
  } catch {
    const hint = path === DEFAULT_OVMF_CODE
      ? "install Debian's 'ovmf' package (apt-get install ovmf)"
      : "check --firmware-code, or install Debian's 'ovmf' package for the default";
    throw new UsageError(`UEFI firmware ${path} not found: ${hint}`);
  }
  if (/secboot|\.ms\.fd$|snakeoil/.test(real)) {
    throw new UsageError(
      `${path} is an SMM build of OVMF (${real}), which needs a Q35 machine with SMM; ` +
        `use ${DEFAULT_OVMF_CODE}`,
    );
  }
  let code: Uint8Array;
  try {
    code = Deno.readFileSync(real);
  } catch (e) {
    throw new UsageError(`Cannot read the UEFI firmware ${path}: ${(e as Error).message}`);
  }
  const sig = code.length >= FV_HEADER.size ? FV_HEADER.get(code, 0, "signature") : undefined;
  if (!sig || !sig.every((b, i) => b === FV_SIGNATURE[i])) {
    throw new UsageError(
      `${path} is not a UEFI firmware image (no firmware-volume header); give OVMF_CODE_4M.fd`,
    );
  }
  return code;
}

/** Reads the code image and opens (or creates) the variable store. */
export function loadFirmware(spec: FirmwareSpec): LoadedFirmware {
  const code = readCode(spec.codePath);
  let vars: Uint8Array;
  let varsFile: EfiVarsFile | undefined;
  if (spec.varsPath !== undefined) {
    varsFile = EfiVarsFile.open(spec.varsPath, { template: spec.varsTemplate });
    vars = varsFile.initial.slice();
  } else {
    try {
      vars = Deno.readFileSync(spec.varsTemplate);
    } catch {
      throw new UsageError(
        `The UEFI variable store template ${spec.varsTemplate} is missing: install Debian's ` +
          `'ovmf' package, or give --efi-vars FILE`,
      );
    }
  }
  const layout = flashLayout(code.length, vars.length);
  if (typeof layout === "string") {
    varsFile?.close();
    throw new UsageError(`Cannot map the UEFI firmware: ${layout}`);
  }
  return { code, vars, varsFile, layout };
}
