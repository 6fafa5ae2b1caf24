/**
 * The guest's screen for people: the framebuffer interface display devices feed
 * (`framebuffer.ts`), and the VNC server (RFB 3.8: `rfb_protocol.ts`, `rfb_encode.ts`,
 * `vnc_auth.ts`, `vnc_server.ts`) that shows it and sends keys and pointer events to the input
 * router. Sits above the devices and below the CLI.
 * @module
 */
export * from "./framebuffer.ts";
export {
  type ByteStream,
  type ConsoleInput,
  VncServer,
  type VncServerOptions,
  type VncStats,
} from "./vnc_server.ts";
