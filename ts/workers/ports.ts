/** Free loopback ports, for tests, demos and `kvroute worker --port 0`. */
import { createServer } from "node:net";

/** Whether `port` can be bound on `host` right now. */
export function canBind(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * The first port of `count` consecutive ports that are all free on `host` (and, since KV-event
 * endpoints bind `*`, on all interfaces). Probes random bases in [20000, 60000); racy by nature
 * (another process may take a port before it is used), good enough for tests and demos.
 */
export async function findFreePortRange(count: number, host = "127.0.0.1", attempts = 200): Promise<number> {
  for (let a = 0; a < attempts; a++) {
    const base = 20000 + Math.floor(Math.random() * (40000 - count));
    let ok = true;
    for (let p = base; p < base + count && ok; p++) ok = (await canBind(p, host)) && (await canBind(p, "0.0.0.0"));
    if (ok) return base;
  }
  throw new Error(`no ${count} consecutive free ports found on ${host}`);
}
