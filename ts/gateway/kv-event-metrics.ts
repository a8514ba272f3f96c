/**
 * The KV-event path on the gateway's /metrics, per worker: what arrived, what was applied, what
 * was dropped and why, sequence gaps, replays, resyncs, ZMTP disconnects, and the router's parity
 * flags. Every series is computed at scrape time from counters the event sources, WorkerFeeds and
 * the router keep anyway: nothing here runs per batch or per request. A worker that leaves the
 * registry loses its series; one that comes back starts from zero (as its engine does).
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { KvEventStats } from "../core/kv-indexer.js";
import type { WorkerKvEventStats } from "./worker-feeds.js";

export interface KvEventMetricsSources {
  workers(): WorkerKvEventStats[];
  /** A model's event counters with the per-(worker, rank) parity flags (router.eventStats). */
  eventStats(model: string): KvEventStats | undefined;
}

type Labels = Record<string, string>;
type Rows = [Labels, number][];

/** A counter whose value is read, not incremented: reset and refilled on each scrape. */
function readCounter(registers: Registry[], name: string, help: string, labelNames: string[], rows: () => Rows): void {
  new Counter({
    name,
    help,
    labelNames,
    registers,
    collect() {
      this.reset();
      for (const [labels, v] of rows()) this.inc(labels, v);
    },
  });
}

function readGauge(registers: Registry[], name: string, help: string, labelNames: string[], rows: () => Rows): void {
  new Gauge({
    name,
    help,
    labelNames,
    registers,
    collect() {
      this.reset();
      for (const [labels, v] of rows()) this.set(labels, v);
    },
  });
}

/** Rows of one counter per worker with an event source. */
function perSource(src: KvEventMetricsSources, f: (w: WorkerKvEventStats & { source: NonNullable<WorkerKvEventStats["source"]> }) => Rows): () => Rows {
  return () => src.workers().flatMap((w) => (w.source ? f(w as WorkerKvEventStats & { source: NonNullable<WorkerKvEventStats["source"]> }) : []));
}

export function registerKvEventMetrics(registry: Registry, src: KvEventMetricsSources): void {
  const r = [registry];
  const one = (worker: string, v: number): Rows => [[{ worker }, v]];
  readCounter(r, "kvroute_kv_event_messages_received_total", "KV-event messages received from a worker's publisher (live, all DP ranks)", ["worker"], perSource(src, (w) => one(w.workerId, w.source.received)));
  readCounter(r, "kvroute_kv_event_batches_applied_total", "KV-event batches that decoded and were applied to the router's index", ["worker"], perSource(src, (w) => one(w.workerId, w.applied.batches)));
  readCounter(r, "kvroute_kv_event_blocks_stored_total", "Blocks stored in the router's index from a worker's events", ["worker"], perSource(src, (w) => one(w.workerId, w.applied.blocksStored)));
  readCounter(r, "kvroute_kv_event_blocks_removed_total", "Blocks removed from the router's index by a worker's events", ["worker"], perSource(src, (w) => one(w.workerId, w.applied.blocksRemoved)));
  readCounter(
    r,
    "kvroute_kv_event_dropped_total",
    "KV-event data dropped, by unit (message: not [topic, seq, payload]; batch: a whole batch; event: one event of a batch) and reason (bad_frames, bad_replay_reply, duplicate, held_overflow, or the decoder's reason)",
    ["worker", "unit", "reason"],
    perSource(src, (w) => {
      const s = w.source;
      const rows: Rows = [
        [{ worker: w.workerId, unit: "message", reason: "bad_frames" }, s.badFrames],
        [{ worker: w.workerId, unit: "message", reason: "bad_replay_reply" }, s.badReplayReplies],
        [{ worker: w.workerId, unit: "batch", reason: "duplicate" }, s.duplicates],
        [{ worker: w.workerId, unit: "batch", reason: "held_overflow" }, s.dropped],
      ];
      for (const [reason, n] of Object.entries(w.applied.malformed)) rows.push([{ worker: w.workerId, unit: "batch", reason }, n]);
      for (const [reason, n] of Object.entries(w.applied.skipped)) rows.push([{ worker: w.workerId, unit: "event", reason }, n]);
      return rows;
    }),
  );
  readCounter(r, "kvroute_kv_event_sequence_gaps_total", "Sequence gaps seen in a worker's live KV events", ["worker"], perSource(src, (w) => one(w.workerId, w.source.gaps)));
  readCounter(r, "kvroute_kv_event_replays_total", "Replays from a worker's replay socket, by result (ok, failed)", ["worker", "result"], perSource(src, (w) => [
    [{ worker: w.workerId, result: "ok" }, w.source.replays.ok],
    [{ worker: w.workerId, result: "failed" }, w.source.replays.failed],
  ]));
  readCounter(
    r,
    "kvroute_kv_event_resyncs_total",
    "Times a worker's view was dropped and rebuilt, by cause (stale: a gap replay could not cover; restart: the seq went back; unreadable_events: a batch's known events could not be read)",
    ["worker", "cause"],
    perSource(src, (w) => [
      [{ worker: w.workerId, cause: "stale" }, w.source.stale],
      [{ worker: w.workerId, cause: "restart" }, w.source.restarts],
      [{ worker: w.workerId, cause: "unreadable_events" }, w.applied.resyncs],
    ]),
  );
  readCounter(r, "kvroute_kv_event_sink_errors_total", "KV-event batches the router's sink threw on", ["worker"], perSource(src, (w) => one(w.workerId, w.source.sinkErrors)));
  readCounter(r, "kvroute_kv_event_zmtp_disconnects_total", "Established KV-event (SUB) connections to a worker that dropped", ["worker"], perSource(src, (w) => one(w.workerId, w.source.disconnects)));
  readCounter(
    r,
    "kvroute_kv_event_zmtp_peer_errors_total",
    "KV-event connections (SUB and replay) closed because of what the peer sent, by reason (too-large, too-many-frames, protocol, timeout, ...)",
    ["worker", "reason"],
    perSource(src, (w) => Object.entries(w.source.peerErrors).map(([reason, n]): [Labels, number] => [{ worker: w.workerId, reason }, n])),
  );
  readGauge(r, "kvroute_kv_event_connected", "1 when every DP rank of the worker has a connected KV-event subscriber", ["worker"], perSource(src, (w) => one(w.workerId, w.source.connected ? 1 : 0)));

  const parity = (flag: "hashMismatch" | "blockSizeMismatch") => (): Rows => {
    const workers = src.workers();
    const ids = new Set(workers.map((w) => w.workerId));
    const rows: Rows = [];
    for (const model of new Set(workers.map((w) => w.model))) {
      for (const p of src.eventStats(model)?.workers ?? []) {
        if (ids.has(p.workerId)) rows.push([{ worker: p.workerId, dp_rank: String(p.dpRank) }, p[flag] ? 1 : 0]);
      }
    }
    return rows;
  };
  readGauge(r, "kvroute_kv_event_hash_mismatch", "1 when a recomputed block hash of the worker differed from the router's (engine keying parity check)", ["worker", "dp_rank"], parity("hashMismatch"));
  readGauge(r, "kvroute_kv_event_block_size_mismatch", "1 when the worker's events carry another block size than the model's", ["worker", "dp_rank"], parity("blockSizeMismatch"));
}
