/**
 * KV cache tiers in process: the mocker's CPU offload tier (OffloadingConnector: GPU evictions kept
 * in a bounded CPU LRU, hits loaded over PCIe, CPU-medium events), its flags, and the router
 * pricing hits per tier (explain shows them; a CPU hit beats a miss, a big CPU hit beats a small
 * GPU one).
 */
import { describe, expect, it } from "vitest";
import { useEventEngines } from "./helpers/mock-engine.js";
import { encodeKvEventBatch } from "../ts/events/codec.js";
import { resolveMockEngineConfig } from "../ts/mocker/config.js";
import { CpuOffloadTier } from "../ts/mocker/cpu-offload.js";
import { KvRouter, MemoryRegistry, tierCredit } from "../ts/index.js";
import type { WorkerRecord } from "../ts/workers/config.js";

/** An engine whose KV event batches are decoded into `batches` (no sockets). */
const engine = useEventEngines({ numGpuBlocks: 64, kvTransferConfig: { kvConnector: "OffloadingConnector", kvRole: "kv_both", kvConnectorExtraConfig: { num_cpu_blocks: 256 } } });

const tokens = (n: number, start = 1) => Array.from({ length: n }, (_, i) => start + i);

function metric(text: string, name: string, label = ""): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(label));
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("mocker CPU offload tier", () => {
  it("takes num_cpu_blocks or cpu_bytes_to_use from an OffloadingConnector config, and refuses neither", () => {
    const base = { model: "m", kvTransferConfig: { kvConnector: "OffloadingConnector", kvRole: "kv_both" as const } };
    expect(resolveMockEngineConfig({ ...base, kvTransferConfig: { ...base.kvTransferConfig, kvConnectorExtraConfig: { num_cpu_blocks: 500 } } }).numCpuBlocks).toBe(500);
    // 8B profile: 128 KiB a token, 2 MiB a 16-token block.
    expect(resolveMockEngineConfig({ ...base, kvTransferConfig: { ...base.kvTransferConfig, kvConnectorExtraConfig: { cpu_bytes_to_use: 2 ** 31 } } }).numCpuBlocks).toBe(1024);
    expect(() => resolveMockEngineConfig(base)).toThrow(/num_cpu_blocks or cpu_bytes_to_use/);
    expect(() => resolveMockEngineConfig({ ...base, kvTransferConfig: { ...base.kvTransferConfig, kvConnectorExtraConfig: { num_cpu_blocks: -1 } } })).toThrow(/positive integer/);
    expect(resolveMockEngineConfig({ model: "m" }).numCpuBlocks).toBe(0);
  });

  it("is a bounded LRU whose round events put removals and stores of one round in order", () => {
    const t = new CpuOffloadTier(2);
    const out: unknown[] = [];
    t.offload(1n);
    t.offload(2n);
    t.flush(16, (e) => out.push(e));
    t.touch(1n); // 2 is now the least recently used
    t.offload(3n);
    t.offload(4n); // evicts 2, then 1 ... 3 was stored this round and is evicted before anyone heard of it
    t.flush(16, (e) => out.push(e));
    expect(t.size).toBe(2);
    expect(out).toMatchObject([
      { type: "BlockStored", blockHashes: [1n, 2n], medium: "CPU", tokenIds: [] },
      { type: "BlockRemoved", blockHashes: [2n, 1n], medium: "CPU" },
      { type: "BlockStored", blockHashes: [3n, 4n], medium: "CPU" },
    ]);
  });

  it("evicted prefixes go to the CPU tier (events with medium CPU before the GPU removals), and a later request loads them instead of prefilling", async () => {
    const { e, batches } = await engine();
    const prefix = tokens(40 * 16);
    const a = await e.generate({ promptTokenIds: [...prefix, 9], maxTokens: 2 }).result;
    // Other prompts push the prefix out of the 64-block GPU pool.
    for (let k = 0; k < 3; k++) await e.generate({ promptTokenIds: tokens(50 * 16, 100_000 * (k + 1)), maxTokens: 2 }).result;
    const events = batches.flatMap((b) => b.events);
    const cpuStored = new Set(events.flatMap((ev) => (ev.type === "BlockStored" && ev.medium === "CPU" ? ev.blockHashes.map(String) : [])));
    expect(cpuStored.size).toBeGreaterThanOrEqual(40);
    // Each hash's CPU store comes before its GPU removal.
    const seen = new Set<string>();
    for (const ev of events) {
      if (ev.type === "BlockStored" && ev.medium === "CPU") for (const h of ev.blockHashes) seen.add(String(h));
      if (ev.type === "BlockRemoved" && ev.medium === "GPU") for (const h of ev.blockHashes) expect(seen.has(String(h))).toBe(true);
    }
    const b = await e.generate({ promptTokenIds: [...prefix, 10], maxTokens: 2 }).result;
    expect(b.numCachedTokens).toBe(prefix.length);
    const m = e.renderMetrics();
    expect(metric(m, "vllm:prompt_tokens_cached_by_source_total", 'source="host"')).toBe(prefix.length);
    expect(metric(m, "vllm:prefix_cache_hits_total")).toBe(0);
    const ttft = (r: typeof a) => r.timings.firstToken! - r.timings.arrival;
    // PCIe load (0.0033 ms a token) instead of prefill (0.035 ms a token + attention).
    expect(ttft(b)).toBeLessThan(ttft(a) / 3);
    // Loaded blocks are cached on the GPU again, with their tokens.
    const last = batches.at(-1)!.events.concat(batches.at(-2)?.events ?? []);
    expect(last.some((ev) => ev.type === "BlockStored" && ev.medium === "GPU" && ev.tokenIds.length === prefix.length)).toBe(true);
  });

  it("without the connector nothing is offloaded", async () => {
    const { e, batches } = await engine({ kvTransferConfig: null });
    await e.generate({ promptTokenIds: tokens(40 * 16), maxTokens: 2 }).result;
    for (let k = 0; k < 3; k++) await e.generate({ promptTokenIds: tokens(50 * 16, 100_000 * (k + 1)), maxTokens: 2 }).result;
    expect(batches.flatMap((b) => b.events).some((ev) => ev.type !== "AllBlocksCleared" && ev.medium === "CPU")).toBe(false);
  });
});

