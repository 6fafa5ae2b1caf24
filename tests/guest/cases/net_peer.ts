/**
 * The host side of the network guest test, run inside the test's network namespace
 * (`ip netns exec NS deno run -A net_peer.ts …`): accepts one connection on RECV_PORT and stores
 * exactly RECV_BYTES from it, and one on SEND_PORT that gets SEND_FILE and then the close.
 * Prints `listening` once both sockets listen, then `received N` and `sent N`.
 *
 * Usage: net_peer.ts ADDRESS RECV_PORT RECV_BYTES RECV_FILE SEND_PORT SEND_FILE
 *
 * RECV_FILE `-` discards what arrives (it is still counted); SEND_FILE `zero:N` sends N zero
 * bytes (the benchmark's source, no file needed).
 * @module
 */
const [address = "", recvPort, recvBytes, recvFile, sendPort, sendFile] = Deno.args;
if (!sendFile) {
  console.error("usage: net_peer.ts ADDRESS RECV_PORT RECV_BYTES RECV_FILE SEND_PORT SEND_FILE");
  Deno.exit(2);
}
const want = Number(recvBytes);
const lr = Deno.listen({ hostname: address, port: Number(recvPort) });
const ls = Deno.listen({ hostname: address, port: Number(sendPort) });
console.log("listening");

async function receive(): Promise<void> {
  const conn = await lr.accept();
  lr.close();
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

async function send(): Promise<void> {
  const conn = await ls.accept();
  ls.close();
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

await Promise.all([receive(), send()]);
