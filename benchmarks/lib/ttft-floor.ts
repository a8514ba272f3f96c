/**
 * What TTFT percentiles a router could reach at best on a Mooncake-format trace under Dynamo's
 * polynomial step timing, for `bench:vs-dynamo`: every request prefilled alone on an idle worker
 * (no queue, no shared step, no decode time), its cache hit taken from a cache model:
 *
 * - `none`: no prefix cache;
 * - `fleet LRU`: the whole fleet's KV blocks as ONE least-recently-used cache (a router that
 *   never duplicates a prefix and always finds it; 8 separate LRUs behind a perfect router
 *   behave no better than one of their total size);
 * - `infinite`: every prefix ever seen stays cached.
 *
 * Not a proof for every conceivable router (a router could in principle steer eviction better
 * than LRU), but the engines evict LRU, so `fleet LRU` is the floor of what routing buys there.
 */
import type { Trace } from "../../ts/replay/trace.js";
import { DYNAMO_POLYNOMIAL } from "../../ts/mocker/step-timing.js";

const MOONCAKE_BLOCK = 512;

export interface FloorSettings {
  blockSize: number;
  maxNumBatchedTokens: number;
  /** Blocks in the fleet's KV caches together (workers × blocks each). */
  fleetBlocks: number;
}

export interface Floor {
  model: string;
  hitRate: number;
  p50: number;
  p90: number;
  p99: number;
}

/** Prefill of `n` new tokens alone: chunks of the budget, one step each. */
function aloneMs(n: number, budget: number): number {
  const [c0, c1, c2] = DYNAMO_POLYNOMIAL.prefill;
  let ms = 0;
  for (let left = n; left > 0; left -= budget) {
    const t = Math.min(left, budget);
    ms += c0 + c1 * t + c2 * t * t;
  }
  return ms;
}

/** The prompt's full-block keys as chained numbers (a block's key names its whole prefix). */
function blockKeys(hashIds: readonly number[], inputLength: number, blockSize: number): number[] {
  const per = MOONCAKE_BLOCK / blockSize;
  const n = Math.floor(inputLength / blockSize);
  const keys = new Array<number>(n);
  let prev = 0x2545f491;
  for (let j = 0; j < n; j++) {
    const h = hashIds[Math.floor(j / per)]!;
    // 52-bit chained mix: collisions are irrelevant at ~10M keys for a floor estimate.
    const lo = Math.imul((prev ^ (h >>> 0)) + (j % per) * 0x9e3779b1, 0x85ebca6b) ^ Math.floor(h / 0x1_0000_0000);
    const hi = Math.imul(Math.floor(prev / 0x1_0000_0000) ^ (lo >>> 13), 0xc2b2ae35) & 0xfffff;
    prev = hi * 0x1_0000_0000 + ((lo ^ (lo >>> 16)) >>> 0);
    keys[j] = prev;
  }
  return keys;
}

function pct(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

/** The three floors of the module docs. Mooncake (`hash_ids`) traces only. */
export function ttftFloors(trace: Trace, s: FloorSettings): Floor[] {
  const reqs = trace.requests.filter((r) => r.hashIds);
  const out: Floor[] = [];
  for (const model of ["none", "fleet LRU", "infinite"] as const) {
    const lru = new Map<number, true>();
    const cap = model === "infinite" ? Infinity : model === "none" ? 0 : s.fleetBlocks;
    const ttft = new Float64Array(reqs.length);
    let hitTokens = 0;
    let promptTokens = 0;
    reqs.forEach((r, i) => {
      const keys = cap === 0 ? [] : blockKeys(r.hashIds!, r.inputLength, s.blockSize);
      // vLLM computes at least the prompt's last token.
      const maxHit = Math.floor((r.inputLength - 1) / s.blockSize);
      let hit = 0;
      while (hit < keys.length && hit < maxHit && lru.has(keys[hit]!)) hit++;
      const cached = hit * s.blockSize;
      ttft[i] = aloneMs(r.inputLength - cached, s.maxNumBatchedTokens);
      hitTokens += cached;
      promptTokens += r.inputLength;
      if (cap === 0) return;
      // Deepest first, so a chain's parents are the more recently used (vLLM frees leaf first).
      for (let j = keys.length - 1; j >= 0; j--) {
        if (cap !== Infinity) lru.delete(keys[j]!);
        lru.set(keys[j]!, true);
      }
      if (lru.size > cap) {
        const it = lru.keys();
        for (let k = lru.size - cap; k > 0; k--) lru.delete(it.next().value!);
      }
    });
    ttft.sort();
    out.push({ model, hitRate: hitTokens / promptTokens, p50: pct(ttft, 0.5), p90: pct(ttft, 0.9), p99: pct(ttft, 0.99) });
  }
  return out;
}
