/**
 * Guest kit: builds the initramfs images guest tests boot. A cpio "newc" writer/reader, kernel
 * module resolution from `modules.dep`, the host's kernel and static busybox, an init that runs a
 * shell test body between serial markers and powers off, static C guest tools
 * (`tests/guest/tools/*.c`), and a content-hash cache under `.cache/guestkit/`.
 *
 * ```ts
 * import { initramfsFile } from "./tests/guest/kit/mod.ts";
 * const initrd = await initramfsFile({ modules: ["hv_vmbus"], script: "hd_mark ok yes" });
 * ```
 * @module
 */
export * from "./cpio.ts";
export * from "./host.ts";
export * from "./initramfs.ts";
export * from "./markers.ts";
export * from "./modules.ts";
export * from "./tools.ts";
