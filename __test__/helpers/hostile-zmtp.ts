/**
 * A hostile ZMTP peer over a raw TCP socket: a proper greeting and READY (so it gets past the
 * handshake), then one endless multipart message of empty frames (`MORE | size 0`, 2 bytes each),
 * written as fast as the other side reads, until it is disconnected.
 */
import { once } from "node:events";
import net from "node:net";
import { encodeCommand, encodeGreeting, encodeProperties } from "../../ts/events/zmtp/wire.js";

/** 64 KiB of `0x01 0x00`: 32768 empty frames, each saying another follows. */
const FLOOD = Buffer.alloc(64 * 1024, Buffer.from([0x01, 0x00]));

export interface FloodStats {
  /** Connections that got past the greeting and were then closed by the other side. */
  connections: number;
  /** Bytes the kernel accepted from us, over every connection. */
  bytes: number;
}

/** Greets as `socketType`, optionally sends `first` (whole messages), then floods until closed. */
export async function flood(sock: net.Socket, socketType: string, stats: FloodStats, first: Buffer[] = []): Promise<void> {
  let closed = false;
  sock.on("error", () => {});
  sock.once("close", () => (closed = true));
  sock.on("data", () => {}); // read (and ignore) what the other side sends
  sock.write(encodeGreeting(1));
  sock.write(encodeCommand("READY", encodeProperties({ "Socket-Type": socketType })));
  for (const m of first) sock.write(m);
  stats.connections++;
  while (!closed) {
    if (sock.write(FLOOD)) stats.bytes += FLOOD.length;
    else await Promise.race([once(sock, "drain"), once(sock, "close")]).catch(() => {});
  }
}

/** A TCP server whose every connection floods as `socketType`. */
export async function floodServer(socketType: string, first: () => Buffer[] = () => []): Promise<{ endpoint: string; stats: FloodStats; close(): Promise<void> }> {
  const stats: FloodStats = { connections: 0, bytes: 0 };
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
    void flood(s, socketType, stats, first());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    endpoint: `tcp://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    stats,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** Connects to `endpoint` (tcp://host:port) and floods as `socketType`; resolves once disconnected. */
export function floodClient(endpoint: string, socketType: string, stats: FloodStats): Promise<void> {
  const url = new URL(endpoint.replace(/^tcp:/, "http:"));
  const sock = net.connect({ host: url.hostname, port: Number(url.port) });
  return flood(sock, socketType, stats);
}
