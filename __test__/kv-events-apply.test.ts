import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { decodeKvEventBatch, encodeKvEventBatch, type KvEventBatch } from "../ts/events/codec.js";
import { BlockHasher, InvalidConfigError, InvalidInputError, KvIndexer } from "../ts/index.js";
import { mulberry32 as rng } from "../ts/util/prng.js";

interface GoldenCase {
  name: string;
  payload_hex: string;
  expected: {
    data_parallel_rank: number | null;
    events: {
      type: string;
      block_keys_u64?: string[];
      medium?: string | null;
      token_ids?: number[];
    }[];
  };
}

interface GoldenFile {
  vllm_version: string;
  cases: GoldenCase[];
}

const dir = fileURLToPath(new URL("../fixtures/golden/kv_events/", import.meta.url));
const golden: GoldenFile[] = readdirSync(dir)
  .filter((f) => f.endsWith(".json"))
  .map((f) => JSON.parse(readFileSync(dir + f, "utf8")) as GoldenFile);
const byVersion = (v: string) => golden.find((g) => g.vllm_version === v)!;
const payload = (c: GoldenCase) => Buffer.from(c.payload_hex, "hex");
const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describe("KvIndexer.applyEventBatch", () => {
  it("applies vLLM's golden frames of every release (engine keying) to the expected state", () => {
    expect(golden.length).toBeGreaterThanOrEqual(12);
    for (const file of golden) {
      const ix = new KvIndexer({ blockSize: 16, keying: "engine" });
      expect(ix.keying).toBe("engine");
      // The naive model: "rank|tier" -> keys, from the fixtures' JSON.
      const held = new Map<string, Map<bigint, number>>();
      for (const c of file.cases) {
        const r = ix.applyEventBatch("w", payload(c));
        expect(r.malformed, `${file.vllm_version} ${c.name}`).toBeUndefined();
        const dp = c.expected.data_parallel_rank ?? 0;
        expect(r.dpRank).toBe(dp);
        expect(r.events).toBe(c.expected.events.length);
        for (const ev of c.expected.events) {
          const keys = (ev.block_keys_u64 ?? []).map(BigInt);
          const slot = `${dp}|${ev.medium ?? "GPU"}`;
          if (ev.type === "AllBlocksCleared") {
            for (const k of held.keys()) if (k.startsWith(`${dp}|`)) held.delete(k);
          } else if (ev.type === "BlockStored") {
            // vLLM does not de-duplicate blocks: a hash stored twice is held until removed twice.
            const s = held.get(slot) ?? new Map<bigint, number>();
            for (const k of keys) s.set(k, (s.get(k) ?? 0) + 1);
            held.set(slot, s);
          } else {
            const s = held.get(slot);
            for (const k of keys) {
              const n = s?.get(k) ?? 0;
              if (n <= 1) s?.delete(k);
              else s!.set(k, n - 1);
            }
          }
        }
      }
      const ranksOf = new Map<bigint, Set<number>>();
      let pairs = 0;
      for (const [slot, keys] of held) {
        const rank = Number(slot.split("|")[0]);
        for (const k of keys.keys()) {
          pairs++;
          ranksOf.set(k, (ranksOf.get(k) ?? new Set()).add(rank));
        }
      }
      expect(ix.stats().pairs, file.vllm_version).toBe(pairs);
      for (const [k, ranks] of ranksOf) {
        const got = ix.findMatches(new BigUint64Array([k])).map((m) => m.dpRank);
        expect(new Set(got), `${file.vllm_version} ${k}`).toEqual(ranks);
      }
      const stats = ix.eventStats();
      expect(stats.batches).toBe(file.cases.length);
      expect(stats.malformedBatches).toBe(0);
      // The small_ints case uses 4-token blocks.
      const w0 = stats.workers.find((w) => w.workerId === "w" && w.dpRank === 0)!;
      expect(w0.blockSizeMismatch).toBe(true);
      expect(w0.workerBlockSize).toBe(4);
      expect(w0.hashMismatch).toBe(false);
    }
  });

  it("keys stored blocks by their tokens, chained from the parent (token keying)", () => {
    const file = byVersion("0.33.0");
    const ix = new KvIndexer({ blockSize: 16 });
    expect(ix.keying).toBe("tokens");
    const cases = new Map(file.cases.map((c) => [c.name, c]));
    const hasher = new BlockHasher({ blockSize: 16 });
    ix.applyEventBatch("w", payload(cases.get("stored_root")!));
    ix.applyEventBatch("w", payload(cases.get("stored_child")!));
    const q = hasher.hash([...range(1, 32), ...range(100, 16)]);
    expect(ix.findMatches(q)).toEqual([{ workerId: "w", dpRank: 0, blocks: 3, tiers: { GPU: 3 } }]);
    // A child whose parent the router never saw cannot be placed: counted and skipped.
    const r = ix.applyEventBatch("w", payload(cases.get("stored_many")!));
    expect(r).toMatchObject({ stored: 0, skipped: 1 });
    expect(ix.eventStats().unresolvedParents).toBe(1);
    expect(ix.eventStats().skippedReasons).toEqual({ unresolved_parent: 1 });
    // BlockRemoved resolves the engine hashes through the map, which then empties.
    expect(ix.eventStats().mapEntries).toBe(3);
    expect(ix.applyEventBatch("w", payload(cases.get("removed")!))).toMatchObject({ removed: 3 });
    expect(ix.eventStats().mapEntries).toBe(0);
    expect(ix.stats().blocks).toBe(0);
  });

  it("finds a prefix on workers with different seeds and algorithms (token keying)", () => {
    const ix = new KvIndexer({ blockSize: 16 });
    const tokens = range(500, 64);
    for (const [worker, algorithm, seed] of [
      ["a", "sha256", "1"],
      ["b", "xxhash", "2"],
      ["c", "sha256_cbor", undefined],
    ] as const) {
      const hashes = new BlockHasher({ blockSize: 16, algorithm, seed }).hash(tokens);
      const batch: KvEventBatch = {
        ts: 1,
        dataParallelRank: 1,
        events: [
          { type: "BlockStored", blockHashes: [...hashes.slice(0, 2)], tokenIds: tokens.slice(0, 32), blockSize: 16 },
          {
            type: "BlockStored",
            blockHashes: [...hashes.slice(2)],
            parentBlockHash: hashes[1]!,
            tokenIds: tokens.slice(32),
            blockSize: 16,
            medium: "GPU",
          },
        ],
      };
      expect(ix.applyEventBatch(worker, encodeKvEventBatch(batch, "0.22.0"))).toMatchObject({ stored: 4, dpRank: 1 });
    }
    const matches = ix.findMatches(new BlockHasher({ blockSize: 16 }).hash(tokens));
    expect(matches.map((m) => [m.workerId, m.dpRank, m.blocks]).sort()).toEqual([
      ["a", 1, 4],
      ["b", 1, 4],
      ["c", 1, 4],
    ]);
  });

  it("never throws for bad payloads: counts them and changes nothing", () => {
    const ix = new KvIndexer({ blockSize: 16 });
    const good = payload(byVersion("0.33.0").cases[0]!);
    ix.applyEventBatch("w", good);
    const before = ix.stats();
    const rand = rng(11);
    let malformed = 0;
    for (let i = 0; i < 3000; i++) {
      let p: Buffer;
      if (i % 3 === 0) p = good.subarray(0, Math.floor(rand() * good.length));
      else if (i % 3 === 1) p = Buffer.from(Array.from({ length: Math.floor(rand() * 40) }, () => Math.floor(rand() * 256)));
      else {
        p = Buffer.from(good);
        p[Math.floor(rand() * p.length)] = Math.floor(rand() * 256);
      }
      const r = ix.applyEventBatch(`w${i % 3}`, p);
      if (r.malformed !== undefined) {
        malformed++;
        expect(typeof r.malformed).toBe("string");
        expect(r.stored + r.removed + r.cleared).toBe(0);
      }
    }
    expect(malformed).toBeGreaterThan(1500);
    const s = ix.eventStats();
    expect(s.malformedBatches).toBe(malformed);
    expect(Object.values(s.malformedReasons).reduce((a, b) => a + b, 0)).toBe(malformed);
    expect(ix.applyEventBatch("w", Buffer.alloc(0)).malformed).toBe("truncated");
    // The good block is still there for w.
    expect(ix.findMatches(new BlockHasher({ blockSize: 16 }).hash(range(1, 32)))[0]).toMatchObject({
      workerId: "w",
      blocks: 2,
    });
    expect(ix.stats().workers).toBeGreaterThanOrEqual(before.workers);
  });

  it("flags a worker whose hash seed differs (engine keying parity check)", () => {
    const ix = new KvIndexer({ blockSize: 16, keying: "engine", hashAlgorithm: "sha256", hashSeed: "42" });
    const good = new BlockHasher({ blockSize: 16, algorithm: "sha256", seed: "42" });
    const bad = new BlockHasher({ blockSize: 16, algorithm: "sha256", seed: "1234" });
    const unset = new BlockHasher({ blockSize: 16, algorithm: "sha256" });
    for (let p = 0; p < 20; p++) {
      const tokens = range(p * 1000, 48);
      for (const [worker, hasher] of [
        ["good", good],
        ["bad", bad],
        ["unset", unset],
      ] as const) {
        const batch: KvEventBatch = {
          ts: p,
          dataParallelRank: 0,
          events: [{ type: "BlockStored", blockHashes: [...hasher.hash(tokens)], tokenIds: tokens, blockSize: 16 }],
        };
        const r = ix.applyEventBatch(worker, encodeKvEventBatch(batch));
        expect(r.stored).toBe(3); // keeps serving
      }
    }
    const workers = new Map(ix.eventStats().workers.map((w) => [w.workerId, w]));
    expect(workers.get("good")).toMatchObject({ hashMismatch: false, blockSizeMismatch: false, likelyCause: null });
    expect(workers.get("good")!.checked).toBeGreaterThanOrEqual(16);
    expect(workers.get("bad")!.hashMismatch).toBe(true);
    expect(workers.get("bad")!.likelyCause).toMatch(/^seed/);
    expect(workers.get("unset")!.likelyCause).toBe(`seed: the worker's PYTHONHASHSEED is unset (the router's is "42")`);
    // A restart or resync resets the flags.
    ix.clearWorker("bad");
    expect(ix.eventStats().workers.find((w) => w.workerId === "bad")!.hashMismatch).toBe(false);
  });

  it("rejects bad options with typed errors", () => {
    expect(() => new KvIndexer({ blockSize: 16, keying: "nope" as "tokens" })).toThrow(InvalidConfigError);
    expect(() => new KvIndexer({ blockSize: 16, keying: "engine", hashAlgorithm: "md5" as "sha256" })).toThrow(
      InvalidConfigError,
    );
    // xxhash with PYTHONHASHSEED unset hashes with random bytes: cannot be checked.
    expect(() => new KvIndexer({ blockSize: 16, keying: "engine", hashAlgorithm: "xxhash" })).toThrow(InvalidConfigError);
    expect(() => new KvIndexer({ blockSize: 16, maxEngineMapEntries: 0 })).toThrow(InvalidConfigError);
  });
});