describe("router tiers", () => {
  const record = (id: string): WorkerRecord => ({
    id,
    model: "m",
    role: "aggregated",
    url: `http://${id}`,
    kvEvents: null,
    blockSize: 16,
    hashAlgorithm: "sha256",
    hashSeed: null,
    numGpuBlocks: 1000,
    dataParallelSize: 1,
    dpRanks: [0],
  });

  function fleet(options: { tierCredits?: { CPU?: number } } = {}) {
    const registry = new MemoryRegistry(["gpu", "cpu", "none"].map(record));
    return new KvRouter({ registry, speculativeTtlMs: 0, ...options, log: () => {} });
  }

  /** Stores the first `blocks` blocks of `prompt` on `worker` in `medium`, as vLLM's events say. */
  function store(router: KvRouter, worker: string, prompt: Uint32Array, blocks: number, medium: string) {
    const hashes = Array.from({ length: blocks }, (_, i) => BigInt(worker.length * 1000 + i + 1));
    const payload = encodeKvEventBatch({
      ts: 0,
      events: [{ type: "BlockStored", blockHashes: hashes, parentBlockHash: null, tokenIds: prompt.subarray(0, blocks * 16), blockSize: 16, medium }],
    });
    router.eventSink("m").applyBatch(worker, 0, 0n, payload);
  }

  it("explain shows hits per tier; a long CPU hit beats a short GPU hit, unknown media count for nothing", async () => {
    const router = fleet();
    const prompt = Uint32Array.from(tokens(100 * 16 + 5));
    store(router, "gpu", prompt, 5, "GPU");
    store(router, "cpu", prompt, 90, "cpu");
    store(router, "none", prompt, 100, "TPU_HBM");
    const d = router.route({ model: "m", tokens: prompt, explain: true, dryRun: true });
    expect(d.workerId).toBe("cpu");
    const by = Object.fromEntries(d.candidates!.map((c) => [c.workerId, c]));
    expect(by["cpu"]!.tiers).toEqual({ CPU: 90 });
    expect(by["cpu"]!.loadBlocks).toBeCloseTo(90 * 0.05, 6);
    expect(by["gpu"]!.tiers).toEqual({ GPU: 5 });
    expect(by["none"]!.overlapBlocks).toBe(0);
    expect(router.eventStats("m")!.skippedReasons).toMatchObject({ unknown_medium: 1 });
  });

  it("a CPU credit of 0 prices CPU hits like misses (tier-blind)", async () => {
    const router = fleet({ tierCredits: { CPU: 0 } });
    const prompt = Uint32Array.from(tokens(100 * 16 + 5));
    store(router, "gpu", prompt, 5, "GPU");
    store(router, "cpu", prompt, 90, "CPU");
    const d = router.route({ model: "m", tokens: prompt, explain: true, dryRun: true });
    expect(d.workerId).toBe("gpu");
  });

  it("credits come from speeds; a 30k-token CPU hit is worth 100x a 300-token one", () => {
    expect(tierCredit(0.035, 0.0033)).toBeCloseTo(0.9057, 3);
    expect(tierCredit(0.035, 1)).toBe(0);
    expect(tierCredit(0, 1)).toBe(0);
    expect(() => new KvRouter({ registry: new MemoryRegistry(), tierCredits: { CPU: 2 } })).toThrow(/tierCredits.CPU/);
  });
});
