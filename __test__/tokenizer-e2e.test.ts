/**
 * Real tokenization end to end, with real processes: `kvroute up agg-router --engine mock
 * --tokenizer DIR` keys chat requests by the ids vLLM computes (the mockers tokenize as vLLM does
 * with the same folder), so a follow-up turn lands on the worker holding the conversation, and the
 * parity check finds no mismatch. A worker whose tokenizer differs makes the check count and log it.
 */
import { afterEach, describe, expect, it } from "vitest";
import { Tokenizer } from "../ts/index.js";
import { startGateway, type RunningGateway } from "../ts/gateway/index.js";
import { kvroute, stopCliProcesses } from "./helpers/cli-process.js";
import { get, metricValue, MODEL, post, startMockWorker } from "./helpers/gateway-fleet.js";
import { loadTokenizationGolden, tokenizerDir } from "./helpers/tokenization-golden.js";
import type { VllmWorker } from "../ts/workers/index.js";

const golden = loadTokenizationGolden();
const QWEN = tokenizerDir(golden, "qwen3");
const LLAMA = tokenizerDir(golden, "llama3_1");

const SYSTEM = `You are a careful assistant for a logistics company. ${"Answer with the shipment's status, its route and the next checkpoint; cite the tracking number; never guess. ".repeat(12)}`;
const firstTurns = [
  { role: "system", content: SYSTEM },
  { role: "user", content: "Where is shipment KX-4471? It left Rotterdam on Monday." },
  { role: "assistant", content: "KX-4471 is in transit: Rotterdam → Hamburg, next checkpoint Hamburg port on Thursday." },
];

const stopAfter: (() => Promise<void>)[] = [];
afterEach(async () => {
  stopCliProcesses();
  await Promise.all(stopAfter.splice(0).map((s) => s()));
});

