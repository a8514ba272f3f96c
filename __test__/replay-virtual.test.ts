/**
 * Virtual-time replay: the mocker's engine core and the KvRouter on one discrete-event clock.
 * Deterministic; KV-aware routing beats round-robin; KV event delay and loss are modelled; the
 * fast KV-batch writer is byte-exact; an abort gives a partial result.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { BlockHasher } from "../ts/core/block-hasher.js";
import { encodeKvEventBatch, type BlockRemovedEvent, type KvEvent } from "../ts/events/codec.js";
import { writeKvEventBatch } from "../ts/replay/kv-batch-writer.js";
import type { PolicyResult } from "../ts/replay/result.js";
import { readTrace } from "../ts/replay/trace.js";
import { runVirtualReplay } from "../ts/replay/virtual-replay.js";
import { VirtualWorker } from "../ts/replay/virtual-worker.js";
import { chatWorkload } from "../ts/replay/workload.js";

const MOONCAKE = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "shared", "traces", "mooncake_conversation.jsonl");

/** The result without what depends on the machine (wall time, router CPU). */
function stable(r: PolicyResult) {
  const { wallMs: _w, routerCpuUsPerRequest: _c, ...rest } = r;
  return rest;
}

describe("virtual-time replay", () => {
  const chat = chatWorkload({ conversations: 120, horizonS: 120 });

  it("is deterministic: the same trace and settings give the same result", async () => {
    const a = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000 });
    const b = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000 });
    expect(stable(b)).toEqual(stable(a));
    expect(a.completed).toBe(chat.requests.length);
    expect(a.failed).toBe(0);
    expect(a.partial).toBe(false);
    // Every request was routed and counted by its worker; the metrics add up.
    expect(a.perWorker.reduce((n, w) => n + w.requests, 0)).toBe(chat.requests.length);
    expect(a.prefixCacheQueries).toBe(chat.requests.reduce((n, r) => n + r.inputLength, 0));
    expect(a.ttftMs.p50).toBeLessThanOrEqual(a.ttftMs.p90);
    expect(a.ttftMs.p90).toBeLessThanOrEqual(a.ttftMs.p99);
    expect(a.e2eMs.p50).toBeGreaterThan(a.ttftMs.p50);
    expect(a.timeline.tMs.length).toBeGreaterThan(50);
    expect(a.timeline.active).toHaveLength(4);
    expect(a.ttftCdf.at(-1)![1]).toBe(1);
    expect(a.routerCpuUsPerRequest).toBeGreaterThan(0);
  });

  it("kv beats round-robin on a multi-turn chat workload: higher hit rate, lower TTFT", async () => {
    const kv = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000 });
    const rr = await runVirtualReplay({ trace: chat, policy: "round-robin", workers: 4, numGpuBlocks: 8000 });
    expect(kv.hitRate).toBeGreaterThan(rr.hitRate + 0.1);
    expect(kv.ttftMs.p50).toBeLessThan(rr.ttftMs.p50);
    expect(kv.ttftMs.p90).toBeLessThan(rr.ttftMs.p90);
    // Round-robin spreads requests evenly.
    const counts = rr.perWorker.map((w) => w.requests);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
  });

  it.skipIf(!existsSync(MOONCAKE))("kv beats round-robin on a slice of the Mooncake conversation trace", async () => {
    const trace = readTrace(MOONCAKE, { limit: 1500 });
    const kv = await runVirtualReplay({ trace, policy: "kv", workers: 8 });
    const rr = await runVirtualReplay({ trace, policy: "round-robin", workers: 8 });
    expect(kv.completed).toBe(1500);
    expect(kv.hitRate).toBeGreaterThan(1.5 * rr.hitRate);
    expect(kv.ttftMs.p50).toBeLessThan(rr.ttftMs.p50);
  }, 120_000);

  it("models KV event delay and loss: a blind router loses the hits", async () => {
    const base = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000 });
    const late = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000, eventDelayMs: 30_000 });
    const lost = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000, eventDropRate: 1 });
    expect(late.hitRate).toBeLessThan(base.hitRate);
    expect(lost.hitRate).toBeLessThan(base.hitRate - 0.05);
    const some = await runVirtualReplay({ trace: chat, policy: "kv", workers: 4, numGpuBlocks: 8000, eventDropRate: 0.3 });
    expect(stable(some)).not.toEqual(stable(base));
  });

  it("stops on abort with a partial result", async () => {
    const abort = new AbortController();
    const trace = chatWorkload({ conversations: 600, horizonS: 600 });
    const r = await runVirtualReplay({
      trace,
      policy: "kv",
      workers: 4,
      signal: abort.signal,
      onProgress: (p) => {
        if (p.completed > 200) abort.abort();
      },
    });
    expect(r.partial).toBe(true);
    expect(r.completed).toBeGreaterThan(200);
    expect(r.completed).toBeLessThan(trace.requests.length);
  });
});

