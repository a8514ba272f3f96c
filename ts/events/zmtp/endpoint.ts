/**
 * ZeroMQ endpoint strings (`tcp://host:port`, `ipc:///path`) parsed into what node:net needs.
 * Follows libzmq: the port is the text after the last ':', an IPv6 host may be bracketed,
 * `*` as host binds every IPv4 interface and `*` (or 0) as port picks an ephemeral one;
 * `ipc://@name` is a Linux abstract socket.
 */
import { InvalidConfigError } from "../../errors.js";

export type Endpoint =
  | { transport: "tcp"; endpoint: string; host: string; port: number }
  | { transport: "ipc"; endpoint: string; path: string };

export function parseEndpoint(endpoint: string): Endpoint {
  const sep = endpoint.indexOf("://");
  if (sep < 0) throw new InvalidConfigError(`ZMQ endpoint ${JSON.stringify(endpoint)} has no transport (tcp:// or ipc://)`);
  const transport = endpoint.slice(0, sep);
  const address = endpoint.slice(sep + 3);
  if (transport === "ipc") {
    if (address.length === 0) throw new InvalidConfigError(`ZMQ endpoint ${JSON.stringify(endpoint)} has no path`);
    return { transport, endpoint, path: address.startsWith("@") ? `\0${address.slice(1)}` : address };
  }
  if (transport !== "tcp") {
    throw new InvalidConfigError(`ZMQ transport ${JSON.stringify(transport)} is not supported (tcp, ipc)`);
  }
  const colon = address.lastIndexOf(":");
  if (colon <= 0) throw new InvalidConfigError(`ZMQ endpoint ${JSON.stringify(endpoint)} has no host:port`);
  let host = address.slice(0, colon);
  const portText = address.slice(colon + 1);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  const port = portText === "*" ? 0 : /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!Number.isInteger(port) || port > 65535) {
    throw new InvalidConfigError(`ZMQ endpoint ${JSON.stringify(endpoint)} has an invalid port`);
  }
  return { transport, endpoint, host, port };
}

/** The address to listen on for a bind endpoint: `*` means every IPv4 interface, as in libzmq. */
export function listenHost(host: string): string {
  return host === "*" ? "0.0.0.0" : host;
}

export function formatTcpEndpoint(host: string, port: number): string {
  return host.includes(":") ? `tcp://[${host}]:${port}` : `tcp://${host}:${port}`;
}
