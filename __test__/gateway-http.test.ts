/**
 * The gateway's HTTP surface against real mocker processes: the OpenAI routes, the routing
 * endpoint's contract, headers, errors, admission, and fuzzing (malformed JSON, wrong types, huge
 * bodies, slow-loris clients, slow readers) with bounded memory.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AddressInfo } from "node:net";
import { validateGatewayConfig } from "../ts/config/index.js";
import { createGateway, startGateway, workerRecordFromConfig, type RunningGateway } from "../ts/gateway/index.js";
import { MemoryRegistry } from "../ts/registry/memory-registry.js";
import { KvRouter } from "../ts/router/kv-router.js";
import { loadTokenizationGolden, tokenizerDir } from "./helpers/tokenization-golden.js";
import { get, metricValue, MODEL, post, rawSocket, sleep, sseData, startFleet, startMockWorker, type Fleet } from "./helpers/gateway-fleet.js";

let fleet: Fleet;
let url: string;

beforeAll(async () => {
  // The mockers and the gateway tokenize text and chat with the same real tokenizer (Qwen3).
  fleet = await startFleet(2, { maxBodyBytes: 64 * 1024, clientTimeoutMs: 1000, migrationLimit: 1 }, { speedup: 50, tokenizer: tokenizerDir(loadTokenizationGolden(), "qwen3") });
  url = fleet.gateway.url;
});
afterAll(async () => {
  await fleet?.stop();
});

describe("gateway: OpenAI routes", () => {
  it("serves completions and chat, streamed or not, with the kvroute headers", async () => {
    const prompt = "the quick brown fox jumps over the lazy dog ".repeat(30);
    const a = await post(url, "/v1/completions", { model: MODEL, prompt, max_tokens: 7, ignore_eos: true });
    expect(a.status).toBe(200);
    expect(a.json.usage.completion_tokens).toBe(7);
    expect(a.json.object).toBe("text_completion");
    expect(["w0", "w1"]).toContain(a.headers["x-kvroute-worker"]);
    expect(a.headers["x-kvroute-overlap-blocks"]).toBe("0");
    // Same prompt again, once the worker's KV events have reached the router: it sends it where its
    // blocks are, and says how many it found.
    while ((await post(url, "/v1/kvroute/route", { model: MODEL, prompt })).json.overlapBlocks <= 10) await sleep(20);
    const b = await post(url, "/v1/completions", { model: MODEL, prompt, max_tokens: 7, stream: true, stream_options: { include_usage: true } });
    expect(b.status).toBe(200);
    expect(b.headers["content-type"]).toContain("text/event-stream");
    expect(b.headers["x-kvroute-worker"]).toBe(a.headers["x-kvroute-worker"]);
    expect(Number(b.headers["x-kvroute-overlap-blocks"])).toBeGreaterThan(10);
    const events = sseData(b.text);
    expect(events.at(-1)).toBe("[DONE]");
    expect(events.at(-2).usage.completion_tokens).toBe(7);
    // The client did not ask for token ids: they read null, as the engine sends them.
    expect(events[0].choices[0].token_ids).toBeNull();
    const c = await post(url, "/v1/chat/completions", { model: MODEL, messages: [{ role: "user", content: "hello" }], max_tokens: 3 });
    expect(c.status).toBe(200);
    expect(c.json.choices[0].message.role).toBe("assistant");
    expect(c.headers["x-kvroute-worker"]).toBeDefined();
    const d = await post(url, "/v1/chat/completions", { messages: [{ role: "user", content: [{ type: "text", text: "hello" }] }], max_tokens: 3, stream: true });
    expect(d.status).toBe(200);
    expect(sseData(d.text)[0].choices[0].delta.role).toBe("assistant");
  });

  it("answers /v1/models, /health, /metrics", async () => {
    const models = await get(url, "/v1/models");
    expect(models.status).toBe(200);
    expect(models.json.data.map((m: { id: string }) => m.id)).toEqual([MODEL]);
    const health = await get(url, "/health");
    expect(health.status).toBe(200);
    expect(health.json).toMatchObject({ status: "ok", workers: 2 });
    const metrics = await get(url, "/metrics");
    expect(metrics.status).toBe(200);
    for (const name of [
      "kvroute_requests_total",
      "kvroute_routing_decisions_total",
      "kvroute_overlap_blocks_bucket",
      "kvroute_time_to_first_token_seconds_bucket",
      "kvroute_inter_token_latency_seconds_bucket",
      "kvroute_worker_active_requests",
      "kvroute_prefill_tokens_saved_total",
      "kvroute_prefill_tokens_avoidable_total",
      "kvroute_blind_decisions_total",
      "kvroute_queue_admissions_total",
    ]) {
      expect(metrics.text, name).toContain(name);
    }
    expect(metricValue(metrics.text, "kvroute_requests_total", { route: "/v1/completions", status: "200" })).toBeGreaterThan(0);
    expect(metricValue(metrics.text, "kvroute_prefill_tokens_saved_total")).toBeGreaterThan(0);
  });

  it("POST /v1/kvroute/route answers the decision without forwarding", async () => {
    const prompt = Array.from({ length: 160 }, (_, i) => 5000 + i);
    await post(url, "/v1/completions", { model: MODEL, prompt, max_tokens: 1 });
    // Wait for the KV events of those 10 blocks (polled; the test timeout bounds it).
    while ((await post(url, "/v1/kvroute/route", { model: MODEL, prompt })).json.overlapBlocks < 10) await sleep(20);
    const before = (await get(url, "/metrics")).text;
    const r = await post(url, "/v1/kvroute/route", { model: MODEL, prompt, explain: true });
    expect(r.status).toBe(200);
    expect(Object.keys(r.json).slice(0, 4)).toEqual(["worker", "dpRank", "overlapBlocks", "candidates"]);
    expect(r.json.overlapBlocks).toBe(10);
    expect(r.json.candidates.length).toBe(2);
    for (const c of r.json.candidates) {
      expect(typeof c.worker).toBe("string");
      expect(typeof c.dpRank).toBe("number");
      expect(typeof c.overlapBlocks).toBe("number");
      expect(typeof c.cost).toBe("number");
    }
    expect(r.json.candidates[0].worker).toBe(r.json.worker);
    const text = await post(url, "/v1/kvroute/route", { model: MODEL, prompt: "some text prompt" });
    expect(text.status).toBe(200);
    expect(text.json.candidates.length).toBe(2);
    // Nothing was forwarded.
    const after = (await get(url, "/metrics")).text;
    expect(metricValue(after, "kvroute_routing_decisions_total")).toBe(metricValue(before, "kvroute_routing_decisions_total"));
  });
});

describe("gateway: errors", () => {
  it("answers OpenAI-shaped errors naming the field", async () => {
    const cases: [string, unknown, number, string, string | null][] = [
      ["/v1/completions", "{not json", 400, "KVR_BAD_REQUEST", null],
      ["/v1/completions", "[1,2]", 400, "KVR_BAD_REQUEST", null],
      ["/v1/completions", { model: MODEL }, 400, "KVR_BAD_REQUEST", "prompt"],
      ["/v1/completions", { model: MODEL, prompt: 5 }, 400, "KVR_BAD_REQUEST", "prompt"],
      ["/v1/completions", { model: MODEL, prompt: [1, -1] }, 400, "KVR_BAD_REQUEST", "prompt"],
      ["/v1/completions", { model: MODEL, prompt: "x", max_tokens: "10" }, 400, "KVR_BAD_REQUEST", "max_tokens"],
      ["/v1/completions", { model: MODEL, prompt: "x", max_tokens: 0 }, 400, "KVR_BAD_REQUEST", "max_tokens"],
      ["/v1/completions", { model: MODEL, prompt: "x", stream: "yes" }, 400, "KVR_BAD_REQUEST", "stream"],
      ["/v1/completions", { model: 7, prompt: "x" }, 400, "KVR_BAD_REQUEST", "model"],
      ["/v1/chat/completions", { model: MODEL, messages: "hi" }, 400, "KVR_BAD_REQUEST", "messages"],
      ["/v1/chat/completions", { model: MODEL, messages: [{ content: "x" }] }, 400, "KVR_BAD_REQUEST", "messages"],
      ["/v1/completions", { model: "nope", prompt: "x" }, 404, "KVR_MODEL_NOT_FOUND", "model"],
      ["/v1/kvroute/route", { model: MODEL }, 400, "KVR_BAD_REQUEST", "prompt"],
    ];
    for (const [path, body, status, code, param] of cases) {
      const r = await post(url, path, body);
      expect(r.status, JSON.stringify(body)).toBe(status);
      expect(r.json.error.code).toBe(code);
      expect(r.json.error.param).toBe(param);
      expect(typeof r.json.error.message).toBe("string");
      expect(r.json.error.type).toMatch(/Error$/);
    }
    expect((await get(url, "/nope")).status).toBe(404);
    expect((await get(url, "/v1/completions")).status).toBe(405);
    const wrongType = await post(url, "/v1/completions", "prompt=x", { "content-type": "application/x-www-form-urlencoded" });
    expect(wrongType.status).toBe(415);
    // The engine's own 400s pass through with its body (vLLM's shape) and the kvroute headers.
    const engine400 = await post(url, "/v1/completions", { model: MODEL, prompt: "x", temperature: -3 });
    expect(engine400.status).toBe(400);
    expect(engine400.headers["x-kvroute-worker"]).toBeDefined();
  });

  it("refuses a body over the limit with 413 before buffering it, announced or not", async () => {
    // Announced: 1 GB Content-Length, nothing sent.
    const s = await rawSocket(url);
    const answer = new Promise<string>((resolve) => {
      let text = "";
      s.on("data", (d) => (text += d.toString()));
      s.on("close", () => resolve(text));
    });
    s.write(`POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000000\r\n\r\n{"model":`);
    const text = await answer;
    expect(text).toMatch(/^HTTP\/1.1 413/);
    expect(text).toContain("KVR_BODY_TOO_LARGE");
    // Chunked, no length: stops reading past the limit; the gateway's memory stays bounded.
    const heap0 = process.memoryUsage().heapUsed;
    const big = Buffer.alloc(1024 * 1024, 0x20);
    const status = await new Promise<number | string>((resolve) => {
      const u = new URL(url);
      const req = http.request({ host: u.hostname, port: u.port, path: "/v1/completions", method: "POST", headers: { "content-type": "application/json" } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on("error", (e) => resolve((e as NodeJS.ErrnoException).code ?? "error"));
      let sent = 0;
      const pump = () => {
        while (sent < 64) {
          sent++;
          if (!req.write(big)) return void req.once("drain", pump);
        }
        req.end();
      };
      pump();
    });
    expect([413, "EPIPE", "ECONNRESET"]).toContain(status);
    expect(process.memoryUsage().heapUsed - heap0).toBeLessThan(32 * 1024 * 1024);
    // Still serving.
    expect((await post(url, "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 1 })).status).toBe(200);
  });

  it("drops slow-loris clients after clientTimeoutMs and keeps serving meanwhile", async () => {
    const sockets = await Promise.all(Array.from({ length: 30 }, () => rawSocket(url)));
    // Half trickle their headers, half their body, one byte every 100 ms; sent[i] counts them.
    const sent = sockets.map(() => 0);
    const closed = sockets.map((s, i) => new Promise<number>((resolve) => s.on("close", () => resolve(sent[i]!))));
    const head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n";
    const timers = sockets.map((s, i) => {
      let k = 0;
      const text = i % 2 === 0 ? head : head + "\r\n" + "{".padEnd(100, " ");
      if (i % 2 === 1) s.write(head + "\r\n");
      return setInterval(() => {
        if (s.destroyed) return;
        s.write(text[(i % 2 === 1 ? head.length + 2 : 0) + k++] ?? " ");
        sent[i] = k;
      }, 100);
    });
    for (const s of sockets) s.on("error", () => {});
    // Meanwhile, real requests go through.
    const r = await post(url, "/v1/completions", { model: MODEL, prompt: "hello", max_tokens: 2 });
    expect(r.status).toBe(200);
    const sentAtClose = await Promise.all(closed);
    for (const t of timers) clearInterval(t);
    // The server closed every socket before its request was whole (headers ~90 bytes, a body of
    // 100): dropped by clientTimeoutMs (1000 ms), not answered. No clock is read here.
    for (const n of sentAtClose) expect(n).toBeLessThan(90);
  });

  it("survives random and mutated bodies: no crash, no 5xx", async () => {
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)]!;
    const values = (): unknown =>
      pick<() => unknown>([
        () => null,
        () => true,
        () => -1,
        () => 1e308,
        () => 3.5,
        () => "",
        () => "x".repeat(Math.floor(rand() * 50)),
        () => [],
        () => [1, 2, "3"],
        () => [[1, 2], [3]],
        () => ({}),
        () => ({ role: "user", content: 5 }),
        () => [{ role: "user", content: "hi" }],
        () => 2 ** 40,
      ])();
    const fields = ["model", "prompt", "messages", "max_tokens", "stream", "n", "stream_options", "temperature", "return_token_ids", "cache_salt", "min_tokens", "echo", "max_completion_tokens"];
    const statuses = new Map<number, number>();
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const path = pick(["/v1/completions", "/v1/chat/completions", "/v1/kvroute/route"]);
      let body: unknown;
      const kind = rand();
      if (kind < 0.15) body = Buffer.from(Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256))).toString("latin1");
      else if (kind < 0.25) body = JSON.stringify(values());
      else {
        const obj: Record<string, unknown> = path === "/v1/chat/completions" ? { model: MODEL, messages: [{ role: "user", content: "q" }], max_tokens: 2 } : { model: MODEL, prompt: "q", max_tokens: 2 };
        for (let k = 0; k < 1 + Math.floor(rand() * 3); k++) obj[pick(fields)] = values();
        body = JSON.stringify(obj);
      }
      jobs.push(
        post(url, path, body as string).then((r) => {
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
          expect(r.status, `${path} ${String(body).slice(0, 200)} -> ${r.text.slice(0, 300)}`).toBeLessThan(500);
          if (r.status >= 400) expect(r.json?.error ?? r.json?.detail, r.text).toBeDefined();
        }),
      );
      if (jobs.length >= 16) await Promise.all(jobs.splice(0));
    }
    await Promise.all(jobs);
    expect(statuses.get(400)).toBeGreaterThan(10);
    expect(statuses.get(200)).toBeGreaterThan(10);
    expect((await get(url, "/health")).status).toBe(200);
  });
});

describe("gateway: backpressure (embedded in a node:http server)", () => {
  it("a client that stops reading pauses the worker's stream instead of filling the gateway", async () => {
    // A zero-time worker streams ~9 MB (60k tokens) as fast as it can.
    const worker = await startMockWorker({ id: "fast", speedup: "inf", kvEvents: false, numGpuBlocks: 8000 }, null);
    const config = validateGatewayConfig({ models: [{ name: MODEL, workers: [{ id: "fast", url: worker.url }] }] });
    const registry = new MemoryRegistry([workerRecordFromConfig(config.models[0]!, config.models[0]!.workers[0]!)]);
    const router = new KvRouter({ registry });
    const gateway = createGateway({ router, registry, config, log: null });
    let response: http.ServerResponse | null = null;
    const server = http.createServer((req, res) => {
      response = res;
      gateway(req, res);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const port = (server.address() as AddressInfo).port;
      const tokens = 60_000;
      const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
        const req = http.request({ host: "127.0.0.1", port, path: "/v1/completions", method: "POST", headers: { "content-type": "application/json" } }, resolve);
        req.on("error", reject);
        req.end(JSON.stringify({ model: MODEL, prompt: "slow reader", max_tokens: tokens, ignore_eos: true, stream: true }));
      });
      res.pause();
      // While the client reads nothing, what the gateway holds for it stays at one socket buffer:
      // the kernel's buffers fill (a few MB), then the gateway stops reading from the worker.
      let maxHeld = 0;
      for (let i = 0; i < 25; i++) {
        await sleep(100);
        maxHeld = Math.max(maxHeld, response!.writableLength);
      }
      const written = response!.socket!.bytesWritten;
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (text += d));
      res.resume();
      await new Promise((r) => res.on("end", r));
      const events = sseData(text).filter((e) => e !== "[DONE]");
      const words = events.reduce((n, e) => n + (e.choices[0]?.text.length ?? 0) / 7, 0);
      if (process.env.KVROUTE_TEST_VERBOSE) console.log(`backpressure: held at most ${maxHeld} bytes; ${written} of ${text.length} bytes sent while paused`);
      expect(maxHeld).toBeLessThan(256 * 1024);
      expect(written).toBeLessThan(text.length * 0.8);
      // Resumed: every token arrives.
      expect(words).toBe(tokens);
    } finally {
      server.close();
      await gateway.close();
      router.close();
      await worker.stop();
    }
  });
});

describe("gateway: embedded behind a framework's body parser", () => {
  it("uses req.body when it was already read (a parsed object as Express leaves it, a Buffer as Fastify)", async () => {
    const gateway = createGateway({ router: fleet.gateway.router, registry: fleet.gateway.registry, log: null });
    let mode: "object" | "buffer" = "object";
    const server = http.createServer((req, res) => {
      // What express.json() / a Fastify buffer parser do before the route handler runs.
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const raw = Buffer.concat(chunks);
        Object.assign(req, { body: mode === "object" ? JSON.parse(raw.toString()) : raw });
        gateway(req, res);
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      for (const m of ["object", "buffer"] as const) {
        mode = m;
        const r = await post(base, "/v1/chat/completions", { model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
        expect(r.status, m).toBe(200);
        expect(r.json.usage.completion_tokens).toBe(2);
        const bad = await post(base, "/v1/completions", { model: MODEL, prompt: {} });
        expect(bad.status).toBe(400);
        expect(bad.json.error.param).toBe("prompt");
      }
    } finally {
      server.close();
      await gateway.close();
    }
  });
});

describe("gateway: admission", () => {
  const gateways: RunningGateway[] = [];
  /** A second gateway from a config file's shape, over one of the fleet's workers. */
  async function gatewayOverOneWorker(queue: { maxSize: number; timeoutMs: number }, extra: Record<string, unknown> = {}): Promise<RunningGateway> {
    const gw = await startGateway(
      {
        host: "127.0.0.1",
        port: 0,
        queue: { ...queue, maxActivePerWorker: 1 },
        ...extra,
        models: [
          { name: MODEL, workers: [{ id: "only", url: fleet.workers[0]!.url }] },
          { name: "empty", workers: [] },
        ],
      },
      { log: null },
    );
    gateways.push(gw);
    return gw;
  }
  afterAll(async () => {
    await Promise.all(gateways.map((g) => g.close()));
  });

  /** A stream that keeps the worker's only slot until `release()` disconnects it. */
  async function occupy(gwUrl: string): Promise<{ release: () => void }> {
    const u = new URL(gwUrl);
    const req = http.request({ host: u.hostname, port: u.port, path: "/v1/completions", method: "POST", headers: { "content-type": "application/json" } });
    req.on("error", () => {});
    const res = new Promise<http.IncomingMessage>((resolve) => req.on("response", resolve));
    req.end(JSON.stringify({ model: MODEL, prompt: "busy", max_tokens: 100_000, ignore_eos: true, stream: true }));
    (await res).resume();
    return { release: () => req.destroy() };
  }

  /** Polls `cond` until it holds (the test timeout bounds it, not a count of polls). */
  async function until(cond: () => boolean): Promise<void> {
    while (!cond()) await sleep(10);
  }

  it("holds requests while every worker is busy, admits them as load drops, 503 when the queue is full", async () => {
    const gw = await gatewayOverOneWorker({ maxSize: 2, timeoutMs: 30_000 });
    const busy = await occupy(gw.url);
    const short = { model: MODEL, prompt: "short", max_tokens: 2 };
    const queued = [post(gw.url, "/v1/completions", short), post(gw.url, "/v1/completions", short)];
    await until(() => gw.gateway.queued === 2);
    const full = await post(gw.url, "/v1/completions", short);
    expect(full.status).toBe(503);
    expect(full.json.error.code).toBe("KVR_QUEUE_FULL");
    expect(full.headers["retry-after"]).toBe("1");
    // The slot frees: both waiting requests are admitted, one after the other.
    busy.release();
    for (const q of await Promise.all(queued)) expect(q.status).toBe(200);
    const m = (await get(gw.url, "/metrics")).text;
    expect(metricValue(m, "kvroute_queue_rejections_total", { reason: "queue_full" })).toBe(1);
    expect(metricValue(m, "kvroute_queue_admissions_total", { kind: "queued" })).toBe(2);
    expect(metricValue(m, "kvroute_queue_admissions_total", { kind: "immediate" })).toBe(1);
  });

  it("503 when the queue deadline passes, or when no worker serves the model; 504 when the worker is too slow", async () => {
    const gw = await gatewayOverOneWorker({ maxSize: 2, timeoutMs: 200 }, { upstreamTimeoutMs: 300 });
    const busy = await occupy(gw.url);
    const late = await post(gw.url, "/v1/completions", { model: MODEL, prompt: "short", max_tokens: 2 });
    expect(late.status).toBe(503);
    expect(late.json.error.code).toBe("KVR_QUEUE_TIMEOUT");
    busy.release();
    const none = await post(gw.url, "/v1/completions", { model: "empty", prompt: "x" });
    expect(none.status).toBe(503);
    expect(none.json.error.code).toBe("KVR_NO_HEALTHY_WORKER");
    const m = (await get(gw.url, "/metrics")).text;
    expect(metricValue(m, "kvroute_queue_rejections_total", { reason: "queue_timeout" })).toBe(1);
    expect(metricValue(m, "kvroute_queue_rejections_total", { reason: "no_worker" })).toBe(1);
    // Not streamed: the mocker answers once all 30k tokens are done (seconds at speedup 50).
    await until(() => gw.gateway.queued === 0);
    const slow = await post(gw.url, "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 30_000, ignore_eos: true });
    expect(slow.status).toBe(504);
    expect(slow.json.error.code).toBe("KVR_UPSTREAM_TIMEOUT");
  });
});
