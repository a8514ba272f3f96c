/**
 * The adapter between a KV-event source (VllmEventSource, or a bus replica) and a KvIndexer:
 * each batch is decoded and applied in Rust in one call; a batch that could not be read in full
 * clears that worker's view (it is rebuilt from the next events) rather than leave it wrong; the
 * first time a worker is flagged for a hash or block-size mismatch, one clear error is logged.
 */
import type { ApplyEventBatchResult, KvIndexer } from "../core/kv-indexer.js";
import type { KvEventSink } from "./types.js";

export interface IndexerSinkOptions {
  /** Where the one-time mismatch errors go (default console.error). */
  log?: (message: string) => void;
  /** Parity flags are read after each of the first batches, then every this many (default 256). */
  parityCheckEvery?: number;
}

export interface IndexerSinkStats {
  batches: number;
  malformed: number;
  resyncs: number;
  clears: number;
}

export interface IndexerSink extends KvEventSink {
  stats(): IndexerSinkStats;
}

const EARLY_CHECKS = 32;

export function indexerSink(indexer: KvIndexer, options: IndexerSinkOptions = {}): IndexerSink {
  const log = options.log ?? ((m: string) => console.error(m));
  const every = options.parityCheckEvery ?? 256;
  const counts: IndexerSinkStats = { batches: 0, malformed: 0, resyncs: 0, clears: 0 };
  const reported = new Set<string>();
  // Several sinks may share one indexer: each reports only the workers it feeds.
  const fed = new Set<string>();

  function checkParity(): void {
    for (const w of indexer.eventStats().workers) {
      const key = `${w.workerId}#${w.dpRank}`;
      if (!fed.has(w.workerId) || reported.has(key) || !(w.hashMismatch || w.blockSizeMismatch)) continue;
      reported.add(key);
      const what = w.blockSizeMismatch
        ? `block size ${w.workerBlockSize ?? "?"} differs from the model's ${indexer.blockSize}`
        : "its block hashes differ from the router's";
      log(
        `kvroute: worker ${w.workerId} (dp rank ${w.dpRank}): ${what}; likely cause: ${w.likelyCause ?? "unknown"}. ` +
          "Its cached prefixes will not match requests until the worker and the router agree " +
          "(block size, hash algorithm, PYTHONHASHSEED). Still serving.",
      );
    }
  }

  return {
    applyBatch(workerId, dpRank, _seq, payload) {
      const result: ApplyEventBatchResult = indexer.applyEventBatch(workerId, payload, dpRank);
      counts.batches++;
      fed.add(workerId);
      if (result.malformed !== undefined && result.malformed !== null) counts.malformed++;
      if (result.skippedKnown > 0) {
        indexer.clearWorker({ workerId, dpRank });
        counts.resyncs++;
      }
      if (counts.batches <= EARLY_CHECKS || counts.batches % every === 0) checkParity();
    },
    clear(workerId, dpRank) {
      indexer.clearWorker({ workerId, dpRank });
      counts.clears++;
    },
    stats: () => ({ ...counts }),
  };
}
