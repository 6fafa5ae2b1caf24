/**
 * Connection-scoped devices (hv_sock connections): the server forgets them when the guest's
 * VMBus connection ends (unload, new contact, reset) and tells them, instead of offering them to
 * the next connection; ordinary devices are offered again.
 */
import { assert, assertEquals } from "./assert.ts";
import { EchoDevice } from "./echo_device.ts";
import { LoopbackGuest } from "../../../src/vmbus/testing/loopback_guest.ts";

class ScopedDevice extends EchoDevice {
  readonly connectionScoped = true;
  disconnects = 0;
  onDisconnect(): void {
    this.disconnects++;
  }
}

Deno.test("connection-scoped devices are dropped on unload, new contact and reset; others stay", () => {
  const { guest, server } = LoopbackGuest.create();
  const plain = new EchoDevice(1);
  server.addDevice(plain);
  guest.connect();
  guest.requestOffers();
  for (const end of ["unload", "contact", "reset"] as const) {
    const opened = new ScopedDevice(2);
    const offered = new ScopedDevice(3);
    server.addDevice(opened);
    server.addDevice(offered);
    guest.receive();
    const o = [...guest.offers.values()].find((x) => x.instanceId === opened.instanceId)!;
    guest.open(o);
    if (end === "unload") guest.unload();
    else if (end === "contact") guest.offers.clear();
    else server.reset();
    guest.connect();
    const offers = guest.requestOffers();
    assertEquals(opened.disconnects, 1, end);
    assertEquals(offered.disconnects, 1, end);
    assert(!offers.some((x) => x.instanceId === opened.instanceId), `${end}: not offered again`);
    assert(!offers.some((x) => x.instanceId === offered.instanceId), `${end}: not offered again`);
    assert(offers.some((x) => x.instanceId === plain.instanceId), `${end}: the plain device stays`);
    assert(!server.removeDevice(opened), "already forgotten");
  }
  assertEquals(server.stats.internalErrors, 0);
});
