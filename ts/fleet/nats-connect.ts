/**
 * One NATS connection for fleet mode (router load sync and the KV-event stream share it), with
 * the server's auth (token, user/password, creds file) and TLS. A refusal (wrong credentials, a
 * failed TLS handshake, nothing listening) fails the start with an error naming the server: the
 * first connect does not wait or retry; once connected the client reconnects forever.
 */
import { readFileSync } from "node:fs";
import type { NatsConnection, NodeConnectionOptions } from "@nats-io/transport-node";
import { InvalidConfigError, KvrouteError } from "../errors.js";

export class FleetConnectError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_FLEET_CONNECT", message, options);
  }
}

export interface NatsAuthOptions {
  token?: string;
  user?: string;
  password?: string;
  /** A creds file (user JWT + nkey seed), as `nsc` writes it. */
  credsFile?: string;
  /** TLS: CA file of the server's certificate; client cert and key files (server `verify: true`). */
  tls?: { ca?: string; cert?: string; key?: string };
}

export interface ConnectNatsOptions extends NatsAuthOptions {
  /** `nats://host:port` (`tls://host:port` for TLS), or several, comma-separated. */
  servers: string;
  /** Connection name shown by the server. */
  name?: string;
  /** How long the first connect may take. Default 5000 ms. */
  timeoutMs?: number;
}

export async function connectNats(options: ConnectNatsOptions): Promise<NatsConnection> {
  const servers = options.servers.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (servers.length === 0) throw new InvalidConfigError("bus: needs a NATS URL such as nats://127.0.0.1:4222");
  const secure = servers.some((s) => s.startsWith("tls://")) || options.tls !== undefined;
  const { connect, credsAuthenticator } = await import("@nats-io/transport-node");
  const opts: NodeConnectionOptions = {
    servers,
    name: options.name ?? "kvroute",
    timeout: options.timeoutMs ?? 5000,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  };
  const tokenOrUser = [options.token, options.user, options.credsFile].filter((x) => x !== undefined && x !== "").length;
  if (tokenOrUser > 1) throw new InvalidConfigError("bus: give one of a NATS token, a user and password, or a creds file");
  if (options.token) opts.token = options.token;
  if (options.user) {
    if (options.password === undefined) throw new InvalidConfigError("bus: a NATS user needs a password");
    opts.user = options.user;
    opts.pass = options.password;
  }
  if (options.credsFile) opts.authenticator = credsAuthenticator(readFileSync(options.credsFile));
  if (secure) {
    const t = options.tls ?? {};
    opts.tls = { ...(t.ca ? { caFile: t.ca } : {}), ...(t.cert ? { certFile: t.cert } : {}), ...(t.key ? { keyFile: t.key } : {}) };
  }
  try {
    return await connect(opts);
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    throw new FleetConnectError(`NATS at ${servers.join(",")} refused the connection: ${why}`, { cause: err });
  }
}
