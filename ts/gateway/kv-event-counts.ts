/**
 * Per-worker counts of what the router's event sink did with a worker's KV-event batches:
 * applied, blocks stored/removed, malformed batches and skipped events by reason, resyncs. The
 * sink's result already says all of it except the skipped events' reasons, which are diffed from
 * the model's counters only when a batch skipped something (rare): the happy path costs a few
 * additions.
 */
import type { ApplyEventBatchResult } from "../core/kv-indexer.js";
import type { KvEventSink } from "../events/types.js";

/** A sink that reports what it applied (the router's sink does). */
export interface ReportingSink extends KvEventSink {
  applyEventBatch?(workerId: string, payload: Uint8Array, dpRank?: number): ApplyEventBatchResult;
}

export interface WorkerApplyCounts {
  /** Batches that decoded and were applied. */
  batches: number;
  blocksStored: number;
  blocksRemoved: number;
  /** Whole batches dropped, by the decoder's reason (`truncated`, `expected an array`, ...). */
  malformed: Record<string, number>;
  /** Single events dropped, by reason (`unresolved_parent`, `unknown event type`, ...). */
  skipped: Record<string, number>;
  /** Batches with unreadable known events: the worker's view was dropped and rebuilds. */
  resyncs: number;
}

export function emptyApplyCounts(): WorkerApplyCounts {
  return { batches: 0, blocksStored: 0, blocksRemoved: 0, malformed: {}, skipped: {}, resyncs: 0 };
}

function bump(counts: Record<string, number>, reason: string, n = 1): void {
  counts[reason] = (counts[reason] ?? 0) + n;
}

/** Last seen skippedReasons per model, so that a batch's own skips can be told apart. */
export class SkipReasonTracker {
  private readonly last = new Map<string, Record<string, number>>();

  /** `reasonsOf(model)`: the model's skipped events by reason so far (`eventStats().skippedReasons`). */
  constructor(private readonly reasonsOf: (model: string) => Record<string, number> | undefined) {}

  /** Call before a model's first batch (a model the router does not know yet has skipped nothing). */
  prime(model: string): void {
    if (!this.last.has(model)) this.last.set(model, { ...(this.reasonsOf(model) ?? {}) });
  }

  /** Adds the reasons skipped since the last call to `into`. */
  attribute(model: string, into: Record<string, number>): void {
    const now = this.reasonsOf(model) ?? {};
    const before = this.last.get(model) ?? {};
    for (const [reason, n] of Object.entries(now)) {
      const d = n - (before[reason] ?? 0);
      if (d > 0) bump(into, reason, d);
    }
    this.last.set(model, { ...now });
  }
}

/** Wraps `sink` so that every batch of `model`'s worker is counted into `counts`. */
export function countingSink(sink: ReportingSink, model: string, counts: WorkerApplyCounts, skips: SkipReasonTracker | null): KvEventSink {
  const applyEventBatch = sink.applyEventBatch?.bind(sink);
  if (!applyEventBatch) return sink;
  skips?.prime(model);
  return {
    applyBatch: (workerId, dpRank, _seq, payload) => {
      const r = applyEventBatch(workerId, payload, dpRank);
      if (r.malformed !== undefined && r.malformed !== null) {
        bump(counts.malformed, r.malformed);
        return;
      }
      counts.batches++;
      counts.blocksStored += r.stored;
      counts.blocksRemoved += r.removed;
      if (r.skippedKnown > 0) counts.resyncs++;
      if (r.skipped > 0) {
        if (skips) skips.attribute(model, counts.skipped);
        else bump(counts.skipped, "unknown", r.skipped);
      }
    },
    clear: (workerId, dpRank) => sink.clear(workerId, dpRank),
  };
}
