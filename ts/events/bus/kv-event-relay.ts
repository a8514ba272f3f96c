/**
 * KvEventRelay: the sink of a VllmEventSource (or several) that puts every batch on an event bus
 * once, in order per (worker, dpRank), riding out bus outages.
 *
 * Per (worker, dpRank) a lane: a FIFO of records and at most one publish in flight. The next
 * record of a lane is published only once the bus has acknowledged the previous one (stored, or
 * recognised as a duplicate by its id), so a lane's records reach the log in the order the source
 * produced them even when publishes fail midway (a pipelined publisher could see record n lost in
 * a dead connection while n+1 lands after the reconnect). Lanes run in parallel; their relative
 * order does not matter (a replica's state per lane depends only on that lane's records).
 *
 * One publish per record would cap a lane at one record per round trip, so when batches queue
 * up behind the one in flight (a burst, or the backlog after an outage), the next publish takes
 * up to `maxGroupBatches` of them as one group (`publishGroup`: one NATS message, all or none).
 * A unit (a group, a single batch or a clear) is frozen when first sent: a retry resends exactly
 * it, under the same id. With nothing queued each batch goes alone, at once.
 *
 * A failed publish is retried with the same record id, after a back-off, until the bus takes it:
 * a publish that did land but whose ack was lost comes back as a duplicate and is not stored
 * twice. While the bus is unreachable records wait in the lanes, bounded by `maxBufferedBatches`
 * and `maxBufferedBytes` over all lanes. A batch that does not fit (or that the bus refuses for
 * good, e.g. larger than its max payload) is dropped and counted, and its lane gets a clear
 * record, so replicas forget that worker's view rather than keep one with a hole in it.
 *
 * Epochs: each lane starts at the relay's epoch (default: Date.now() at construction) and each
 * clear starts a new one, max(epoch + 1, Date.now()), so record ids stay unique across worker
 * restarts (vLLM restarts its seq at 0) and relay restarts. One relay per worker: two relays
 * publishing the same worker would each be applied.
 */
import { EventEmitter } from "node:events";
import { InvalidConfigError } from "../../errors.js";
import type { KvEventSink } from "../types.js";
import { EventBusError, GROUP_FRAME_BYTES, type BatchRecord, type BusRecord, type ClearRecord, type EventBus } from "./types.js";

export interface KvEventRelayOptions {
  bus: EventBus;
  /** Model of the relayed workers (subject token, replica filter). Default: the bus's. */
  model?: string;
  /** Batches waiting for the bus, over all lanes. Default 100,000. */
  maxBufferedBatches?: number;
  /** Payload bytes waiting for the bus, over all lanes. Default 256 MiB. */
  maxBufferedBytes?: number;
  /**
   * Publish a clear (reason `relay_start`) before the first record of each (worker, dpRank), so
   * a replica never mixes what a previous relay run published with this run's batches (events
   * between the two runs were never seen). Default true.
   */
  clearOnStart?: boolean;
  /** Epoch of this run. Default Date.now(). */
  epoch?: number;
  /** First retry delay of a failed publish. Default 50 ms; doubles up to `retryMaxMs`. */
  retryInitialMs?: number;
  /** Default 1000 ms. */
  retryMaxMs?: number;
  /** Most batches per publish when a lane has a backlog. Default 64; 1: one publish per batch. */
  maxGroupBatches?: number;
  /** Most bytes per group (payloads + 12 each), at most the bus's maxGroupBytes. Default 256 KiB. */
  maxGroupBytes?: number;
}

export interface KvEventRelayStats {
  /** Batches handed in by the source. */
  received: number;
  /** Clear records queued, by reason. */
  clears: Record<string, number>;
  /** Records the bus acknowledged (acked + deduped). */
  published: number;
  /** Publishes acknowledged (a group counts once). */
  messages: number;
  /** Of those, stored as new records. */
  acked: number;
  /** Of those, recognised as duplicates (a retry of a publish that had landed). */
  deduped: number;
  /** Failed publish attempts (each retried). */
  retries: number;
  /** Records waiting for the bus (including those in flight). */
  buffered: number;
  bufferedBytes: number;
  /** Batches dropped (their lanes were cleared), by reason in `dropReasons`. */
  dropped: number;
  dropReasons: Record<string, number>;
  /** Highest log position acknowledged (0: none yet). */
  lastAckSeq: number;
  /** The bus can take records now. */
  connected: boolean;
  lanes: number;
}

