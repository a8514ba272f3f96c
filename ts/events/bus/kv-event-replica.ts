/**
 * KvEventReplica: one router replica's reader of the event bus. It replays the log from the start
 * (or from a given position) and applies every record, in log order, to its indexer: a batch with
 * `applyEventBatch(workerId, payload)`, a clear with `clearWorker({ workerId, dpRank })`. Replicas
 * that read the same log therefore reach the same indexer state, whenever they start.
 *
 * No record is applied twice: the replica skips log positions at or below the last it applied
 * (a consumer recreated after a reconnect may start a little early), and per (worker, dpRank) a
 * batch whose (epoch, seq) is not past the last one applied (a duplicate stored after the NATS
 * duplicate window had passed). Reconnecting is the bus's job; the replica just sees the records
 * continue.
 */
import type { EventBus, BusRecord, BusSubscription, RecordMeta } from "./types.js";

/** What the replica applies records to; `KvIndexer` is one. */
export interface EventApplier {
  applyEventBatch(workerId: string, payload: Buffer): unknown;
  clearWorker(worker: { workerId: string; dpRank?: number }): unknown;
}

export interface KvEventReplicaOptions {
  bus: EventBus;
  indexer: EventApplier;
  /** Replay the retained log first. Default true (false: only records published from now on). */
  fromStart?: boolean;
  /** Replay from this log position (inclusive), e.g. a snapshot's `lastStreamSeq + 1`. */
  startSeq?: number;
  /** Only this model's records. */
  model?: string;
}

export interface KvEventReplicaStats {
  /** Batches applied. */
  applied: number;
  /** Clears applied. */
  cleared: number;
  /** Batches the indexer could not decode (`malformed` in its answer). */
  malformed: number;
  /** Records skipped as already applied (same lane, epoch and seq, or an older log position). */
  duplicates: number;
  /** Records whose application threw (counted, skipped). */
  errors: number;
  /** Log position of the last record applied (0: none). */
  lastStreamSeq: number;
  /** Log messages that were not kvroute records. */
  invalid: number;
  /** Times the subscription was re-established (NATS: ordered consumer recreated). */
  resets: number;
  connected: boolean;
}

interface LaneState {
  epoch: number;
  /** Last batch seq applied in this epoch; null right after the clear that opened it. */
  seq: bigint | null;
}

export class KvEventReplica {
  private subscription: BusSubscription | null = null;
  private readonly lanes = new Map<string, LaneState>();
  private waiters: { seq: number; resolve: () => void }[] = [];
  /** Index within the group at lastStreamSeq of the last record applied. */
  private lastIndex = Number.MAX_SAFE_INTEGER;
  private readonly counters = { applied: 0, cleared: 0, malformed: 0, duplicates: 0, errors: 0, lastStreamSeq: 0 };

  private constructor(private readonly options: KvEventReplicaOptions) {}

  /** Subscribes and starts applying (the replay, if any, runs in the background). */
  static async start(options: KvEventReplicaOptions): Promise<KvEventReplica> {
    const replica = new KvEventReplica(options);
    replica.subscription = await options.bus.subscribe((record, meta) => replica.apply(record, meta), {
      fromStart: options.fromStart ?? true,
      ...(options.startSeq === undefined ? {} : { startSeq: options.startSeq }),
      ...(options.model === undefined ? {} : { model: options.model }),
    });
    return replica;
  }

  /** Resolves once a record at log position `seq` or later has been applied. */
  waitForSeq(seq: number): Promise<void> {
    if (this.counters.lastStreamSeq >= seq) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ seq, resolve }));
  }

  stats(): KvEventReplicaStats {
    const sub = this.subscription?.stats();
    return {
      ...this.counters,
      invalid: sub?.invalid ?? 0,
      resets: sub?.resets ?? 0,
      connected: this.options.bus.connected,
    };
  }

  /** Stops reading; the indexer keeps its state. */
  async close(): Promise<void> {
    await this.subscription?.close();
    this.subscription = null;
  }

  private apply(record: BusRecord, meta: RecordMeta): void {
    const last = this.counters.lastStreamSeq;
    if (meta.seq < last || (meta.seq === last && meta.index <= this.lastIndex)) {
      this.counters.duplicates++;
      return;
    }
    this.counters.lastStreamSeq = meta.seq;
    this.lastIndex = meta.index;
    const key = `${record.workerId}\0${record.dpRank}`;
    const lane = this.lanes.get(key);
    try {
      if (record.kind === "batch") {
        if (lane && lane.epoch === record.epoch && lane.seq !== null && record.seq <= lane.seq) {
          this.counters.duplicates++;
        } else {
          this.lanes.set(key, { epoch: record.epoch, seq: record.seq });
          const result = this.options.indexer.applyEventBatch(record.workerId, record.payload) as { malformed?: unknown } | undefined;
          if (result && typeof result === "object" && result.malformed !== undefined) this.counters.malformed++;
          else this.counters.applied++;
        }
      } else if (lane && lane.epoch === record.epoch && lane.seq === null) {
        this.counters.duplicates++; // the same clear again, nothing in between
      } else {
        this.lanes.set(key, { epoch: record.epoch, seq: null });
        this.options.indexer.clearWorker({ workerId: record.workerId, dpRank: record.dpRank });
        this.counters.cleared++;
      }
    } catch {
      this.counters.errors++;
    }
    if (this.waiters.length > 0) {
      const ready = this.waiters.filter((w) => w.seq <= meta.seq);
      if (ready.length > 0) {
        this.waiters = this.waiters.filter((w) => w.seq > meta.seq);
        for (const w of ready) w.resolve();
      }
    }
  }
}
