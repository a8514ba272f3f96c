/**
 * Issue 11, the gateway's part: no request can abort another through a shared `x-request-id`, an
 * engine-side abort is never a silent truncation, a served model without workers gets 503 (not
 * 404), deep JSON is a 400, node:http's own refusals and the 413 reach the client in the OpenAI
 * shape, echoed input is bounded, and API keys guard the routes. Real mocker and CLI processes.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { withAccessFlags } from "../ts/cli/access-flags.js";
import { loadGatewayConfig } from "../ts/config/index.js";
import { startGateway, type RunningGateway } from "../ts/gateway/index.js";
import { kvroute, stopCliProcesses } from "./helpers/cli-process.js";
import { childPids } from "./helpers/proc.js";
import { get, metricValue, MODEL, post, rawSocket, sseData, startFleet, workerRequests, type Fleet } from "./helpers/gateway-fleet.js";

/** One worker, no migration: requests sharing an x-request-id meet on the same engine. */
let single: Fleet;
/** Two workers, migration on. */
let pair: Fleet;
/** No worker; API keys on; a small body limit. */
let guarded: RunningGateway;

beforeAll(async () => {
  [single, pair, guarded] = await Promise.all([
    startFleet(1, { migrationLimit: 0 }, { speedup: 2, kvEvents: false }),
    startFleet(2, { migrationLimit: 1, failureCooldownMs: 0 }, { speedup: 2, kvEvents: false }),
    startGateway({ host: "127.0.0.1", port: 0, maxBodyBytes: 64 * 1024, apiKeys: ["key-one", "key-two"], adminApiKey: "admin-key" }, { log: null }),
  ]);
});
afterAll(async () => {
  await Promise.all([single?.stop(), pair?.stop(), guarded?.close()]);
});

/** Completion tokens of a streamed answer (the ids the engine returned, chunk by chunk). */
function streamedTokens(events: any[]): number {
  let n = 0;
  for (const e of events) if (e !== "[DONE]") for (const c of e.choices ?? []) n += c.token_ids?.length ?? 0;
  return n;
}

/** Waits until the worker runs a request; returns the id the engine knows it by (`cmpl-<id>-0`). */
async function runningRequest(workerUrl: string): Promise<string> {
  for (;;) {
    const ids = await workerRequests(workerUrl);
    if (ids.length > 0) return ids[0]!;
  }
}

/** vLLM's header id of an engine request id `cmpl-<id>-0` (what a duplicate must send). */
const headerId = (engineId: string) => engineId.replace(/^cmpl-/, "").replace(/-0$/, "");

