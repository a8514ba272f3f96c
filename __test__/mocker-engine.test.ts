/**
 * MockEngine in process: vLLM-like KV cache behaviour (prefix hits, LRU eviction, preemption,
 * abort), vLLM-exact block hashes in the events, the timing model, disaggregation hooks, the toy
 * model's determinism, and the Prometheus text format.
 */
import { describe, expect, it } from "vitest";
import { useEventEngines } from "./helpers/mock-engine.js";
import { BlockHasher } from "../ts/core/block-hasher.js";
import type { DecodedKvEventBatch } from "../ts/events/codec.js";
import { floatToGoString, pyFloatRepr } from "../ts/mocker/metrics.js";
import { MockEngine, resolveHashSeed, toyTokenizer } from "../ts/mocker/index.js";
import { mulberry32 as rng } from "../ts/util/prng.js";

/** An engine whose KV event batches are decoded into `batches` (no sockets). */
const engine = useEventEngines({ numGpuBlocks: 1000 });

const tokens = (n: number, start = 1) => Array.from({ length: n }, (_, i) => start + i);

/** vLLM's events applied to a multiset (a hash may be held by several blocks). */
function replay(batches: DecodedKvEventBatch[], rank = 0): Set<string> {
  const held = new Map<string, number>();
  for (const b of batches) {
    if ((b.dataParallelRank ?? 0) !== rank) continue;
    for (const ev of b.events) {
      if (ev.type === "AllBlocksCleared") held.clear();
      else
        for (const h of ev.blockHashes) {
          const k = String(h);
          const n = (held.get(k) ?? 0) + (ev.type === "BlockStored" ? 1 : -1);
          if (n > 0) held.set(k, n);
          else held.delete(k);
        }
    }
  }
  return new Set(held.keys());
}