describe("encodeKvEventBatch / decodeKvEventBatch", () => {
  it("round-trips every golden payload of every release byte for byte", () => {
    for (const file of golden) {
      for (const c of file.cases) {
        const decoded = decodeKvEventBatch(payload(c));
        expect(decoded.skipped).toEqual([]);
        expect(encodeKvEventBatch(decoded, file.vllm_version).toString("hex"), `${file.vllm_version} ${c.name}`).toBe(
          c.payload_hex,
        );
      }
    }
  });

  it("encodes hand-built batches to vLLM's exact bytes (bigint, number and Buffer hashes)", () => {
    for (const version of ["0.9.1", "0.22.0", "0.33.0"]) {
      const c = byVersion(version).cases.find((x) => x.name === "stored_child")!;
      const ev = c.expected.events[0]!;
      const [hash] = ev.block_keys_u64!.map(BigInt);
      const decoded = decodeKvEventBatch(payload(c));
      const parent = (decoded.events[0] as { parentBlockHash: bigint }).parentBlockHash;
      const batch: KvEventBatch = {
        ts: decoded.ts,
        dataParallelRank: 0,
        events: [
          {
            type: "BlockStored",
            blockHashes: [hash!],
            parentBlockHash: parent,
            tokenIds: new Uint32Array(ev.token_ids!),
            blockSize: 16,
            loraId: null,
            medium: "GPU",
          },
        ],
      };
      expect(encodeKvEventBatch(batch, version).toString("hex"), version).toBe(c.payload_hex);
    }
    // Bytes-form hashes come back as Buffers; numbers are accepted when they are safe integers.
    const bytes = Buffer.alloc(32, 7);
    const b = encodeKvEventBatch({
      ts: 2.5,
      events: [
        { type: "BlockRemoved", blockHashes: [bytes, 5, -3n], medium: "CPU" },
        { type: "AllBlocksCleared" },
      ],
    });
    const d = decodeKvEventBatch(b);
    expect(d).toEqual({
      ts: 2.5,
      dataParallelRank: null,
      events: [
        { type: "BlockRemoved", blockHashes: [bytes, 5n, -3n], medium: "CPU", groupIdx: null, locality: null, ownership: null },
        { type: "AllBlocksCleared" },
      ],
      skipped: [],
    });
    expect(encodeKvEventBatch(d, "legacy")[0]).toBe(0x92); // 0.9.0: [ts, events], no DP rank
  });

  it("rejects malformed batches and unknown formats with typed errors", () => {
    expect(() => encodeKvEventBatch({ ts: 1, events: [{ type: "Nope" } as never] })).toThrow(InvalidInputError);
    expect(() =>
      encodeKvEventBatch({ ts: 1, events: [{ type: "BlockRemoved", blockHashes: [2 ** 60] }] }),
    ).toThrow(/safe integer/);
    expect(() => encodeKvEventBatch({ ts: 1, events: [] }, "0.1.0")).toThrow(InvalidConfigError);
    expect(() => decodeKvEventBatch(Buffer.from([0xc1]))).toThrow(InvalidInputError);
  });
});
