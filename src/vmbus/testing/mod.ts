/**
 * Test support for VMBus and for the devices that sit on it: a fake SynIC, a guest-side ring
 * written from Linux's algorithm (independent of the host's `ring.ts`), and `LoopbackGuest`, a
 * scripted Linux-like guest that drives a real `VmbusServer` through its public entry points
 * over a `GuestMemory` backed by a plain ArrayBuffer. Not for production use.
 * @module
 */
export * from "./fake_synic.ts";
export * from "./guest_ring.ts";
export * from "./loopback_guest.ts";
