/**
 * NatsJetStreamBus: the event bus of fleet mode, one JetStream stream per namespace (subjects and
 * headers in nats-subjects.ts, settings and failure behaviour in docs/event-bus.md).
 *
 * - `publish` is one JetStream publish with `Nats-Msg-Id = recordId(record)`, so a retry of a
 *   record the stream already holds is acknowledged as a duplicate and not stored twice (within
 *   the stream's duplicate window). It does not retry or buffer: KvEventRelay does.
 * - `subscribe` reads the stream through an ordered consumer (ephemeral, flow-controlled, no
 *   acks, recreated by the client from the last delivered stream sequence when it falls behind,
 *   the consumer disappears or the connection comes back). The subscription tracks the last
 *   stream sequence it handed out and never hands out one at or below it, and when the client
 *   gives the consumer up it opens a new one from that sequence + 1, until closed.
 *
 * The client is nats.js v3 (`@nats-io/transport-node` + `@nats-io/jetstream`), loaded when the
 * first bus connects, so the embedded default never loads it.
 */
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg, StreamConfig } from "@nats-io/jetstream";
import type { MsgHdrs, NatsConnection, NodeConnectionOptions } from "@nats-io/transport-node";
import { InvalidConfigError } from "../../errors.js";
import {
  DEFAULT_SUBJECT_PREFIX,
  fromHeaderValue,
  headerValue,
  HEADERS,
  namespaceSubject,
  recordSubject,
  streamName,
  subjectToken,
} from "./nats-subjects.js";
import {
  EventBusError,
  GROUP_FRAME_BYTES,
  recordId,
  type BatchRecord,
  type BusRecord,
  type BusSubscription,
  type BusSubscriptionStats,
  type EventBus,
  type PublishAck,
  type RecordHandler,
  type SubscribeOptions,
} from "./types.js";

type TransportModule = typeof import("@nats-io/transport-node");
type JetStreamModule = typeof import("@nats-io/jetstream");

/** Retention and durability of the namespace's stream (created or updated to match). */
export interface NatsStreamOptions {
  /** Records older than this are discarded. Default 1 h; 0: no age limit. */
  maxAgeMs?: number;
  /** Oldest records are discarded past this size. Default 1 GiB; -1: no limit. */
  maxBytes?: number;
  /** Oldest records are discarded past this count. Default -1 (no limit). */
  maxMsgs?: number;
  /** Window in which a repeated `Nats-Msg-Id` is recognised. Default 2 min (at most maxAgeMs). */
  duplicateWindowMs?: number;
  /** Default "file" (survives a server restart). */
  storage?: "file" | "memory";
  /** Stream replicas in a JetStream cluster. Default 1. */
  replicas?: number;
}

export interface NatsJetStreamBusOptions {
  /** Server URL(s). Default "nats://127.0.0.1:4222". Ignored with `connection`. */
  servers?: string | string[];
  /** Use this connection instead of opening one (it is not closed by `close()`). */
  connection?: NatsConnection;
  /** More client options (auth, TLS, name...), passed to nats.js `connect`. */
  connectOptions?: Partial<NodeConnectionOptions>;
  /** Delay between reconnect attempts. Default 250 ms (the client retries forever). */
  reconnectTimeWaitMs?: number;
  /** Namespace: one stream per namespace. Default "default". */
  namespace?: string;
  /** Model of records that name none. Default "default". */
  model?: string;
  /** Subject prefix. Default "kvroute.events". */
  subjectPrefix?: string;
  stream?: NatsStreamOptions;
  /**
   * Create the stream, or update it to `stream`'s settings, on connect (and again when publishes
   * find no stream). Default true; false: the stream must exist (ops manage it).
   */
  manageStream?: boolean;
  /** How long a publish waits for the stream's ack. Default 5000 ms. */
  publishTimeoutMs?: number;
  /** Ordered-consumer tuning of subscriptions. */
  consumer?: {
    /** Messages per pull. Default 1000. */
    maxMessages?: number;
    /** Pull expiry (also the client's back-off while the stream is unreachable). Default 5000 ms. */
    expiresMs?: number;
  };
}

/** Settings the stream is created or updated with. */
export interface ResolvedStreamSettings {
  name: string;
  subjects: string[];
  maxAgeMs: number;
  maxBytes: number;
  maxMsgs: number;
  duplicateWindowMs: number;
  storage: "file" | "memory";
  replicas: number;
}

