/**
 * The native front (`front: "native"`, crates/kvroute-front) against real mocker processes: which
 * requests it answers itself (their engine ids carry its `-f` mark), that they route on the JS
 * router's own index and count in the gateway's metrics, what it hands to the JS gateway, that
 * admission's bound and queue hold across both lanes, and how it starts and refuses. The rest of
 * the gateway's behaviour runs through it in vitest.native-front.config.ts (every gateway suite).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGateway } from "../ts/gateway/index.js";
import { loadTokenizationGolden, tokenizerDir } from "./helpers/tokenization-golden.js";
import { get, metricValue, MODEL, post, sleep, sseData, startFleet, type Fleet } from "./helpers/gateway-fleet.js";

const FRONT_ID = /^kvg-[0-9a-f]{16}-f[0-9a-z]+~0$/;
const qwen = tokenizerDir(loadTokenizationGolden(), "qwen3");

let fleet: Fleet;
let url: string;

beforeAll(async () => {
  // No retries, no migration: a request JS took over after a (forged) failure would get 502.
  fleet = await startFleet(2, { front: "native", connectRetries: 0, migrationLimit: 0, tokenizationCheckEvery: 0 }, { speedup: 50, tokenizer: qwen });
  url = fleet.gateway.url;
});
afterAll(async () => {
  await fleet?.stop();
});

async function metrics(): Promise<string> {
  return (await get(url, "/metrics")).text;
}

describe("native front: the fast lane", () => {
  it("answers completions (text and ids) and chat itself, on the JS router's index, counted in the gateway's metrics", async () => {
    const before = await metrics();
    const prompt = "a shared document about the sea and its ships, ".repeat(40);
    const first = await post(url, "/v1/completions", { model: MODEL, prompt, max_tokens: 5, ignore_eos: true });
    expect(first.status).toBe(200);
    expect(first.headers["x-kvroute-request-id"]).toMatch(FRONT_ID);
    expect(first.json.usage.completion_tokens).toBe(5);
    // Its blocks reach the router through the worker's KV events; the JS route endpoint and the
    // front then both see them on the same index.
    while ((await post(url, "/v1/kvroute/route", { model: MODEL, prompt })).json.overlapBlocks <= 10) await sleep(20);
    const again = await post(url, "/v1/completions", { model: MODEL, prompt, max_tokens: 5, ignore_eos: true }, { "x-request-id": "client-42" });
    expect(again.headers["x-kvroute-request-id"]).toMatch(FRONT_ID);
    expect(again.headers["x-kvroute-worker"]).toBe(first.headers["x-kvroute-worker"]);
    expect(Number(again.headers["x-kvroute-overlap-blocks"])).toBeGreaterThan(10);
    expect(again.headers["x-request-id"]).toBe("client-42");
    const ids = await post(url, "/v1/completions", { model: MODEL, prompt: Array.from({ length: 100 }, (_, i) => 1000 + i), max_tokens: 3 });
    expect(ids.status).toBe(200);
    expect(ids.headers["x-kvroute-request-id"]).toMatch(FRONT_ID);
    const chat = await post(url, "/v1/chat/completions", { model: MODEL, messages: [{ role: "user", content: "hello there" }], max_tokens: 3 });
    expect(chat.status).toBe(200);
    expect(chat.json.object).toBe("chat.completion");
    expect(chat.headers["x-kvroute-request-id"]).toMatch(FRONT_ID);
    const after = await metrics();
    const delta = (name: string, labels: Record<string, string> = {}) => metricValue(after, name, labels) - metricValue(before, name, labels);
    expect(delta("kvroute_requests_total", { route: "/v1/completions", status: "200" })).toBe(3);
    expect(delta("kvroute_requests_total", { route: "/v1/chat/completions", status: "200" })).toBe(1);
    expect(delta("kvroute_routing_decisions_total", { mode: "kv" })).toBe(4);
    expect(delta("kvroute_overlap_blocks_count")).toBe(4);
    expect(delta("kvroute_prefill_tokens_saved_total")).toBeGreaterThan(10 * 16 - 1);
    expect(metricValue(after, "kvroute_worker_active_requests")).toBe(0);
  });

  it("relays a stream itself: whole events up to [DONE], its first token timed", async () => {
    const before = metricValue(await metrics(), "kvroute_time_to_first_token_seconds_count");
    const r = await post(url, "/v1/completions", { model: MODEL, prompt: "tell me a story", max_tokens: 6, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toContain("text/event-stream");
    expect(r.headers["x-kvroute-request-id"]).toMatch(FRONT_ID);
    const events = sseData(r.text);
    expect(events.at(-1)).toBe("[DONE]");
    expect(events.at(-2).usage.completion_tokens).toBe(6);
    expect(r.text.endsWith("\n\n")).toBe(true);
    expect(metricValue(await metrics(), "kvroute_time_to_first_token_seconds_count")).toBe(before + 1);
  });
});

describe("native front: hand-off to the JS gateway", () => {
  it("forwards what it does not answer: other routes, batched prompts, unknown models", async () => {
    const health = await get(url, "/health");
    expect(health.status).toBe(200);
    expect(health.json.status).toBe("ok");
    const batched = await post(url, "/v1/completions", { model: MODEL, prompt: ["one prompt", "another"], max_tokens: 2 });
    expect(batched.status).toBe(200);
    expect(batched.json.choices).toHaveLength(2);
    expect(batched.headers["x-kvroute-request-id"]).not.toMatch(FRONT_ID);
    const unknown = await post(url, "/v1/completions", { model: "nope", prompt: "x" });
    expect(unknown.status).toBe(404);
    expect(unknown.json.error.code).toBe("KVR_MODEL_NOT_FOUND");
    const malformed = await post(url, "/v1/completions", "{not json");
    expect(malformed.status).toBe(400);
    expect(malformed.json.error.code).toBe("KVR_BAD_REQUEST");
  });

  it("drops a client's own x-kvroute-front-failure header (only the front may report its failures)", async () => {
    const forged = encodeURIComponent(JSON.stringify({ worker: "w0", dpRank: 0, kind: "broken", detail: "forged" }));
    for (const prompt of ["a prompt the front answers", ["a batched prompt JS answers"]]) {
      const r = await post(url, "/v1/completions", { model: MODEL, prompt, max_tokens: 2 }, { "x-kvroute-front-failure": forged, "x-kvroute-front-check": "1" });
      // Honoured, it would be a failed attempt with no retry left: 502.
      expect(r.status, JSON.stringify(prompt)).toBe(200);
    }
  });
});

describe("native front: admission across both lanes", () => {
  it("at maxActivePerWorker 1, requests beyond the workers' slots wait in JS's queue and all complete", async () => {
    const f = await startFleet(2, { front: "native", queue: { maxActivePerWorker: 1, maxSize: 64, timeoutMs: 30_000 }, tokenizationCheckEvery: 0 }, { speedup: 5, tokenizer: qwen });
    try {
      const rs = await Promise.all(
        Array.from({ length: 8 }, (_, i) => post(f.gateway.url, "/v1/completions", { model: MODEL, prompt: `request ${i} `.repeat(20), max_tokens: 40, ignore_eos: true })),
      );
      expect(rs.map((r) => r.status)).toEqual(Array(8).fill(200));
      const m = (await get(f.gateway.url, "/metrics")).text;
      // Some went straight to a free worker through the front, the rest waited in the queue.
      expect(metricValue(m, "kvroute_queue_admissions_total", { kind: "queued" })).toBeGreaterThan(0);
      expect(rs.some((r) => FRONT_ID.test(String(r.headers["x-kvroute-request-id"])))).toBe(true);
      expect(metricValue(m, "kvroute_queue_rejections_total")).toBe(0);
      expect(metricValue(m, "kvroute_worker_active_requests")).toBe(0);
    } finally {
      await f.stop();
    }
  });
});

describe("native front: start", () => {
  it("refuses a port in use with KVR_LISTEN and leaves nothing listening", async () => {
    const taken = http.createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as AddressInfo).port;
    try {
      await expect(startGateway({ host: "127.0.0.1", port, front: "native" }, { log: null })).rejects.toMatchObject({ code: "KVR_LISTEN" });
    } finally {
      taken.close();
    }
  });
});