describe("request ids", () => {
  it("two concurrent requests with one x-request-id both complete in full, each echoing it", async () => {
    const body = { model: MODEL, prompt: "same id", max_tokens: 100, ignore_eos: true, stream: true, return_token_ids: true };
    const headers = { "x-request-id": "client-retry-1" };
    const [a, b] = await Promise.all([post(single.gateway.url, "/v1/completions", body, headers), post(single.gateway.url, "/v1/completions", body, headers)]);
    for (const r of [a, b]) {
      expect(r.status).toBe(200);
      expect(r.headers["x-request-id"]).toBe("client-retry-1");
      const events = sseData(r.text);
      expect(events.at(-1)).toBe("[DONE]");
      expect(streamedTokens(events)).toBe(100);
      expect(events.at(-2).choices[0].finish_reason).toBe("length");
    }
    // Each went to the engine under its own id, which the response names.
    expect(a.headers["x-kvroute-request-id"]).not.toBe(b.headers["x-kvroute-request-id"]);
    const m = (await get(single.gateway.url, "/metrics")).text;
    expect(metricValue(m, "kvroute_upstream_errors_total")).toBe(0);
  });

  it("an abort the gateway did not ask for ends the stream with an error event, not a short success", async () => {
    const worker = single.workers[0]!;
    const pending = post(single.gateway.url, "/v1/completions", { model: MODEL, prompt: "victim", max_tokens: 2000, ignore_eos: true, stream: true });
    const engineId = await runningRequest(worker.url);
    // vLLM's answer to a duplicate id: 400 for the newcomer, "abort" for the request in flight.
    const dup = await post(worker.url, "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 1 }, { "x-request-id": headerId(engineId) });
    expect(dup.status).toBe(400);
    expect(dup.text).toContain("already in use");
    const r = await pending;
    expect(r.status).toBe(200);
    const events = sseData(r.text);
    expect(events.at(-1)).toBe("[DONE]");
    expect(events.at(-2).error.code).toBe("KVR_UPSTREAM_FAILED");
    expect(events.at(-2).error.message).toContain("aborted");
    for (const e of events) if (e !== "[DONE]" && e.choices) for (const c of e.choices) expect(c.finish_reason).not.toBe("abort");
    const m = (await get(single.gateway.url, "/metrics")).text;
    expect(metricValue(m, "kvroute_upstream_errors_total", { kind: "aborted" })).toBe(1);
  });

  it("with migration on, an aborted stream continues on another worker to exactly max_tokens", async () => {
    const pending = post(pair.gateway.url, "/v1/completions", { model: MODEL, prompt: "victim", max_tokens: 300, ignore_eos: true, stream: true, return_token_ids: true });
    let victim = null as null | { url: string; id: string };
    while (!victim) {
      for (const w of pair.workers) {
        const ids = await workerRequests(w.url);
        if (ids.length > 0) victim = { url: w.url, id: ids[0]! };
      }
    }
    expect((await post(victim.url, "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 1 }, { "x-request-id": headerId(victim.id) })).status).toBe(400);
    const r = await pending;
    const events = sseData(r.text);
    expect(events.at(-1)).toBe("[DONE]");
    expect(events.some((e) => e !== "[DONE]" && e.error)).toBe(false);
    expect(streamedTokens(events)).toBe(300);
    expect(events.at(-2).choices[0].finish_reason).toBe("length");
    const m = (await get(pair.gateway.url, "/metrics")).text;
    expect(metricValue(m, "kvroute_migrations_total")).toBe(1);
  });

  it("a whole (non-streamed) answer the engine aborted is retried whole on another worker", async () => {
    const pending = post(pair.gateway.url, "/v1/completions", { model: MODEL, prompt: "whole victim", max_tokens: 300, ignore_eos: true });
    let victim = null as null | { url: string; id: string };
    while (!victim) {
      for (const w of pair.workers) {
        const ids = await workerRequests(w.url);
        if (ids.length > 0) victim = { url: w.url, id: ids[0]! };
      }
    }
    expect((await post(victim.url, "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 1 }, { "x-request-id": headerId(victim.id) })).status).toBe(400);
    const r = await pending;
    expect(r.status).toBe(200);
    expect(r.json.choices[0].finish_reason).toBe("length");
    expect(r.json.usage.completion_tokens).toBe(300);
    expect(r.headers["x-kvroute-worker"]).not.toBe(pair.workers.find((w) => w.url === victim!.url)!.id);
  });
});

describe("request limits and error shapes", () => {
  const auth = { authorization: "Bearer key-one" };

  it("a prompt of 20,000 nested arrays gets a 400 naming the field", async () => {
    const deep = "[".repeat(20_000) + "1" + "]".repeat(20_000);
    for (const path of ["/v1/completions", "/v1/chat/completions"]) {
      const r = await post(guarded.url, path, `{"model":"m","prompt":${deep},"messages":[{"role":"user","content":"x"}]}`, auth);
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ code: "KVR_BAD_REQUEST", param: "prompt" });
    }
    // Deep anywhere, even in a field the gateway does not read.
    const other = await post(guarded.url, "/v1/completions", `{"model":"m","prompt":"x","extra":${deep}}`, auth);
    expect(other.json.error).toMatchObject({ code: "KVR_BAD_REQUEST", param: "extra" });
    const route = await post(guarded.url, "/v1/kvroute/route", `{"prompt":${deep}}`, { authorization: "Bearer admin-key" });
    expect(route.status).toBe(400);
    // A token-id list with a 1 MB string in it: the message quotes a bounded piece.
    const long = await post(single.gateway.url, "/v1/completions", { model: MODEL, prompt: [1, "y".repeat(1 << 20)] });
    expect(long.status).toBe(400);
    expect(long.text.length).toBeLessThan(1024);
  });

  it("an unknown model's name is truncated in the 404", async () => {
    const r = await post(single.gateway.url, "/v1/completions", { model: "m".repeat(1 << 20), prompt: "x" });
    expect(r.status).toBe(404);
    expect(r.json.error.code).toBe("KVR_MODEL_NOT_FOUND");
    expect(r.text.length).toBeLessThan(1024);
  });

  it("a client that writes its whole oversized body before reading reads the 413", async () => {
    // More than the loopback socket buffers hold: the write cannot finish unless the gateway reads.
    const body = Buffer.alloc(12 * 1024 * 1024, 0x20);
    for (const framing of ["length", "chunked"] as const) {
      const s = await rawSocket(guarded.url);
      // Reads nothing until the whole body is written, as simple clients do.
      s.pause();
      const answer = readAll(s);
      const head =
        framing === "length"
          ? `POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-one\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`
          : `POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-one\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n`;
      s.write(head);
      s.write(framing === "length" ? body : Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from("\r\n0\r\n\r\n")]), () => s.resume());
      const { text, error } = await answer;
      expect(error, framing).toBeNull();
      expect(text, framing).toMatch(/^HTTP\/1.1 413/);
      expect(jsonBody(text).error.code).toBe("KVR_BODY_TOO_LARGE");
    }
  });

  it("node:http's own 431 and 400 answers have OpenAI-shaped bodies", async () => {
    const big = await rawSocket(guarded.url);
    const answer = readAll(big);
    big.write(`GET /health HTTP/1.1\r\nhost: x\r\nx-big: ${"a".repeat(64 * 1024)}\r\n\r\n`);
    const r431 = await answer;
    expect(r431.text).toMatch(/^HTTP\/1.1 431/);
    expect(jsonBody(r431.text).error).toMatchObject({ code: "KVR_HEADERS_TOO_LARGE", type: "RequestHeaderFieldsTooLargeError" });
    const bad = await rawSocket(guarded.url);
    const answer400 = readAll(bad);
    bad.write("NOT A REQUEST\r\n\r\n");
    const r400 = await answer400;
    expect(r400.text).toMatch(/^HTTP\/1.1 400/);
    expect(jsonBody(r400.text).error.code).toBe("KVR_BAD_REQUEST");
  });
});

describe("API keys", () => {
  it("401 without or with a wrong key; any configured key passes; /health open; admin routes need their own key", async () => {
    const url = guarded.url;
    const body = { model: "nope", prompt: "x" };
    for (const headers of [{} as Record<string, string>, { authorization: "Bearer wrong" }, { authorization: "Basic key-one" }, { authorization: "Bearer key-one-and-more" }]) {
      const r = await post(url, "/v1/completions", body, headers);
      expect(r.status, JSON.stringify(headers)).toBe(401);
      expect(r.json.error).toMatchObject({ code: "KVR_UNAUTHORIZED", type: "AuthenticationError" });
      expect(r.headers["www-authenticate"]).toBe("Bearer");
    }
    // Past the key check: this gateway never served "nope".
    for (const key of ["key-one", "key-two"]) expect((await post(url, "/v1/completions", body, { authorization: `Bearer ${key}` })).status).toBe(404);
    expect((await get(url, "/health")).status).toBe(503); // open (no worker here), not 401
    const models = await fetch(`${url}/v1/models`);
    expect(models.status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: { authorization: "Bearer key-one" } })).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: { authorization: "Bearer admin-key" } })).status).toBe(200);
    expect((await post(url, "/v1/kvroute/route", { prompt: [1] }, { authorization: "Bearer key-two" })).status).toBe(401);
  });

  it("with API keys and no admin key, /metrics and /v1/kvroute/route are off", async () => {
    const g = await startGateway({ host: "127.0.0.1", port: 0, apiKeys: "only" }, { log: null });
    try {
      const m = await fetch(`${g.url}/metrics`, { headers: { authorization: "Bearer only" } });
      expect(m.status).toBe(403);
      expect(((await m.json()) as any).error.code).toBe("KVR_FORBIDDEN");
      expect((await post(g.url, "/v1/kvroute/route", { prompt: [1] }, { authorization: "Bearer only" })).status).toBe(403);
    } finally {
      await g.close();
    }
  });
});

