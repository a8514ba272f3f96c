/**
 * InProcessBus: the embedded default. `publish` hands the record to every subscriber
 * synchronously, before it returns, in publish order; it keeps the last records (bounded by count
 * and bytes, oldest dropped first) so that a subscriber can start late with `fromStart`, as a
 * replica replays a JetStream stream.
 *
 * Invariants: `log` holds records with consecutive positions `firstSeq .. nextSeq - 1`, its
 * payload bytes are `logBytes <= maxBytes` and its length `<= maxRecords`. A record published
 * from inside a handler is appended at once and delivered after the current record has reached
 * every subscriber, so all subscribers see one order.
 */
import { InvalidConfigError } from "../../errors.js";
import {
  EventBusError,
  type BatchRecord,
  type BusRecord,
  type BusSubscription,
  type BusSubscriptionStats,
  type EventBus,
  type PublishAck,
  type RecordHandler,
  type SubscribeOptions,
} from "./types.js";

export interface InProcessBusOptions {
  /** Records kept for late subscribers. Default 10,000; 0 keeps none. */
  maxRecords?: number;
  /** Payload bytes kept for late subscribers. Default 64 MiB. */
  maxBytes?: number;
  /** Model of records that name none. Default "default". */
  model?: string;
  /** Default 64 MiB (nothing else bounds a payload in process). */
  maxPayloadBytes?: number;
}

interface Entry {
  seq: number;
  record: BusRecord;
}

class InProcessSubscription implements BusSubscription {
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  open = true;
  readonly counters: BusSubscriptionStats = { delivered: 0, lastSeq: 0, invalid: 0, handlerErrors: 0, resets: 0 };

  constructor(
    private readonly bus: InProcessBus,
    private readonly handler: RecordHandler,
    readonly model: string | undefined,
  ) {
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  deliver(entry: Entry, defaultModel: string): void {
    if (!this.open || entry.seq <= this.counters.lastSeq) return;
    this.counters.lastSeq = entry.seq;
    if (this.model !== undefined && (entry.record.model ?? defaultModel) !== this.model) return;
    this.counters.delivered++;
    try {
      this.handler(entry.record, { seq: entry.seq, index: 0 });
    } catch {
      this.counters.handlerErrors++;
    }
  }

  close(): Promise<void> {
    if (this.open) {
      this.open = false;
      this.bus.detach(this);
      this.resolveClosed();
    }
    return this.closed;
  }

  stats(): BusSubscriptionStats {
    return { ...this.counters };
  }
}

export class InProcessBus implements EventBus {
  readonly connected = true;
  readonly maxPayloadBytes: number;
  private readonly maxRecords: number;
  private readonly maxBytes: number;
  private readonly model: string;
  private readonly log: Entry[] = [];
  private logHead = 0;
  private logBytes = 0;
  private nextSeq = 1;
  private readonly subs = new Set<InProcessSubscription>();
  /** Records appended but not yet delivered to every subscriber (publishes from handlers). */
  private readonly outbox: Entry[] = [];
  private delivering = false;
  private isClosed = false;

  constructor(options: InProcessBusOptions = {}) {
    this.maxRecords = nonNegative(options.maxRecords ?? 10_000, "maxRecords");
    this.maxBytes = nonNegative(options.maxBytes ?? 64 * 1024 * 1024, "maxBytes");
    this.maxPayloadBytes = nonNegative(options.maxPayloadBytes ?? 64 * 1024 * 1024, "maxPayloadBytes");
    this.model = options.model ?? "default";
  }

