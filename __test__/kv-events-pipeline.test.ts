/**
 * The whole KV-event path over real ZMQ sockets: a vLLM-format publisher, VllmEventSource, the
 * indexer sink, and a KvIndexer — including the hash parity check against a worker whose
 * PYTHONHASHSEED differs from the router's.
 */
import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "./helpers/zmq-peer.js";
import {
  BlockHasher,
  encodeKvEventBatch,
  indexerSink,
  KvIndexer,
  VllmEventPublisher,
  VllmEventSource,
  type KvEventBatch,
} from "../ts/index.js";

const BLOCK = 16;
const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (closers.length) await closers.pop()!();
});

/** A BlockStored batch for `tokens` as a vLLM worker with `seed` would publish it. */
function storedBatch(tokens: number[], seed: string): Buffer {
  const hashes = new BlockHasher({ blockSize: BLOCK, algorithm: "sha256", seed }).hash(tokens);
  const batch: KvEventBatch = {
    ts: Date.now() / 1000,
    dataParallelRank: 0,
    events: [{ type: "BlockStored", blockHashes: [...hashes], parentBlockHash: null, tokenIds: tokens, blockSize: BLOCK, medium: "GPU" }],
  };
  return encodeKvEventBatch(batch);
}

async function pipeline(indexer: KvIndexer, workerId: string, log: (m: string) => void) {
  const publisher = await VllmEventPublisher.start({ endpoint: "tcp://127.0.0.1:0", bind: true });
  const sink = indexerSink(indexer, { log });
  const source = new VllmEventSource({ workerId, endpoint: publisher.endpoint, sink }).start();
  closers.push(() => source.close(), () => publisher.close());
  await waitUntil(() => source.stats().connected, "the subscription");
  // PUB/SUB subscriptions propagate asynchronously: publish until the first batch lands.
  return { publisher, sink, source };
}

const prompt = (n: number, base: number) => Array.from({ length: n * BLOCK }, (_, i) => (base + i * 31) % 150_000);

describe("KV events end to end over ZMQ", () => {
  it("flags a worker started with another PYTHONHASHSEED, logs once, and keeps serving", async () => {
    const indexer = new KvIndexer({ blockSize: BLOCK, keying: "engine", hashAlgorithm: "sha256", hashSeed: "0" });
    const logs: string[] = [];
    const good = await pipeline(indexer, "good", (m) => logs.push(m));
    const bad = await pipeline(indexer, "bad", (m) => logs.push(m));
    for (let i = 0; i < 40; i++) {
      good.publisher.publish(storedBatch(prompt(4, i * 1000), "0"));
      bad.publisher.publish(storedBatch(prompt(4, i * 1000), "12345"));
      await new Promise((r) => setTimeout(r, 5));
    }
    await waitUntil(() => good.sink.stats().batches >= 30 && bad.sink.stats().batches >= 30, "batches to arrive");
    const flags = new Map(indexer.eventStats().workers.map((w) => [w.workerId, w]));
    expect(flags.get("bad")!.hashMismatch).toBe(true);
    expect(flags.get("bad")!.likelyCause).toMatch(/seed/);
    expect(flags.get("good")!.hashMismatch).toBe(false);
    expect(logs.filter((l) => l.includes("worker bad"))).toHaveLength(1);
    expect(logs.some((l) => l.includes("worker good"))).toBe(false);
    // Still serving: the good worker's blocks match a request hashed with the router's settings.
    const query = new BlockHasher({ blockSize: BLOCK, algorithm: "sha256", seed: "0" }).hash(prompt(4, 39_000));
    expect(indexer.findMatches(query).find((m) => m.workerId === "good")?.blocks).toBe(4);
  });

  it("with token keying, workers with different seeds both match a request", async () => {
    const indexer = new KvIndexer({ blockSize: BLOCK });
    const a = await pipeline(indexer, "seed-a", () => {});
    const b = await pipeline(indexer, "seed-b", () => {});
    const tokens = prompt(6, 7);
    await waitUntil(() => {
      a.publisher.publish(storedBatch(tokens, "1"));
      b.publisher.publish(storedBatch(tokens, "2"));
      return a.sink.stats().batches > 0 && b.sink.stats().batches > 0;
    }, "both workers' events", 10_000);
    const matches = indexer.findMatches(new BlockHasher({ blockSize: BLOCK }).hash(tokens));
    expect(matches.map((m) => [m.workerId, m.blocks]).sort()).toEqual([["seed-a", 6], ["seed-b", 6]]);
    expect(indexer.eventStats().workers.every((w) => !w.hashMismatch && !w.blockSizeMismatch)).toBe(true);
  });
});