describe("API keys: configuration", () => {
  it("several from the file, one from KVROUTE_API_KEY, flags last; a bad one is named without its value", () => {
    const dir = mkdtempSync(join(tmpdir(), "kvroute-keys-"));
    const file = join(dir, "keys.yaml");
    writeFileSync(file, "apiKeys: [alpha, beta]\nadminApiKey: boss\n");
    expect(loadGatewayConfig({ file, env: {} })).toMatchObject({ apiKeys: ["alpha", "beta"], adminApiKey: "boss" });
    expect(loadGatewayConfig({ file, env: { KVROUTE_API_KEY: "gamma" } }).apiKeys).toEqual(["gamma"]);
    expect(loadGatewayConfig({ env: {} })).toMatchObject({ apiKeys: [], adminApiKey: "" });
    const flagged = withAccessFlags(loadGatewayConfig({ file, env: { KVROUTE_API_KEY: "gamma" } }), { "api-key": ["d1", "d2"], "admin-api-key": "root" });
    expect(flagged).toMatchObject({ apiKeys: ["d1", "d2"], adminApiKey: "root" });
    expect(() => withAccessFlags(loadGatewayConfig({ env: {} }), { "api-key": [""] })).toThrow("--api-key: 'apiKeys[0]' must not be empty");
    writeFileSync(file, "apiKeys: [alpha, 12345]\n");
    expect(() => loadGatewayConfig({ file, env: {} })).toThrow(/'apiKeys\[1\]' must be a string: got number$/);
  });
});