async function until<T>(what: string, probe: () => Promise<T | null>): Promise<T> {
  const deadline = Date.now() + 55_000; // names a hang before the 60 s test timeout
  for (;;) {
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("real tokenization through the gateway", () => {
  it("kvroute up agg-router --tokenizer: a follow-up chat lands on the worker holding its conversation; no mismatch", async () => {
    const model = "Qwen/Qwen3-0.6B";
    const up = kvroute(["up", "agg-router", "--workers", "4", "--port", "0", "--speedup", "20", "--quiet", "--tokenizer", QWEN]);
    const ready = await up.readyPromise;
    expect(ready.workers).toHaveLength(4);
    expect(up.stderr()).not.toContain("no tokenizer");

    const first = await post(ready.url, "/v1/chat/completions", { model, messages: [...firstTurns, { role: "user", content: "And KX-4472?" }], max_tokens: 4 });
    expect(first.status).toBe(200);
    const holder = first.headers["x-kvroute-worker"] as string;
    // The engine's prompt ids are what the gateway's tokenizer computes.
    const tokenizer = Tokenizer.fromDir(QWEN);
    const followUp = { model, messages: [...firstTurns, { role: "user", content: "Has it reached Hamburg yet? Give me the checkpoint time." }], max_tokens: 4 };
    const promptTokens = tokenizer.encodeChat(followUp).length;
    const sharedBlocks = Math.floor(tokenizer.encodeChat({ messages: firstTurns, add_generation_prompt: false }).length / 16);
    expect(sharedBlocks).toBeGreaterThan(10);

    // Once the worker's KV events reach the router, explain shows the shared prefix on that worker.
    const route = await until("the router to see the first request's blocks", async () => {
      const r = (await post(ready.url, "/v1/kvroute/route", { ...followUp, explain: true })).json;
      return r.worker === holder && r.overlapBlocks >= sharedBlocks ? r : null;
    });
    expect(route.tokenized).toBe(true);
    expect(route.promptTokens).toBe(promptTokens);
    const candidate = route.candidates.find((c: { worker: string }) => c.worker === holder);
    expect(candidate.overlapBlocks).toBe(route.overlapBlocks);
    for (const c of route.candidates) if (c.worker !== holder) expect(c.overlapBlocks).toBe(0);

    const second = await post(ready.url, "/v1/chat/completions", followUp);
    expect(second.status).toBe(200);
    expect(second.headers["x-kvroute-worker"]).toBe(holder);
    expect(Number(second.headers["x-kvroute-overlap-blocks"])).toBeGreaterThanOrEqual(sharedBlocks);
    // The client did not ask for token ids: the ids the gateway asked for do not reach it.
    expect(second.json.prompt_token_ids ?? null).toBeNull();

    const metrics = (await get(ready.url, "/metrics")).text;
    expect(metricValue(metrics, "kvroute_tokenization_checks_total")).toBeGreaterThanOrEqual(2);
    expect(metricValue(metrics, "kvroute_tokenization_mismatch_total")).toBe(0);
    expect(metricValue(metrics, "kvroute_requests_untokenized_total")).toBe(0);
    // The tokenizer's bounded caches say what they dropped (nothing, at this size).
    expect(metrics).toMatch(/^kvroute_tokenizer_cache_evictions_total\{cache="conversations"\} 0$/m);
    expect(metricValue(metrics, "kvroute_tokenizer_cache_evictions_total", { cache: "segments" })).toBe(0);
    up.child.kill("SIGINT");
    expect(await up.exit).toBe(0);
  });

  it("kvroute up without --tokenizer warns once naming the model, and routes text by load (counted)", async () => {
    const up = kvroute(["up", "agg-router", "--workers", "1", "--port", "0", "--speedup", "50", "--quiet", "--model", "m"]);
    const ready = await up.readyPromise;
    expect(up.stderr().match(/warning: no tokenizer for model m /g)).toHaveLength(1);
    const r = await post(ready.url, "/v1/completions", { model: "m", prompt: "hello there", max_tokens: 2 });
    expect(r.status).toBe(200);
    const ids = await post(ready.url, "/v1/completions", { model: "m", prompt: [1, 2, 3], max_tokens: 2 });
    expect(ids.status).toBe(200);
    const metrics = (await get(ready.url, "/metrics")).text;
    expect(metricValue(metrics, "kvroute_requests_untokenized_total", { model: "m", reason: "no_tokenizer" })).toBe(1);
    up.child.kill("SIGINT");
    expect(await up.exit).toBe(0);
  });

  it("a worker tokenizing with another folder makes kvroute_tokenization_mismatch_total rise and logs the cause once", async () => {
    const logs: string[] = [];
    const gateway: RunningGateway = await startGateway(
      { host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 0 },
      { tokenizers: { [MODEL]: Tokenizer.fromDir(QWEN) }, log: (m) => logs.push(m) },
    );
    stopAfter.push(() => gateway.close());
    const wrong: VllmWorker = await startMockWorker({ id: "wrong", speedup: 50, extraArgs: ["--tokenizer", LLAMA] }, gateway.registry);
    stopAfter.push(() => wrong.stop());
    for (let i = 0; i < 3; i++) {
      const r = await post(gateway.url, "/v1/chat/completions", { model: MODEL, messages: [{ role: "user", content: `hello ${i}` }], max_tokens: 2, stream: i === 2 });
      expect(r.status).toBe(200);
    }
    const text = (await post(gateway.url, "/v1/completions", { model: MODEL, prompt: "plain text", max_tokens: 2 })).status;
    expect(text).toBe(200);
    const metrics = (await get(gateway.url, "/metrics")).text;
    expect(metricValue(metrics, "kvroute_tokenization_mismatch_total", { model: MODEL, worker: "wrong" })).toBe(4);
    const lines = logs.filter((l) => l.includes("tokenization mismatch on worker wrong"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/first differ at token 0 .*likely cause: /);
  });
});
