/**
 * KvRouter as a library: decisions, explain output, exclusion, roles, the busy threshold, softmax
 * sampling, lifecycle bookkeeping, metrics, the event sink, and registry changes at run time.
 */
import { describe, expect, it } from "vitest";
import {
  encodeKvEventBatch,
  InvalidConfigError,
  InvalidInputError,
  KvRouter,
  MemoryRegistry,
  NoWorkerError,
  type KvRouterOptions,
  type RouteDecision,
  type WorkerRecord,
} from "../ts/index.js";

const BS = 16;

function record(id: string, over: Partial<WorkerRecord> = {}): WorkerRecord {
  return {
    id,
    model: "m",
    role: "aggregated",
    url: `http://127.0.0.1:${8000 + Number(id.replace(/\D/g, "") || 0)}`,
    kvEvents: null,
    blockSize: BS,
    hashAlgorithm: "sha256",
    hashSeed: null,
    numGpuBlocks: null,
    dataParallelSize: 1,
    dpRanks: [0],
    ...over,
  };
}

/** `blocks` full blocks of distinct tokens from `start`. */
function prompt(start: number, blocks: number): Uint32Array {
  return Uint32Array.from({ length: blocks * BS }, (_, i) => start + i);
}

let hashBase = 1n;
/** Publishes a BlockStored of the first `blocks` blocks of `tokens` from `worker` into `router`. */
function store(router: KvRouter, worker: string, tokens: Uint32Array, blocks: number, dpRank = 0): void {
  const hashes = Array.from({ length: blocks }, () => hashBase++);
  const payload = encodeKvEventBatch({
    ts: 0,
    dataParallelRank: dpRank,
    events: [{ type: "BlockStored", blockHashes: hashes, parentBlockHash: null, tokenIds: tokens.subarray(0, blocks * BS), blockSize: BS, medium: "GPU" }],
  });
  router.eventSink("m").applyBatch(worker, dpRank, 0n, payload);
}

function setup(n: number, options: Partial<KvRouterOptions> = {}) {
  let now = 0;
  const registry = new MemoryRegistry(Array.from({ length: n }, (_, i) => record(`w${i}`)));
  const router = new KvRouter({ registry, seed: 7, clock: () => now, log: () => {}, ...options });
  return { registry, router, advance: (ms: number) => (now += ms) };
}

