/**
 * VllmEventSource: one worker's KV events, from vLLM's ZMQ publisher (docs/vllm-kv-events.md,
 * sections 5, 6 and 8) to a sink, in order, each batch once, per data-parallel rank.
 *
 * Per rank: a SUB socket on the rank's endpoint (vLLM's port offset) and, when a replay endpoint
 * is configured, a short-lived DEALER per replay. The rules, applied to `[topic, seq, payload]`:
 *
 * - the live seq is not above the previous live seq: the publisher started over (vLLM counts
 *   from 0 again when the engine restarts) -> `restart`, sink.clear, then as a first message;
 * - first message (no baseline yet): delivered, it becomes the baseline; with `catchUp` and a
 *   replay endpoint, the publisher's buffered history is replayed first (from seq 0);
 * - seq <= last otherwise: a live copy of a batch a replay already applied (replies and live
 *   messages travel on different connections, either may arrive first) -> dropped;
 * - seq = last + 1: delivered;
 * - seq > last + 1: a gap -> `gap`, then replay (below); without a replay endpoint -> `stale`,
 *   sink.clear, then as a first message.
 *
 * Replay: live messages of the rank are held (at most `maxPendingBatches`; more are dropped and
 * show up as a new gap); the DEALER asks for everything from `last` (one before the gap, the
 * anchor) and applies replayed batches in order as they arrive, then the held live messages,
 * dropping those already applied. Replayed events therefore never land after events that
 * followed them. The anchor proves the replay comes from the same publisher run: its payload
 * must equal the one we applied at that seq (batches carry a float64 timestamp); if it differs
 * the worker restarted (-> `restart`, clear, apply what was replayed). If the replay starts past
 * the anchor (the ring no longer has it), returns nothing, or times out -> `stale`, clear, and
 * the view is rebuilt from the batches that follow. A replay that makes no progress is not
 * repeated.
 *
 * After the SUB reconnects, vLLM's seq alone cannot tell a network blip from a restarted worker
 * that happens to continue at last + 1; with a replay endpoint the first message after a
 * reconnect is therefore checked through the same anchor replay.
 */
import { EventEmitter } from "node:events";
import { InvalidConfigError } from "../errors.js";
import type { KvEventSink } from "./types.js";
import { encodeSeq, endpointForRank, REPLAY_END_SEQ } from "./vllm-event-publisher.js";
import { DealerSocket } from "./zmtp/dealer-socket.js";
import type { ZmtpSocketOptions } from "./zmtp/socket.js";
import { SubSocket } from "./zmtp/sub-socket.js";

export interface VllmEventSourceOptions {
  workerId: string;
  /**
   * The worker's KV-event endpoint as subscribers reach it (`tcp://host:5557`); rank r is at
   * endpointForRank(endpoint, r). Or one endpoint per rank (e.g. ephemeral ports).
   */
  endpoint: string | readonly string[];
  /** The replay (ROUTER) endpoint, same forms; none: gaps mark the view stale. */
  replayEndpoint?: string | readonly string[] | null;
  /** Topic prefix to subscribe to. Default "" (everything; vLLM's default topic is ""). */
  topic?: string;
  /** Data-parallel ranks 0..n-1. Default: the number of endpoints given, or 1. */
  dataParallelSize?: number;
  sink: KvEventSink;
  /** With a replay endpoint: before the first live batch, replay the publisher's buffer from 0. */
  catchUp?: boolean;
  /** A replay that has not ended (end marker) by then fails. Default 5000 ms. */
  replayTimeoutMs?: number;
  /** Live batches held per rank during a replay. Default 10000. */
  maxPendingBatches?: number;
  /** Transport tuning for the SUB and DEALER sockets (reconnect backoff, heartbeats, limits). */
  socket?: ZmtpSocketOptions;
  /**
   * The SUB binds the endpoints and the worker's PUB connects to them: vLLM's connect mode, for
   * an endpoint without `*` or `::` (`tcp://127.0.0.1:5557`). Default false (the SUB connects).
   */
  bind?: boolean;
}

export interface RankEvent {
  workerId: string;
  dpRank: number;
}