export interface NatsJetStreamBusStats {
  connected: boolean;
  /** Times the connection came back after a disconnect. */
  reconnects: number;
  disconnects: number;
  /** Times the stream was created or updated. */
  streamUpdates: number;
  subscriptions: number;
}

/** Bytes a record's headers may take at most (the rest of max_payload is for the payload). */
const HEADER_RESERVE = 1024;
const MS_TO_NS = 1_000_000;

interface Loaded {
  transport: TransportModule;
  jetstream: JetStreamModule;
}

let loaded: Promise<Loaded> | undefined;
function loadClient(): Promise<Loaded> {
  loaded ??= Promise.all([import("@nats-io/transport-node"), import("@nats-io/jetstream")]).then(([transport, jetstream]) => ({
    transport,
    jetstream,
  }));
  return loaded;
}

export class NatsJetStreamBus implements EventBus {
  readonly namespace: string;
  readonly model: string;
  readonly stream: ResolvedStreamSettings;
  private readonly subjectPrefix: string;
  private readonly manageStream: boolean;
  private readonly publishTimeoutMs: number;
  private readonly consumerOptions: { maxMessages: number; expiresMs: number };
  private readonly js: JetStreamClient;
  private readonly subs = new Set<NatsSubscription>();
  private isConnected = true;
  private isClosed = false;
  private ensuring: Promise<void> | null = null;
  private lastEnsureAt = 0;
  private readonly counters = { reconnects: 0, disconnects: 0, streamUpdates: 0 };

  private constructor(
    readonly connection: NatsConnection,
    private readonly ownsConnection: boolean,
    private readonly mod: Loaded,
    readonly jsm: JetStreamManager,
    options: NatsJetStreamBusOptions,
  ) {
    this.namespace = options.namespace ?? "default";
    this.model = options.model ?? "default";
    this.subjectPrefix = options.subjectPrefix ?? DEFAULT_SUBJECT_PREFIX;
    this.manageStream = options.manageStream ?? true;
    this.publishTimeoutMs = positive(options.publishTimeoutMs ?? 5000, "publishTimeoutMs");
    this.consumerOptions = {
      maxMessages: positive(options.consumer?.maxMessages ?? 1000, "consumer.maxMessages"),
      expiresMs: Math.max(1000, positive(options.consumer?.expiresMs ?? 5000, "consumer.expiresMs")),
    };
    this.stream = resolveStream(this.namespace, this.subjectPrefix, options.stream ?? {});
    this.js = mod.jetstream.jetstream(connection, { timeout: this.publishTimeoutMs });
    void this.watchStatus();
  }

  /**
   * Connects (waiting for the first server if none answers yet; the client then reconnects on its
   * own, forever) and creates or updates the namespace's stream.
   */
  static async connect(options: NatsJetStreamBusOptions = {}): Promise<NatsJetStreamBus> {
    const mod = await loadClient();
    let nc = options.connection;
    if (!nc) {
      nc = await mod.transport.connect({
        servers: options.servers ?? "nats://127.0.0.1:4222",
        name: "kvroute",
        maxReconnectAttempts: -1,
        reconnectTimeWait: options.reconnectTimeWaitMs ?? 250,
        waitOnFirstConnect: true,
        ...options.connectOptions,
      });
    }
    try {
      const jsm = await mod.jetstream.jetstreamManager(nc, { timeout: options.publishTimeoutMs ?? 5000 });
      const bus = new NatsJetStreamBus(nc, !options.connection, mod, jsm, options);
      await bus.ensureStream();
      return bus;
    } catch (err) {
      if (!options.connection) await nc.close().catch(() => undefined);
      throw err;
    }
  }

  get connected(): boolean {
    return this.isConnected && !this.isClosed;
  }

  get maxPayloadBytes(): number {
    return Math.max(0, this.connection.info?.max_payload ?? 1024 * 1024) - HEADER_RESERVE;
  }

  /** The subject a record is published on. */
  subjectOf(record: BusRecord): string {
    return recordSubject(this.namespace, record.model ?? this.model, record.workerId, this.subjectPrefix);
  }

