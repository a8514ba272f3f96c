/**
 * The KV indexer: which worker (and data-parallel rank) holds which block, on which tier, built
 * from vLLM's BlockStored / BlockRemoved / AllBlocksCleared events. Hashes cross into Rust as
 * BigUint64Arrays, one call per batch; a query answers per worker, never per block.
 */
import { callNative } from "../errors.js";
import { native } from "../native.js";

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

export interface KvIndexerOptions {
  blockSize: number;
}

export class KvIndexer {
  private readonly inner: InstanceType<typeof native.KvIndexer>;

  constructor(options: KvIndexerOptions) {
    this.inner = callNative(() => new native.KvIndexer({ blockSize: options.blockSize }));
  }

  get blockSize(): number {
    return this.inner.blockSize;
  }

  /** BlockStored: `worker` now holds `hashes` (a chain under `parentHash`) on `medium` (default GPU). */
  applyStored(worker: string | WorkerRef, parentHash: bigint | null, hashes: BigUint64Array, medium?: string): void {
    callNative(() => this.inner.applyStored(worker, parentHash ?? undefined, hashes, medium));
  }

  /** BlockRemoved: `worker` no longer holds `hashes` on `medium` (default GPU). */
  applyRemoved(worker: string | WorkerRef, hashes: BigUint64Array, medium?: string): void {
    this.inner.applyRemoved(worker, hashes, medium);
  }

  /** AllBlocksCleared: drops one rank's blocks, or every rank's when `dpRank` is absent. */
  clearWorker(worker: string | WorkerRef): number {
    return this.inner.clearWorker(worker);
  }

  /** Drops every block of the worker and forgets it. Returns whether it was known. */
  removeWorker(workerId: string): boolean {
    return this.inner.removeWorker(workerId);
  }

  /** Per worker holding the query's first block: how many leading blocks it holds, largest first. */
  findMatches(hashes: BigUint64Array): WorkerMatch[] {
    return this.inner.findMatches(hashes);
  }

  stats(): KvIndexerStats {
    return this.inner.stats();
  }
}