function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`));
  return line === undefined ? NaN : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("MockEngine", () => {
  it("a second request with the same prefix has a lower simulated TTFT and counts prefix hits", async () => {
    const { e } = await engine();
    const shared = tokens(2000);
    const a = await e.generate({ promptTokenIds: [...shared, 5001, 5002], maxTokens: 4 }).result;
    const before = metric(e.renderMetrics(), "vllm:prefix_cache_hits_total");
    const b = await e.generate({ promptTokenIds: [...shared, 6001, 6002, 6003], maxTokens: 4 }).result;
    const m = e.renderMetrics();
    const ttft = (r: typeof a) => r.timings.firstToken! - r.timings.arrival;
    expect(a.numCachedTokens).toBe(0);
    expect(b.numCachedTokens).toBe(2000);
    expect(ttft(b)).toBeLessThan(ttft(a) / 5);
    expect(before).toBe(0);
    expect(metric(m, "vllm:prefix_cache_hits_total")).toBe(2000);
    expect(metric(m, "vllm:prefix_cache_queries_total")).toBe(2002 + 2003);
    // TTFT of a 2002-token prefill with the default timing: ~6 ms + 70 ms + attention.
    expect(ttft(a)).toBeGreaterThan(60);
    expect(ttft(a)).toBeLessThan(120);
  });

  it("generates deterministic word tokens whose text round-trips through the toy tokenizer", async () => {
    const { e } = await engine();
    const p = toyTokenizer.encode("The quick brown fox");
    const r1 = await e.generate({ promptTokenIds: p, maxTokens: 12 }).result;
    const r2 = await e.generate({ promptTokenIds: p, maxTokens: 12 }).result;
    const r3 = await e.generate({ promptTokenIds: p, maxTokens: 12, seed: 7 }).result;
    expect(r1.tokenIds).toHaveLength(12);
    expect(r1.finishReason).toBe("length");
    expect(r2.tokenIds).toEqual(r1.tokenIds);
    expect(r3.tokenIds).not.toEqual(r1.tokenIds);
    expect(r1.text).toBe(toyTokenizer.decode(r1.tokenIds));
    expect(toyTokenizer.encode(r1.text)).toEqual(r1.tokenIds);
    expect(r1.text.split(" ").slice(1)).toHaveLength(12);
    // Streaming deltas concatenate to the final text.
    let streamed = "";
    let n = 0;
    for await (const out of e.generate({ promptTokenIds: p, maxTokens: 12 })) {
      streamed += out.text;
      n += out.tokenIds.length;
    }
    expect(streamed).toBe(r1.text);
    expect(n).toBe(12);
  });

  it("stops on EOS, stop token ids and stop strings like vLLM", async () => {
    const { e } = await engine({ eosAfterTokens: 5 });
    const p = tokens(40);
    const eos = await e.generate({ promptTokenIds: p, maxTokens: 50 }).result;
    expect(eos.finishReason).toBe("stop");
    expect(eos.stopReason).toBeNull();
    expect(eos.tokenIds).toHaveLength(5);
    expect(eos.tokenIds[4]).toBe(toyTokenizer.EOS_TOKEN_ID);
    const full = await e.generate({ promptTokenIds: p, maxTokens: 8, ignoreEos: true }).result;
    expect(full.tokenIds).toHaveLength(8);
    expect(full.tokenIds.slice(0, 4)).toEqual(eos.tokenIds.slice(0, 4));
    const byId = await e.generate({ promptTokenIds: p, maxTokens: 8, ignoreEos: true, stopTokenIds: [full.tokenIds[2]!] }).result;
    expect(byId).toMatchObject({ finishReason: "stop", stopReason: full.tokenIds[2] });
    expect(byId.tokenIds).toEqual(full.tokenIds.slice(0, 3));
    const word = toyTokenizer.tokenText(full.tokenIds[3]!);
    const byStr = await e.generate({ promptTokenIds: p, maxTokens: 8, ignoreEos: true, stop: [word] }).result;
    expect(byStr).toMatchObject({ finishReason: "stop", stopReason: word });
    expect(byStr.text).toBe(toyTokenizer.decode(full.tokenIds.slice(0, 3)));
    const incl = await e.generate({ promptTokenIds: p, maxTokens: 8, ignoreEos: true, stop: [word], includeStopStrInOutput: true }).result;
    expect(incl.text).toBe(toyTokenizer.decode(full.tokenIds.slice(0, 4)));
  });

  it("emits BlockStored with vLLM's exact block hashes, parents, tokens and extra keys", async () => {
    const seed = "1234";
    const { e, batches } = await engine({ hashSeed: seed, loraModules: [{ name: "sql", path: "/adapters/sql" }] });
    const prompt = tokens(70, 100);
    await e.generate({ promptTokenIds: prompt, maxTokens: 1 }).result;
    const hasher = new BlockHasher({ blockSize: 16, algorithm: "sha256", seed });
    const expected = hasher.hash(prompt);
    const stored = batches.flatMap((b) => b.events).filter((ev) => ev.type === "BlockStored");
    expect(stored).toHaveLength(1);
    const ev = stored[0]!;
    if (ev.type !== "BlockStored") throw new Error();
    expect(ev.blockHashes).toEqual([...expected]);
    expect(ev.parentBlockHash).toBeNull();
    expect(ev.tokenIds).toEqual(prompt.slice(0, 64));
    expect(ev).toMatchObject({ blockSize: 16, medium: "GPU", loraId: null, loraName: null, groupIdx: 0 });
    expect(ev.extraKeys).toEqual([null, null, null, null]);
    expect(batches[0]!.dataParallelRank).toBe(0);

    // A LoRA request with a cache salt: the adapter's name and path and the salt go into the
    // hashes (vLLM 0.33 tagged keys); the events carry them untagged.
    batches.length = 0;
    await e.generate({ promptTokenIds: prompt, maxTokens: 1, model: "sql", cacheSalt: "s1" }).result;
    const lora = batches.flatMap((b) => b.events).find((x) => x.type === "BlockStored");
    if (lora?.type !== "BlockStored") throw new Error("no BlockStored");
    expect(lora.blockHashes).toEqual([...hasher.hash(prompt, { loraName: "sql", loraPath: "/adapters/sql", cacheSalt: "s1" })]);
    expect(lora).toMatchObject({ loraId: 1, loraName: "sql" });
    expect(lora.extraKeys).toEqual([["sql", "s1"], ["sql"], ["sql"], ["sql"]]);
  });

  it("takes PYTHONHASHSEED as vLLM does", () => {
    const saved = process.env.PYTHONHASHSEED;
    try {
      process.env.PYTHONHASHSEED = "042";
      expect(resolveHashSeed("sha256", undefined)).toBe("042");
      process.env.PYTHONHASHSEED = "";
      expect(resolveHashSeed("sha256", undefined)).toBe("");
      delete process.env.PYTHONHASHSEED;
      expect(resolveHashSeed("sha256", undefined)).toBeUndefined();
      expect(resolveHashSeed("sha256_cbor", undefined)).toBeUndefined();
      // Unset with xxhash: vLLM draws os.urandom(32).hex() per process.
      const a = resolveHashSeed("xxhash", undefined)!;
      expect(a).toMatch(/^[0-9a-f]{64}$/);
      expect(resolveHashSeed("xxhash", undefined)).not.toBe(a);
      expect(resolveHashSeed("xxhash", "7")).toBe("7");
    } finally {
      if (saved === undefined) delete process.env.PYTHONHASHSEED;
      else process.env.PYTHONHASHSEED = saved;
    }
  });

  it("evicts free cached blocks in LRU order; the events rebuild the cached set exactly", async () => {
    const { e, batches } = await engine({ numGpuBlocks: 48 });
    const rand = rng(7);
    const prefixes = [tokens(48, 1000), tokens(80, 2000), tokens(32, 3000)];
    for (let round = 0; round < 12; round++) {
      const reqs = Array.from({ length: 4 }, (_, i) => {
        const prefix = prefixes[Math.floor(rand() * prefixes.length)]!;
        const suffix = Array.from({ length: 1 + Math.floor(rand() * 40) }, () => 10_000 + Math.floor(rand() * 50_000));
        return e.generate({ promptTokenIds: [...prefix, ...suffix], maxTokens: 1 + Math.floor(rand() * 30), ignoreEos: true, requestId: `r${round}-${i}` }).result;
      });
      await Promise.all(reqs);
    }
    const view = e.debugKvCache();
    const removed = batches.flatMap((b) => b.events).filter((x) => x.type === "BlockRemoved").length;
    expect(removed).toBeGreaterThan(0);
    expect(view.usedBlocks).toBe(0);
    expect(new Set(view.cachedBlocks)).toEqual(replay(batches));
    // Every BlockRemoved names one block (vLLM's block pool), and only hashes stored before.
    for (const ev of batches.flatMap((b) => b.events)) if (ev.type === "BlockRemoved") expect(ev.blockHashes).toHaveLength(1);
  });

  it("does not de-duplicate identical blocks, as vLLM (BlockStored twice, BlockRemoved per copy)", async () => {
    const { e, batches } = await engine({ numGpuBlocks: 40 });
    // A block-aligned prompt: a repeat hits all but its last block, which is recomputed and cached
    // again under the same hash; identical prompts also generate identical decode blocks.
    const p = tokens(64);
    await e.generate({ promptTokenIds: p, maxTokens: 20 }).result;
    await e.generate({ promptTokenIds: p, maxTokens: 20 }).result;
    expect(e.debugKvCache().duplicateHashes).toBeGreaterThan(0);
    const counts = new Map<string, number>();
    for (const ev of batches.flatMap((b) => b.events)) {
      if (ev.type === "BlockStored") for (const h of ev.blockHashes) counts.set(String(h), (counts.get(String(h)) ?? 0) + 1);
    }
    expect([...counts.values()].some((n) => n > 1)).toBe(true);
    // Churn the pool so copies get evicted one by one; the multiset replay still matches.
    for (let i = 0; i < 6; i++) await e.generate({ promptTokenIds: tokens(150, 10_000 * (i + 1)), maxTokens: 10 }).result;
    expect(new Set(e.debugKvCache().cachedBlocks)).toEqual(replay(batches));
  });

  it("preempts the youngest running request when blocks run out, and still finishes every request exactly", async () => {
    const { e } = await engine({ numGpuBlocks: 40, eosAfterTokens: 10_000 });
    const prompts = Array.from({ length: 8 }, (_, i) => tokens(64, 1 + i * 1000));
    const results = await Promise.all(prompts.map((p) => e.generate({ promptTokenIds: p, maxTokens: 100 }).result));
    const m = e.renderMetrics();
    expect(metric(m, "vllm:num_preemptions_total")).toBeGreaterThan(0);
    const { e: alone } = await engine({ numGpuBlocks: 1000, eosAfterTokens: 10_000 });
    for (const [i, r] of results.entries()) {
      expect(r.tokenIds).toHaveLength(100);
      const ref = await alone.generate({ promptTokenIds: prompts[i]!, maxTokens: 100 }).result;
      expect(r.text).toBe(ref.text);
    }
    expect(e.debugKvCache().usedBlocks).toBe(0);
  });

  it("abort frees a request's blocks at once", async () => {
    const { e } = await engine({ zeroTime: false, speedup: 1 });
    const req = e.generate({ promptTokenIds: tokens(300), maxTokens: 5000 });
    const it = req[Symbol.asyncIterator]();
    await it.next();
    expect(e.debugKvCache().usedBlocks).toBeGreaterThan(18);
    expect(e.debugRequests()[0]!.running).toEqual([req.requestId]);
    expect(req.abort()).toBe(true);
    expect(e.debugKvCache().usedBlocks).toBe(0);
    expect(e.debugRequests()[0]!.running).toEqual([]);
    expect((await req.result).finishReason).toBe("abort");
    expect(e.renderMetrics()).toContain('vllm:request_success_total{model_name="mock-8b",engine="0",finished_reason="abort"} 1.0');
  });

  it("runs long prompts in chunks of the step token budget", async () => {
    const { e } = await engine({ maxNumBatchedTokens: 64 });
    const before = e.cores[0]!.numSteps;
    const r = await e.generate({ promptTokenIds: tokens(300), maxTokens: 2 }).result;
    expect(r.tokenIds).toHaveLength(2);
    expect(e.cores[0]!.numSteps - before).toBe(5 + 1);
  });

  it("P/D: the prefill side returns NixlConnector kv_transfer_params; the decode side skips that prefill", async () => {
    const kvTransferConfig = { kvConnector: "NixlConnector", kvRole: "kv_both" as const, engineId: "prefill-0" };
    const { e: prefill } = await engine({ kvTransferConfig, nixlSideChannelHost: "10.0.0.1", nixlSideChannelPort: 5600 });
    const { e: decode, batches } = await engine({ kvTransferConfig: { ...kvTransferConfig, engineId: "decode-0" } });
    const { e: plain } = await engine();
    const prompt = tokens(4000);
    const p = await prefill.generate({ promptTokenIds: prompt, maxTokens: 50, kvTransferParams: { do_remote_decode: true } }).result;
    expect(p.tokenIds).toHaveLength(1);
    expect(p.finishReason).toBe("length");
    const kv = p.kvTransferParams!;
    expect(kv).toMatchObject({
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_engine_id: "prefill-0",
      remote_request_id: p.requestId,
      remote_host: "10.0.0.1",
      remote_port: 5600,
      tp_size: 1,
      remote_num_tokens: 4000,
      transfer_mode: "pull",
    });
    expect((kv.remote_block_ids as number[][])[0]).toHaveLength(250);

    const d = await decode.generate({ promptTokenIds: prompt, maxTokens: 20, kvTransferParams: kv }).result;
    const local = await plain.generate({ promptTokenIds: prompt, maxTokens: 20 }).result;
    expect(d.tokenIds).toEqual(local.tokenIds);
    const ttft = (r: typeof d) => r.timings.firstToken! - r.timings.arrival;
    expect(ttft(d)).toBeLessThan(ttft(local) / 3);
    // 2 ms + 4000 x 0.006 ms of transfer, then one step for the last prompt token.
    expect(ttft(d)).toBeGreaterThan(26);
    expect(d.numCachedTokens).toBe(4000);
    const stored = batches.flatMap((b) => b.events).filter((x) => x.type === "BlockStored");
    expect(stored[0]!.type === "BlockStored" && stored[0]!.blockHashes.length).toBe(250);
    expect(decode.renderMetrics()).toContain('vllm:prompt_tokens_by_source_total{model_name="mock-8b",engine="0",source="external_kv_transfer"} 4000.0');
  });

  it("data parallelism: one engine per rank, least-loaded or pinned, events tagged with the rank", async () => {
    const { e, batches } = await engine({ dataParallelSize: 2 });
    const pinned = await e.generate({ promptTokenIds: tokens(40), maxTokens: 2, dataParallelRank: 1 }).result;
    expect(pinned.dpRank).toBe(1);
    const many = await Promise.all(Array.from({ length: 6 }, (_, i) => e.generate({ promptTokenIds: tokens(40, 100 * i), maxTokens: 2 }).result));
    expect(new Set(many.map((r) => r.dpRank))).toEqual(new Set([0, 1]));
    expect(new Set(batches.map((b) => b.dataParallelRank))).toEqual(new Set([0, 1]));
    for (const rank of [0, 1]) expect(new Set(e.debugKvCache(rank).cachedBlocks)).toEqual(replay(batches, rank));
    expect(e.renderMetrics()).toContain('vllm:num_requests_running{model_name="mock-8b",engine="1"} 0.0');
  });

  it("reset_prefix_cache clears the cache and emits AllBlocksCleared", async () => {
    const { e, batches } = await engine();
    await e.generate({ promptTokenIds: tokens(64), maxTokens: 2 }).result;
    expect(e.resetPrefixCache()).toBe(true);
    expect(e.debugKvCache().cachedBlocks).toEqual([]);
    expect(batches.at(-1)!.events).toEqual([{ type: "AllBlocksCleared" }]);
  });

  it("validates like vLLM's input processing and config checks", async () => {
    const { e } = await engine({ numGpuBlocks: 20 });
    expect(e.config.maxModelLen).toBe(19 * 16);
    expect(() => e.generate({ promptTokenIds: tokens(400), maxTokens: 1 })).toThrow(/maximum context length/);
    expect(() => e.generate({ promptTokenIds: [], maxTokens: 1 })).toThrow(/empty/);
    expect(() => e.generate({ promptTokenIds: [1], maxTokens: 0 })).toThrow(/at least 1/);
    expect(() => e.generate({ promptTokenIds: [1], model: "other" })).toThrow(/does not exist/);
    await expect(MockEngine.start({ model: "m", numGpuBlocks: 10, maxModelLen: 1000 })).rejects.toThrow(/larger than the maximum number of tokens/);
    await expect(MockEngine.start({ model: "m", hashAlgorithm: "md5" as never })).rejects.toThrow(/hashAlgorithm/);
  });
});

describe("Prometheus text format", () => {
  it("renders floats as prometheus_client does", () => {
    expect(pyFloatRepr(1)).toBe("1.0");
    expect(pyFloatRepr(0.1)).toBe("0.1");
    expect(pyFloatRepr(1e-5)).toBe("1e-05");
    expect(pyFloatRepr(0.0001)).toBe("0.0001");
    expect(pyFloatRepr(1e16)).toBe("1e+16");
    expect(pyFloatRepr(123456789.5)).toBe("123456789.5");
    expect(floatToGoString(1e6)).toBe("1e+06");
    expect(floatToGoString(2560)).toBe("2560.0");
    expect(floatToGoString(1795666724.361)).toBe("1.795666724361e+09");
    expect(floatToGoString(Infinity)).toBe("+Inf");
  });

  it("exposes vLLM's metric names, types and labels", async () => {
    const { e } = await engine({ maxModelLen: 2000 });
    await e.generate({ promptTokenIds: tokens(40), maxTokens: 3 }).result;
    const text = e.renderMetrics();
    for (const [name, type] of [
      ["vllm:num_requests_running", "gauge"],
      ["vllm:num_requests_waiting", "gauge"],
      ["vllm:kv_cache_usage_perc", "gauge"],
      ["vllm:prefix_cache_queries_total", "counter"],
      ["vllm:prefix_cache_hits_total", "counter"],
      ["vllm:prompt_tokens_total", "counter"],
      ["vllm:generation_tokens_total", "counter"],
      ["vllm:request_success_total", "counter"],
      ["vllm:num_preemptions_total", "counter"],
      ["vllm:time_to_first_token_seconds", "histogram"],
      ["vllm:inter_token_latency_seconds", "histogram"],
      ["vllm:e2e_request_latency_seconds", "histogram"],
      ["vllm:request_queue_time_seconds", "histogram"],
      ["vllm:request_prompt_tokens", "histogram"],
    ]) {
      expect(text).toContain(`# TYPE ${name} ${type}\n`);
    }
    expect(metric(text, "vllm:prompt_tokens_total")).toBe(40);
    expect(metric(text, "vllm:generation_tokens_total")).toBe(3);
    expect(text).toContain('vllm:request_success_total{model_name="mock-8b",engine="0",finished_reason="length"} 1.0');
    expect(text).toContain('vllm:time_to_first_token_seconds_bucket{model_name="mock-8b",engine="0",le="0.001"} 0.0');
    expect(text).toContain('vllm:time_to_first_token_seconds_bucket{model_name="mock-8b",engine="0",le="+Inf"} 1.0');
    expect(text).toContain('vllm:time_to_first_token_seconds_count{model_name="mock-8b",engine="0"} 1.0');
    expect(text).toContain('vllm:request_prompt_tokens_bucket{model_name="mock-8b",engine="0",le="2000.0"} 1.0');
    expect(text).toContain("# TYPE vllm:prompt_tokens_created gauge\n");
  });
});
