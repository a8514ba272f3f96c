/**
 * WorkerFeeds: what the router learns from each registered worker besides requests: its KV events
 * (one VllmEventSource per worker, all its DP ranks, into the router's event sink for the model)
 * and its load (its /metrics scraped every `scrapeIntervalMs`). Follows the registry: a worker that
 * registers gets both, one that leaves loses both (and a re-registered worker starts afresh, as a
 * restarted engine publishes from seq 0).
 *
 * Invariant: exactly one source and one scrape slot per registered worker id.
 */
import type { KvEventStats } from "../core/kv-indexer.js";
import type { KvEventSink } from "../events/types.js";
import { VllmEventSource, type VllmEventSourceStats } from "../events/vllm-event-source.js";
import type { Registry } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import { countingSink, emptyApplyCounts, SkipReasonTracker, type ReportingSink, type WorkerApplyCounts } from "./kv-event-counts.js";

export interface WorkerFeedsOptions {
  registry: Registry;
  /**
   * The sink for a worker's events (the router's sink for its model); null: no KV view. A sink
   * with `applyEventBatch` (the router's) gets its batches counted per worker (kvEventStats()).
   */
  sinkFor(record: WorkerRecord): ReportingSink | null;
  /** A model's event counters (router.eventStats): the reasons of skipped events, per worker. */
  eventStatsFor?(model: string): KvEventStats | undefined;
  /**
   * A model's skipped events by reason (router.skippedReasons): read after every batch that
   * skipped some, where the whole `eventStatsFor` snapshot would cost more than the batch.
   */
  skippedReasonsFor?(model: string): Record<string, number> | undefined;
  /** A worker's /metrics text, every scrape. */
  onMetrics?(record: WorkerRecord, text: string): void;
  /** A worker left the registry (after its source was closed). */
  onRemoved?(record: WorkerRecord): void;
  /** GET `path` on a worker; default: fetch. */
  get?(url: string, path: string, timeoutMs: number): Promise<{ status: number; text: string }>;
  /** 0: no scraping. */
  scrapeIntervalMs: number;
  log?: (message: string) => void;
}

/** One worker's KV-event path, for /metrics (kv-event-metrics.ts). */
export interface WorkerKvEventStats {
  workerId: string;
  model: string;
  /** Transport and sequencing (null: the worker publishes no events). */
  source: VllmEventSourceStats | null;
  /** What the router's sink did with the batches. */
  applied: WorkerApplyCounts;
}

interface Feed {
  record: WorkerRecord;
  source: VllmEventSource | null;
  applied: WorkerApplyCounts;
  scraping: boolean;
  scrapeFailures: number;
}

export class WorkerFeeds {
  private readonly feeds = new Map<string, Feed>();
  private timer: NodeJS.Timeout | null = null;
  private unwatch: (() => void) | null = null;
  private closed = false;
  private readonly skips: SkipReasonTracker | null;

  constructor(private readonly options: WorkerFeedsOptions) {
    const statsOf = options.eventStatsFor;
    const reasonsOf = options.skippedReasonsFor ?? (statsOf ? (model: string) => statsOf(model)?.skippedReasons : null);
    this.skips = reasonsOf ? new SkipReasonTracker(reasonsOf) : null;
  }

  start(): this {
    this.unwatch = this.options.registry.watch((change) => {
      if (change.type === "added") this.attach(change.record);
      else this.detach(change.record.id, change.record);
    });
    for (const record of this.options.registry.list()) this.attach(record);
    if (this.options.scrapeIntervalMs > 0) {
      this.timer = setInterval(() => this.scrapeAll(), this.options.scrapeIntervalMs);
      this.timer.unref();
      this.scrapeAll();
    }
    return this;
  }

  /** Event-source stats per worker (for diagnostics). */
  sources(): { workerId: string; source: VllmEventSource | null }[] {
    return [...this.feeds.values()].map((f) => ({ workerId: f.record.id, source: f.source }));
  }

