/**
 * The mocker's OpenAI server over real HTTP (in process): vLLM's response and SSE framing, usage
 * chunks, vLLM-shaped errors, cancellation on client disconnect, backpressure.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MockEngine, MockServer, toyTokenizer } from "../ts/mocker/index.js";

let engine: MockEngine;
let server: MockServer;
let slowEngine: MockEngine;
let slow: MockServer;

beforeAll(async () => {
  engine = await MockEngine.start({ model: "mock-8b", servedModelName: ["mock-8b", "alias"], numGpuBlocks: 4100, zeroTime: true, maxModelLen: 65_536 });
  server = await MockServer.start({ engine, port: 0, enablePerRequestMetrics: true, enablePromptTokensDetails: true });
  slowEngine = await MockEngine.start({ model: "slow", numGpuBlocks: 2000, speedup: 1 });
  slow = await MockServer.start({ engine: slowEngine, port: 0 });
});

afterAll(async () => {
  await Promise.all([server.close(), slow.close()]);
  await Promise.all([engine.close(), slowEngine.close()]);
});

async function post(base: string, path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(base + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

async function getJson(base: string, path: string) {
  return (await (await fetch(base + path)).json()) as Record<string, unknown>;
}

/** The SSE frames of a body: each `data: ...` payload, in order; asserts the exact framing. */
function frames(text: string): string[] {
  expect(text.endsWith("data: [DONE]\n\n")).toBe(true);
  const parts = text.split("\n\n");
  expect(parts.pop()).toBe("");
  return parts.map((p) => {
    expect(p.startsWith("data: ")).toBe(true);
    return p.slice(6);
  });
}