  /**
   * Creates the stream, or updates it when its subjects, limits, duplicate window or replicas
   * differ (subjects already on it are kept). With `manageStream: false` only checks it exists.
   */
  async ensureStream(): Promise<void> {
    const s = this.stream;
    const { jetstream } = this.mod;
    let current: StreamConfig | null = null;
    try {
      current = (await this.jsm.streams.info(s.name)).config;
    } catch (err) {
      if (!isStreamNotFound(err)) throw new EventBusError("unavailable", `stream ${s.name}: ${message(err)}`, { cause: err });
    }
    const wanted = {
      name: s.name,
      subjects: s.subjects,
      retention: jetstream.RetentionPolicy.Limits,
      storage: s.storage === "file" ? jetstream.StorageType.File : jetstream.StorageType.Memory,
      discard: jetstream.DiscardPolicy.Old,
      max_age: s.maxAgeMs * MS_TO_NS,
      max_bytes: s.maxBytes,
      max_msgs: s.maxMsgs,
      duplicate_window: s.duplicateWindowMs * MS_TO_NS,
      num_replicas: s.replicas,
    };
    if (!this.manageStream) {
      if (!current) throw new EventBusError("stream_config", `stream ${s.name} does not exist (manageStream is false)`);
      return;
    }
    try {
      if (!current) {
        await this.jsm.streams.add(wanted);
        this.counters.streamUpdates++;
        return;
      }
      if (current.storage !== wanted.storage) {
        throw new EventBusError(
          "stream_config",
          `stream ${s.name} has ${current.storage} storage, configured ${wanted.storage} (storage cannot be changed: delete the stream or change the setting)`,
        );
      }
      const subjects = [...new Set([...(current.subjects ?? []), ...wanted.subjects])];
      const differs =
        subjects.length !== (current.subjects ?? []).length ||
        current.max_age !== wanted.max_age ||
        current.max_bytes !== wanted.max_bytes ||
        current.max_msgs !== wanted.max_msgs ||
        current.duplicate_window !== wanted.duplicate_window ||
        current.num_replicas !== wanted.num_replicas ||
        current.discard !== wanted.discard ||
        current.retention !== wanted.retention;
      if (differs) {
        const { name: _name, storage: _storage, ...update } = wanted;
        await this.jsm.streams.update(s.name, { ...update, subjects });
        this.counters.streamUpdates++;
      }
    } catch (err) {
      if (err instanceof EventBusError) throw err;
      throw new EventBusError("stream_config", `stream ${s.name}: ${message(err)}`, { cause: err });
    }
  }

  get maxGroupBytes(): number {
    return this.maxPayloadBytes;
  }

  /** One message: the vLLM payload as the body (empty for a clear), the fields in headers. */
  publish(record: BusRecord): Promise<PublishAck> {
    const h = this.headersOf(record);
    if (record.kind === "batch") h.set(HEADERS.seq, record.seq.toString());
    else h.set(HEADERS.reason, headerValue(record.reason));
    return this.send(record, record.kind === "batch" ? record.payload : EMPTY, h);
  }

  /**
   * One message for consecutive batches of one lane: kind `batches`, `Kvr-Count` of them, the
   * first one's seq and id; the body is, per batch, its seq (u64 BE), payload length (u32 BE) and
   * payload.
   */
  publishGroup(records: readonly BatchRecord[]): Promise<PublishAck> {
    const first = records[0];
    if (!first) return Promise.reject(new EventBusError("rejected", "an empty group"));
    if (records.length === 1) return this.publish(first);
    let size = 0;
    for (const r of records) {
      if (r.workerId !== first.workerId || r.dpRank !== first.dpRank || r.epoch !== first.epoch || r.model !== first.model) {
        return Promise.reject(new EventBusError("rejected", "a group holds batches of one (worker, dpRank, epoch)"));
      }
      size += GROUP_FRAME_BYTES + r.payload.length;
    }
    const body = Buffer.allocUnsafe(size);
    let at = 0;
    for (const r of records) {
      body.writeBigUInt64BE(r.seq, at);
      body.writeUInt32BE(r.payload.length, at + 8);
      r.payload.copy(body, at + GROUP_FRAME_BYTES);
      at += GROUP_FRAME_BYTES + r.payload.length;
    }
    const h = this.headersOf(first);
    h.set(HEADERS.kind, "batches");
    h.set(HEADERS.seq, first.seq.toString());
    h.set(HEADERS.count, String(records.length));
    return this.send(first, body, h);
  }

