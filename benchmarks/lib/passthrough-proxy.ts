/**
 * The floor of a Node gateway, for `bench:gateway`: node:http in front, the gateway's own
 * worker-leg client (UpstreamPool, the same undici settings) behind, requests sent round-robin with
 * their bytes unchanged and answers streamed back as they come. Nothing is parsed, tokenized,
 * routed or counted. Whatever kvroute costs above it is routing and request handling; what it
 * costs itself is Node's HTTP on both legs.
 *
 *   node --import tsx benchmarks/lib/passthrough-proxy.ts PORT WORKER_URL...
 */
import http from "node:http";
import { UpstreamPool } from "../../ts/gateway/upstream.js";

const [port, ...workers] = process.argv.slice(2);
const upstream = new UpstreamPool({ connectionsPerWorker: 128, headersTimeoutMs: 60_000, bodyTimeoutMs: 60_000 });
let next = 0;

const server = http.createServer({ keepAliveTimeout: 65_000, noDelay: true }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    upstream.send(workers[next++ % workers.length]!, req.url ?? "/", body, {
      onHeaders: (status, headers) => {
        res.writeHead(status, { "content-type": String(headers["content-type"] ?? "application/json") });
      },
      onData: (chunk) => {
        res.write(chunk);
      },
      onEnd: () => res.end(),
      onError: () => {
        if (!res.headersSent) res.writeHead(502);
        res.end();
      },
    });
  });
});
server.listen(Number(port), "127.0.0.1", () => console.log("passthrough: ready"));