describe("mocker HTTP: responses", () => {
  it("/v1/completions (non-streaming): vLLM's body, usage, exact token counts", async () => {
    const r = await post(server.url, "/v1/completions", { model: "mock-8b", prompt: "Hello there, general", max_tokens: 7 });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-type")).toBe("application/json");
    const body = JSON.parse(r.text);
    expect(Object.keys(body)).toEqual([
      "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage", "kv_transfer_params", "ec_transfer_params", "metrics",
    ]);
    expect(body.id).toMatch(/^cmpl-[0-9a-f]{16}$/);
    expect(body).toMatchObject({ object: "text_completion", model: "mock-8b", kv_transfer_params: null });
    expect(body.system_fingerprint).toMatch(/^vllm-0\.33\.0-[0-9a-f]{8}$/);
    const prompt = toyTokenizer.encode("Hello there, general");
    expect(body.usage).toEqual({
      prompt_tokens: prompt.length,
      total_tokens: prompt.length + 7,
      completion_tokens: 7,
      prompt_tokens_details: { cached_tokens: 0, created_cache_tokens: null, multimodal_tokens: null },
      completion_tokens_details: null,
    });
    expect(Object.keys(body.choices[0])).toEqual([
      "index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids", "prompt_logprobs", "prompt_token_ids", "routed_experts", "weight_versions",
    ]);
    expect(body.choices[0]).toMatchObject({ index: 0, finish_reason: "length", stop_reason: null });
    expect(toyTokenizer.encode(body.choices[0].text)).toHaveLength(7);
    expect(body.metrics.time_to_first_token_ms).toBeGreaterThan(6);
  });

  it("accepts token-id prompts, lists of prompts, n, echo, return_token_ids and X-Request-Id", async () => {
    const r = await post(
      server.url,
      "/v1/completions",
      { prompt: [[1, 2, 3, 4], [5, 6, 7]], max_tokens: 3, n: 2, return_token_ids: true },
      { "x-request-id": "abc" },
    );
    const body = JSON.parse(r.text);
    expect(body.id).toBe("cmpl-abc");
    expect(body.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2, 3]);
    expect(body.choices[0].prompt_token_ids).toEqual([1, 2, 3, 4]);
    expect(body.choices[2].prompt_token_ids).toEqual([5, 6, 7]);
    expect(body.choices[0].token_ids).not.toEqual(body.choices[1].token_ids);
    expect(body.usage).toMatchObject({ prompt_tokens: 7, completion_tokens: 12 });
    const echo = JSON.parse((await post(server.url, "/v1/completions", { prompt: "Say:", max_tokens: 2, echo: true })).text);
    expect(echo.choices[0].text.startsWith("Say:")).toBe(true);
    const alias = JSON.parse((await post(server.url, "/v1/completions", { model: "alias", prompt: "x", max_tokens: 1 })).text);
    expect(alias.model).toBe("mock-8b");
  });

  it("/v1/completions streaming: data frames, [DONE], usage chunk, continuity", async () => {
    const req = { prompt: "Stream me", max_tokens: 5, stream: true, stream_options: { include_usage: true } };
    const r = await post(server.url, "/v1/completions", req);
    expect(r.headers.get("content-type")).toBe("text/event-stream; charset=utf-8");
    const f = frames(r.text);
    expect(f.at(-1)).toBe("[DONE]");
    const chunks = f.slice(0, -1).map((x) => JSON.parse(x));
    expect(chunks).toHaveLength(6);
    const ids = new Set(chunks.map((c) => c.id));
    expect(ids.size).toBe(1);
    for (const c of chunks.slice(0, 5)) {
      expect(Object.keys(c)).toEqual(["id", "object", "created", "model", "choices", "kv_transfer_params"]);
      expect(Object.keys(c.choices[0])).toEqual(["index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids", "token_ids", "weight_versions"]);
    }
    expect(chunks.slice(0, 4).every((c) => c.choices[0].finish_reason === null)).toBe(true);
    expect(chunks[4].choices[0].finish_reason).toBe("length");
    const usage = chunks[5];
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual({ prompt_tokens: 9, total_tokens: 14, completion_tokens: 5, prompt_tokens_details: { cached_tokens: 0 } });
    expect(usage.system_fingerprint).toMatch(/^vllm-/);
    const text = chunks.slice(0, 5).map((c) => c.choices[0].text).join("");
    const whole = JSON.parse((await post(server.url, "/v1/completions", { prompt: "Stream me", max_tokens: 5 })).text);
    expect(text).toBe(whole.choices[0].text);
    // Without include_usage: no usage chunk; the fingerprint rides on the terminal chunk.
    const plain = frames((await post(server.url, "/v1/completions", { prompt: "Stream me", max_tokens: 2, stream: true })).text);
    expect(plain).toHaveLength(3);
    expect(JSON.parse(plain[1]!).system_fingerprint).toMatch(/^vllm-/);
  });

  it("/v1/chat/completions: role chunk, deltas, final chunk, usage; non-streaming message", async () => {
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: [{ type: "text", text: "Hi" }] },
    ];
    const r = await post(server.url, "/v1/chat/completions", { messages, max_tokens: 3, stream: true, stream_options: { include_usage: true } });
    const chunks = frames(r.text).slice(0, -1).map((x) => JSON.parse(x));
    expect(chunks[0]).toMatchObject({ object: "chat.completion.chunk", choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }] });
    expect(Object.keys(chunks[0])).toEqual(["id", "object", "created", "model", "choices", "prompt_token_ids", "prompt_text"]);
    expect(chunks[0].id).toMatch(/^chatcmpl-/);
    expect(chunks.slice(1, 4).map((c) => c.choices[0].finish_reason)).toEqual([null, null, "length"]);
    expect(Object.keys(chunks[3].choices[0])).toEqual(["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids", "weight_versions"]);
    expect(chunks[4]).toMatchObject({ choices: [], usage: { completion_tokens: 3 } });
    const content = chunks.slice(1, 4).map((c) => c.choices[0].delta.content).join("");
    const whole = JSON.parse((await post(server.url, "/v1/chat/completions", { messages, max_tokens: 3 })).text);
    expect(whole.object).toBe("chat.completion");
    expect(whole.choices[0].message).toEqual({ role: "assistant", content, refusal: null, annotations: null, audio: null, function_call: null, reasoning: null });
    const promptText = toyTokenizer.applyChatTemplate([
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi" },
    ]);
    expect(whole.usage.prompt_tokens).toBe(toyTokenizer.encode(promptText).length);
    // Multi-turn: the assistant's answer re-tokenizes to the generated tokens, so the whole
    // previous conversation is a prefix-cache hit.
    const next = [...messages, { role: "assistant", content }, { role: "user", content: "More" }];
    const second = JSON.parse((await post(server.url, "/v1/chat/completions", { messages: next, max_tokens: 1 })).text);
    expect(second.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
  });

  it("/v1/models, /health, /version, /metrics, /debug/*", async () => {
    const models = await getJson(server.url, "/v1/models");
    expect(models.object).toBe("list");
    expect((models.data as { id: string }[]).map((m) => m.id)).toEqual(["mock-8b", "alias"]);
    expect((models.data as Record<string, unknown>[])[0]).toMatchObject({ object: "model", owned_by: "vllm", root: "mock-8b", parent: null, max_model_len: 65_536 });
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect(await getJson(server.url, "/version")).toEqual({ version: "0.33.0" });
    const m = await fetch(`${server.url}/metrics`);
    expect(m.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    expect(await m.text()).toContain('vllm:prefix_cache_queries_total{model_name="mock-8b",engine="0"}');
    const kv = await getJson(server.url, "/debug/kv-cache");
    expect(kv).toMatchObject({ blockSize: 16, numGpuBlocks: 4100, usedBlocks: 0 });
    expect((kv.cachedBlocks as string[]).every((h) => /^\d+$/.test(h))).toBe(true);
    expect(await getJson(server.url, "/debug/requests")).toEqual({ ranks: [{ dataParallelRank: 0, running: [], waiting: [], transferring: [] }] });
    expect((await fetch(`${server.url}/nope`)).status).toBe(404);
    expect((await fetch(`${server.url}/v1/completions`)).status).toBe(405);
  });
});