export interface VllmEventSourceEvents {
  connected: [RankEvent & { endpoint: string }];
  disconnected: [RankEvent & { endpoint: string; error: Error | undefined }];
  gap: [RankEvent & { expected: bigint; received: bigint }];
  /** A replay ended: `ok` when it covered what was asked (or, catching up, whatever was buffered). */
  replay: [RankEvent & { fromSeq: bigint; batches: number; ok: boolean; reason?: string }];
  /** The rank's view was dropped (sink.clear) and is rebuilt from the batches that follow. */
  stale: [RankEvent & { reason: string }];
  /** The worker restarted (seq went back); its view was dropped (sink.clear). */
  restart: [RankEvent & { previousSeq: bigint; seq: bigint }];
  /** The sink threw; the batch counts as applied (the sequence moves on). */
  sinkError: [RankEvent & { seq: bigint | null; error: unknown }];
}

export interface RankStats {
  dpRank: number;
  endpoint: string;
  replayEndpoint: string | null;
  connected: boolean;
  /** Seq of the last batch delivered, null before the first (or after a clear). */
  lastSeq: bigint | null;
  replaying: boolean;
  pending: number;
}

export interface VllmEventSourceStats {
  /** Live messages received. */
  received: number;
  /** Batches handed to the sink (live and replayed). */
  delivered: number;
  /** Held live batches dropped because a replay had already applied them. */
  duplicates: number;
  /** Messages that were not [topic, 8-byte seq, payload] (or bad replay replies): the next two summed. */
  malformed: number;
  /** Live messages that were not [topic, 8-byte seq, payload]. */
  badFrames: number;
  /** Replay replies that were not `["", (topic,) seq, payload]`. */
  badReplayReplies: number;
  /** Connections of the SUBs that completed their handshake and then dropped. */
  disconnects: number;
  /**
   * Connections (SUB and replay DEALER) closed because of what the peer sent or did not send, by
   * ZmtpError reason: `too-large`, `too-many-frames`, `protocol`, `timeout`...
   */
  peerErrors: Record<string, number>;
  gaps: number;
  replays: { ok: number; failed: number };
  restarts: number;
  stale: number;
  /** Live batches dropped because the hold buffer of a replaying rank was full. */
  dropped: number;
  sinkErrors: number;
  /** Every rank has a connected SUB. */
  connected: boolean;
  ranks: RankStats[];
}

interface Batch {
  seq: bigint;
  payload: Buffer;
  /** Live only: its seq is not above the previous live one, i.e. the publisher started over. */
  wentBack?: boolean;
}

interface Rank {
  dpRank: number;
  endpoint: string;
  replayEndpoint: string | null;
  sub: SubSocket;
  connected: boolean;
  /** Seq of the last live message received (replays can take lastSeq past it). */
  lastLiveSeq: bigint | null;
  lastSeq: bigint | null;
  /** Payload of lastSeq: the anchor a replay must reproduce. */
  lastPayload: Buffer | null;
  replaying: boolean;
  /** Live batches held while replaying, in arrival order. */
  pending: Batch[];
  /** The seq whose arrival last revealed a gap: seeing it again after a failed replay is not a new gap. */
  gapAt: bigint | null;
  /** Check the next message through a replay (set when the SUB lost its connection). */
  verifyNext: boolean;
  /** Batches delivered since the last replay started (null: never replayed). A replay that
   * delivered nothing is not followed by another until something is delivered: no replay loops. */
  deliveredSinceReplay: number | null;
}

const EMPTY = Buffer.alloc(0);

function perRank(value: string | readonly string[], size: number, what: string): string[] {
  if (typeof value === "string") return Array.from({ length: size }, (_, r) => endpointForRank(value, r));
  if (value.length !== size) {
    throw new InvalidConfigError(`${what}: ${value.length} endpoints for ${size} data-parallel ranks`);
  }
  return [...value];
}

/** A replay reply as a DEALER sees it: `["", topic, seq, payload]` (0.26+) or `["", seq, payload]`. */
function parseReplayReply(frames: Buffer[]): Batch | "end" | null {
  if (frames[0]?.length !== 0 || (frames.length !== 3 && frames.length !== 4)) return null;
  const seq = frames[frames.length - 2] as Buffer;
  const payload = frames[frames.length - 1] as Buffer;
  if (seq.length !== 8) return null;
  if (payload.length === 0 && seq.equals(REPLAY_END_SEQ)) return "end";
  return { seq: seq.readBigUInt64BE(0), payload };
}

