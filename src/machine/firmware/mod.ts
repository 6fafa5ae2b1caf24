/**
 * What a UEFI or BIOS firmware needs from the machine: fw_cfg (`fw_cfg.ts`, its wire format in
 * `fw_cfg_protocol.ts`, the items in `config.ts`, ACPI through the linker/loader in
 * `table_loader.ts`), SMBIOS tables (`smbios.ts`) and the CFI flash that holds the UEFI
 * variable store (`pflash.ts`, its file in `vars_file.ts`).
 * @module
 */
export * from "./config.ts";
export * from "./fw_cfg.ts";
export * from "./pflash.ts";
export * from "./smbios.ts";
export * from "./table_loader.ts";
export * from "./vars_file.ts";
