/**
 * The host side of the network guest tests and benchmark, run inside the test's network
 * namespace (`ip netns exec NS deno run -A net_peer.ts …`): for each of FLOWS flows (default
 * 1), accepts one connection on RECV_PORT+i and stores (or counts) up to RECV_BYTES from it until
 * it closes, and one on SEND_PORT+i that gets SEND_FILE and then the close. Prints `listening`
 * once every socket listens, then `received N` and `sent N` per flow.
 *
 * Usage: net_peer.ts ADDRESS RECV_PORT RECV_BYTES RECV_FILE SEND_PORT SEND_FILE [FLOWS]
 *
 * RECV_FILE `-` discards what arrives (it is still counted); SEND_FILE `zero:N` sends N zero
 * bytes (no file needed).
 * @module
 */
const [address = "", recvPort, recvBytes, recvFile, sendPort, sendFile, flowsText] = Deno.args;
if (!sendFile) {
  console.error(
    "usage: net_peer.ts ADDRESS RECV_PORT RECV_BYTES RECV_FILE SEND_PORT SEND_FILE [FLOWS]",
  );
  Deno.exit(2);
}
const want = Number(recvBytes);
const flows = Number(flowsText ?? "1");
const listeners = Array.from({ length: flows }, (_, i) => ({
  recv: Deno.listen({ hostname: address, port: Number(recvPort) + i }),
  send: Deno.listen({ hostname: address, port: Number(sendPort) + i }),
}));
console.log("listening");

async function receive(l: Deno.TcpListener): Promise<void> {
  const conn = await l.accept();
  l.close();
  const out = recvFile === "-"
    ? { write: (b: Uint8Array) => Promise.resolve(b.length), close() {} }
    : await Deno.open(recvFile!, { write: true, create: true, truncate: true });
  const buf = new Uint8Array(1 << 20);
  let got = 0;
  while (got < want) {
    const n = await conn.read(buf.subarray(0, Math.min(buf.length, want - got)));
    if (n === null) break;
    let w = 0;
    while (w < n) w += await out.write(buf.subarray(w, n));
    got += n;
  }
  out.close();
  conn.close();
  console.log(`received ${got}`);
}

async function send(l: Deno.TcpListener): Promise<void> {
  const conn = await l.accept();
  l.close();
  let sent = 0;
  if (sendFile!.startsWith("zero:")) {
    const total = Number(sendFile!.slice(5));
    const chunk = new Uint8Array(1 << 20);
    while (sent < total) {
      sent += await conn.write(chunk.subarray(0, Math.min(chunk.length, total - sent)));
    }
  } else {
    const data = await Deno.readFile(sendFile!);
    while (sent < data.length) sent += await conn.write(data.subarray(sent));
  }
  conn.close();
  console.log(`sent ${sent}`);
}

await Promise.all(listeners.flatMap((l) => [receive(l.recv), send(l.send)]));