export interface KvEventRelayEvents {
  /** Batches were dropped from a lane (`reason`: relay_overflow, oversize, rejected). */
  drop: [{ workerId: string; dpRank: number; batches: number; reason: string }];
  /** A publish failed and will be retried. */
  publishError: [{ workerId: string; dpRank: number; error: unknown }];
}

interface Lane {
  workerId: string;
  dpRank: number;
  epoch: number;
  /** The lane has started (its first record, a clear with clearOnStart, is queued). */
  started: boolean;
  /** The first clear keeps the relay's epoch; later ones move it on. */
  cleared: boolean;
  /** queue[head..] wait. */
  queue: BusRecord[];
  head: number;
  /** queue[head .. head + unit) is the unit being published (0: none formed). */
  unit: number;
  /** The unit's publish is awaiting its answer. */
  inFlight: boolean;
  attempts: number;
  timer: NodeJS.Timeout | null;
  /** Batches were dropped after the tail clear: the next accepted batch needs a new clear first. */
  needsClear: string | null;
}

export class KvEventRelay extends EventEmitter<KvEventRelayEvents> implements KvEventSink {
  private readonly bus: EventBus;
  private readonly model: string | undefined;
  private readonly maxBatches: number;
  private readonly maxBytes: number;
  private readonly clearOnStart: boolean;
  private readonly baseEpoch: number;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;
  private maxGroupBatches: number;
  private readonly maxGroupBytes: number;
  private readonly lanes = new Map<string, Lane>();
  private bufferedBatches = 0;
  private bufferedRecords = 0;
  private bufferedBytes = 0;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  private readonly counters = {
    received: 0,
    published: 0,
    messages: 0,
    acked: 0,
    deduped: 0,
    retries: 0,
    dropped: 0,
    lastAckSeq: 0,
  };
  private readonly clearReasons: Record<string, number> = {};
  private readonly dropReasons: Record<string, number> = {};

  constructor(options: KvEventRelayOptions) {
    super();
    this.bus = options.bus;
    this.model = options.model;
    this.maxBatches = atLeast(options.maxBufferedBatches ?? 100_000, 1, "maxBufferedBatches");
    this.maxBytes = atLeast(options.maxBufferedBytes ?? 256 * 1024 * 1024, 1, "maxBufferedBytes");
    this.clearOnStart = options.clearOnStart ?? true;
    this.baseEpoch = atLeast(options.epoch ?? Date.now(), 0, "epoch");
    this.retryInitialMs = atLeast(options.retryInitialMs ?? 50, 1, "retryInitialMs");
    this.retryMaxMs = atLeast(options.retryMaxMs ?? 1000, this.retryInitialMs, "retryMaxMs");
    this.maxGroupBatches = atLeast(options.maxGroupBatches ?? 64, 1, "maxGroupBatches");
    this.maxGroupBytes = atLeast(options.maxGroupBytes ?? 256 * 1024, 1, "maxGroupBytes");
  }

  /** KvEventSink: queue one batch of (workerId, dpRank) for the bus. */
  applyBatch(workerId: string, dpRank: number, seq: bigint, payload: Buffer): void {
    if (this.closed) return;
    this.counters.received++;
    const lane = this.lane(workerId, dpRank);
    if (payload.length > this.bus.maxPayloadBytes) {
      this.drop(lane, 1, "oversize");
      return;
    }
    if (this.bufferedBatches + 1 > this.maxBatches || this.bufferedBytes + payload.length > this.maxBytes) {
      this.drop(lane, 1, "relay_overflow");
      return;
    }
    if (lane.needsClear) this.enqueueClear(lane, lane.needsClear);
    const record: BatchRecord = { kind: "batch", workerId, dpRank, epoch: lane.epoch, seq, payload };
    if (this.model !== undefined) record.model = this.model;
    this.enqueue(lane, record);
  }

  /** KvEventSink: queue a clear of (workerId, dpRank) (reason `source`). */
  clear(workerId: string, dpRank: number): void {
    this.clearLane(workerId, dpRank, "source");
  }