  private headersOf(record: BusRecord): MsgHdrs {
    const h = this.mod.transport.headers();
    h.set(HEADERS.kind, record.kind);
    h.set(HEADERS.worker, headerValue(record.workerId));
    h.set(HEADERS.model, headerValue(record.model ?? this.model));
    h.set(HEADERS.dpRank, String(record.dpRank));
    h.set(HEADERS.epoch, String(record.epoch));
    return h;
  }

  private async send(record: BusRecord, body: Uint8Array, h: MsgHdrs): Promise<PublishAck> {
    if (this.isClosed) throw new EventBusError("closed", "the bus is closed");
    if (body.length > this.maxPayloadBytes) {
      throw new EventBusError("rejected", `body of ${body.length} bytes exceeds the server's max_payload less ${HEADER_RESERVE} bytes of headers (${this.maxPayloadBytes})`);
    }
    try {
      const ack = await this.js.publish(this.subjectOf(record), body, {
        msgID: recordId(record),
        headers: h,
        timeout: this.publishTimeoutMs,
        retries: 0,
      });
      return { seq: ack.seq, duplicate: ack.duplicate };
    } catch (err) {
      throw this.publishError(err);
    }
  }

  async subscribe(handler: RecordHandler, options: SubscribeOptions = {}): Promise<BusSubscription> {
    if (this.isClosed) throw new EventBusError("closed", "the bus is closed");
    let start = options.startSeq;
    if (start === undefined) {
      if (options.fromStart) start = 1;
      else {
        try {
          start = (await this.jsm.streams.info(this.stream.name)).state.last_seq + 1;
        } catch (err) {
          throw new EventBusError("unavailable", `stream ${this.stream.name}: ${message(err)}`, { cause: err });
        }
      }
    }
    if (!Number.isSafeInteger(start) || start < 1) throw new InvalidConfigError(`startSeq must be an integer >= 1, got ${start}`);
    const filter =
      options.model === undefined
        ? `${namespaceSubject(this.namespace, this.subjectPrefix)}.>`
        : `${namespaceSubject(this.namespace, this.subjectPrefix)}.${subjectToken(options.model)}.>`;
    const sub = new NatsSubscription(this, this.js, handler, {
      start,
      filter,
      model: options.model,
      defaultModel: this.model,
      ...this.consumerOptions,
    });
    this.subs.add(sub);
    void sub.closed.then(() => this.subs.delete(sub));
    try {
      await sub.open();
    } catch (err) {
      await sub.close();
      throw new EventBusError("unavailable", `subscribe to ${this.stream.name}: ${message(err)}`, { cause: err });
    }
    return sub;
  }

  stats(): NatsJetStreamBusStats {
    return { connected: this.connected, ...this.counters, subscriptions: this.subs.size };
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all([...this.subs].map((s) => s.close()));
    if (this.ownsConnection) await this.connection.close().catch(() => undefined);
  }

  private publishError(err: unknown): EventBusError {
    if (this.isClosed || this.connection.isClosed()) return new EventBusError("closed", "the bus is closed", { cause: err });
    const code = (err as { code?: unknown })?.code;
    const name = (err as { name?: unknown })?.name;
    // Message larger than the stream's max_msg_size, or than the server's max_payload.
    if (code === 10054 || name === "InvalidArgumentError") {
      return new EventBusError("rejected", `publish refused: ${message(err)}`, { cause: err });
    }
    // No stream took the subject: JetStream still recovering after a restart, or the stream is
    // gone. Recreate it (at most once a second) and let the caller retry.
    if (noResponders(err)) this.ensureStreamSoon();
    return new EventBusError("unavailable", `publish failed: ${message(err)}`, { cause: err });
  }

  private ensureStreamSoon(): void {
    if (!this.manageStream || this.ensuring || Date.now() - this.lastEnsureAt < 1000) return;
    this.lastEnsureAt = Date.now();
    this.ensuring = this.ensureStream()
      .catch(() => undefined)
      .finally(() => {
        this.ensuring = null;
      });
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.connection.status()) {
      if (s.type === "disconnect") {
        this.isConnected = false;
        this.counters.disconnects++;
      } else if (s.type === "reconnect") {
        this.isConnected = true;
        this.counters.reconnects++;
        for (const sub of this.subs) sub.reopen();
      } else if (s.type === "close") {
        this.isConnected = false;
      }
    }
    this.isConnected = false;
  }

}