  /** Per worker: its event source's counters and what the sink applied (read at scrape time). */
  kvEventStats(): WorkerKvEventStats[] {
    return [...this.feeds.values()].map((f) => ({
      workerId: f.record.id,
      model: f.record.model,
      source: f.source?.stats() ?? null,
      applied: f.applied,
    }));
  }

  /** Scrapes every worker now (tests, and the first round at start). */
  async scrapeAll(): Promise<void> {
    if (!this.options.onMetrics) return;
    await Promise.all([...this.feeds.values()].map((f) => this.scrape(f)));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unwatch?.();
    if (this.timer) clearInterval(this.timer);
    const sources = [...this.feeds.values()].map((f) => f.source).filter((s): s is VllmEventSource => s !== null);
    this.feeds.clear();
    await Promise.all(sources.map((s) => s.close().catch(() => {})));
  }

  private attach(record: WorkerRecord): void {
    if (this.closed) return;
    const old = this.feeds.get(record.id);
    if (old) this.detach(record.id, null);
    const feed: Feed = { record, source: null, applied: emptyApplyCounts(), scraping: false, scrapeFailures: 0 };
    const reporting = record.kvEvents && record.kvEvents.endpoints.length > 0 ? this.options.sinkFor(record) : null;
    if (reporting && record.kvEvents) {
      const sink = countingSink(reporting, record.model, feed.applied, this.skips);
      const ranks = record.dpRanks;
      // VllmEventSource numbers ranks by endpoint position; the record says which rank each is.
      const mapped: KvEventSink = {
        applyBatch: (workerId, index, seq, payload) => sink.applyBatch(workerId, ranks[index] ?? index, seq, payload),
        clear: (workerId, index) => sink.clear(workerId, ranks[index] ?? index),
      };
      const source = new VllmEventSource({
        workerId: record.id,
        endpoint: record.kvEvents.endpoints,
        replayEndpoint: record.kvEvents.replayEndpoints,
        topic: record.kvEvents.topic,
        dataParallelSize: record.kvEvents.endpoints.length,
        catchUp: record.kvEvents.replayEndpoints !== null,
        sink: mapped,
        ...(record.kvEvents.subscriberBinds ? { bind: true } : {}),
      });
      source.on("sinkError", (e) => this.options.log?.(`KV events of ${e.workerId} rank ${e.dpRank}: the router rejected a batch (${String(e.error)})`));
      source.on("stale", (e) => this.options.log?.(`KV events of ${e.workerId} rank ${e.dpRank}: view dropped (${e.reason}); rebuilding`));
      feed.source = source.start();
    }
    this.feeds.set(record.id, feed);
    if (this.options.onMetrics && this.options.scrapeIntervalMs > 0) void this.scrape(feed);
  }

  private detach(id: string, removed: WorkerRecord | null): void {
    const feed = this.feeds.get(id);
    if (!feed) return;
    this.feeds.delete(id);
    void feed.source?.close().catch(() => {});
    if (removed) this.options.onRemoved?.(removed);
  }

  private async scrape(feed: Feed): Promise<void> {
    if (feed.scraping || this.closed) return;
    feed.scraping = true;
    const timeout = Math.max(500, Math.min(5000, this.options.scrapeIntervalMs * 2));
    try {
      const get = this.options.get ?? fetchText;
      const { status, text } = await get(feed.record.url, "/metrics", timeout);
      if (status !== 200) throw new Error(`HTTP ${status}`);
      if (this.feeds.get(feed.record.id) !== feed) return;
      feed.scrapeFailures = 0;
      this.options.onMetrics?.(feed.record, text);
    } catch (err) {
      feed.scrapeFailures++;
      if (feed.scrapeFailures === 3) this.options.log?.(`cannot scrape ${feed.record.url}/metrics (${err instanceof Error ? err.message : String(err)})`);
    } finally {
      feed.scraping = false;
    }
  }
}

async function fetchText(url: string, path: string, timeoutMs: number): Promise<{ status: number; text: string }> {
  const res = await fetch(url + path, { signal: AbortSignal.timeout(timeoutMs) });
  return { status: res.status, text: await res.text() };
}
