/**
 * The virtual replay's Rust engines (`engineImpl: "rust"`, crates/kvroute-core/src/sim_engine)
 * replay a trace exactly as the mocker's TS engine core does: every request lands on the same
 * worker with the same TTFT, E2E, output and cached tokens, and the results (hit rates, timeline,
 * per-worker counters, preemptions) are equal. On the first Mooncake requests, and on a synthetic
 * trace whose tiny KV caches force chunked prefill, preemption and LRU eviction.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import type { PolicyResult, RequestRecord } from "../ts/replay/result.js";
import { readTrace, type Trace } from "../ts/replay/trace.js";
import { runVirtualReplay, type VirtualReplayOptions } from "../ts/replay/virtual-replay.js";

const MOONCAKE = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "shared", "traces", "mooncake_conversation.jsonl");

function stable(r: PolicyResult) {
  const { wallMs: _w, routerCpuUsPerRequest: _c, ...rest } = r;
  return rest;
}

type Options = Omit<VirtualReplayOptions, "engineImpl" | "onRequest">;

async function both(options: Options) {
  const run = async (engineImpl: "rust" | "ts") => {
    const records: RequestRecord[] = [];
    const r = await runVirtualReplay({ ...options, engineImpl, onRequest: (x) => records.push(x) });
    return { r: stable(r), records };
  };
  return { rust: await run("rust"), ts: await run("ts") };
}

/**
 * Conversations sharing 512-token prefixes (Mooncake's hash ids) of a few system prompts, long
 * outputs, arriving faster than two small engines serve them: 200 blocks per engine hold a few
 * requests at once, so the running ones outgrow the cache (preemption) and every prefix is
 * evicted and stored again many times over (~20x the cache's blocks are written).
 */
function pressureTrace(n: number): Trace {
  const requests = Array.from({ length: n }, (_, i) => {
    const inputLength = 200 + ((i * 389) % 1300);
    const blocks = Math.ceil(inputLength / 512);
    const hashIds = Array.from({ length: blocks }, (_, k) => (k === 0 ? i % 4 : k === 1 ? 10 + (i % 9) : 1000 + i * 8 + k));
    return { index: i, line: i + 1, timestampMs: i * 15, inputLength, maxTokens: 30 + ((i * 97) % 450), hashIds };
  });
  return { file: "pressure", format: "mooncake", requests } as Trace;
}

describe("Rust engines in the virtual replay", () => {
  it("force chunked prefill, preemption and eviction on a tiny cache, and replay it as the TS engine does", async () => {
    for (const profile of ["dynamo-polynomial", "llama-3.1-70b-h100-tp4"]) {
      for (const policy of ["kv", "round-robin"] as const) {
        const trace = pressureTrace(240);
        const { rust, ts } = await both({ trace, policy, workers: 2, profile, numGpuBlocks: 200, engine: { maxNumSeqs: 6, maxNumBatchedTokens: 512 } });
        expect(ts.r.preemptions).toBeGreaterThan(10);
        expect(ts.r.prefixCacheHits).toBeGreaterThan(0);
        expect(ts.records.length).toBe(240);
        expect(rust.records).toEqual(ts.records);
        expect(rust.r).toEqual(ts.r);
      }
    }
  }, 120_000);

  it.skipIf(!existsSync(MOONCAKE))("replay the first Mooncake requests as the TS engine does", async () => {
    const trace = readTrace(MOONCAKE);
    trace.requests.length = 400;
    for (const options of [
      { workers: 4, numGpuBlocks: 4000 },
      { workers: 8, profile: "dynamo-polynomial", numGpuBlocks: 26_000, engine: { maxNumSeqs: 1024, maxNumBatchedTokens: 8192 } },
    ]) {
      const { rust, ts } = await both({ trace, policy: "kv", ...options });
      expect(ts.records.length).toBeGreaterThan(350);
      expect(ts.records.some((x) => (x.cachedTokens ?? 0) > 0)).toBe(true);
      expect(rust.records).toEqual(ts.records);
      expect(rust.r).toEqual(ts.r);
    }
  }, 120_000);

  it("are the default where they apply, and refused where they do not", async () => {
    const trace = pressureTrace(4);
    // A CPU tier needs the TS engine (and the direct event path).
    await expect(runVirtualReplay({ trace, policy: "kv", workers: 1, numGpuBlocks: 200, numCpuBlocks: 100, engineImpl: "rust" })).rejects.toThrow(InvalidConfigError);
    await expect(runVirtualReplay({ trace, policy: "kv", workers: 1, numGpuBlocks: 200, eventPath: "wire", engineImpl: "rust" })).rejects.toThrow(InvalidConfigError);
    const r = await runVirtualReplay({ trace, policy: "kv", workers: 1, numGpuBlocks: 200, numCpuBlocks: 100 });
    expect(r.completed).toBe(4);
  });
});
