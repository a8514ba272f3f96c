/**
 * The KV indexer: which worker (and data-parallel rank) holds which block, on which tier, built
 * from vLLM's BlockStored / BlockRemoved / AllBlocksCleared events. Whole ZMQ payloads go to
 * Rust with `applyEventBatch` (decoded and applied in one call), or hashes cross as
 * BigUint64Arrays, one call per batch; a query answers per worker, never per block.
 */
import { callNative } from "../errors.js";
import { native } from "../native.js";
import type { EngineHashAlgorithm } from "./block-hasher.js";

/** A worker, or one data-parallel rank of it (`dpRank` defaults to 0). */
export interface WorkerRef {
  workerId: string;
  dpRank?: number;
}

export interface WorkerMatch {
  workerId: string;
  dpRank: number;
  /** Leading blocks of the query the worker holds, on any tier. */
  blocks: number;
  /** Those blocks by the best tier holding each, e.g. `{ GPU: 10, CPU: 2 }`. */
  tiers: Record<string, number>;
}

export interface KvIndexerStats {
  /** Distinct blocks held by anyone. */
  blocks: number;
  /** Live (block, worker, tier) holdings. */
  pairs: number;
  /** Known (worker, dpRank) slots. */
  workers: number;
  tiers: number;
  /** Heap bytes of the index (capacity-based). */
  approxBytes: number;
  /** Removals of holdings that did not exist (ignored). */
  removesUnknown: number;
}

/**
 * How `applyEventBatch` keys blocks. `"tokens"` (default): the router's own keys computed from each
 * BlockStored's token ids, so workers need no particular hash seed or algorithm (a bounded map of
 * each worker's engine hashes resolves parents, BlockRemoved and token-less stores). `"engine"`:
 * vLLM's block hashes as the events carry them (query with `BlockHasher` and the workers' exact
 * algorithm, seed and block size).
 */
export type Keying = "tokens" | "engine";

export interface KvIndexerOptions {
  /** Tokens per block of the model (what the router hashes requests with). */
  blockSize: number;
  /** Default `"tokens"`. */
  keying?: Keying;
  /**
   * The workers' `--prefix-caching-hash-algo`. With `keying: "engine"` it turns on the hash parity
   * check (a sample of stored blocks is recomputed; see `eventStats().workers`).
   */
  hashAlgorithm?: EngineHashAlgorithm;
  /** The workers' PYTHONHASHSEED, as a string; `undefined` means unset. */
  hashSeed?: string;
  /**
   * Bound of each (worker, dpRank) engine-hash map (token keying), default 1048576. When full, the
   * least recently stored block is evicted from the map and from the index.
   */
  maxEngineMapEntries?: number;
  /** Parity sampling: the first N stored events per (worker, dpRank) are checked (default 16)... */
  parityFirst?: number;
  /** ...then one in K (default 64; 0 = only the first N). */
  parityEvery?: number;
}

/** What `applyEventBatch` did with one payload. */
export interface ApplyEventBatchResult {
  /** Events in the batch, including any the decoder dropped. */
  events: number;
  /** Blocks stored in the index. */
  stored: number;
  /** Blocks removed from the index. */
  removed: number;
  /** AllBlocksCleared events applied. */
  cleared: number;
  /** Events skipped (reasons in `eventStats().skippedReasons`). */
  skipped: number;
  /**
   * Of those, BlockStored / BlockRemoved / AllBlocksCleared events whose fields could not be read:
   * the worker's view may be off, so a resync is advisable.
   */
  skippedKnown: number;
  /** The batch's data-parallel rank (0 when absent). */
  dpRank: number;
  /** Set when the payload could not be decoded at all; nothing was applied. */
  malformed?: string;
}

/** Parity flags and engine-map size of one (worker, dpRank). */
export interface WorkerEventStats {
  workerId: string;
  dpRank: number;
  /** Engine-hash map entries (token keying). */
  mapEntries: number;
  /** A recomputed block hash differed (engine keying with `hashAlgorithm`). */
  hashMismatch: boolean;
  /** A BlockStored had another block size, or token count, than the model's. */
  blockSizeMismatch: boolean;
  /** The block size of the last mismatching event. */
  workerBlockSize: number | null;
  /**
   * The diagnosis, e.g. `seed: the worker's PYTHONHASHSEED is unset (the router's is "42")`. Starts
   * with `block_size`, `algorithm`, `seed`, `algorithm and seed` or `unknown`.
   */
  likelyCause: string | null;
  /** Sampled BlockStored events recomputed. */
  checked: number;
  /** Of those, how many differed. */
  mismatched: number;
}