  /** Appends and delivers synchronously; the returned promise is already settled. */
  publish(record: BusRecord): Promise<PublishAck> {
    try {
      return Promise.resolve(this.publishSync(record));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Appends the batches one after the other (one position each); the ack is the last one's. */
  publishGroup(records: readonly BatchRecord[]): Promise<PublishAck> {
    try {
      if (records.length === 0) throw new EventBusError("rejected", "an empty group");
      for (const r of records) {
        if (r.payload.length > this.maxPayloadBytes) {
          throw new EventBusError("rejected", `payload of ${r.payload.length} bytes exceeds ${this.maxPayloadBytes}`);
        }
      }
      let ack: PublishAck = { seq: 0, duplicate: false };
      for (const r of records) ack = this.publishSync(r);
      return Promise.resolve(ack);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  get maxGroupBytes(): number {
    return this.maxPayloadBytes;
  }

  /** `publish` without the promise: appends, delivers, returns the record's position. */
  publishSync(record: BusRecord): PublishAck {
    if (this.isClosed) throw new EventBusError("closed", "the bus is closed");
    if (record.kind === "batch" && record.payload.length > this.maxPayloadBytes) {
      throw new EventBusError("rejected", `payload of ${record.payload.length} bytes exceeds ${this.maxPayloadBytes}`);
    }
    const entry: Entry = { seq: this.nextSeq++, record };
    this.retain(entry);
    this.outbox.push(entry);
    if (!this.delivering) this.drain();
    return { seq: entry.seq, duplicate: false };
  }

  subscribe(handler: RecordHandler, options: SubscribeOptions = {}): Promise<BusSubscription> {
    if (this.isClosed) return Promise.reject(new EventBusError("closed", "the bus is closed"));
    const sub = new InProcessSubscription(this, handler, options.model);
    const from = options.startSeq ?? (options.fromStart ? 1 : this.nextSeq);
    // Replay what is retained, then go live. Records published by the handler during the replay
    // are appended to the log and reached through it.
    sub.counters.lastSeq = from - 1;
    this.subs.add(sub);
    const wasDelivering = this.delivering;
    this.delivering = true;
    try {
      for (let i = this.logHead; i < this.log.length && sub.open; i++) {
        const entry = this.log[i] as Entry;
        if (entry.seq >= from) sub.deliver(entry, this.model);
      }
    } finally {
      this.delivering = wasDelivering;
    }
    if (!this.delivering) this.drain();
    return Promise.resolve(sub);
  }

  /** Positions retained: `first..last` (first > last when empty). */
  retained(): { first: number; last: number; records: number; bytes: number } {
    const records = this.log.length - this.logHead;
    return { first: this.nextSeq - records, last: this.nextSeq - 1, records, bytes: this.logBytes };
  }

  close(): Promise<void> {
    this.isClosed = true;
    for (const sub of [...this.subs]) void sub.close();
    this.log.length = 0;
    this.logHead = 0;
    this.logBytes = 0;
    return Promise.resolve();
  }

  /** @internal */
  detach(sub: InProcessSubscription): void {
    this.subs.delete(sub);
  }

  private drain(): void {
    this.delivering = true;
    try {
      for (let entry = this.outbox.shift(); entry; entry = this.outbox.shift()) {
        for (const sub of this.subs) sub.deliver(entry, this.model);
      }
    } finally {
      this.delivering = false;
    }
  }

  private retain(entry: Entry): void {
    if (this.maxRecords === 0) return;
    this.log.push(entry);
    this.logBytes += sizeOf(entry.record);
    while (this.log.length - this.logHead > this.maxRecords || (this.logBytes > this.maxBytes && this.log.length > this.logHead)) {
      const old = this.log[this.logHead] as Entry;
      this.log[this.logHead] = undefined as unknown as Entry;
      this.logHead++;
      this.logBytes -= sizeOf(old.record);
    }
    // Compact once the dead prefix is as long as the live part.
    if (this.logHead > 1024 && this.logHead * 2 > this.log.length) {
      this.log.splice(0, this.logHead);
      this.logHead = 0;
    }
  }
}

function sizeOf(record: BusRecord): number {
  return record.kind === "batch" ? record.payload.length : 0;
}

function nonNegative(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidConfigError(`${name} must be an integer >= 0, got ${value}`);
  return value;
}
