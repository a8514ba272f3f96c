/**
 * Disaggregated serving at vLLM 0.33's NixlConnector protocol, with real mocker processes in a
 * 2 prefill + 2 decode topology behind real gateways (one per conditional policy, all over the
 * same four workers), and one aggregated mocker for the reference outputs.
 */
import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startGateway, type RunningGateway } from "../ts/gateway/index.js";
import type { GatewayConfig } from "../ts/config/index.js";
import type { VllmWorker } from "../ts/workers/index.js";
import { get, metricValue, MODEL, post, sleep, sseData, startMockWorker, workerRequests } from "./helpers/gateway-fleet.js";
import { nixlLibDir, nixlTestsRun } from "./helpers/nixl.js";

// The P/D mockers move real KV bytes over NIXL when the library is here (always in CI).
const nixl = nixlTestsRun();
const nixlEnv: Record<string, string> = nixl ? { KVROUTE_NIXL_LIB_DIR: nixlLibDir()! } : { KVROUTE_MOCK_NIXL: "0" };

let registryGateway: RunningGateway;
let aggGateway: RunningGateway;
const workers: Record<string, VllmWorker> = {};
const gateways: RunningGateway[] = [];

const prompt = (n: number, base: number) => Array.from({ length: n }, (_, i) => base + i);

/** A gateway over the shared 2P+2D workers with its own disagg settings. */
async function disaggGateway(disagg: Partial<GatewayConfig["disagg"]>): Promise<RunningGateway> {
  const g = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 200, disagg: disagg as GatewayConfig["disagg"] }, { log: null });
  for (const r of registryGateway.registry.list()) await g.registry.register(r);
  gateways.push(g);
  return g;
}

async function metrics(g: RunningGateway): Promise<string> {
  return (await get(g.url, "/metrics")).text;
}

beforeAll(async () => {
  registryGateway = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 0 }, { log: null });
  aggGateway = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 0 }, { log: null });
  const specs = [
    { id: "p0", role: "prefill" as const },
    { id: "p1", role: "prefill" as const },
    { id: "d0", role: "decode" as const },
    { id: "d1", role: "decode" as const },
  ];
  const started = await Promise.all([
    ...specs.map((s) => startMockWorker({ ...s, speedup: 4, env: nixlEnv }, registryGateway.registry)),
    startMockWorker({ id: "a0", speedup: 4 }, aggGateway.registry),
  ]);
  for (const w of started) workers[w.id] = w;
}, 120_000);

afterAll(async () => {
  await Promise.all([...gateways, registryGateway, aggGateway].filter(Boolean).map((g) => g.close()));
  await Promise.all(Object.values(workers).map((w) => w.stop({ graceMs: 1000 })));
});