describe("KvRouter decisions", () => {
  it("routes to the longest cached prefix and explains every candidate, sorted by cost", () => {
    const { router } = setup(3, { overlapWeight: 2, sequenceWeight: 0 });
    const p = prompt(0, 10);
    store(router, "w1", p, 8);
    store(router, "w2", p, 3);
    const d = router.route({ model: "m", tokens: p, explain: true, requestId: "r1" });
    expect(d).toMatchObject({
      requestId: "r1",
      workerId: "w1",
      dpRank: 0,
      url: "http://127.0.0.1:8001",
      overlapBlocks: 8,
      promptBlocks: 10,
      bestOverlapBlocks: 8,
      blind: true, // w0 never sent an event
      mode: "kv",
      allBusy: false,
      cost: 15,
    });
    // cost = 2 × prefill + decode, decode = the 10 prompt blocks + 1 of its own (nothing active yet).
    expect(d.candidates!.map((c) => [c.workerId, c.overlapBlocks, c.prefillBlocks, c.decodeBlocks, c.cost, c.busy])).toEqual([
      ["w1", 8, 2, 11, 15, false],
      ["w2", 3, 7, 11, 25, false],
      ["w0", 0, 10, 11, 31, false],
    ]);
    expect(d.candidates!.map((c) => c.kvView)).toEqual([true, true, false]);
    expect(d.candidates!.map((c) => c.contextBlocks)).toEqual([11, 11, 11]);
    expect(router.hasKvView("w1")).toBe(true);
    expect(router.hasKvView("w0")).toBe(false);
    // Without explain there is no candidate list; the request id is generated when absent.
    const d2 = router.route({ model: "m", tokens: p, dryRun: true });
    expect(d2.candidates).toBeUndefined();
    expect(d2.requestId).toMatch(/^kvr-/);
  });

  it("accepts number arrays, validates input, and names the missing model", () => {
    const { router } = setup(1);
    expect(router.route({ model: "m", tokens: [1, 2, 3], dryRun: true }).promptBlocks).toBe(1);
    expect(() => router.route({ model: "m", tokens: [1, -2] })).toThrow(InvalidInputError);
    expect(() => router.route({ model: "m", tokens: [1], maxTokens: 1.5 })).toThrow(InvalidInputError);
    const err = (() => {
      try {
        router.route({ model: "other", tokens: [1] });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(NoWorkerError);
    expect(err).toMatchObject({ reason: "unknown_model", code: "KVR_NO_WORKER", model: "other" });
    expect(() => new KvRouter({ registry: new MemoryRegistry(), mode: "fast" as never })).toThrow(InvalidConfigError);
    expect(() => new KvRouter({ registry: new MemoryRegistry(), overlapWeight: -1 })).toThrow(InvalidConfigError);
  });

  it("never chooses an excluded worker, and throws when all are excluded", () => {
    const { router } = setup(3);
    const p = prompt(0, 4);
    store(router, "w0", p, 4);
    for (let i = 0; i < 30; i++) {
      const d = router.route({ model: "m", tokens: p, dryRun: true, exclude: [{ workerId: "w0", dpRank: 0 }, { workerId: "gone", dpRank: 0 }] });
      expect(d.workerId).not.toBe("w0");
      expect(d.bestOverlapBlocks).toBe(0); // only candidates count
    }
    const all = ["w0", "w1", "w2"].map((workerId) => ({ workerId, dpRank: 0 }));
    expect(() => router.route({ model: "m", tokens: p, exclude: all })).toThrow(expect.objectContaining({ reason: "all_excluded" }));
  });

  it("filters by role and addresses data-parallel ranks", async () => {
    const registry = new MemoryRegistry([
      record("p0", { role: "prefill" }),
      record("d0", { role: "decode", dataParallelSize: 2, dpRanks: [0, 1] }),
    ]);
    const router = new KvRouter({ registry, seed: 1 });
    const p = prompt(0, 6);
    store(router, "d0", p, 6, 1);
    const d = router.route({ model: "m", tokens: p, role: "decode", explain: true, dryRun: true });
    expect([d.workerId, d.dpRank, d.overlapBlocks]).toEqual(["d0", 1, 6]);
    expect(d.candidates!.map((c) => `${c.workerId}/${c.dpRank}`).sort()).toEqual(["d0/0", "d0/1"]);
    expect(router.route({ model: "m", tokens: p, role: "prefill", dryRun: true }).workerId).toBe("p0");
    expect(router.hasKvView("d0", 1)).toBe(true);
    expect(router.hasKvView("d0", 0)).toBe(false);
    // The worker shrinks to one rank: rank 1 and its blocks go.
    await registry.register(record("d0", { role: "decode", dataParallelSize: 2, dpRanks: [0] }));
    const d2 = router.route({ model: "m", tokens: p, role: "decode", explain: true, dryRun: true });
    expect(d2.candidates!.map((c) => `${c.workerId}/${c.dpRank}`)).toEqual(["d0/0"]);
    expect(d2.bestOverlapBlocks).toBe(0);
  });

  it("skips workers over the busy threshold unless every one is", () => {
    const { router, advance } = setup(3, { busyThreshold: { kvUsage: 0.9, queueDepth: 4 } });
    const p = prompt(0, 8);
    store(router, "w0", p, 8);
    expect(router.updateMetrics("w0", { kvCacheUsagePerc: 0.95 })).toBe(true);
    expect(router.updateMetrics("w1", { numRequestsWaiting: 5 })).toBe(true);
    expect(router.updateMetrics("nobody", { numRequestsWaiting: 5 })).toBe(false);
    const d = router.route({ model: "m", tokens: p, explain: true, dryRun: true });
    expect(d.workerId).toBe("w2");
    expect(Object.fromEntries(d.candidates!.map((c) => [c.workerId, c.busy]))).toEqual({ w0: true, w1: true, w2: false });
    router.updateMetrics("w2", { kvCacheUsagePerc: 0.99 });
    const all = router.route({ model: "m", tokens: p, dryRun: true });
    expect(all.allBusy).toBe(true);
    // w1's waiting requests are load the router did not place: w0 has the lower cost.
    expect(all.workerId).toBe("w0");
    advance(10_001); // metrics go stale
    expect(router.route({ model: "m", tokens: p, dryRun: true }).allBusy).toBe(false);
    expect(router.stats().models["m"]!.allBusyDecisions).toBe(1);
  });

  it("samples with a softmax over normalized costs when the temperature is > 0", () => {
    const { router } = setup(3, { temperature: 0.5 });
    const p = prompt(0, 10);
    store(router, "w0", p, 10); // cost 0
    store(router, "w1", p, 5); // cost 5; w2: cost 10
    const n = 20_000;
    const counts: Record<string, number> = { w0: 0, w1: 0, w2: 0 };
    for (let i = 0; i < n; i++) counts[router.route({ model: "m", tokens: p, dryRun: true }).workerId]!++;
    const w = [1, Math.exp(-1), Math.exp(-2)];
    const total = w[0]! + w[1]! + w[2]!;
    expect(counts["w0"]! / n).toBeCloseTo(w[0]! / total, 1);
    expect(counts["w1"]! / n).toBeCloseTo(w[1]! / total, 1);
    expect(counts["w2"]! / n).toBeCloseTo(w[2]! / total, 1);
  });

  it("keeps its predicted load exact over start, first token, tokens and finish", () => {
    const { router } = setup(1);
    const d = router.route({ model: "m", tokens: prompt(0, 4), requestId: "a", maxTokens: 64 });
    const load = () => router.workerLoads("m")[0]!;
    // Booked at the decision: 4 prefill blocks, ceil((64 + 32) / 16) = 6 decode blocks.
    expect(load()).toMatchObject({ workerId: "w0", requests: 1, prefilling: 1, prefillBlocks: 4, decodeBlocks: 6 });
    router.started(d);
    router.firstToken("a");
    expect(load()).toMatchObject({ requests: 1, prefilling: 0, prefillBlocks: 0, decodeBlocks: 6 });
    router.tokens("a", 80);
    expect(load().decodeBlocks).toBe(9);
    router.finished("a", "ok");
    expect(load()).toMatchObject({ requests: 0, prefillBlocks: 0, decodeBlocks: 0 });
    router.finished("a", "ok"); // twice: harmless
    router.firstToken("never-routed");
    // Dry runs book nothing.
    router.route({ model: "m", tokens: prompt(0, 4), dryRun: true });
    expect(load().requests).toBe(0);
  });

  it("lets an unstarted booking lapse, and books a decision started after that", () => {
    const { router, advance } = setup(1, { unstartedTtlMs: 100 });
    const d = router.route({ model: "m", tokens: prompt(0, 4), requestId: "a" });
    advance(150);
    router.route({ model: "m", tokens: prompt(100, 1), dryRun: true }); // sweeps
    expect(router.workerLoads()[0]!.requests).toBe(0);
    expect(router.stats().models["m"]!.lapsedBookings).toBe(1);
    router.started(d);
    expect(router.workerLoads()[0]).toMatchObject({ requests: 1, prefillBlocks: 4 });
    router.finished("a", "cancelled");
    expect(router.workerLoads()[0]!.requests).toBe(0);
  });

  it("prices load the router did not place as of each scrape: its own requests that finish afterwards never read as external", () => {
    // The starvation this guards against: a scrape shows the router's own two requests on w0;
    // they finish; comparing that scrape with the bookkeeping *afterwards* read them as two
    // external requests and priced w0 (the prefix holder) out until the next scrape.
    // Weights that make the arithmetic plain: a prefill block and a decode block cost 1.
    const { router, advance } = setup(2, { overlapWeight: 1, sequenceWeight: 0 });
    const p = prompt(0, 8);
    store(router, "w0", p, 8);
    const w0 = () => router.route({ model: "m", tokens: p, explain: true, dryRun: true });
    const penalty = (d: RouteDecision) => d.candidates!.find((c) => c.workerId === "w0")!.penalty;
    const startTwo = (tag: string) =>
      [0, 1].map((i) => {
        const d = router.route({ model: "m", tokens: p, requestId: `${tag}${i}` });
        expect(d.workerId).toBe("w0");
        router.started(d);
        return d.requestId;
      });
    const ids = startTwo("a");
    router.updateMetrics("w0", { numRequestsRunning: 2 });
    router.updateMetrics("w1", { numRequestsRunning: 0 });
    advance(5);
    for (const id of ids) router.finished(id, "ok");
    advance(500);
    let d = w0();
    expect(penalty(d)).toBe(0);
    expect(d.workerId).toBe("w0");

    // A scrape taken before requests finished but arriving after (within metricsLagMs): they
    // still count as the router's own.
    for (const id of startTwo("b")) router.finished(id, "ok");
    advance(20);
    router.updateMetrics("w0", { numRequestsRunning: 2 });
    expect(penalty(w0())).toBe(0);
    // Taken after they finished: two requests the router did not place (2 × 8 context blocks).
    router.updateMetrics("w0", { numRequestsRunning: 2, takenAtMs: 510 }); // they finished at 505
    d = w0();
    expect(penalty(d)).toBe(16);
    expect(d.workerId).toBe("w1");
    // Kept as scraped whatever the router books next, fading over metricsTtlMs (10 s).
    const later = router.route({ model: "m", tokens: p, requestId: "c" });
    router.started(later);
    advance(5000);
    expect(penalty(w0())).toBeCloseTo(8, 9);
    router.finished("c", "ok");
    advance(5001);
    expect(penalty(w0())).toBe(0);
    expect(() => setup(1, { metricsLagMs: -1 })).toThrow(InvalidConfigError);
  });

  it("reads vLLM's /metrics text, per rank when the worker hosts several", async () => {
    const registry = new MemoryRegistry([record("w0"), record("w1", { dataParallelSize: 2, dpRanks: [0, 1] })]);
    const router = new KvRouter({ registry, busyThreshold: { queueDepth: 2 }, log: () => {} });
    const text = [
      "# HELP vllm:num_requests_waiting x",
      'vllm:num_requests_waiting{engine="0",model_name="m"} 5',
      'vllm:num_requests_waiting{engine="1",model_name="m"} 0',
      'vllm:num_requests_running{engine="0",model_name="m"} 1',
      'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5',
    ].join("\n");
    expect(router.updateMetricsFromPrometheus("w1", text)).toBe(true);
    const d = router.route({ model: "m", tokens: prompt(0, 2), explain: true, dryRun: true });
    const busy = Object.fromEntries(d.candidates!.map((c) => [`${c.workerId}/${c.dpRank}`, c.busy]));
    expect(busy).toEqual({ "w0/0": false, "w1/0": true, "w1/1": false });
    expect(router.updateMetricsFromPrometheus("w0", "nothing here 1")).toBe(false);
    router.close();
  });
});

describe("KvRouter and the registry", () => {
  it("sees added workers on the next request and drops removed ones with their blocks", async () => {
    const { registry, router } = setup(2);
    const p = prompt(0, 6);
    store(router, "w1", p, 6);
    const before = router.stats().models["m"]!;
    expect(before).toMatchObject({ targets: 2, blocks: 6 });
    await registry.register(record("w2"));
    const d = router.route({ model: "m", tokens: p, explain: true, requestId: "x" });
    expect(d.candidates!.map((c) => c.workerId).sort()).toEqual(["w0", "w1", "w2"]);
    expect(d.workerId).toBe("w1");
    router.started(d);
    await registry.deregister("w1");
    expect(router.stats().models["m"]).toMatchObject({ targets: 2, blocks: 0, activeRequests: 0, speculativeBlocks: 0 });
    expect(router.hasKvView("w1")).toBe(false);
    for (let i = 0; i < 20; i++) expect(router.route({ model: "m", tokens: p, dryRun: true }).workerId).not.toBe("w1");
    router.finished("x", "error"); // the request of a removed worker: ignored
    await registry.deregister("w0");
    await registry.deregister("w2");
    expect(() => router.route({ model: "m", tokens: p })).toThrow(expect.objectContaining({ reason: "no_workers" }));
    // A worker coming back starts with no blocks and is routable at once.
    await registry.register(record("w1"));
    expect(router.route({ model: "m", tokens: p, dryRun: true }).workerId).toBe("w1");
    router.close();
    await registry.register(record("w5"));
    expect(router.stats().models["m"]!.targets).toBe(1); // no longer watching
  });

  it("moves a worker that changes model and takes per-model settings", async () => {
    const registry = new MemoryRegistry([record("w0")]);
    const router = new KvRouter({ registry, models: { n: { blockSize: 32 } }, log: () => {} });
    expect(router.modelNames().sort()).toEqual(["m", "n"]);
    expect(() => router.route({ model: "n", tokens: [1] })).toThrow(expect.objectContaining({ reason: "no_workers" }));
    const warnings: string[] = [];
    const r2 = new KvRouter({ registry, models: { n: { blockSize: 32 } }, log: (m) => warnings.push(m) });
    await registry.register(record("w0", { model: "n" }));
    expect(warnings.join()).toMatch(/block size 16 .* 32/);
    expect(r2.route({ model: "n", tokens: new Uint32Array(64), dryRun: true }).promptBlocks).toBe(2);
    expect(() => r2.route({ model: "m", tokens: [1] })).toThrow(expect.objectContaining({ reason: "no_workers" }));
    expect(r2.stats().models["n"]).toMatchObject({ blockSize: 32, keying: "tokens", targets: 1 });
    router.close();
    r2.close();
  });

  it("serves as a KvEventReplica applier and resyncs a worker whose batch was unreadable", () => {
    const { router } = setup(1);
    const sink = router.eventSink("m");
    const p = prompt(0, 3);
    const ok = encodeKvEventBatch({
      ts: 0,
      events: [{ type: "BlockStored", blockHashes: [1n, 2n, 3n], parentBlockHash: null, tokenIds: p, blockSize: BS }],
    });
    expect(sink.applyEventBatch("w0", ok).stored).toBe(3);
    expect(router.stats().models["m"]!.blocks).toBe(3);
    expect(sink.applyEventBatch("w0", Buffer.from([0xc1])).malformed).toBeTruthy();
    expect(sink.clearWorker({ workerId: "w0", dpRank: 0 })).toBe(3);
    expect(router.hasKvView("w0")).toBe(false);
    expect(sink.stats()).toEqual({ batches: 2, malformed: 1, resyncs: 0, clears: 1 });
    expect(() => router.eventSink("unknown").applyBatch("x", 0, 0n, ok)).toThrow(InvalidConfigError);
  });
});

export type { RouteDecision };
