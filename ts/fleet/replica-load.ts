/**
 * ReplicaLoadSync: router replicas share their in-flight load over NATS, so two replicas under
 * split traffic score workers as one router would (and do not all pick the same idle worker).
 *
 * Each replica publishes its own requests' lifecycle (started with the block keys of its prompt,
 * first token, tokens, finished) on `kvroute.load.<namespace>.<replica>` (core NATS: live messages, no
 * log; the steps of one event-loop turn go out as one message, `{ v: 1, r: replica, m: [...] }`),
 * and every `heartbeatMs` a snapshot of all its requests in flight. Every replica books
 * the others' requests in its router (`KvRouter.book`) under `<replica>/<requestId>`, so they
 * weigh exactly as its own requests do; they are never published again.
 *
 * Bounds: a replica starting late (or after a reconnect) learns the others' requests in flight
 * from their next snapshot; a request missing from its replica's snapshot is over (a lost
 * `finished`); a replica silent for `3 x heartbeatMs` is gone and its requests go with it; any
 * remote request without news for `expiryMs` expires; at most `maxRemoteRequests` are held.
 * Messages that do not parse or have the wrong shape are counted and skipped.
 */
import { randomBytes } from "node:crypto";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { subjectToken } from "../events/bus/nats-subjects.js";
import type { KvRouter, LifecycleObserver, PromptKeys } from "../router/kv-router.js";
import type { RouteDecision } from "../router/types.js";

export const LOAD_SUBJECT_PREFIX = "kvroute.load";

export interface ReplicaLoadSyncOptions {
  connection: NatsConnection;
  router: KvRouter;
  /** Default "default". */
  namespace?: string;
  /** This replica's id (unique in the namespace). Default: random. */
  replicaId?: string;
  /** Snapshot period; a replica silent for 3 periods is gone. Default 1000 ms. */
  heartbeatMs?: number;
  /** A remote request without news this long is forgotten. Default 600000 ms. */
  expiryMs?: number;
  /** Default 100000. */
  maxRemoteRequests?: number;
  /** Token counts are published when they cross a multiple of this. Default 16. */
  tokensEvery?: number;
  /**
   * How long the gateway may hold a finished response until the NATS server has acknowledged its
   * `finished` (see `awaitFinishAck`); past it the response goes anyway. Default 100 ms; 0: no wait.
   */
  finishAckTimeoutMs?: number;
  log?: (message: string) => void;
}

export interface ReplicaLoadStats {
  replicaId: string;
  published: number;
  publishErrors: number;
  /** Messages from other replicas, by kind (started, first_token, tokens, finished, snapshot). */
  received: Record<string, number>;
  /** Messages skipped, by reason (bad_json, bad_shape, overflow). */
  invalid: Record<string, number>;
  /** Remote requests dropped without their `finished`, by reason (snapshot, replica_gone, expired). */
  expired: Record<string, number>;
  /** Remote requests booked now. */
  remoteInFlight: number;
  /** Responses that ended without the server's acknowledgement of their `finished`: past `finishAckTimeoutMs`, or the connection lost it. */
  finishUnacked: number;
  /** Other replicas heard from in the last 3 heartbeats. */
  replicas: number;
}

/** One request as it travels: id, model, worker, dpRank, promptBlocks, overlapBlocks, maxTokens|null. */
type Wire = [string, string, string, number, number, number, number | null];

/** One lifecycle step as queued (keys are base64-encoded when the batch goes out). */
interface Entry {
  k: string;
  [field: string]: unknown;
  keys?: BigUint64Array;
}

interface Remote {
  replica: string;
  at: number;
}

const SNAPSHOT_MAX = 5000;
/** Keys of a prompt of up to 2^20 blocks (16 M tokens at block size 16). */
const MAX_KEYS_B64 = Math.ceil((8 << 20) / 3) * 4;

