import { describe, expect, it } from "vitest";
import { BlockHasher, KvIndexer } from "../ts/index.js";
import { mulberry32 as rng } from "../ts/util/prng.js";

/** The definition, naively: per (worker, rank), the set of (key, tier) it holds. */
class ReferenceIndex {
  readonly held = new Map<string, Map<bigint, Set<string>>>();
  store(slot: string, keys: BigUint64Array, tier: string) {
    const m = this.held.get(slot) ?? new Map<bigint, Set<string>>();
    this.held.set(slot, m);
    for (const k of keys) m.set(k, (m.get(k) ?? new Set()).add(tier));
  }
  remove(slot: string, keys: BigUint64Array, tier: string) {
    const m = this.held.get(slot);
    if (!m) return;
    for (const k of keys) {
      m.get(k)?.delete(tier);
      if (m.get(k)?.size === 0) m.delete(k);
    }
  }
  clear(worker: string) {
    for (const slot of this.held.keys()) if (slot.startsWith(`${worker}#`)) this.held.get(slot)!.clear();
  }
  matches(query: BigUint64Array): Map<string, number> {
    const out = new Map<string, number>();
    for (const [slot, m] of this.held) {
      let n = 0;
      while (n < query.length && m.has(query[n]!)) n++;
      if (n > 0) out.set(slot, n);
    }
    return out;
  }
}

describe("KvIndexer via N-API", () => {
  it("agrees with a naive reference model over thousands of random operations", () => {
    const rand = rng(7);
    const hasher = new BlockHasher({ blockSize: 4 });
    // Prompts share prefixes: a few system prompts, each followed by a few user turns.
    const prompts: BigUint64Array[] = [];
    for (let s = 0; s < 6; s++) {
      const system = Array.from({ length: 4 * (1 + Math.floor(rand() * 6)) }, () => Math.floor(rand() * 50_000));
      for (let u = 0; u < 5; u++) {
        const turn = Array.from({ length: 4 * (1 + Math.floor(rand() * 8)) }, () => Math.floor(rand() * 50_000));
        prompts.push(hasher.hash([...system, ...turn]));
      }
    }
    const workers = Array.from({ length: 9 }, (_, i) => `w${i}`);
    const tiers = ["GPU", "CPU"];
    const index = new KvIndexer({ blockSize: 4 });
    const ref = new ReferenceIndex();
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)]!;

    for (let op = 0; op < 4000; op++) {
      const worker = pick(workers);
      const dpRank = Math.floor(rand() * 2);
      const slot = `${worker}#${dpRank}`;
      const prompt = pick(prompts);
      const from = Math.floor(rand() * prompt.length);
      const to = from + 1 + Math.floor(rand() * (prompt.length - from));
      const keys = prompt.slice(from, to);
      const tier = rand() < 0.8 ? "GPU" : pick(tiers);
      const r = rand();
      if (r < 0.6) {
        index.applyStored({ workerId: worker, dpRank }, from === 0 ? null : prompt[from - 1]!, keys, tier);
        ref.store(slot, keys, tier);
      } else if (r < 0.95) {
        index.applyRemoved({ workerId: worker, dpRank }, keys, tier);
        ref.remove(slot, keys, tier);
      } else {
        index.clearWorker(worker);
        ref.clear(worker);
      }
      if (op % 10 === 0) {
        const query = pick(prompts);
        const got = new Map(index.findMatches(query).map((m) => [`${m.workerId}#${m.dpRank}`, m.blocks]));
        expect(got, `op ${op}`).toEqual(ref.matches(query));
      }
    }
    const pairs = [...ref.held.values()].reduce((n, m) => n + [...m.values()].reduce((a, s) => a + s.size, 0), 0);
    expect(index.stats().pairs).toBe(pairs);
  });

  it("reports tiers, sorts by overlap, and forgets removed workers", () => {
    const index = new KvIndexer({ blockSize: 16 });
    const chain = BigUint64Array.from([11n, 12n, 13n, 14n]);
    index.applyStored("a", null, chain);
    index.applyStored({ workerId: "b", dpRank: 1 }, null, chain.slice(0, 2));
    index.applyStored({ workerId: "b", dpRank: 1 }, 12n, chain.slice(2, 3), "CPU");
    const m = index.findMatches(chain);
    expect(m).toEqual([
      { workerId: "a", dpRank: 0, blocks: 4, tiers: { GPU: 4 } },
      { workerId: "b", dpRank: 1, blocks: 3, tiers: { GPU: 2, CPU: 1 } },
    ]);
    expect(index.removeWorker("a")).toBe(true);
    expect(index.findMatches(chain).map((x) => x.workerId)).toEqual(["b"]);
    expect(index.stats()).toMatchObject({ blocks: 3, pairs: 3, workers: 1 });
    // A new worker reuses the freed slot: its name must not be confused with the removed one's.
    index.applyStored("c", null, chain.slice(0, 1));
    expect(index.findMatches(chain).map((x) => x.workerId).sort()).toEqual(["b", "c"]);
    index.applyRemoved({ workerId: "b", dpRank: 1 }, BigUint64Array.from([99n]));
    expect(index.stats().removesUnknown).toBe(1);
  });

  it("answers queries matched by hundreds of workers (output buffer grows)", () => {
    const index = new KvIndexer({ blockSize: 16 });
    const chain = BigUint64Array.from([1n, 2n, 3n]);
    for (let w = 0; w < 300; w++) index.applyStored(`w${w}`, null, chain.slice(0, 1 + (w % 3)), w % 2 ? "CPU" : "GPU");
    const m = index.findMatches(chain);
    expect(m.length).toBe(300);
    expect(m[0]!.blocks).toBe(3);
    expect(m.filter((x) => x.blocks === 3).length).toBe(100);
    expect(m.find((x) => x.workerId === "w7")).toEqual({ workerId: "w7", dpRank: 0, blocks: 2, tiers: { CPU: 2 } });
  });

  it("rejects a parent hash that is not an unsigned 64-bit bigint", () => {
    const index = new KvIndexer({ blockSize: 16 });
    expect(() => index.applyStored("a", -1n, BigUint64Array.from([1n]))).toThrow(/parentHash/);
    expect(() => new KvIndexer({ blockSize: 0 })).toThrow(/blockSize/);
  });
});
