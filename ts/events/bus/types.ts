/**
 * The event bus: how KV-event batches travel from the process that reads a worker's ZMQ
 * publisher to every router replica. Two implementations behind one small interface, drop-in for
 * each other: `InProcessBus` (the embedded default) and `NatsJetStreamBus` (fleet mode). See
 * docs/event-bus.md.
 *
 * A bus is an ordered log of records. `publish` appends one; `subscribe` hands every record, in
 * log order, to a handler, with its position in the log (`seq`, 1-based, increasing; gaps are
 * possible where a bounded log discarded records). Every subscriber sees the same order, which is
 * what makes two replicas reach the same state.
 */
import { KvrouteError } from "../../errors.js";

/** One vLLM KVEventBatch of one (worker, dpRank), the msgpack bytes exactly as published. */
export interface BatchRecord {
  kind: "batch";
  workerId: string;
  dpRank: number;
  /**
   * Which run of the (worker, dpRank) stream the seq belongs to: a new epoch starts with every
   * clear. With `seq` it names the batch uniquely (the NATS message id).
   */
  epoch: number;
  /** vLLM's sequence number of the batch (increasing within an epoch). */
  seq: bigint;
  payload: Buffer;
  /** The model the worker serves (subject token and filter). Default: the bus's `model`. */
  model?: string;
}

/**
 * Forget every block of (workerId, dpRank): the worker restarted, its view went stale, or the
 * relay had to drop batches. It travels in the same ordered log as batches, so every replica
 * clears at the same point. It starts epoch `epoch`.
 */
export interface ClearRecord {
  kind: "clear";
  workerId: string;
  dpRank: number;
  epoch: number;
  /** Why, e.g. `source` (the event source asked), `relay_start`, `relay_overflow`, `oversize`. */
  reason: string;
  model?: string;
}

export type BusRecord = BatchRecord | ClearRecord;

/** Bytes a batch adds to a group beyond its payload (its seq and length). */
export const GROUP_FRAME_BYTES = 12;

/** The log's answer to a publish. */
export interface PublishAck {
  /** Position of the record in the log. */
  seq: number;
  /** The log already held a record with the same id (a retry): nothing was appended. */
  duplicate: boolean;
}

/** Where a record sits in the log, handed to subscribers beside it. */
export interface RecordMeta {
  /** Position in the log (NATS: the stream sequence). */
  seq: number;
  /** Index of the record within a group published with `publishGroup` (0 otherwise). */
  index: number;
}

/**
 * Called once per record, in log order. Synchronous: the next record is not delivered before it
 * returns. A handler that throws does not stop the subscription (the error is counted).
 */
export type RecordHandler = (record: BusRecord, meta: RecordMeta) => void;

export interface SubscribeOptions {
  /** Replay the log from its first retained record. Default false: records published from now on. */
  fromStart?: boolean;
  /** Replay from this log position (inclusive); wins over `fromStart`. */
  startSeq?: number;
  /** Only records of this model. */
  model?: string;
}

export interface BusSubscriptionStats {
  /** Records handed to the handler. */
  delivered: number;
  /** Last log position handed to the handler (0: none yet). */
  lastSeq: number;
  /** Messages on the log that were not kvroute records (skipped). */
  invalid: number;
  /** Handler calls that threw. */
  handlerErrors: number;
  /** Times the subscription had to be re-established (NATS: consumer recreated). */
  resets: number;
}

export interface BusSubscription {
  /** Stops delivery; no handler call happens after the returned promise resolves. */
  close(): Promise<void>;
  /** Resolves when the subscription has ended (closed, or the bus was closed). */
  readonly closed: Promise<void>;
  stats(): BusSubscriptionStats;
}

/** The interface both buses implement. */
export interface EventBus {
  /** Appends a record. Rejects (EventBusError) when the log cannot take it now; retrying is safe. */
  publish(record: BusRecord): Promise<PublishAck>;
  /**
   * Appends consecutive batches of one (worker, dpRank), all or none, in order, as one unit (NATS:
   * one message, its id the first batch's). Subscribers get them one by one, with `meta.index`.
   * Retrying is safe only with exactly the same group.
   */
  publishGroup(records: readonly BatchRecord[]): Promise<PublishAck>;
  /** Largest group: the sum over its batches of payload + GROUP_FRAME_BYTES. */
  readonly maxGroupBytes: number;
  /** Resolves once the subscription is established (replay, if asked, starts right after). */
  subscribe(handler: RecordHandler, options?: SubscribeOptions): Promise<BusSubscription>;
  /** Whether the bus can take records now (always true in process). */
  readonly connected: boolean;
  /** Largest payload a batch record may carry (NATS: the server's max_payload less headers). */
  readonly maxPayloadBytes: number;
  /** Closes every subscription and the connection. */
  close(): Promise<void>;
}

export type EventBusErrorReason =
  /** The bus is closed. */
  | "closed"
  /** The bus cannot be reached or did not answer in time (transient: retry). */
  | "unavailable"
  /** The bus refused the record for good (too large, no such stream...). */
  | "rejected"
  /** The stream exists with settings that could not be brought in line. */
  | "stream_config";

/** A bus operation failed. `reason` says whether a retry can help (`unavailable`). */
export class EventBusError extends KvrouteError {
  readonly reason: EventBusErrorReason;
  constructor(reason: EventBusErrorReason, message: string, options?: { cause?: unknown }) {
    super("KVR_INTERNAL", message, options);
    this.reason = reason;
  }
}

/**
 * The record's id, the NATS `Nats-Msg-Id`: `<worker>:<dpRank>:<epoch>:<seq>` for a batch,
 * `<worker>:<dpRank>:<epoch>:clear` for a clear; the worker id percent-encoded
 * (`encodeURIComponent`, so a `:` in it cannot make two ids equal).
 */
export function recordId(record: BusRecord): string {
  const tail = record.kind === "batch" ? record.seq.toString() : "clear";
  return `${encodeURIComponent(record.workerId)}:${record.dpRank}:${record.epoch}:${tail}`;
}