/** Counters of `applyEventBatch`. */
export interface KvEventStats {
  keying: Keying;
  /** Batches applied (malformed ones not included). */
  batches: number;
  eventsStored: number;
  eventsRemoved: number;
  eventsCleared: number;
  blocksStored: number;
  blocksRemoved: number;
  malformedBatches: number;
  malformedReasons: Record<string, number>;
  skippedEvents: number;
  skippedReasons: Record<string, number>;
  /** BlockStored events whose parent hash was not in the engine map (token keying). */
  unresolvedParents: number;
  /** Hashes of BlockRemoved / token-less BlockStored events not in the engine map (token keying). */
  unresolvedHashes: number;
  /** Engine-map entries evicted by `maxEngineMapEntries` (their blocks left the index). */
  mapEvictions: number;
  /** Engine hashes stored again under another router key. */
  mapRekeyed: number;
  /** BlockStored events with another block size than the model's. */
  blockSizeMismatches: number;
  /** Engine-map entries over all workers. */
  mapEntries: number;
  workers: WorkerEventStats[];
}

export class KvIndexer {
  private readonly inner: InstanceType<typeof native.KvIndexer>;
  /** Slot -> worker, valid while the native slot epoch is unchanged (see findMatchesPacked). */
  private readonly slotNames = new Map<number, { workerId: string; dpRank: number }>();
  private slotEpoch = -1;
  private tierNames: string[] = [];
  /** Reused output buffer of findMatchesInto. */
  private packed = new Uint32Array(3 + 64 * 4);

  constructor(options: KvIndexerOptions) {
    this.inner = callNative(
      () =>
        new native.KvIndexer({
          blockSize: options.blockSize,
          keying: options.keying,
          hashAlgorithm: options.hashAlgorithm,
          hashSeed: options.hashSeed,
          maxEngineMapEntries: options.maxEngineMapEntries,
          parityFirst: options.parityFirst,
          parityEvery: options.parityEvery,
        }),
    );
  }

  get blockSize(): number {
    return this.inner.blockSize;
  }

  get keying(): Keying {
    return this.inner.keying;
  }

  /**
   * One ZMQ message payload (frame 2: a msgpack KVEventBatch of any vLLM release from 0.9) from
   * `workerId`, decoded and applied in Rust in one call, at the batch's data-parallel rank
   * (`dpRank` when the batch names none, as vLLM 0.9.0's do; default 0). Never throws for bad
   * bytes: a payload that does not decode changes nothing and returns `malformed`.
   */
  applyEventBatch(workerId: string, payload: Uint8Array, dpRank?: number): ApplyEventBatchResult {
    return this.inner.applyEventBatch(workerId, payload, dpRank);
  }

  /** Counters of `applyEventBatch` and the per-(worker, dpRank) parity flags. */
  eventStats(): KvEventStats {
    return this.inner.eventStats() as KvEventStats;
  }

  /** BlockStored: `worker` now holds `hashes` (a chain under `parentHash`) on `medium` (default GPU). */
  applyStored(worker: string | WorkerRef, parentHash: bigint | null, hashes: BigUint64Array, medium?: string): void {
    callNative(() => this.inner.applyStored(worker, parentHash ?? undefined, hashes, medium));
  }

  /** BlockRemoved: `worker` no longer holds `hashes` on `medium` (default GPU). */
  applyRemoved(worker: string | WorkerRef, hashes: BigUint64Array, medium?: string): void {
    this.inner.applyRemoved(worker, hashes, medium);
  }

  /**
   * AllBlocksCleared, a restart or a resync: drops one rank's blocks, or every rank's when `dpRank`
   * is absent, and resets their engine-hash maps and parity flags.
   */
  clearWorker(worker: string | WorkerRef): number {
    return this.inner.clearWorker(worker);
  }

  /** Drops every block of the worker and forgets it. Returns whether it was known. */
  removeWorker(workerId: string): boolean {
    return this.inner.removeWorker(workerId);
  }

  /** Per worker holding the query's first block: how many leading blocks it holds, largest first. */
  findMatches(hashes: BigUint64Array): WorkerMatch[] {
    let needed = this.inner.findMatchesInto(hashes, this.packed);
    if (needed > this.packed.length) {
      this.packed = new Uint32Array(needed * 2);
      needed = this.inner.findMatchesInto(hashes, this.packed);
    }
    const packed = this.packed;
    const tiers = packed[0]!;
    if (packed[1] !== this.slotEpoch) {
      this.slotNames.clear();
      this.slotEpoch = packed[1]!;
    }
    if (this.tierNames.length < tiers) this.tierNames = this.inner.tierNames();
    const out: WorkerMatch[] = new Array(packed[2]!);
    for (let k = 0, off = 3; k < out.length; k++, off += 2 + tiers) {
      const slot = packed[off]!;
      let worker = this.slotNames.get(slot);
      if (worker === undefined) {
        const ref = this.inner.slotWorker(slot)!;
        worker = { workerId: ref.workerId, dpRank: ref.dpRank ?? 0 };
        this.slotNames.set(slot, worker);
      }
      const byTier: Record<string, number> = {};
      for (let t = 0; t < tiers; t++) {
        const n = packed[off + 2 + t]!;
        if (n > 0) byTier[this.tierNames[t]!] = n;
      }
      out[k] = { workerId: worker.workerId, dpRank: worker.dpRank, blocks: packed[off + 1]!, tiers: byTier };
    }
    return out;
  }

  stats(): KvIndexerStats {
    return this.inner.stats();
  }
}