describe("the virtual workers' KV event batches", () => {
  /** The raw event batches of a virtual worker's engine core over a small workload. */
  function engineBatches(mergeInPool: boolean): KvEvent[][] {
    const batches: KvEvent[][] = [];
    const worker = new VirtualWorker({ model: "m", numGpuBlocks: 120, hashAlgorithm: "sha256", kvEventsConfig: { enableKvCacheEvents: true } }, () => {});
    worker.core.pool.mergeRemovals = mergeInPool;
    // Capture the raw events the engine core hands over.
    (worker.core as unknown as { onEvents: (rank: number, events: KvEvent[]) => void }).onEvents = (_rank, events) => batches.push(events);
    let t = 0;
    for (let i = 0; i < 40; i++) {
      const prompt = Uint32Array.from({ length: 60 + ((i * 37) % 200) }, (_, k) => 300 + ((k * 7 + (i % 4) * 1000) % 5000));
      worker.submit({ requestId: `r${i}`, promptTokenIds: prompt, maxTokens: 40, ignoreEos: true, arrivalTime: t, ...(i % 5 === 0 ? { cacheSalt: "salt" } : {}) }, () => {});
      for (let d = worker.core.beginStep(t); d !== null; d = worker.core.beginStep(t)) {
        t += d;
        worker.core.endStep();
      }
    }
    expect(worker.core.resetPrefixCache()).toBe(true);
    return batches;
  }

  it("are byte for byte what encodeKvEventBatch writes (vLLM 0.33), removals merged", () => {
    const batches = engineBatches(false);
    const merged = batches.map(mergeRemovals);
    const kinds = new Set(merged.flat().map((e) => e.type));
    expect(kinds).toEqual(new Set(["BlockStored", "BlockRemoved", "AllBlocksCleared"]));
    expect(merged.some((b) => b.some((e) => e.type === "BlockRemoved" && e.blockHashes.length > 1))).toBe(true);
    expect(merged.flat().filter((e) => e.type === "BlockRemoved").length).toBeLessThan(batches.flat().filter((e) => e.type === "BlockRemoved").length);
    for (const events of merged) {
      expect(writeKvEventBatch(1767225600.375, 3, events)).toEqual(encodeKvEventBatch({ ts: 1767225600.375, dataParallelRank: 3, events }, "current"));
    }
    // A virtual worker's block pool merges them itself, as mergeRemovals would.
    expect(engineBatches(true)).toEqual(merged);
  });

  it("write token ids of every width as encodeKvEventBatch does", () => {
    const widths = [0, 5, 0x7f, 0x80, 0xff, 0x100, 0x1234, 0xffff, 0x1_0000, 0x1f3f8, 0x7fff_ffff, 0xffff_ffff];
    const tokenIds = Uint32Array.from({ length: 64 }, (_, i) => widths[(i * 5) % widths.length]!);
    const events: KvEvent[] = [
      { type: "BlockStored", blockHashes: [1n, 2n ** 63n, 3n, 4n], parentBlockHash: 7n, tokenIds, blockSize: 16, medium: "GPU" },
    ];
    expect(writeKvEventBatch(1.5, 0, events)).toEqual(encodeKvEventBatch({ ts: 1.5, dataParallelRank: 0, events }, "current"));
  });

  it("hashes output blocks as vLLM hashes the whole sequence (the engine hashes ahead of its output)", () => {
    const stored: bigint[] = [];
    const worker = new VirtualWorker({ model: "m", numGpuBlocks: 400, hashAlgorithm: "sha256", kvEventsConfig: { enableKvCacheEvents: true } }, () => {});
    (worker.core as unknown as { onEvents: (rank: number, events: KvEvent[]) => void }).onEvents = (_rank, events) => {
      for (const e of events) if (e.type === "BlockStored") stored.push(...(e.blockHashes as bigint[]));
    };
    const prompt = Uint32Array.from({ length: 100 }, (_, k) => 500 + k);
    const output: number[] = [];
    worker.submit({ requestId: "r", promptTokenIds: prompt, maxTokens: 1500, ignoreEos: true, arrivalTime: 0 }, (out) => output.push(...out.tokenIds));
    let t = 0;
    for (let d = worker.core.beginStep(t); d !== null; d = worker.core.beginStep(t)) {
      t += d;
      worker.core.endStep();
    }
    expect(output).toHaveLength(1500);
    const all = Uint32Array.from([...prompt, ...output]);
    const expected = new BlockHasher({ blockSize: 16, algorithm: "sha256", seed: worker.config.hashSeed }).hash(all);
    // Every full block of prompt + output, in order (the last token's block is not computed).
    expect(stored).toEqual([...expected].slice(0, Math.floor((all.length - 1) / 16)));
  });

  it("merges only adjacent removals of the same medium and group", () => {
    const rm = (h: bigint, medium = "GPU"): KvEvent => ({ type: "BlockRemoved", blockHashes: [h], medium, groupIdx: 0 });
    const stored: KvEvent = { type: "BlockStored", blockHashes: [9n], parentBlockHash: null, tokenIds: new Uint32Array(16), blockSize: 16 };
    const out = mergeRemovals([rm(1n), rm(2n), stored, rm(3n), rm(4n, "CPU"), rm(5n, "CPU")]);
    expect(out.map((e) => (e.type === "BlockRemoved" ? `${e.medium}:${e.blockHashes.join(",")}` : "S"))).toEqual(["GPU:1,2", "S", "GPU:3", "CPU:4,5"]);
    const untouched = [stored];
    expect(mergeRemovals(untouched)).toBe(untouched);
  });
});

/**
 * The reference for the block pool's `mergeRemovals`: runs of BlockRemoved events (same medium
 * and group) merged into one event each.
 */
function mergeRemovals(events: KvEvent[]): KvEvent[] {
  let out: KvEvent[] | null = null;
  let run: BlockRemovedEvent | null = null;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.type === "BlockRemoved" && run !== null && run.medium === e.medium && run.groupIdx === e.groupIdx) {
      if (out === null) out = events.slice(0, i);
      run.blockHashes.push(...e.blockHashes);
      continue;
    }
    if (e.type === "BlockRemoved") {
      run = { ...e, blockHashes: [...e.blockHashes] };
      if (out === null) out = events.slice(0, i);
      out.push(run);
      continue;
    }
    run = null;
    out?.push(e);
  }
  return out ?? events;
}