describe("gateway: disaggregated prefill/decode (2P + 2D mocker processes)", () => {
  it("outputs equal the aggregated outputs; the decode worker pulled the KV instead of prefilling", async () => {
    const g = await disaggGateway({ policy: "always" });
    const body = { model: MODEL, prompt: prompt(3000, 5000), max_tokens: 12, ignore_eos: true };
    const disagg = await post(g.url, "/v1/completions", body);
    const agg = await post(aggGateway.url, "/v1/completions", body);
    expect(disagg.status).toBe(200);
    expect(disagg.headers["x-kvroute-prefill-worker"]).toMatch(/^p[01]$/);
    expect(disagg.headers["x-kvroute-worker"]).toMatch(/^d[01]$/);
    expect(disagg.headers["x-kvroute-disagg"]).toBe("remote; reason=always; uncached=3000");
    expect(disagg.json.choices[0].text).toBe(agg.json.choices[0].text);
    expect(disagg.json.usage).toEqual(agg.json.usage);
    // Streaming, chat: the same tokens as aggregated.
    const chat = { model: MODEL, messages: [{ role: "user", content: "tell me ".repeat(400) }], max_tokens: 8, ignore_eos: true, stream: true };
    const dChat = sseData((await post(g.url, "/v1/chat/completions", chat)).text);
    const aChat = sseData((await post(aggGateway.url, "/v1/chat/completions", chat)).text);
    const content = (events: any[]) => events.filter((e) => e !== "[DONE]").map((e) => e.choices[0]?.delta?.content ?? "").join("");
    expect(content(dChat)).toBe(content(aChat));
    // The decode worker received the prompt's KV from the prefill worker: it computed one token of it.
    const decode = workers[disagg.headers["x-kvroute-worker"] as string]!;
    const dm = (await get(decode.url, "/metrics")).text;
    expect(metricValue(dm, "vllm:prompt_tokens_by_source_total", { source: "external_kv_transfer" })).toBeGreaterThanOrEqual(2999);
    if (nixl) {
      // ...over NIXL, for real: the blocks' bytes came from the prefill worker's pool and hold the prompt's KV.
      const pulled = metricValue(dm, "kvroute_mock_nixl_blocks_pulled_total");
      expect(pulled, dm.split("\n").filter((l) => l.includes("nixl") && !l.startsWith("#")).join("\n")).toBeGreaterThanOrEqual(Math.ceil(3000 / 16));
      expect(metricValue(dm, "kvroute_mock_nixl_blocks_verified_total")).toBe(pulled);
      expect(metricValue(dm, "vllm:nixl_bytes_transferred_sum")).toBe(pulled * 8192);
      expect(metricValue(dm, "vllm:nixl_xfer_time_seconds_count")).toBeGreaterThanOrEqual(1);
      expect(metricValue(dm, "vllm:nixl_num_failed_transfers_total")).toBe(0);
    }
    const m = await metrics(g);
    expect(metricValue(m, "kvroute_disagg_decisions_total", { path: "remote", reason: "always" })).toBe(2);
    expect(metricValue(m, "kvroute_disagg_prefills_total", { where: "remote" })).toBe(2);
  });

  it("the same prefix goes back to the same prefill worker, whose cache saves its prefill (the TTFT)", async () => {
    const g = await disaggGateway({ policy: "always" });
    const shared = prompt(6000, 20_000);
    const computed = async (worker: string) => metricValue((await get(workers[worker]!.url, "/metrics")).text, "vllm:prompt_tokens_by_source_total", { source: "local_compute" });
    const send = async (suffix: number[]) => {
      const r = await post(g.url, "/v1/completions", { model: MODEL, prompt: [...shared, ...suffix], max_tokens: 2, stream: true });
      expect(r.status).toBe(200);
      return r.headers["x-kvroute-prefill-worker"] as string;
    };
    const first = await send([1, 2, 3]);
    // KV events carry the prefill worker's new blocks to the router: wait until it sees them.
    for (;;) {
      const r = await post(g.url, "/v1/kvroute/route", { model: MODEL, prompt: [...shared, 9, 9], explain: true });
      if (r.json.disagg.prefillOverlapBlocks >= 370) break;
      await sleep(20);
    }
    const before = await computed(first);
    const second = await send([7, 8, 9]);
    expect(second).toBe(first);
    // The engine's own count, not a wall clock: the prefill worker computed only what its cache
    // lacked (the last partial block and the new suffix), where the first request computed 6,003.
    expect((await computed(first)) - before).toBeLessThanOrEqual(16 + 3);
  });

  it("isl: remote only for a long uncached prompt (Dynamo's defaults, 2,048 tokens and 70%)", async () => {
    const g = await disaggGateway({ policy: "isl" });
    const long = await post(g.url, "/v1/completions", { model: MODEL, prompt: prompt(2500, 40_000), max_tokens: 2 });
    expect(long.headers["x-kvroute-disagg"]).toBe("remote; reason=isl_long; uncached=2500");
    expect(long.headers["x-kvroute-prefill-worker"]).toMatch(/^p[01]$/);
    const short = await post(g.url, "/v1/completions", { model: MODEL, prompt: prompt(1500, 50_000), max_tokens: 2 });
    expect(short.headers["x-kvroute-disagg"]).toBe("local; reason=isl_short; uncached=1500");
    expect(short.headers["x-kvroute-prefill-worker"]).toBeUndefined();
    // Explain shows the same decision without making it.
    const explain = await post(g.url, "/v1/kvroute/route", { model: MODEL, prompt: prompt(4000, 60_000), explain: true });
    expect(explain.json.disagg).toMatchObject({ policy: "isl", path: "remote", reason: "isl_long", promptTokens: 4000, uncachedTokens: 4000 });
    const m = await metrics(g);
    expect(metricValue(m, "kvroute_disagg_decisions_total", { reason: "isl_long" })).toBe(1);
    expect(metricValue(m, "kvroute_disagg_decisions_total", { reason: "isl_short" })).toBe(1);
  });

  it("prefill-load and isl-or-load bypass busy prefill workers; the decode-busy veto forces remote prefill", async () => {
    const long = (base: number) => ({ model: MODEL, prompt: prompt(8000, base), max_tokens: 2 });
    // Three long prompts at once with at most one in flight per prefill worker: the third finds both busy.
    const load = await disaggGateway({ policy: "prefill-load", prefillBusyActive: 1 });
    const answers = await Promise.all([0, 1, 2].map((i) => post(load.url, "/v1/completions", long(100_000 + i * 10_000))));
    const reasons = answers.map((a) => a.headers["x-kvroute-disagg"] as string).sort();
    expect(reasons.filter((r) => r.includes("reason=prefill_busy")).length).toBeGreaterThanOrEqual(1);
    expect(reasons.filter((r) => r.includes("reason=prefill_free")).length).toBeGreaterThanOrEqual(1);
    const lm = await metrics(load);
    expect(metricValue(lm, "kvroute_disagg_decisions_total", { reason: "prefill_busy" }) + metricValue(lm, "kvroute_disagg_decisions_total", { reason: "prefill_free" })).toBe(3);

    const either = await disaggGateway({ policy: "isl-or-load", prefillBusyActive: 1 });
    const short = await post(either.url, "/v1/completions", { model: MODEL, prompt: prompt(600, 200_000), max_tokens: 2 });
    expect(short.headers["x-kvroute-disagg"]).toBe("local; reason=isl_short; uncached=600");
    const longOne = await post(either.url, "/v1/completions", long(210_000));
    expect(longOne.headers["x-kvroute-disagg"]).toBe("remote; reason=prefill_free; uncached=8000");

    // Everything local by policy, but a decode worker with a request in flight vetoes local prefill.
    const veto = await disaggGateway({ policy: "threshold", localPrefillMaxTokens: 100_000, decodeBusyActive: 1 });
    const held = [0, 1, 2].map((i) => post(veto.url, "/v1/completions", { model: MODEL, prompt: prompt(3000, 300_000 + i * 5000), max_tokens: 200, ignore_eos: true }));
    const vetoed = (await Promise.all(held)).map((a) => a.headers["x-kvroute-disagg"] as string);
    expect(vetoed.filter((r) => r.startsWith("remote; reason=decode_busy_veto")).length).toBeGreaterThanOrEqual(1);
    expect(metricValue(await metrics(veto), "kvroute_disagg_decisions_total", { reason: "decode_busy_veto" })).toBeGreaterThanOrEqual(1);
  });

  it("a client gone during prefill aborts the prefill and never starts decode; gone during decode aborts decode", async () => {
    const g = await disaggGateway({ policy: "always" });
    const u = new URL(g.url);
    const open = (id: string, n: number, base: number) => {
      const req = http.request({ host: u.hostname, port: u.port, path: "/v1/completions", method: "POST", headers: { "content-type": "application/json", "x-request-id": id } });
      req.on("error", () => {});
      const response = new Promise<http.IncomingMessage>((resolve) => req.on("response", resolve));
      req.end(JSON.stringify({ model: MODEL, prompt: prompt(n, base), max_tokens: 2000, ignore_eos: true, stream: true }));
      return { req, response };
    };
    const running = async (ids: string[]) => (await Promise.all(ids.map((id) => workerRequests(workers[id]!.url)))).flat();
    // Prefill phase: a 40,000-token prompt prefills for a while (~0.6 s) on a prefill worker; the
    // client leaves as soon as it is seen there.
    const inPrefill = open("gone-in-prefill", 40_000, 400_000);
    while ((await running(["p0", "p1"])).length === 0) await sleep(2);
    inPrefill.req.destroy();
    while ((await running(["p0", "p1"])).length > 0) await sleep(5);
    // Once the gateway has closed the prefill leg (the router holds no load), the decode leg would
    // have been sent in the same turn: it never was.
    while (g.router.workerLoads().reduce((n, l) => n + l.requests, 0) > 0) await sleep(5);
    expect(await running(["d0", "d1"])).toEqual([]);
    expect(metricValue(await metrics(g), "kvroute_disagg_prefills_total", { where: "remote" })).toBe(0);
    // Decode phase: tokens are flowing from a decode worker; the client leaves.
    const inDecode = open("gone-in-decode", 3000, 500_000);
    const res = await inDecode.response;
    await new Promise((r) => res.once("data", r));
    const decodeWorker = res.headers["x-kvroute-worker"] as string;
    expect(await running([decodeWorker])).toHaveLength(1);
    inDecode.req.destroy();
    while ((await running([decodeWorker])).length > 0) await sleep(5);
    const m = await metrics(g);
    expect(metricValue(m, "kvroute_cancellations_total", { phase: "prefill" })).toBe(1);
    expect(metricValue(m, "kvroute_cancellations_total", { phase: "decode" })).toBe(1);
    expect(g.router.workerLoads().reduce((n, l) => n + l.requests, 0)).toBe(0);
  });

  it("a prefill worker that died is replaced by the other one; with none left the decode worker prefills", async () => {
    const g = await disaggGateway({ policy: "always" });
    const shared = prompt(4000, 700_000);
    const first = await post(g.url, "/v1/completions", { model: MODEL, prompt: shared, max_tokens: 2 });
    const holder = first.headers["x-kvroute-prefill-worker"] as string;
    for (;;) {
      const r = await post(g.url, "/v1/kvroute/route", { model: MODEL, prompt: shared, explain: true });
      if (r.json.disagg.prefillWorker === holder && r.json.disagg.prefillOverlapBlocks >= 240) break;
      await sleep(20);
    }
    // The prefill worker holding the prefix dies; the router still prefers it (it stays registered here).
    await workers[holder]!.stop({ graceMs: 0 });
    const again = await post(g.url, "/v1/completions", { model: MODEL, prompt: shared, max_tokens: 2 });
    expect(again.status).toBe(200);
    const other = holder === "p0" ? "p1" : "p0";
    expect(again.headers["x-kvroute-prefill-worker"]).toBe(other);
    expect(again.json.choices[0].text).toBe(first.json.choices[0].text);
    // Both prefill workers gone: local prefill on the decode worker.
    await workers[other]!.stop({ graceMs: 0 });
    const local = await post(g.url, "/v1/completions", { model: MODEL, prompt: prompt(3000, 800_000), max_tokens: 2 });
    expect(local.status).toBe(200);
    expect(local.headers["x-kvroute-prefill-worker"]).toBeUndefined();
    const m = await metrics(g);
    expect(metricValue(m, "kvroute_upstream_errors_total", { kind: "prefill" })).toBeGreaterThanOrEqual(1);
    expect(metricValue(m, "kvroute_disagg_prefills_total", { where: "local_fallback" })).toBeGreaterThanOrEqual(1);
  });
});
