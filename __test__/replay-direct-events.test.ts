/**
 * The virtual replay's in-process KV event paths leave the router as the wire path (the msgpack
 * bytes a live worker publishes) does: `DirectBatch` (hashes and tokens, applied by
 * `KvRouterCore.applyDirectBatchInto`) gives the same event counters and overlaps; keyed batches
 * (router-keyed engines, `applyKeyedBatchInto`) the same overlaps and block counts; and a whole
 * replay routes every request the same way on all three.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { BlockHasher } from "../ts/core/block-hasher.js";
import { InvalidConfigError } from "../ts/errors.js";
import type { KvEvent } from "../ts/events/codec.js";
import { MemoryRegistry } from "../ts/registry/memory-registry.js";
import { writeDirectBatch, writeKeyedBatch } from "../ts/replay/direct-batch.js";
import { writeKvEventBatch } from "../ts/replay/kv-batch-writer.js";
import type { PolicyResult, RequestRecord } from "../ts/replay/result.js";
import { readTrace, type Trace } from "../ts/replay/trace.js";
import { replayEventPath, runVirtualReplay, virtualRecord } from "../ts/replay/virtual-replay.js";
import { VirtualWorker } from "../ts/replay/virtual-worker.js";
import { KvRouter } from "../ts/router/kv-router.js";

const MOONCAKE = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "shared", "traces", "mooncake_conversation.jsonl");
const MODEL = "m";
const BLOCK = 16;

function stable(r: PolicyResult) {
  const { wallMs: _w, routerCpuUsPerRequest: _c, ...rest } = r;
  return rest;
}

/** A prompt from a shared system prefix, a conversation's turns and a unique tail. */
function prompt(i: number): Uint32Array {
  const conv = i % 7;
  const turns = 1 + ((i * 3) % 5);
  const len = 40 + turns * 70 + ((i * 13) % 50);
  return Uint32Array.from({ length: len }, (_, k) => (k < 48 ? 1 + k : k < 48 + turns * 70 ? 1000 * (conv + 1) + k : 90_000 + i * 500 + k));
}

