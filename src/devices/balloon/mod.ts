/**
 * Hyper-V Dynamic Memory (`hv_balloon` in Linux): the guest gives pages back to the host and
 * takes them again on request.
 *
 * - `protocol.ts`: the DM messages.
 * - `dm.ts`: the device (negotiation, status reports, inflate/deflate with range checks).
 * - `release.ts`: dropping the host backing of ballooned pages; the VMM's RSS.
 *
 * Not done: hot-add (it needs runtime memslots above the VMBus high MMIO window).
 * @module
 */
export * from "./protocol.ts";
export {
  DM_PAGE_SIZE,
  type DmGuestStatus,
  type DmInfo,
  DynamicMemoryDevice,
  type DynamicMemoryOptions,
} from "./dm.ts";
export { hostRssBytes, madviseRelease } from "./release.ts";