export class VllmEventSource extends EventEmitter<VllmEventSourceEvents> {
  readonly workerId: string;
  private readonly sink: KvEventSink;
  private readonly ranks: Rank[];
  private readonly topic: string;
  private readonly catchUp: boolean;
  private readonly replayTimeoutMs: number;
  private readonly maxPending: number;
  private readonly socketOptions: ZmtpSocketOptions;
  private readonly replays = new Set<DealerSocket>();
  private readonly pumps: Promise<void>[] = [];
  private started = false;
  private closed = false;
  private readonly bindMode: boolean;
  /** peerErrorCounts() of the replay DEALERs already closed. */
  private readonly replayPeerErrors = new Map<string, number>();
  private readonly counters = {
    received: 0,
    delivered: 0,
    duplicates: 0,
    badFrames: 0,
    badReplayReplies: 0,
    disconnects: 0,
    gaps: 0,
    replaysOk: 0,
    replaysFailed: 0,
    restarts: 0,
    stale: 0,
    dropped: 0,
    sinkErrors: 0,
  };

  constructor(options: VllmEventSourceOptions) {
    super();
    if (!options.workerId) throw new InvalidConfigError("workerId is required");
    const size = options.dataParallelSize ?? (typeof options.endpoint === "string" ? 1 : options.endpoint.length);
    if (!Number.isInteger(size) || size < 1) throw new InvalidConfigError(`dataParallelSize must be >= 1, got ${size}`);
    this.workerId = options.workerId;
    this.sink = options.sink;
    this.topic = options.topic ?? "";
    this.catchUp = options.catchUp ?? false;
    this.replayTimeoutMs = options.replayTimeoutMs ?? 5000;
    this.maxPending = options.maxPendingBatches ?? 10_000;
    this.bindMode = options.bind ?? false;
    // Heartbeats by default: an idle worker whose host vanished would otherwise look connected.
    this.socketOptions = { heartbeatIvlMs: 5000, heartbeatTimeoutMs: 15_000, ...options.socket };
    const endpoints = perRank(options.endpoint, size, "endpoint");
    const replays = options.replayEndpoint ? perRank(options.replayEndpoint, size, "replayEndpoint") : null;
    this.ranks = endpoints.map((endpoint, dpRank) => ({
      dpRank,
      endpoint,
      replayEndpoint: replays?.[dpRank] ?? null,
      sub: new SubSocket(this.socketOptions),
      connected: false,
      lastLiveSeq: null,
      lastSeq: null,
      lastPayload: null,
      replaying: false,
      pending: [],
      gapAt: null,
      verifyNext: false,
      deliveredSinceReplay: null,
    }));
  }