describe("direct KV event batches", () => {
  it("leave the router as the wire bytes do (stores, LRU evictions, duplicates, a cache reset)", async () => {
    const ids = ["w0", "w1", "w2"];
    const workers = ids.map((id) => new VirtualWorker({ model: MODEL, blockSize: BLOCK, numGpuBlocks: 90, kvEventsConfig: { enableKvCacheEvents: true } }, () => {}));
    const routers = await Promise.all(
      [0, 1].map(async () => {
        const registry = new MemoryRegistry();
        for (const [w, id] of ids.entries()) await registry.register(virtualRecord(id, MODEL, BLOCK, workers[w]!));
        return new KvRouter({ registry, seed: 3, log: () => {} });
      }),
    );
    const [wire, direct] = routers.map((r) => r.eventSink(MODEL));
    const kinds = new Set<string>();
    let directBatches = 0;
    for (const [w, worker] of workers.entries()) {
      worker.core.pool.mergeRemovals = true;
      (worker.core as unknown as { onEvents: (rank: number, events: KvEvent[]) => void }).onEvents = (rank, events) => {
        for (const e of events) kinds.add(e.type);
        const a = wire!.applyEventBatch(ids[w]!, writeKvEventBatch(0, rank, events), 0);
        const batch = writeDirectBatch(rank, events);
        expect(batch).not.toBeNull();
        directBatches++;
        const b = direct!.applyDirectBatch(ids[w]!, batch!);
        expect(b).toEqual(a);
      };
    }
    const probes = Array.from({ length: 30 }, (_, i) => prompt(i * 5 + 1));
    const overlaps = (r: KvRouter) =>
      probes.map((tokens, i) =>
        r
          .route({ model: MODEL, tokens, requestId: `p${i}`, explain: true })
          .candidates!.map((c) => `${c.workerId}:${c.overlapBlocks}`)
          .sort(),
      );
    let t = 0;
    for (let i = 0; i < 120; i++) {
      const w = (i * 5) % 3;
      workers[w]!.submit({ requestId: `r${i}`, promptTokenIds: prompt(i), maxTokens: 20 + (i % 30), ignoreEos: true, arrivalTime: t }, () => {});
      for (let d = workers[w]!.core.beginStep(t); d !== null; d = workers[w]!.core.beginStep(t)) {
        t += d;
        workers[w]!.core.endStep();
      }
      if (i % 20 === 19) expect(overlaps(routers[1]!)).toEqual(overlaps(routers[0]!));
    }
    expect(workers[1]!.core.resetPrefixCache()).toBe(true);
    workers[1]!.core.beginStep(t);
    workers[1]!.core.endStep();
    expect(kinds).toEqual(new Set(["BlockStored", "BlockRemoved", "AllBlocksCleared"]));
    expect(directBatches).toBeGreaterThan(100);
    expect(overlaps(routers[1]!)).toEqual(overlaps(routers[0]!));
    const stats = (r: KvRouter) => {
      const { workers: perWorker, ...counters } = r.eventStats(MODEL)!;
      return { counters, perWorker };
    };
    expect(stats(routers[1]!)).toEqual(stats(routers[0]!));
    expect(stats(routers[0]!).counters.blocksRemoved).toBeGreaterThan(0);
    for (const r of routers) r.close();
  });

  it("keyed: router-keyed engines' keys index the same blocks as vLLM-hashed engines' wire bytes", async () => {
    const ids = ["w0", "w1", "w2"];
    const make = () => ids.map(() => new VirtualWorker({ model: MODEL, blockSize: BLOCK, numGpuBlocks: 90, kvEventsConfig: { enableKvCacheEvents: true } }, () => {}));
    const vllm = make();
    const keyed = make();
    for (const w of keyed) w.core.keyByRouter();
    const routers = await Promise.all(
      [vllm, keyed].map(async (workers) => {
        const registry = new MemoryRegistry();
        for (const [w, id] of ids.entries()) await registry.register(virtualRecord(id, MODEL, BLOCK, workers[w]!));
        return new KvRouter({ registry, seed: 3, log: () => {} });
      }),
    );
    const [wire, direct] = routers.map((r) => r.eventSink(MODEL));
    let keyedBatches = 0;
    for (const [w, id] of ids.entries()) {
      vllm[w]!.core.pool.mergeRemovals = true;
      keyed[w]!.core.pool.mergeRemovals = true;
      (vllm[w]!.core as unknown as { onEvents: (rank: number, events: KvEvent[]) => void }).onEvents = (rank, events) =>
        void wire!.applyEventBatch(id, writeKvEventBatch(0, rank, events), 0);
      (keyed[w]!.core as unknown as { onEvents: (rank: number, events: KvEvent[]) => void }).onEvents = (rank, events) => {
        const batch = writeKeyedBatch(rank, events);
        expect(batch?.keyed).toBe(true);
        keyedBatches++;
        expect(direct!.applyDirectBatch(id, batch!).malformed).toBeUndefined();
      };
    }
    const probes = Array.from({ length: 30 }, (_, i) => prompt(i * 5 + 1));
    const overlaps = (r: KvRouter) =>
      probes.map((tokens, i) =>
        r
          .route({ model: MODEL, tokens, requestId: `p${i}`, explain: true })
          .candidates!.map((c) => `${c.workerId}:${c.overlapBlocks}`)
          .sort(),
      );
    let t = 0;
    for (let i = 0; i < 120; i++) {
      const w = (i * 5) % 3;
      for (const set of [vllm, keyed]) {
        const eng = set[w]!;
        eng.submit({ requestId: `r${i}`, promptTokenIds: prompt(i), maxTokens: 20 + (i % 30), ignoreEos: true, arrivalTime: t }, () => {});
        let tt = t;
        for (let d = eng.core.beginStep(tt); d !== null; d = eng.core.beginStep(tt)) {
          tt += d;
          eng.core.endStep();
        }
        if (set === keyed) t = tt;
      }
      if (i % 20 === 19) expect(overlaps(routers[1]!)).toEqual(overlaps(routers[0]!));
    }
    for (const set of [vllm, keyed]) {
      expect(set[1]!.core.resetPrefixCache()).toBe(true);
    }
    expect(keyedBatches).toBeGreaterThan(100);
    expect(overlaps(routers[1]!)).toEqual(overlaps(routers[0]!));
    const counters = (r: KvRouter) => {
      const s = r.eventStats(MODEL)!;
      return [s.batches, s.eventsStored, s.eventsRemoved, s.eventsCleared, s.blocksStored, s.blocksRemoved, s.skippedEvents];
    };
    expect(counters(routers[1]!)).toEqual(counters(routers[0]!));
    expect(routers[1]!.eventStats(MODEL)!.blocksRemoved).toBeGreaterThan(0);
    for (const r of routers) r.close();
  });

  it("are refused when their arrays disagree, changing nothing", async () => {
    const registry = new MemoryRegistry();
    const worker = new VirtualWorker({ model: MODEL, blockSize: BLOCK, numGpuBlocks: 90 }, () => {});
    await registry.register(virtualRecord("w0", MODEL, BLOCK, worker));
    const router = new KvRouter({ registry, log: () => {} });
    const sink = router.eventSink(MODEL);
    const r = sink.applyDirectBatch("w0", { rank: 0, ops: Uint32Array.of(0, 2, 0, 32, 16, 1), hashes: BigUint64Array.of(1n), tokens: new Uint32Array(32) });
    expect(r.malformed).toMatch(/hashes/);
    expect(r.stored).toBe(0);
    const k = sink.applyDirectBatch("w0", { rank: 0, keyed: true, ops: Uint32Array.of(0, 3, 1), hashes: BigUint64Array.of(1n), tokens: new Uint32Array(0) });
    expect(k.malformed).toMatch(/keys/);
    expect(sink.stats().malformed).toBe(2);
    expect(router.eventStats(MODEL)!.blocksStored).toBe(0);
    router.close();
  });

  it("keyed engines chain router keys on from known ones (BlockHasher.extend), never from the start", () => {
    const h = new BlockHasher({ blockSize: BLOCK });
    const tokens = Uint32Array.from({ length: 40 * BLOCK + 5 }, (_, i) => (i * 7919) % 50_000);
    const all = h.hash(tokens);
    for (const n of [0, 1, 17, 40]) expect(h.extend(all.subarray(0, n), tokens)).toEqual(all);
    expect(h.extend(all, tokens.subarray(0, 3 * BLOCK))).toEqual(all.subarray(0, 3));
    expect(() => new BlockHasher({ blockSize: BLOCK, algorithm: "sha256" }).extend(all, tokens)).toThrow(/router/);
  });

  it("keyed is the default only where it routes as the wire does", () => {
    const plain = { file: "t", requests: [{ index: 0, line: 1, timestampMs: 0, inputLength: 512, maxTokens: 4, hashIds: [1] }] } as unknown as Trace;
    expect(replayEventPath(plain, { numCpuBlocks: 0, dropRate: 0 })).toBe("keyed");
    // A lost store leaves the wire path unable to place its children, keys would: no keys then.
    expect(replayEventPath(plain, { numCpuBlocks: 0, dropRate: 0.1 })).toBe("direct");
    expect(replayEventPath(plain, { numCpuBlocks: 100, dropRate: 0 })).toBe("direct");
    expect(replayEventPath(plain, { numCpuBlocks: 0, dropRate: 0, routerKeying: "engine" })).toBe("direct");
    expect(() => replayEventPath(plain, { numCpuBlocks: 0, dropRate: 0.1 }, "keyed")).toThrow(InvalidConfigError);
    expect(replayEventPath(plain, { numCpuBlocks: 0, dropRate: 0.1 }, "wire")).toBe("wire");
  });

  it("fall back to the wire form for what they do not carry (LoRA, extra keys)", () => {
    const tokenIds = new Uint32Array(16);
    expect(writeDirectBatch(0, [{ type: "BlockStored", blockHashes: [1n], tokenIds, blockSize: 16, medium: "GPU", loraName: "a", loraId: 1 }])).toBeNull();
    expect(writeDirectBatch(0, [{ type: "BlockStored", blockHashes: [1n], tokenIds, blockSize: 16, extraKeys: [["salt"]] }])).toBeNull();
    expect(writeDirectBatch(0, [{ type: "BlockRemoved", blockHashes: [1n], medium: "DISK" }])).toBeNull();
    expect(writeDirectBatch(0, [{ type: "BlockStored", blockHashes: [1n], tokenIds, blockSize: 16, extraKeys: [null] }])).not.toBeNull();
  });

  it.skipIf(!existsSync(MOONCAKE))("route a Mooncake replay exactly as the wire path does (direct and keyed)", async () => {
    const trace = readTrace(MOONCAKE);
    trace.requests.length = 400;
    const run = async (eventPath: "wire" | "direct" | "keyed") => {
      const records: RequestRecord[] = [];
      const r = await runVirtualReplay({ trace, policy: "kv", workers: 4, numGpuBlocks: 4000, eventPath, onRequest: (x) => records.push(x) });
      return { r: stable(r), records };
    };
    const wire = await run("wire");
    for (const path of ["direct", "keyed"] as const) {
      const other = await run(path);
      expect(other.records).toEqual(wire.records);
      expect(other.r).toEqual(wire.r);
    }
    // A few prompts are longer than these small engines take: refused both ways.
    expect(wire.r.completed + wire.r.failed).toBe(400);
    expect(wire.r.completed).toBeGreaterThan(350);
  }, 120_000);
});
