/**
 * TimedRouter: the library's KvRouter, unchanged, with the time spent inside it added up, so a
 * replay can report the router's CPU cost per request. Every router entry point the gateway (live
 * replay) or the simulator (virtual replay) calls is synchronous and does no I/O, so its wall time
 * on this thread is its CPU time. The timer (performance.now, ~50 ns) is counted in. Parsing a
 * scraped /metrics text is not (`updateMetricsFromPrometheus` is timed only in the `updateMetrics`
 * calls it makes): its cost follows the scrape rate, not the requests.
 */
import type { ApplyEventBatchResult } from "../core/kv-indexer.js";
import { KvRouter, type RouterEventSink, type WorkerMetricsUpdate } from "../router/kv-router.js";
import type { RouteDecision, RouteRequest } from "../router/types.js";

export class TimedRouter extends KvRouter {
  /** Milliseconds spent in the router since construction. */
  busyMs = 0;

  override route(req: RouteRequest): RouteDecision {
    const t0 = performance.now();
    try {
      return super.route(req);
    } finally {
      this.busyMs += performance.now() - t0;
    }
  }

  override started(decision: RouteDecision): void {
    const t0 = performance.now();
    super.started(decision);
    this.busyMs += performance.now() - t0;
  }

  override firstToken(requestId: string): void {
    const t0 = performance.now();
    super.firstToken(requestId);
    this.busyMs += performance.now() - t0;
  }

  override tokens(requestId: string, generated: number): void {
    const t0 = performance.now();
    super.tokens(requestId, generated);
    this.busyMs += performance.now() - t0;
  }

  override finished(requestId: string, outcome: "ok" | "error" | "cancelled"): void {
    const t0 = performance.now();
    super.finished(requestId, outcome);
    this.busyMs += performance.now() - t0;
  }

  override updateMetrics(workerId: string, metrics: WorkerMetricsUpdate): boolean {
    const t0 = performance.now();
    try {
      return super.updateMetrics(workerId, metrics);
    } finally {
      this.busyMs += performance.now() - t0;
    }
  }

  override eventSink(model: string): RouterEventSink {
    const inner = super.eventSink(model);
    const timed = <A extends unknown[], R>(fn: (...args: A) => R) =>
      (...args: A): R => {
        const t0 = performance.now();
        try {
          return fn(...args);
        } finally {
          this.busyMs += performance.now() - t0;
        }
      };
    return {
      applyBatch: timed(inner.applyBatch),
      clear: timed(inner.clear),
      applyEventBatch: timed(inner.applyEventBatch) as (workerId: string, payload: Uint8Array, dpRank?: number) => ApplyEventBatchResult,
      applyDirectBatch: timed(inner.applyDirectBatch),
      clearWorker: timed(inner.clearWorker),
      stats: inner.stats,
    };
  }
}