export class ReplicaLoadSync {
  readonly replicaId: string;
  private readonly nc: NatsConnection;
  private readonly router: KvRouter;
  private readonly subjectBase: string;
  private readonly subject: string;
  private readonly heartbeatMs: number;
  private readonly expiryMs: number;
  private readonly maxRemote: number;
  private readonly tokensEvery: number;
  private readonly log: (m: string) => void;
  /** Own requests in flight (for snapshots). */
  private readonly local = new Map<string, Wire>();
  private readonly lastTokens = new Map<string, number>();
  private readonly remote = new Map<string, Remote>();
  /** Replica -> its remote request keys, and when it was last heard. */
  private readonly replicas = new Map<string, { keys: Set<string>; at: number }>();
  private readonly sub: Subscription;
  private readonly timer: NodeJS.Timeout;
  private readonly stats_: Omit<ReplicaLoadStats, "replicaId" | "remoteInFlight" | "replicas"> = { published: 0, publishErrors: 0, received: {}, invalid: {}, expired: {}, finishUnacked: 0 };
  private closed = false;
  private readonly outbox: Entry[] = [];
  private readonly subscribed: Promise<void>;
  private flushScheduled = false;
  private readonly finishAckTimeoutMs: number;
  /** The acknowledgement every `finished` of this synchronous run waits for (one PING for all). */
  private finishAck: Promise<void> | null = null;

  constructor(options: ReplicaLoadSyncOptions) {
    this.nc = options.connection;
    this.router = options.router;
    this.replicaId = options.replicaId ?? `r-${randomBytes(6).toString("hex")}`;
    this.subjectBase = `${LOAD_SUBJECT_PREFIX}.${subjectToken(options.namespace ?? "default")}`;
    this.subject = `${this.subjectBase}.${subjectToken(this.replicaId)}`;
    this.heartbeatMs = options.heartbeatMs ?? 1000;
    this.expiryMs = options.expiryMs ?? 600_000;
    this.maxRemote = options.maxRemoteRequests ?? 100_000;
    this.tokensEvery = Math.max(1, options.tokensEvery ?? 16);
    this.finishAckTimeoutMs = Math.max(0, options.finishAckTimeoutMs ?? 100);
    this.log = options.log ?? (() => {});
    this.sub = this.nc.subscribe(`${this.subjectBase}.>`, {
      callback: (err, msg) => {
        if (err || this.closed) return;
        this.onMessage(msg.data);
      },
    });
    // Resolves once the server has the subscription (messages before that are not ours to see).
    this.subscribed = this.nc.flush().catch(() => {});
    this.timer = setInterval(() => this.tick(), this.heartbeatMs);
    this.timer.unref();
    const observer: LifecycleObserver = {
      started: (d, prompt) => this.onStarted(d, prompt),
      firstToken: (id) => {
        if (this.local.has(id)) this.publish({ k: "f", i: id });
      },
      tokens: (id, n) => {
        if (!this.local.has(id)) return;
        const step = Math.floor(n / this.tokensEvery);
        if (step === (this.lastTokens.get(id) ?? 0)) return;
        this.lastTokens.set(id, step);
        this.publish({ k: "t", i: id, n });
      },
      finished: (id) => {
        if (!this.local.delete(id)) return;
        this.lastTokens.delete(id);
        this.publish({ k: "e", i: id });
        // Out at once, and acknowledged before the gateway answers the client: the client's next
        // turn may go to another replica at once, which must not still count this request on the
        // worker that holds the conversation's prefix (it would steer the turn away from its cache).
        this.flush();
        this.awaitFinishAck();
      },
      delivered: () => this.finishAck,
    };
    this.router.observeLifecycle(observer);
    this.snapshot(); // tells the others this replica is here
  }

  /**
   * One acknowledgement from the NATS server (a PING after everything published so far) for all
   * the `finished` of this synchronous run; the gateway ends those responses once it arrives
   * (`KvRouter.lifecycleDelivered`). The server has then passed the messages on to the other
   * replicas, so a client's next turn, sent to another replica the moment this one answers, finds
   * its last turn over there. Without the wait a busy machine lets the turn arrive first, and the
   * prefill and decode load that replica still books on the conversation's worker outweighs the
   * cached prefix. Bounded by `finishAckTimeoutMs` (a NATS outage must not hold answers).
   */
  private awaitFinishAck(): void {
    if (this.finishAck || this.finishAckTimeoutMs === 0) return;
    let release!: () => void;
    this.finishAck = new Promise<void>((resolve) => (release = resolve));
    queueMicrotask(() => {
      // After every `finished` of this run is queued: one PING covers them all.
      this.finishAck = null;
      let timer: NodeJS.Timeout | null = setTimeout(() => {
        timer = null;
        this.stats_.finishUnacked++;
        release();
      }, this.finishAckTimeoutMs);
      timer.unref();
      const settle = (acked: boolean) => {
        if (timer === null) return;
        clearTimeout(timer);
        timer = null;
        if (!acked) this.stats_.finishUnacked++;
        release();
      };
      if (this.closed) return settle(true); // shutting down: nothing to wait for
      this.nc.flush().then(
        () => settle(true),
        () => settle(false), // disconnected: the server never had it
      );
    });
  }