describe("mocker HTTP: vLLM-shaped errors", () => {
  async function error(path: string, body: unknown, headers?: Record<string, string>) {
    const r = await post(server.url, path, body, headers);
    const parsed = JSON.parse(r.text) as { error: { message: string; type: string; param: string | null; code: number } };
    expect(Object.keys(parsed)).toEqual(["error"]);
    expect(Object.keys(parsed.error)).toEqual(["message", "type", "param", "code"]);
    expect(parsed.error.code).toBe(r.status);
    return { status: r.status, ...parsed.error };
  }

  it("missing fields", async () => {
    expect(await error("/v1/completions", { max_tokens: 3 })).toMatchObject({ status: 400, type: "Bad Request", param: "prompt" });
    const chat = await error("/v1/chat/completions", { model: "mock-8b" });
    expect(chat).toMatchObject({ status: 400, type: "Bad Request", param: "body.messages" });
    expect(chat.message).toBe("1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', 'input': '<dict of 1 items>'}");
  });

  it("wrong types", async () => {
    const e1 = await error("/v1/completions", { prompt: "x", max_tokens: "many" });
    expect(e1).toMatchObject({ status: 400, type: "Bad Request", param: "body.max_tokens" });
    expect(e1.message).toContain("'type': 'int_parsing'");
    expect(await error("/v1/completions", { prompt: "x", max_tokens: 1.5 })).toMatchObject({ status: 400, param: "body.max_tokens" });
    expect(await error("/v1/completions", { prompt: 42 })).toMatchObject({ status: 400, param: "body.prompt" });
    expect(await error("/v1/completions", { prompt: "x", stream: "maybe" })).toMatchObject({ status: 400, param: "body.stream" });
    expect(await error("/v1/chat/completions", { messages: "hi" })).toMatchObject({ status: 400, param: "body.messages" });
    expect(await error("/v1/chat/completions", { messages: [{ content: "hi" }] })).toMatchObject({ status: 400, param: "body.messages.0.role" });
    expect(await error("/v1/completions", { prompt: "x", stream_options: { include_usage: true } })).toMatchObject({ status: 400, param: "stream_options" });
    expect(await error("/v1/completions", "{not json")).toMatchObject({ status: 400, type: "Bad Request" });
    expect(await error("/v1/completions", { prompt: "x" }, { "content-type": "text/plain" })).toMatchObject({ status: 400, param: null });
    expect(await error("/v1/completions", [1, 2])).toMatchObject({ status: 400, param: "body" });
  });

  it("prompt longer than the context, max_tokens < 1", async () => {
    const long = await error("/v1/completions", { prompt: Array.from({ length: 65_537 }, () => 7) });
    expect(long).toMatchObject({ status: 400, type: "BadRequestError", param: "input_tokens" });
    expect(long.message).toBe(
      "This model's maximum context length is 65536 tokens. However, your prompt contains at least 65537 input tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value=65537)",
    );
    const zero = await error("/v1/completions", { prompt: "x", max_tokens: 0 });
    expect(zero).toMatchObject({ status: 400, type: "BadRequestError", param: "max_tokens", message: "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)" });
    const full = await error("/v1/chat/completions", { messages: [{ role: "user", content: "x".repeat(65_536) }] });
    expect(full).toMatchObject({ status: 400, param: "input_tokens" });
  });

  it("SamplingParams checks: n, temperature, top_p, min_tokens", async () => {
    expect(await error("/v1/completions", { prompt: "x", n: 2 ** 40 })).toMatchObject({ status: 400, type: "BadRequestError", message: expect.stringContaining("n must be at most 16384") });
    expect(await error("/v1/completions", { prompt: "x", n: 0 })).toMatchObject({ status: 400, message: "n must be at least 1, got 0." });
    expect(await error("/v1/completions", { prompt: "x", temperature: 3 })).toMatchObject({ status: 400, param: "temperature" });
    expect(await error("/v1/completions", { prompt: "x", top_p: 0 })).toMatchObject({ status: 400, param: "top_p" });
    expect(await error("/v1/completions", { prompt: "x", max_tokens: 4, min_tokens: 5 })).toMatchObject({ status: 400, message: "min_tokens must be less than or equal to max_tokens=4, got 5." });
    expect(await error("/v1/completions", { prompt: Array.from({ length: 1025 }, () => "a") })).toMatchObject({ status: 400, param: "prompt" });
  });

  it("survives random and mutated bodies: no 5xx, stays responsive", async () => {
    const rand = (() => {
      let seed = 99;
      return () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    })();
    const pick = <T,>(xs: T[]) => xs[Math.floor(rand() * xs.length)]!;
    const values: (() => unknown)[] = [
      () => null, () => true, () => -1, () => 0, () => 1e308, () => 3.5, () => "", () => "x".repeat(40), () => [], () => [1, 2, "3"],
      () => [[1, 2], [3]], () => ({}), () => ({ role: "user", content: 5 }), () => [{ role: "user", content: "hi" }], () => 2 ** 40, () => "7",
    ];
    const fields = ["model", "prompt", "messages", "max_tokens", "stream", "n", "stream_options", "temperature", "top_p", "return_token_ids", "cache_salt", "min_tokens", "echo", "max_completion_tokens", "stop", "stop_token_ids", "seed", "kv_transfer_params"];
    const statuses = new Map<number, number>();
    for (let batch = 0; batch < 25; batch++) {
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          const path = pick(["/v1/completions", "/v1/chat/completions"]);
          let body: string;
          const kind = rand();
          if (kind < 0.15) body = Buffer.from(Array.from({ length: Math.floor(rand() * 200) }, () => Math.floor(rand() * 256))).toString("latin1");
          else if (kind < 0.25) body = JSON.stringify(pick(values)());
          else {
            const obj: Record<string, unknown> =
              path === "/v1/chat/completions" ? { messages: [{ role: "user", content: "q" }], max_tokens: 2 } : { prompt: "q", max_tokens: 2 };
            for (let k = 0; k < 1 + Math.floor(rand() * 3); k++) obj[pick(fields)] = pick(values)();
            body = JSON.stringify(obj);
          }
          const r = await post(server.url, path, body);
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
          expect(r.status, `${path} ${body.slice(0, 200)} -> ${r.text.slice(0, 300)}`).toBeLessThan(500);
          if (r.status >= 400) expect(JSON.parse(r.text).error ?? JSON.parse(r.text).detail).toBeDefined();
        }),
      );
    }
    expect(statuses.get(200)).toBeGreaterThan(10);
    expect(statuses.get(400)).toBeGreaterThan(10);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });

  it("unknown model: 404", async () => {
    const e = await error("/v1/completions", { model: "gpt-9", prompt: "x" });
    expect(e).toEqual({ status: 404, message: "The model `gpt-9` does not exist. Valid aliases: mock-8b, alias.", type: "NotFoundError", param: "model", code: 404 });
    expect(await error("/v1/chat/completions", { model: "gpt-9", messages: [{ role: "user", content: "x" }] })).toMatchObject({ status: 404 });
  });
});

