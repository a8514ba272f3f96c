/**
 * KV events through N-API: `KvIndexer.applyEventBatch` (decode + apply in Rust, one call per ZMQ
 * payload) in block events per second, for batches of 1, 16 and 256 BlockStored events of one
 * 16-token block each (chained, a new prompt every 64 blocks), with token and engine keying.
 *
 *   npm run build:native && node --expose-gc --import tsx benchmarks/events-napi.ts [totalBlocks]
 *
 * The event objects are encoded up front and dropped, and the heap is collected before each run,
 * so the timed loop measures applyEventBatch rather than the GC of a million-object test fixture.
 */
import { decodeKvEventBatch, encodeKvEventBatch, type KvEvent } from "../ts/events/codec.js";
import { BlockHasher, KvIndexer, type KvIndexerOptions } from "../ts/index.js";

const total = Number(process.argv[2] ?? 1 << 18);
const hasher = new BlockHasher({ blockSize: 16, algorithm: "sha256", seed: "0" });

/** `total` BlockStored events, one block each, as engine hashes chained per 64-block prompt. */
function events(): KvEvent[] {
  const out: KvEvent[] = [];
  for (let p = 0; out.length < total; p++) {
    const tokens = Uint32Array.from({ length: 64 * 16 }, (_, i) => (p * 7919 + i * 31) % 150_000);
    const hashes = hasher.hash(tokens);
    for (let b = 0; b < hashes.length && out.length < total; b++) {
      out.push({
        type: "BlockStored",
        blockHashes: [hashes[b]!],
        parentBlockHash: b === 0 ? null : hashes[b - 1]!,
        tokenIds: tokens.subarray(b * 16, b * 16 + 16),
        blockSize: 16,
        medium: "GPU",
      });
    }
  }
  return out;
}

const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
let all: KvEvent[] | null = events();
const payloadsBySize = new Map<number, Buffer[]>();
for (const batch of [1, 16, 256]) {
  const payloads: Buffer[] = [];
  for (let i = 0; i < all.length; i += batch) {
    payloads.push(encodeKvEventBatch({ ts: i, dataParallelRank: 0, events: all.slice(i, i + batch) }));
  }
  payloadsBySize.set(batch, payloads);
}
all = null;
const configs: [string, KvIndexerOptions][] = [
  ["tokens", { blockSize: 16 }],
  ["engine", { blockSize: 16, keying: "engine" }],
  ["engine+parity", { blockSize: 16, keying: "engine", hashAlgorithm: "sha256", hashSeed: "0" }],
];
console.log(`${total} block events per run, node ${process.version}`);
for (const [batch, payloads] of payloadsBySize) {
  for (const [name, options] of configs) {
    let best = 0;
    for (let run = 0; run < 3; run++) {
      gc();
      const ix = new KvIndexer(options);
      const t = process.hrtime.bigint();
      for (const p of payloads) ix.applyEventBatch("worker-0", p);
      const secs = Number(process.hrtime.bigint() - t) / 1e9;
      const s = ix.eventStats();
      if (s.blocksStored !== total || s.workers[0]!.hashMismatch) throw new Error(JSON.stringify(s));
      best = Math.max(best, total / secs);
    }
    console.log(`batch ${String(batch).padStart(3)}  ${name.padEnd(14)} ${(best / 1e6).toFixed(2)} M block events/s`);
  }
}

// Baseline in the same run: what a gateway does without the batched path — decode each payload
// to JS objects, then one N-API call per event (engine keying, so no token work on either side).
for (const [batch, payloads] of payloadsBySize) {
  let best = 0;
  for (let run = 0; run < 3; run++) {
    gc();
    const ix = new KvIndexer({ blockSize: 16, keying: "engine" });
    const t = process.hrtime.bigint();
    for (const p of payloads) {
      for (const ev of decodeKvEventBatch(p).events) {
        if (ev.type !== "BlockStored") continue;
        const parent = typeof ev.parentBlockHash === "bigint" ? ev.parentBlockHash : null;
        ix.applyStored("worker-0", parent, BigUint64Array.from(ev.blockHashes as bigint[]));
      }
    }
    const secs = Number(process.hrtime.bigint() - t) / 1e9;
    if (ix.stats().blocks !== total) throw new Error("baseline applied a different state");
    best = Math.max(best, total / secs);
  }
  console.log(`batch ${String(batch).padStart(3)}  ${"baseline: JS decode + per-event N-API".padEnd(14)} ${(best / 1e6).toFixed(2)} M block events/s`);
}