  /** Resolves once NATS has this replica's subscription: from then on no other replica's step is missed. */
  ready(): Promise<void> {
    return this.subscribed;
  }

  stats(): ReplicaLoadStats {
    let replicas = 0;
    const now = Date.now();
    for (const r of this.replicas.values()) if (now - r.at <= 3 * this.heartbeatMs) replicas++;
    return { replicaId: this.replicaId, ...structuredClone(this.stats_), remoteInFlight: this.remote.size, replicas };
  }

  /** Stops publishing and following; the remote requests booked here are finished. */
  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    clearInterval(this.timer);
    this.router.observeLifecycle(null);
    this.sub.unsubscribe();
    for (const key of [...this.remote.keys()]) this.dropRemote(key, null);
  }

  // --- own requests ---

  private onStarted(d: RouteDecision, prompt: PromptKeys | undefined): void {
    const model = this.router.modelOf(d.workerId);
    if (model === undefined) return;
    const wire: Wire = [d.requestId, model, d.workerId, d.dpRank, d.promptBlocks, d.overlapBlocks, d.maxTokens ?? null];
    this.local.set(d.requestId, wire);
    // The prompt's block keys (8 bytes a block, base64) let the others book it exactly and credit
    // the worker with its blocks before its KV events arrive, as this replica does.
    this.publish(prompt ? { k: "s", q: wire, n: prompt.promptTokens, keys: prompt.keys } : { k: "s", q: wire });
  }

  /**
   * Queues one entry; the queue goes out as one NATS message at the end of this turn of the
   * event loop (or at 256 entries), so a burst of decisions costs one publish, not one each.
   */
  private publish(entry: Entry): void {
    if (this.closed) return;
    this.outbox.push(entry);
    if (this.outbox.length >= 256) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.outbox.length === 0 || this.closed) return;
    const entries = this.outbox.splice(0);
    const m = entries.map((e) => (e.keys ? { k: e.k, q: e.q, n: e.n, h: Buffer.from(e.keys.buffer, e.keys.byteOffset, e.keys.byteLength).toString("base64") } : e));
    try {
      this.nc.publish(this.subject, JSON.stringify({ v: 1, r: this.replicaId, m }));
      this.stats_.published += entries.length;
    } catch (err) {
      // Closed or draining connection: the next snapshot after it is back puts things right.
      this.stats_.publishErrors++;
      if (this.stats_.publishErrors === 1) this.log(`load sync: publish failed (${err instanceof Error ? err.message : String(err)})`);
    }
  }

  private snapshot(): void {
    const all = [...this.local.values()];
    this.publish({ k: "h", a: all.slice(0, SNAPSHOT_MAX), c: all.length <= SNAPSHOT_MAX });
  }

  private tick(): void {
    this.snapshot();
    const now = Date.now();
    for (const [replica, r] of this.replicas) {
      if (now - r.at > 3 * this.heartbeatMs) {
        for (const key of [...r.keys]) this.dropRemote(key, "replica_gone");
        this.replicas.delete(replica);
      }
    }
    for (const [key, r] of this.remote) if (now - r.at > this.expiryMs) this.dropRemote(key, "expired");
  }

  // --- the others' requests ---

  private onMessage(data: Uint8Array): void {
    let msg: unknown;
    try {
      msg = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("utf8"));
    } catch {
      this.count("invalid", "bad_json");
      return;
    }
    if (!isObject(msg) || msg["v"] !== 1 || typeof msg["r"] !== "string" || msg["r"].length === 0 || !Array.isArray(msg["m"]) || msg["m"].length > 10_000) {
      this.count("invalid", "bad_shape");
      return;
    }
    const replica = msg["r"];
    if (replica === this.replicaId) return;
    const now = Date.now();
    for (const entry of msg["m"] as unknown[]) {
      if (!isObject(entry)) this.count("invalid", "bad_shape");
      else this.onEntry(replica, entry, now);
    }
  }

  private onEntry(replica: string, msg: Record<string, unknown>, now: number): void {
    switch (msg["k"]) {
      case "s": {
        const w = msg["q"];
        if (!isWire(w)) return this.count("invalid", "bad_shape");
        let prompt: PromptKeys | undefined;
        if (msg["h"] !== undefined) {
          const h = msg["h"];
          const n = msg["n"];
          if (typeof h !== "string" || h.length > MAX_KEYS_B64 || !U32(n)) return this.count("invalid", "bad_shape");
          const bytes = Buffer.from(h, "base64");
          if (bytes.length % 8 !== 0) return this.count("invalid", "bad_shape");
          const keys = new BigUint64Array(bytes.length / 8);
          Buffer.from(keys.buffer).set(bytes);
          prompt = { keys, promptTokens: n as number };
        }
        this.count("received", "started");
        this.heard(replica, now);
        this.bookRemote(replica, w, now, prompt);
        return;
      }
      case "f":
      case "t":
      case "e": {
        const id = msg["i"];
        const n = msg["n"];
        if (typeof id !== "string" || (msg["k"] === "t" && !(typeof n === "number" && Number.isFinite(n) && n >= 0))) return this.count("invalid", "bad_shape");
        this.heard(replica, now);
        const key = `${replica}/${id}`;
        const r = this.remote.get(key);
        if (msg["k"] === "f") {
          this.count("received", "first_token");
          if (r) (r.at = now), this.router.book.firstToken(key);
        } else if (msg["k"] === "t") {
          this.count("received", "tokens");
          if (r) (r.at = now), this.router.book.tokens(key, n as number);
        } else {
          this.count("received", "finished");
          if (r) this.dropRemote(key, null);
        }
        return;
      }
      case "h": {
        const list = msg["a"];
        if (!Array.isArray(list) || !list.every(isWire)) return this.count("invalid", "bad_shape");
        this.count("received", "snapshot");
        const entry = this.heard(replica, now);
        const live = new Set<string>();
        for (const w of list as Wire[]) {
          const key = `${replica}/${w[0]}`;
          live.add(key);
          const r = this.remote.get(key);
          if (r) r.at = now;
          else this.bookRemote(replica, w, now);
        }
        if (msg["c"] === true) for (const key of [...entry.keys]) if (!live.has(key)) this.dropRemote(key, "snapshot");
        return;
      }
      default:
        this.count("invalid", "bad_shape");
    }
  }

  private heard(replica: string, now: number): { keys: Set<string>; at: number } {
    let r = this.replicas.get(replica);
    if (!r) {
      if (this.replicas.size >= 10_000) this.replicas.delete(this.replicas.keys().next().value!);
      this.replicas.set(replica, (r = { keys: new Set(), at: now }));
    }
    r.at = now;
    return r;
  }

  private bookRemote(replica: string, w: Wire, now: number, prompt?: PromptKeys): void {
    const key = `${replica}/${w[0]}`;
    if (this.remote.has(key)) return;
    if (this.remote.size >= this.maxRemote) return this.count("invalid", "overflow");
    this.remote.set(key, { replica, at: now });
    this.replicas.get(replica)?.keys.add(key);
    if (prompt) {
      this.router.bookRemote({ requestId: key, workerId: w[2], dpRank: w[3], keys: prompt.keys, promptTokens: prompt.promptTokens, overlapBlocks: w[5], maxTokens: w[6] });
      return;
    }
    const decision: RouteDecision = {
      requestId: key,
      workerId: w[2],
      dpRank: w[3],
      url: "",
      overlapBlocks: w[5],
      promptBlocks: w[4],
      bestOverlapBlocks: w[5],
      blind: false,
      mode: this.router.mode,
      ...(w[6] !== null ? { maxTokens: w[6] } : {}),
    };
    this.router.book.started(decision);
  }

  private dropRemote(key: string, reason: string | null): void {
    const r = this.remote.get(key);
    if (!r) return;
    this.remote.delete(key);
    this.replicas.get(r.replica)?.keys.delete(key);
    this.router.book.finished(key, "cancelled");
    if (reason) this.count("expired", reason);
  }

  private count(group: "received" | "invalid" | "expired", reason: string): void {
    const g = this.stats_[group];
    g[reason] = (g[reason] ?? 0) + 1;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const U32 = (v: unknown) => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffff_ffff;

function isWire(v: unknown): v is Wire {
  return (
    Array.isArray(v) &&
    v.length === 7 &&
    typeof v[0] === "string" &&
    v[0].length > 0 &&
    v[0].length <= 512 &&
    typeof v[1] === "string" &&
    typeof v[2] === "string" &&
    U32(v[3]) &&
    U32(v[4]) &&
    U32(v[5]) &&
    (v[6] === null || U32(v[6]))
  );
}
