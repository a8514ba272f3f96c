/**
 * The gateway's worker leg, client side only: CPU µs per request of undici's Pool (the settings
 * of ts/gateway/upstream.ts) against Node's `http.request` over a keep-alive `http.Agent`, and a
 * minimal HTTP/1.1 client over raw `net` sockets (a prototype: fixed-length responses only), at
 * 64 requests in flight to a zero-time server in another process. Baseline: undici, same run.
 *
 *   npx tsx benchmarks/upstream-client.ts        (BENCH_REQUESTS, BENCH_BODY_BYTES)
 */
import { fork } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { Pool } from "undici";

const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 20_000);
const BODY_BYTES = Number(process.env.BENCH_BODY_BYTES ?? 6_000);
const IN_FLIGHT = 64;
const REPS = 3;

if (process.argv[2] === "server") {
  // A completion answer of the mocker's size, at once.
  const answer = Buffer.from(JSON.stringify({ id: "cmpl-x", object: "text_completion", created: 1, model: "m", choices: [{ index: 0, text: "x".repeat(60), logprobs: null, finish_reason: "length", stop_reason: null, prompt_token_ids: null }], usage: { prompt_tokens: 1000, total_tokens: 1016, completion_tokens: 16, prompt_tokens_details: null } }));
  const server = http.createServer((req, res) => {
    req.on("data", () => {});
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": answer.length });
      res.end(answer);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1", () => process.send!((server.address() as net.AddressInfo).port));
} else {
  void main();
}

type Send = (body: Buffer) => Promise<void>;

function undiciClient(origin: string): { send: Send; close(): Promise<void> } {
  const pool = new Pool(origin, { connections: IN_FLIGHT, pipelining: 1, keepAliveTimeout: 30_000, connect: { noDelay: true } });
  const send: Send = (body) =>
    new Promise((resolve, reject) => {
      pool.dispatch(
        { method: "POST", path: "/v1/completions", headers: { "content-type": "application/json", "content-length": String(body.length) }, body },
        {
          onRequestStart() {},
          onResponseStart() {},
          onResponseData() {},
          onResponseEnd: () => resolve(),
          onResponseError: (_c, err) => reject(err),
        },
      );
    });
  return { send, close: () => pool.close() };
}

function agentClient(port: number): { send: Send; close(): Promise<void> } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: IN_FLIGHT, noDelay: true });
  const send: Send = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request({ host: "127.0.0.1", port, method: "POST", path: "/v1/completions", agent, headers: { "content-type": "application/json", "content-length": body.length } }, (res) => {
        res.on("data", () => {});
        res.on("end", resolve);
      });
      req.on("error", reject);
      req.end(body);
    });
  return { send, close: async () => agent.destroy() };
}

/** One keep-alive socket per request in flight; parses status line, headers and a Content-Length body. */
function rawClient(port: number): { send: Send; close(): Promise<void> } {
  const idle: RawConn[] = [];
  const all: RawConn[] = [];
  class RawConn {
    socket = net.connect({ host: "127.0.0.1", port, noDelay: true });
    buf: Buffer | null = null;
    need = -1;
    done: (() => void) | null = null;
    constructor() {
      this.socket.on("data", (d) => this.onData(d));
    }
    onData(d: Buffer): void {
      this.buf = this.buf ? Buffer.concat([this.buf, d]) : d;
      if (this.need < 0) {
        const end = this.buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = this.buf.toString("latin1", 0, end);
        const m = /\r\ncontent-length: *(\d+)/i.exec(head);
        this.need = end + 4 + Number(m?.[1] ?? 0);
      }
      if (this.buf.length >= this.need) {
        this.buf = null;
        this.need = -1;
        const done = this.done!;
        this.done = null;
        idle.push(this);
        done();
      }
    }
  }
  const send: Send = (body) =>
    new Promise((resolve) => {
      let c = idle.pop();
      if (!c) {
        c = new RawConn();
        all.push(c);
      }
      c.done = resolve;
      c.socket.write(`POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`);
      c.socket.write(body);
    });
  return { send, close: async () => all.forEach((c) => c.socket.destroy()) };
}

async function run(send: Send, body: Buffer, n: number): Promise<number> {
  let left = n;
  const cpu = process.cpuUsage();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (left-- > 0) await send(body);
    }),
  );
  const u = process.cpuUsage(cpu);
  return (u.user + u.system) / n;
}

async function main(): Promise<void> {
  const server = fork(new URL(import.meta.url).pathname, ["server"], { execArgv: ["--import", "tsx"] });
  const port = await new Promise<number>((r) => server.once("message", (m) => r(m as number)));
  const body = Buffer.from(JSON.stringify({ model: "m", prompt: Array.from({ length: Math.floor(BODY_BYTES / 6) }, (_, i) => 10_000 + i), max_tokens: 16 }));
  const clients = { "undici Pool (baseline)": undiciClient(`http://127.0.0.1:${port}`), "http.Agent keep-alive": agentClient(port), "raw net HTTP/1.1": rawClient(port) };
  const results = new Map<string, number[]>();
  for (const [name, c] of Object.entries(clients)) await run(c.send, body, 2_000); // warm-up
  for (let rep = 0; rep < REPS; rep++) {
    for (const [name, c] of Object.entries(clients)) {
      const us = await run(c.send, body, REQUESTS);
      results.set(name, [...(results.get(name) ?? []), us]);
    }
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
  console.log(`client CPU µs per request, ${IN_FLIGHT} in flight, ${body.length}-byte body, median of ${REPS} interleaved runs of ${REQUESTS}`);
  for (const [name, v] of results) console.log(`${name.padEnd(24)} ${median(v).toFixed(1).padStart(7)} µs   (runs: ${v.map((x) => x.toFixed(1)).join(", ")})`);
  for (const c of Object.values(clients)) await c.close();
  server.kill();
}