  /** Connects every rank's SUB (in the background; they reconnect on their own). */
  start(): this {
    if (this.started || this.closed) return this;
    this.started = true;
    for (const rank of this.ranks) {
      const { sub, dpRank } = rank;
      sub.on("connected", ({ endpoint }) => {
        rank.connected = true;
        this.notify("connected", { workerId: this.workerId, dpRank, endpoint });
      });
      sub.on("disconnected", ({ endpoint, error }) => {
        rank.connected = false;
        this.counters.disconnects++;
        if (rank.replayEndpoint && rank.lastSeq !== null) rank.verifyNext = true;
        if (!this.closed) this.notify("disconnected", { workerId: this.workerId, dpRank, endpoint, error });
      });
      sub.subscribe(this.topic);
      if (this.bindMode) {
        this.bindRank(rank, 0);
      } else {
        sub.connect(rank.endpoint);
      }
      this.pumps.push(this.pump(rank));
    }
    return this;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.ranks.map((r) => r.sub.close()), ...[...this.replays].map((d) => d.close())]);
    await Promise.all(this.pumps);
  }

  stats(): VllmEventSourceStats {
    const c = this.counters;
    return {
      received: c.received,
      delivered: c.delivered,
      duplicates: c.duplicates,
      malformed: c.badFrames + c.badReplayReplies,
      badFrames: c.badFrames,
      badReplayReplies: c.badReplayReplies,
      disconnects: c.disconnects,
      peerErrors: this.peerErrors(),
      gaps: c.gaps,
      replays: { ok: c.replaysOk, failed: c.replaysFailed },
      restarts: c.restarts,
      stale: c.stale,
      dropped: c.dropped,
      sinkErrors: c.sinkErrors,
      connected: this.ranks.every((r) => r.connected),
      ranks: this.ranks.map((r) => ({
        dpRank: r.dpRank,
        endpoint: r.endpoint,
        replayEndpoint: r.replayEndpoint,
        connected: r.connected,
        lastSeq: r.lastSeq,
        replaying: r.replaying,
        pending: r.pending.length,
      })),
    };
  }

  /** Binds a rank's SUB, retrying with backoff while the port is taken (a previous source still closing). */
  private bindRank(rank: Rank, attempt: number): void {
    rank.sub.bind(rank.endpoint).catch((err: unknown) => {
      if (this.closed) return;
      const error = err instanceof Error ? err : new Error(String(err));
      if (attempt === 0) this.notify("disconnected", { workerId: this.workerId, dpRank: rank.dpRank, endpoint: rank.endpoint, error });
      setTimeout(() => this.closed || this.bindRank(rank, attempt + 1), Math.min(5000, 100 * 2 ** Math.min(attempt, 6))).unref();
    });
  }

  private peerErrors(): Record<string, number> {
    const total = new Map(this.replayPeerErrors);
    const add = (counts: Record<string, number>) => {
      for (const [reason, n] of Object.entries(counts)) total.set(reason, (total.get(reason) ?? 0) + n);
    };
    for (const r of this.ranks) add(r.sub.peerErrorCounts());
    for (const d of this.replays) add(d.peerErrorCounts());
    return Object.fromEntries(total);
  }

  private async pump(rank: Rank): Promise<void> {
    for await (const frames of rank.sub) {
      this.counters.received++;
      const seq = frames[1];
      if (frames.length !== 3 || seq?.length !== 8) {
        this.counters.badFrames++;
        continue;
      }
      const batch: Batch = { seq: seq.readBigUInt64BE(0), payload: frames[2] as Buffer };
      batch.wentBack = rank.lastLiveSeq !== null && batch.seq <= rank.lastLiveSeq;
      rank.lastLiveSeq = batch.seq;
      if (rank.replaying) this.hold(rank, batch);
      else this.accept(rank, batch);
    }
  }

  private hold(rank: Rank, batch: Batch): void {
    if (rank.pending.length >= this.maxPending) this.counters.dropped++;
    else rank.pending.push(batch);
  }

  /** One live batch of a rank that is not replaying (see the rules at the top). */
  private accept(rank: Rank, batch: Batch): void {
    if (batch.wentBack && rank.lastSeq !== null) {
      this.counters.restarts++;
      this.notify("restart", { workerId: this.workerId, dpRank: rank.dpRank, previousSeq: rank.lastSeq, seq: batch.seq });
      this.clear(rank);
    }
    const last = rank.lastSeq;
    if (last === null) {
      if (this.catchUp && batch.seq > 0n && this.canReplay(rank)) {
        this.startReplay(rank, batch);
      } else {
        this.deliver(rank, batch);
      }
      return;
    }
    if (batch.seq <= last) {
      // The live stream is still moving forward, behind a replay that already applied this one
      // (replies and live messages travel on different connections: either may arrive first).
      this.counters.duplicates++;
      return;
    }
    const inOrder = batch.seq === last + 1n;
    if (inOrder && !rank.verifyNext) {
      this.deliver(rank, batch);
      return;
    }
    if (!inOrder && rank.gapAt !== batch.seq) {
      rank.gapAt = batch.seq;
      this.counters.gaps++;
      this.notify("gap", { workerId: this.workerId, dpRank: rank.dpRank, expected: last + 1n, received: batch.seq });
    }
    if (this.canReplay(rank)) {
      this.startReplay(rank, batch);
      return;
    }
    if (!inOrder) {
      const why = rank.replayEndpoint ? "the last replay made no progress" : "no replay endpoint";
      this.markStale(rank, `sequence gap ${last + 1n}..${batch.seq - 1n}, ${why}`);
    }
    this.deliver(rank, batch);
  }

  private canReplay(rank: Rank): boolean {
    return rank.replayEndpoint !== null && rank.deliveredSinceReplay !== 0;
  }

  private startReplay(rank: Rank, first: Batch): void {
    rank.replaying = true;
    rank.verifyNext = false;
    rank.pending = [first];
    rank.deliveredSinceReplay = 0;
    void this.replay(rank);
  }

  /** Asks the rank's replay socket for everything from the anchor, applies it, then the held batches. */
  private async replay(rank: Rank): Promise<void> {
    const anchor = rank.lastSeq;
    const anchorPayload = rank.lastPayload;
    const fromSeq = anchor ?? 0n;
    const event = { workerId: this.workerId, dpRank: rank.dpRank, fromSeq };
    const dealer = new DealerSocket(this.socketOptions);
    this.replays.add(dealer);
    let replies = 0;
    let applied = 0;
    let ended = false;
    let failure: string | undefined;
    try {
      dealer.connect(rank.replayEndpoint as string);
      dealer.send([EMPTY, encodeSeq(fromSeq)]);
      const deadline = Date.now() + this.replayTimeoutMs;
      for (;;) {
        const frames = await dealer.receive({ timeoutMs: deadline - Date.now() });
        if (frames === null) {
          failure = `no end marker within ${this.replayTimeoutMs} ms`;
          break;
        }
        const reply = parseReplayReply(frames);
        if (reply === null) {
          this.counters.badReplayReplies++;
          continue;
        }
        if (reply === "end") {
          ended = true;
          break;
        }
        if (reply.seq < fromSeq) continue;
        replies++;
        if (replies === 1 && anchor !== null) {
          if (reply.seq === anchor && anchorPayload?.equals(reply.payload)) continue; // same run: verified
          if (reply.seq === anchor) {
            this.counters.restarts++;
            this.notify("restart", { workerId: this.workerId, dpRank: rank.dpRank, previousSeq: anchor, seq: reply.seq });
            this.clear(rank);
          } else {
            failure = `replay starts at ${reply.seq}, after the missing ${anchor + 1n}`;
            this.markStale(rank, `replay could not cover the gap: ${failure}`);
          }
          this.deliver(rank, reply);
          applied++;
          continue;
        }
        const last = rank.lastSeq;
        if (last === null || reply.seq === last + 1n) {
          this.deliver(rank, reply);
          applied++;
        } else if (reply.seq > last + 1n) {
          // The publisher never buffered the seqs in between (vLLM: a batch that failed to encode).
          failure = `replay skips from ${last} to ${reply.seq}`;
          ended = true;
          break;
        }
      }
    } catch (err) {
      failure = `replay failed: ${err instanceof Error ? err.message : String(err)}`;
    } finally {
      this.replays.delete(dealer);
      for (const [reason, n] of Object.entries(dealer.peerErrorCounts())) {
        this.replayPeerErrors.set(reason, (this.replayPeerErrors.get(reason) ?? 0) + n);
      }
      await dealer.close();
    }
    if (this.closed) return;

    if (!ended) {
      this.markStale(rank, `replay from ${fromSeq} failed: ${failure}`);
    } else if (replies === 0 && anchor !== null) {
      failure = `replay from ${fromSeq} returned nothing`;
      this.markStale(rank, failure);
    }
    if (failure) this.counters.replaysFailed++;
    else this.counters.replaysOk++;
    this.notify("replay", { ...event, batches: applied, ok: !failure, ...(failure ? { reason: failure } : {}) });

    rank.replaying = false;
    const held = rank.pending;
    rank.pending = [];
    this.drain(rank, held);
  }

  /** Feeds batches held during a replay back in order (accept drops those the replay applied). */
  private drain(rank: Rank, held: Batch[]): void {
    for (let i = 0; i < held.length; i++) {
      if (rank.replaying) {
        // A new replay started: keep the rest, in order, behind the batch that started it.
        rank.pending.push(...held.slice(i));
        return;
      }
      this.accept(rank, held[i] as Batch);
    }
  }

  private deliver(rank: Rank, batch: Batch): void {
    try {
      this.sink.applyBatch(this.workerId, rank.dpRank, batch.seq, batch.payload);
    } catch (error) {
      this.counters.sinkErrors++;
      this.notify("sinkError", { workerId: this.workerId, dpRank: rank.dpRank, seq: batch.seq, error });
    }
    this.counters.delivered++;
    if (rank.deliveredSinceReplay !== null) rank.deliveredSinceReplay++;
    rank.lastSeq = batch.seq;
    rank.lastPayload = batch.payload;
  }

  /**
   * Emits without letting a throwing listener corrupt the rank's state: its error resurfaces as
   * an uncaught exception, as it would from any I/O callback.
   */
  private notify<K extends keyof VllmEventSourceEvents>(name: K, ...args: VllmEventSourceEvents[K]): void {
    try {
      (this.emit as (n: K, ...a: VllmEventSourceEvents[K]) => boolean)(name, ...args);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  private markStale(rank: Rank, reason: string): void {
    this.counters.stale++;
    this.notify("stale", { workerId: this.workerId, dpRank: rank.dpRank, reason });
    this.clear(rank);
  }

  private clear(rank: Rank): void {
    try {
      this.sink.clear(this.workerId, rank.dpRank);
    } catch (error) {
      this.counters.sinkErrors++;
      this.notify("sinkError", { workerId: this.workerId, dpRank: rank.dpRank, seq: null, error });
    }
    rank.lastSeq = null;
    rank.lastPayload = null;
    rank.verifyNext = false;
  }
}