const EMPTY = Buffer.alloc(0);

interface SubscriptionSettings {
  start: number;
  filter: string;
  model: string | undefined;
  defaultModel: string;
  maxMessages: number;
  expiresMs: number;
}

class NatsSubscription implements BusSubscription {
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;
  private isClosed = false;
  private messages: ConsumerMessages | null = null;
  private reopenTimer: NodeJS.Timeout | null = null;
  private reopenAttempts = 0;
  private readonly counters: BusSubscriptionStats = { delivered: 0, lastSeq: 0, invalid: 0, handlerErrors: 0, resets: 0 };

  constructor(
    private readonly bus: NatsJetStreamBus,
    private readonly js: JetStreamClient,
    private readonly handler: RecordHandler,
    private readonly settings: SubscriptionSettings,
  ) {
    this.counters.lastSeq = settings.start - 1;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** Creates an ordered consumer from the last sequence handed out + 1 and starts consuming. */
  async open(): Promise<void> {
    const consumer = await this.js.consumers.get(this.bus.stream.name, {
      filter_subjects: this.settings.filter,
      opt_start_seq: this.counters.lastSeq + 1,
    });
    if (this.isClosed) return;
    const messages = await consumer.consume({
      max_messages: this.settings.maxMessages,
      expires: this.settings.expiresMs,
      callback: (m) => this.onMessage(m),
    });
    if (this.isClosed) {
      await messages.close();
      return;
    }
    this.messages = messages;
    this.reopenAttempts = 0;
    void this.watch(messages);
  }

  /**
   * After a reconnect: the server may have restarted (its ephemeral consumers are gone) and the
   * client would find out through its own back-off (up to a pull expiry). Start a new ordered
   * consumer from the last sequence handed out + 1 right away instead.
   */
  reopen(): void {
    if (this.isClosed || !this.messages) return;
    const messages = this.messages;
    this.messages = null;
    void messages.close().catch(() => undefined);
    this.reopenAttempts = 0;
    this.scheduleReopen();
  }

  private async watch(messages: ConsumerMessages): Promise<void> {
    void (async () => {
      for await (const n of messages.status()) {
        if (n.type === "ordered_consumer_recreated") this.counters.resets++;
      }
    })().catch(() => undefined);
    await messages.closed().catch(() => undefined);
    if (this.isClosed || this.messages !== messages) return;
    // The client gave the consumer up (e.g. the stream stayed unreachable): start a new one.
    this.messages = null;
    this.scheduleReopen();
  }

  private scheduleReopen(): void {
    if (this.isClosed || this.reopenTimer) return;
    const delay = Math.min(5000, 50 * 2 ** Math.min(this.reopenAttempts, 7));
    this.reopenAttempts++;
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = null;
      if (this.isClosed) return;
      this.counters.resets++;
      this.open().catch(() => this.scheduleReopen());
    }, delay);
  }

  private onMessage(m: JsMsg): void {
    if (this.isClosed || m.seq <= this.counters.lastSeq) return;
    this.counters.lastSeq = m.seq;
    const records = parseRecords(m.headers, m.data);
    if (!records) {
      this.counters.invalid++;
      return;
    }
    for (let index = 0; index < records.length; index++) {
      const record = records[index] as BusRecord;
      if (this.settings.model !== undefined && (record.model ?? this.settings.defaultModel) !== this.settings.model) return;
      this.counters.delivered++;
      try {
        this.handler(record, { seq: m.seq, index });
      } catch {
        this.counters.handlerErrors++;
      }
    }
  }

  async close(): Promise<void> {
    if (this.isClosed) return this.closed;
    this.isClosed = true;
    if (this.reopenTimer) clearTimeout(this.reopenTimer);
    const messages = this.messages;
    this.messages = null;
    if (messages) await messages.close().catch(() => undefined);
    this.resolveClosed();
    return this.closed;
  }

  stats(): BusSubscriptionStats {
    return { ...this.counters };
  }
}