describe("kvroute up: every worker killed", () => {
  afterEach(() => stopCliProcesses());

  it("503 with retry-after for the launched model (404 for a never-served one); --api-key guards it", async () => {
    const up = kvroute(["up", "agg", "--workers", "1", "--port", "0", "--speedup", "20", "--quiet", "--model", "toy", "--api-key", "k-up"]);
    const ready = await up.readyPromise;
    const auth = { authorization: "Bearer k-up" };
    const ok = await post(ready.url, "/v1/completions", { model: "toy", prompt: "hi", max_tokens: 2 }, auth);
    expect(ok.status).toBe(200);
    expect((await post(ready.url, "/v1/completions", { model: "toy", prompt: "hi", max_tokens: 2 })).status).toBe(401);
    expect((await post(ready.url, "/v1/completions", { model: "toy", prompt: "hi", max_tokens: 2 }, { authorization: "Bearer nope" })).status).toBe(401);
    // kill -9 every worker process of the deployment; the gateway sees them leave.
    for (const pid of childPids(up.child.pid!)) process.kill(pid, "SIGKILL");
    while ((await get(ready.url, "/health")).status !== 503);
    const down = await post(ready.url, "/v1/completions", { model: "toy", prompt: "hi", max_tokens: 2 }, auth);
    expect(down.status).toBe(503);
    expect(down.headers["retry-after"]).toBeDefined();
    expect(down.json.error.code).toBe("KVR_NO_HEALTHY_WORKER");
    const never = await post(ready.url, "/v1/completions", { model: "never-served", prompt: "hi" }, auth);
    expect(never.status).toBe(404);
    expect(never.json.error.code).toBe("KVR_MODEL_NOT_FOUND");
  });
});

/** Everything the server sends until it closes, and the socket error if there was one. */
function readAll(s: Socket): Promise<{ text: string; error: string | null }> {
  return new Promise((resolve) => {
    let text = "";
    let error: string | null = null;
    s.on("data", (d) => (text += d.toString()));
    s.on("error", (e) => (error = (e as NodeJS.ErrnoException).code ?? e.message));
    s.on("close", () => resolve({ text, error }));
  });
}

function jsonBody(response: string): any {
  return JSON.parse(response.slice(response.indexOf("\r\n\r\n") + 4));
}