describe("mocker HTTP: cancellation and backpressure", () => {
  async function until(cond: () => Promise<boolean>, ms: number): Promise<number> {
    const t0 = performance.now();
    while (!(await cond())) {
      if (performance.now() - t0 > ms) throw new Error(`not within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
    return performance.now() - t0;
  }
  // Polled in process (an HTTP poll would add its own latency to the measurement), then confirmed
  // over HTTP.
  const freed = async () => {
    const rq = slowEngine.debugRequests()[0]!;
    return slowEngine.debugKvCache().usedBlocks === 0 && rq.running.length === 0 && rq.waiting.length === 0;
  };
  const confirmFreed = async () => {
    expect((await getJson(slow.url, "/debug/kv-cache")).usedBlocks).toBe(0);
    expect(await getJson(slow.url, "/debug/requests")).toEqual({ ranks: [{ dataParallelRank: 0, running: [], waiting: [], transferring: [] }] });
  };

  // Freed on the disconnect itself, not at the next token of a slow engine; no wall-clock bound
  // (the test machine may be loaded): the condition is polled until the test timeout.
  it("a streaming client that disconnects frees its blocks", async () => {
    const req = http.request(`${slow.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" } });
    req.end(JSON.stringify({ prompt: Array.from({ length: 500 }, (_, i) => i + 1), max_tokens: 3000, stream: true }));
    const res = await new Promise<http.IncomingMessage>((r) => req.once("response", r));
    await new Promise<void>((r) => res.once("data", () => r()));
    expect((await getJson(slow.url, "/debug/kv-cache")).usedBlocks).toBeGreaterThanOrEqual(32);
    req.destroy();
    await until(freed, 50_000);
    await confirmFreed();
    expect(await slowEngine.renderMetrics()).toContain('finished_reason="abort"} 1.0');
  });

  it("a non-streaming client that disconnects frees its blocks", async () => {
    const req = http.request(`${slow.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" } });
    req.on("error", () => {});
    req.end(JSON.stringify({ prompt: Array.from({ length: 200 }, (_, i) => i + 1), max_tokens: 3000 }));
    await until(async () => (await getJson(slow.url, "/debug/kv-cache")).usedBlocks !== 0, 50_000);
    req.destroy();
    await until(freed, 50_000);
    await confirmFreed();
  });

  it("a request aborted in the engine (not by its client) answers finish_reason abort", async () => {
    const pending = post(slow.url, "/v1/completions", { prompt: "long", max_tokens: 3000 }, { "x-request-id": "ext" });
    await until(async () => slowEngine.debugRequests()[0]!.running.includes("cmpl-ext-0"), 50_000);
    await new Promise((r) => setTimeout(r, 50));
    expect(slowEngine.abort("cmpl-ext-0")).toBe(true);
    const r = await pending;
    expect(r.status).toBe(200);
    const body = JSON.parse(r.text);
    expect(body.choices[0].finish_reason).toBe("abort");
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
  });

  it("merges deltas while a slow reader's socket is full, and loses nothing", async () => {
    const n = 40_000;
    const body = JSON.stringify({ prompt: "backpressure", max_tokens: n, stream: true, ignore_eos: true });
    const req = http.request(`${server.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" } });
    req.end(body);
    const res = await new Promise<http.IncomingMessage>((r) => req.once("response", r));
    res.pause();
    await until(async () => (await getJson(server.url, "/debug/requests") as { ranks: { running: string[] }[] }).ranks[0]!.running.length === 0, 30_000);
    const parts: Buffer[] = [];
    res.on("data", (c: Buffer) => parts.push(c));
    res.resume();
    await new Promise((r) => res.once("end", r));
    const chunks = frames(Buffer.concat(parts).toString()).slice(0, -1).map((x) => JSON.parse(x));
    expect(server.stats.streamsBlocked).toBeGreaterThan(0);
    expect(server.stats.mergedDeltas).toBeGreaterThan(0);
    expect(chunks.length).toBeLessThan(n);
    const text = chunks.map((c) => c.choices[0].text).join("");
    expect(toyTokenizer.encode(text)).toHaveLength(n);
    expect(chunks.at(-1).choices[0].finish_reason).toBe("length");
  });
});