/** The records of one stream message (null: not a kvroute message). */
function parseRecords(h: MsgHdrs | undefined, data: Uint8Array): BusRecord[] | null {
  if (!h) return null;
  try {
    const kind = h.get(HEADERS.kind);
    const workerId = fromHeaderValue(h.get(HEADERS.worker));
    const dpRank = Number(h.get(HEADERS.dpRank));
    const epochText = h.get(HEADERS.epoch);
    const epoch = Number(epochText);
    const modelText = h.get(HEADERS.model);
    const model = modelText ? fromHeaderValue(modelText) : undefined;
    if (!workerId || !Number.isSafeInteger(dpRank) || dpRank < 0 || !/^\d+$/.test(epochText) || !Number.isSafeInteger(epoch)) return null;
    const common = { workerId, dpRank, epoch, ...(model === undefined ? {} : { model }) };
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (kind === "batch") {
      const seqText = h.get(HEADERS.seq);
      if (!/^\d+$/.test(seqText)) return null;
      return [{ kind, ...common, seq: BigInt(seqText), payload: body }];
    }
    if (kind === "batches") {
      const count = Number(h.get(HEADERS.count));
      if (!Number.isSafeInteger(count) || count < 1) return null;
      const out: BusRecord[] = [];
      let at = 0;
      for (let i = 0; i < count; i++) {
        if (at + GROUP_FRAME_BYTES > body.length) return null;
        const seq = body.readBigUInt64BE(at);
        const len = body.readUInt32BE(at + 8);
        at += GROUP_FRAME_BYTES;
        if (at + len > body.length) return null;
        out.push({ kind: "batch", ...common, seq, payload: body.subarray(at, at + len) });
        at += len;
      }
      return at === body.length ? out : null;
    }
    if (kind === "clear") {
      const reason = fromHeaderValue(h.get(HEADERS.reason)) || "unknown";
      return [{ kind, ...common, reason }];
    }
    return null;
  } catch {
    return null; // a malformed percent-encoding
  }
}

function resolveStream(namespace: string, prefix: string, o: NatsStreamOptions): ResolvedStreamSettings {
  const maxAgeMs = nonNegative(o.maxAgeMs ?? 3_600_000, "stream.maxAgeMs");
  const maxBytes = o.maxBytes ?? 1024 * 1024 * 1024;
  const maxMsgs = o.maxMsgs ?? -1;
  if (!Number.isSafeInteger(maxBytes) || (maxBytes < 1 && maxBytes !== -1)) throw new InvalidConfigError(`stream.maxBytes must be >= 1 or -1, got ${maxBytes}`);
  if (!Number.isSafeInteger(maxMsgs) || (maxMsgs < 1 && maxMsgs !== -1)) throw new InvalidConfigError(`stream.maxMsgs must be >= 1 or -1, got ${maxMsgs}`);
  let duplicateWindowMs = positive(o.duplicateWindowMs ?? 120_000, "stream.duplicateWindowMs");
  if (maxAgeMs > 0) duplicateWindowMs = Math.min(duplicateWindowMs, maxAgeMs);
  const storage = o.storage ?? "file";
  if (storage !== "file" && storage !== "memory") throw new InvalidConfigError(`stream.storage must be "file" or "memory", got ${String(storage)}`);
  return {
    name: streamName(namespace),
    subjects: [`${namespaceSubject(namespace, prefix)}.>`],
    maxAgeMs,
    maxBytes,
    maxMsgs,
    duplicateWindowMs,
    storage,
    replicas: positive(o.replicas ?? 1, "stream.replicas"),
  };
}

/** nats.js wraps "no responders" (JetStreamNotEnabled > RequestError > NoResponders): walk the causes. */
function noResponders(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const name = (e as { name?: unknown }).name;
    if (name === "NoResponders" || name === "NoRespondersError" || name === "JetStreamNotEnabled") return true;
    if ((e as { isNoResponders?: () => boolean }).isNoResponders?.()) return true;
  }
  return false;
}

function isStreamNotFound(err: unknown): boolean {
  return (err as { code?: unknown })?.code === 10059 || /stream not found/i.test(message(err));
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function positive(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new InvalidConfigError(`${name} must be an integer >= 1, got ${value}`);
  return value;
}

function nonNegative(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidConfigError(`${name} must be an integer >= 0, got ${value}`);
  return value;
}