  /** Queues a clear of (workerId, dpRank) with a reason of the caller's. */
  clearLane(workerId: string, dpRank: number, reason: string): void {
    if (this.closed) return;
    const lane = this.lane(workerId, dpRank, true);
    this.enqueueClear(lane, reason);
  }

  /** Resolves once every queued record has been acknowledged (or the relay is closed). */
  flush(): Promise<void> {
    if (this.bufferedRecords === 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops publishing; records still queued are abandoned (call `flush()` first to keep them). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const lane of this.lanes.values()) if (lane.timer) clearTimeout(lane.timer);
    for (const w of this.idleWaiters.splice(0)) w();
  }

  stats(): KvEventRelayStats {
    const c = this.counters;
    return {
      received: c.received,
      clears: { ...this.clearReasons },
      published: c.published,
      messages: c.messages,
      acked: c.acked,
      deduped: c.deduped,
      retries: c.retries,
      buffered: this.bufferedRecords,
      bufferedBytes: this.bufferedBytes,
      dropped: c.dropped,
      dropReasons: { ...this.dropReasons },
      lastAckSeq: c.lastAckSeq,
      connected: this.bus.connected,
      lanes: this.lanes.size,
    };
  }

  private lane(workerId: string, dpRank: number, forClear = false): Lane {
    const key = `${workerId}\0${dpRank}`;
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = {
        workerId,
        dpRank,
        epoch: this.baseEpoch,
        started: false,
        cleared: false,
        queue: [],
        head: 0,
        unit: 0,
        inFlight: false,
        attempts: 0,
        timer: null,
        needsClear: null,
      };
      this.lanes.set(key, lane);
    }
    if (!lane.started) {
      lane.started = true;
      // A clear from the source is itself the lane's first record.
      if (this.clearOnStart && !forClear) this.enqueueClear(lane, "relay_start");
    }
    return lane;
  }

  private enqueueClear(lane: Lane, reason: string): void {
    if (lane.cleared) lane.epoch = Math.max(lane.epoch + 1, Date.now());
    lane.cleared = true;
    lane.needsClear = null;
    // Two clears in a row clear once: replace a tail clear that is not being published.
    const tail = lane.queue.length - 1;
    if (tail >= lane.head + lane.unit && lane.queue[tail]?.kind === "clear") {
      lane.queue.pop();
      this.bufferedRecords--;
    }
    const record: ClearRecord = { kind: "clear", workerId: lane.workerId, dpRank: lane.dpRank, epoch: lane.epoch, reason };
    if (this.model !== undefined) record.model = this.model;
    this.clearReasons[reason] = (this.clearReasons[reason] ?? 0) + 1;
    this.enqueue(lane, record);
  }

  private enqueue(lane: Lane, record: BusRecord): void {
    lane.queue.push(record);
    this.bufferedRecords++;
    if (record.kind === "batch") {
      this.bufferedBatches++;
      this.bufferedBytes += record.payload.length;
    }
    this.pump(lane);
  }

  /**
   * Drops `extra` batches that never made it into the lane plus the lane's batches that are not
   * in flight (a clear follows them anyway), and makes sure a clear follows the hole.
   */
  private drop(lane: Lane, extra: number, reason: string): void {
    let dropped = extra;
    const kept: BusRecord[] = [];
    const inFlightEnd = lane.inFlight ? lane.head + lane.unit : lane.head;
    for (let i = lane.head; i < lane.queue.length; i++) {
      const r = lane.queue[i] as BusRecord;
      if (i < inFlightEnd || r.kind === "clear") kept.push(r);
      else {
        dropped++;
        this.release(r);
      }
    }
    lane.queue = kept;
    lane.head = 0;
    // A unit waiting for a retry may have lost batches: form it again. One in flight is kept whole.
    if (!lane.inFlight) lane.unit = 0;
    this.counters.dropped += dropped;
    this.dropReasons[reason] = (this.dropReasons[reason] ?? 0) + dropped;
    const tail = kept[kept.length - 1];
    const tailIsPendingClear = tail?.kind === "clear" && kept.length > (lane.inFlight ? lane.unit : 0);
    // A clear already waiting at the tail comes after every kept batch; the batches dropped came
    // after it, so the next batch accepted needs a clear of its own.
    if (tailIsPendingClear) lane.needsClear = reason;
    else this.enqueueClear(lane, reason);
    this.emit("drop", { workerId: lane.workerId, dpRank: lane.dpRank, batches: dropped, reason });
    this.checkIdle();
  }

  private release(record: BusRecord): void {
    this.bufferedRecords--;
    if (record.kind === "batch") {
      this.bufferedBatches--;
      this.bufferedBytes -= record.payload.length;
    }
  }

  private pump(lane: Lane): void {
    if (this.closed || lane.inFlight || lane.timer || lane.head >= lane.queue.length) return;
    if (lane.unit === 0) lane.unit = this.formUnit(lane);
    const unit = lane.queue.slice(lane.head, lane.head + lane.unit);
    const first = unit[0] as BusRecord;
    lane.inFlight = true;
    const publish = unit.length === 1 ? this.bus.publish(first) : this.bus.publishGroup(unit as BatchRecord[]);
    publish.then(
      (ack) => {
        lane.inFlight = false;
        lane.attempts = 0;
        this.counters.messages++;
        this.counters.published += unit.length;
        if (ack.duplicate) this.counters.deduped += unit.length;
        else this.counters.acked += unit.length;
        if (ack.seq > this.counters.lastAckSeq) this.counters.lastAckSeq = ack.seq;
        this.shiftUnit(lane, unit);
        this.pump(lane);
        this.checkIdle();
      },
      (err: unknown) => {
        lane.inFlight = false;
        if (this.closed) return;
        if (err instanceof EventBusError && err.reason === "closed") {
          this.close();
          return;
        }
        if (err instanceof EventBusError && err.reason === "rejected") {
          if (unit.length > 1) {
            // The bus refuses groups this large (e.g. a stream's max_msg_size): send singly.
            this.maxGroupBatches = 1;
            lane.unit = 0;
            this.pump(lane);
            return;
          }
          if (first.kind === "batch") {
            this.shiftUnit(lane, unit);
            this.drop(lane, 1, "rejected");
            this.pump(lane);
            return;
          }
        }
        this.counters.retries++;
        this.emit("publishError", { workerId: lane.workerId, dpRank: lane.dpRank, error: err });
        const delay = Math.min(this.retryMaxMs, this.retryInitialMs * 2 ** Math.min(lane.attempts, 20));
        lane.attempts++;
        lane.timer = setTimeout(() => {
          lane.timer = null;
          this.pump(lane);
        }, delay);
      },
    );
  }

  /** The next unit from the head: a clear alone, or consecutive batches within the group limits. */
  private formUnit(lane: Lane): number {
    const first = lane.queue[lane.head] as BusRecord;
    if (first.kind === "clear" || this.maxGroupBatches === 1) return 1;
    const budget = Math.min(this.maxGroupBytes, this.bus.maxGroupBytes);
    let n = 1;
    let bytes = GROUP_FRAME_BYTES + first.payload.length;
    for (let i = lane.head + 1; i < lane.queue.length && n < this.maxGroupBatches; i++) {
      const r = lane.queue[i] as BusRecord;
      if (r.kind !== "batch" || bytes + GROUP_FRAME_BYTES + r.payload.length > budget) break;
      bytes += GROUP_FRAME_BYTES + r.payload.length;
      n++;
    }
    return n;
  }

  /** Removes a published unit from the head (unless a drop already took it). */
  private shiftUnit(lane: Lane, unit: BusRecord[]): void {
    lane.unit = 0;
    if (lane.queue[lane.head] !== unit[0]) return;
    for (const record of unit) {
      lane.queue[lane.head] = undefined as unknown as BusRecord;
      lane.head++;
      this.release(record);
    }
    if (lane.head === lane.queue.length) {
      lane.queue = [];
      lane.head = 0;
    } else if (lane.head > 1024 && lane.head * 2 > lane.queue.length) {
      lane.queue = lane.queue.slice(lane.head);
      lane.head = 0;
    }
  }

  private checkIdle(): void {
    if (this.bufferedRecords === 0) for (const w of this.idleWaiters.splice(0)) w();
  }
}

function atLeast(value: number, min: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < min) throw new InvalidConfigError(`${name} must be an integer >= ${min}, got ${value}`);
  return value;
}
