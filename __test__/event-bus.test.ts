/**
 * The event bus: InProcessBus, and NatsJetStreamBus against a real `nats-server -js` started here
 * on a free loopback port (killed and restarted mid-stream in one test). Payloads are real vLLM
 * KVEventBatch bytes (encodeKvEventBatch, newest wire form) of a seeded workload; every replica's
 * indexer is compared, on many findMatches queries and its stats, with an indexer fed the same
 * batches directly.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeKvEventBatch, type KvEvent } from "../ts/events/codec.js";
import { VllmEventPublisher, VllmEventSource } from "../ts/events/index.js";
import {
  BlockHasher,
  EventBusError,
  InProcessBus,
  KvEventRelay,
  KvEventReplica,
  KvIndexer,
  NatsJetStreamBus,
  recordId,
  recordSubject,
  streamName,
  type BusRecord,
  type EventBus,
} from "../ts/index.js";
import { NatsServer } from "./helpers/nats-server.js";
import { mulberry32 as rng } from "../ts/util/prng.js";

const BLOCK = 16;
const BLOCKS_PER_PROMPT = 8;

type Step =
  | { kind: "batch"; workerId: string; dpRank: number; seq: bigint; payload: Buffer }
  | { kind: "clear"; workerId: string; dpRank: number };

interface LaneState {
  workerId: string;
  dpRank: number;
  seq: bigint;
  /** Engine hashes (= router keys here) the worker holds on the GPU. */
  have: Set<bigint>;
  lastWasClear: boolean;
}

/**
 * A seeded fleet: workers x ranks, prompts in families sharing prefixes, BlockStored chains that
 * extend what a worker holds, BlockRemoved from the leaf end, the odd AllBlocksCleared, and the
 * odd worker restart (a clear step, seq back to 0). Engine hashes are the router's own keys, so
 * queries built with BlockHasher hit what was stored.
 */
class Workload {
  readonly prompts: number[][] = [];
  readonly keys: BigUint64Array[] = [];
  private readonly lanes: LaneState[] = [];
  private readonly rand: () => number;
  private ts = 1_767_225_600;

  constructor(seed: number, workers = 4, ranks = 2, promptCount = 48) {
    this.rand = rng(seed);
    const hasher = new BlockHasher({ blockSize: BLOCK });
    const families = 6;
    const familyTokens = Array.from({ length: families }, (_, f) =>
      Array.from({ length: 3 * BLOCK }, (_, i) => 1000 + f * 97 + i),
    );
    for (let p = 0; p < promptCount; p++) {
      const shared = familyTokens[p % families]!.slice(0, BLOCK * (p % 4));
      const own = Array.from({ length: BLOCKS_PER_PROMPT * BLOCK - shared.length }, () => 1 + Math.floor(this.rand() * 50_000));
      const tokens = [...shared, ...own];
      this.prompts.push(tokens);
      this.keys.push(hasher.hash(tokens));
    }
    for (let w = 0; w < workers; w++) {
      for (let r = 0; r < ranks; r++) {
        this.lanes.push({ workerId: `worker-${w}`, dpRank: r, seq: 0n, have: new Set(), lastWasClear: true });
      }
    }
  }

  /** The next step of a random lane. */
  next(): Step {
    const lane = this.lanes[Math.floor(this.rand() * this.lanes.length)]!;
    if (!lane.lastWasClear && this.rand() < 0.002) {
      // The worker restarted: its view is dropped, vLLM starts again at seq 0.
      lane.have.clear();
      lane.seq = 0n;
      lane.lastWasClear = true;
      return { kind: "clear", workerId: lane.workerId, dpRank: lane.dpRank };
    }
    lane.lastWasClear = false;
    const events: KvEvent[] = [];
    const n = 1 + Math.floor(this.rand() * 4);
    for (let e = 0; e < n; e++) events.push(this.event(lane));
    const payload = encodeKvEventBatch({ ts: (this.ts += 0.01), dataParallelRank: lane.dpRank, events });
    return { kind: "batch", workerId: lane.workerId, dpRank: lane.dpRank, seq: lane.seq++, payload };
  }

  private event(lane: LaneState): KvEvent {
    const roll = this.rand();
    if (roll < 0.004) {
      lane.have.clear();
      return { type: "AllBlocksCleared" };
    }
    const p = Math.floor(this.rand() * this.prompts.length);
    const keys = this.keys[p]!;
    let held = 0;
    while (held < keys.length && lane.have.has(keys[held]!)) held++;
    if (roll < 0.3 && held > 0) {
      const from = Math.max(0, held - 1 - Math.floor(this.rand() * 3));
      const removed = Array.from(keys.subarray(from, held));
      for (const k of removed) lane.have.delete(k);
      return { type: "BlockRemoved", blockHashes: removed, medium: "GPU" };
    }
    if (held === keys.length) return { type: "BlockRemoved", blockHashes: [keys[held - 1]!], medium: "GPU" };
    const to = Math.min(keys.length, held + 1 + Math.floor(this.rand() * 3));
    const stored = Array.from(keys.subarray(held, to));
    for (const k of stored) lane.have.add(k);
    return {
      type: "BlockStored",
      blockHashes: stored,
      parentBlockHash: held > 0 ? keys[held - 1]! : null,
      tokenIds: this.prompts[p]!.slice(held * BLOCK, to * BLOCK),
      blockSize: BLOCK,
      loraId: null,
      medium: "GPU",
      loraName: null,
    };
  }
}

/** Feeds a step to a relay (the event source's sink). */
function feed(relay: KvEventRelay, step: Step): void {
  if (step.kind === "batch") relay.applyBatch(step.workerId, step.dpRank, step.seq, step.payload);
  else relay.clear(step.workerId, step.dpRank);
}

/** The reference: an indexer fed the steps directly, as a relay's records would be applied. */
class Truth {
  readonly indexer = new KvIndexer({ blockSize: BLOCK });
  private readonly started = new Set<string>();
  apply(step: Step): void {
    const lane = `${step.workerId}\0${step.dpRank}`;
    if (!this.started.has(lane)) {
      this.started.add(lane);
      // The relay's relay_start clear (unless the lane starts with a clear of its own).
      if (step.kind === "batch") this.indexer.clearWorker({ workerId: step.workerId, dpRank: step.dpRank });
    }
    if (step.kind === "batch") this.indexer.applyEventBatch(step.workerId, step.payload);
    else this.indexer.clearWorker({ workerId: step.workerId, dpRank: step.dpRank });
  }
}

/**
 * What an indexer answers: findMatches for every prompt and every prefix of it (workers sorted),
 * its stats (approxBytes only with `exact`: it depends on hash-map growth, hence on how lanes
 * interleaved) and its event counters.
 */
function snapshot(ix: KvIndexer, w: Workload, exact: boolean): string {
  const answers: unknown[] = [];
  for (const keys of w.keys) {
    for (let len = 1; len <= keys.length; len++) {
      const m = ix.findMatches(keys.subarray(0, len));
      m.sort((a, b) => (a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : a.dpRank - b.dpRank));
      answers.push(m);
    }
  }
  const { approxBytes, ...stats } = ix.stats();
  const ev = ix.eventStats();
  ev.workers.sort((a, b) => (a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : a.dpRank - b.dpRank));
  return JSON.stringify({ answers, stats, ...(exact ? { approxBytes } : {}), ev });
}

/** How many (prompt prefix, worker) answers hold at least one block: the state is not trivial. */
function holdings(ix: KvIndexer, w: Workload): number {
  let n = 0;
  for (const keys of w.keys) n += ix.findMatches(keys).length;
  return n;
}

async function until(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Collects every record a bus delivers. */
async function collect(bus: EventBus, fromStart = true): Promise<{ records: [number, BusRecord][] }> {
  const out: { records: [number, BusRecord][] } = { records: [] };
  await bus.subscribe((r, m) => out.records.push([m.seq, r]), { fromStart });
  return out;
}

describe("InProcessBus", () => {
  const batch = (seq: number, workerId = "w", payload = Buffer.from([seq & 0xff])): BusRecord => ({
    kind: "batch",
    workerId,
    dpRank: 0,
    epoch: 7,
    seq: BigInt(seq),
    payload,
  });

  it("fans records out synchronously, in order, to every subscriber", async () => {
    const bus = new InProcessBus();
    const a = await collect(bus, false);
    const b = await collect(bus, false);
    const ack = bus.publishSync(batch(1));
    expect(ack).toEqual({ seq: 1, duplicate: false });
    await bus.publish(batch(2));
    expect(a.records.map(([s]) => s)).toEqual([1, 2]);
    expect(b.records).toEqual(a.records);
  });

  it("replays what it retains to a late subscriber, bounded by count and bytes", async () => {
    const bus = new InProcessBus({ maxRecords: 5, maxBytes: 1000 });
    for (let i = 1; i <= 8; i++) bus.publishSync(batch(i));
    expect(bus.retained()).toEqual({ first: 4, last: 8, records: 5, bytes: 5 });
    const late = await collect(bus, true);
    expect(late.records.map(([s]) => s)).toEqual([4, 5, 6, 7, 8]);
    const fromSeq: number[] = [];
    await bus.subscribe((_, m) => fromSeq.push(m.seq), { startSeq: 7 });
    bus.publishSync(batch(9, "w", Buffer.alloc(600)));
    bus.publishSync(batch(10, "w", Buffer.alloc(600)));
    expect(fromSeq).toEqual([7, 8, 9, 10]);
    expect(bus.retained()).toMatchObject({ first: 10, last: 10, bytes: 600 });
    const none = new InProcessBus({ maxRecords: 0 });
    none.publishSync(batch(1));
    expect((await collect(none, true)).records).toEqual([]);
  });

  it("delivers a record published from a handler after the current one, to everyone", async () => {
    const bus = new InProcessBus();
    const first: number[] = [];
    await bus.subscribe(
      (r, m) => {
        first.push(m.seq);
        if (r.kind === "batch" && r.seq === 1n) bus.publishSync(batch(2));
      },
      { fromStart: true },
    );
    const second = await collect(bus, false);
    bus.publishSync(batch(1));
    expect(first).toEqual([1, 2]);
    expect(second.records.map(([s]) => s)).toEqual([1, 2]);
  });

  it("filters by model, counts handler errors, refuses to publish once closed", async () => {
    const bus = new InProcessBus({ model: "m1" });
    const m2: string[] = [];
    const sub = await bus.subscribe((r) => m2.push(r.workerId), { model: "m2" });
    const bad = await bus.subscribe(() => {
      throw new Error("boom");
    });
    bus.publishSync({ ...batch(1, "a"), model: "m2" });
    bus.publishSync(batch(2, "b")); // model m1 by default
    expect(m2).toEqual(["a"]);
    expect(bad.stats().handlerErrors).toBe(2);
    await sub.close();
    await bus.close();
    await expect(bus.publish(batch(3))).rejects.toBeInstanceOf(EventBusError);
  });

  it("relay -> bus -> replicas: every replica matches an indexer fed directly, one started late too", async () => {
    const w = new Workload(1);
    const truth = new Truth();
    const bus = new InProcessBus({ maxRecords: 100_000 });
    const relay = new KvEventRelay({ bus });
    const live = new KvIndexer({ blockSize: BLOCK });
    const liveReplica = await KvEventReplica.start({ bus, indexer: live });
    for (let i = 0; i < 3000; i++) {
      const step = w.next();
      truth.apply(step);
      feed(relay, step);
    }
    await relay.flush();
    const late = new KvIndexer({ blockSize: BLOCK });
    const lateReplica = await KvEventReplica.start({ bus, indexer: late });
    expect(lateReplica.stats().lastStreamSeq).toBe(liveReplica.stats().lastStreamSeq);
    const stats = relay.stats();
    expect(stats).toMatchObject({ received: expect.any(Number), dropped: 0, buffered: 0, retries: 0 });
    expect(stats.acked).toBe(stats.published);
    expect(liveReplica.stats()).toMatchObject({ duplicates: 0, errors: 0, malformed: 0 });
    expect(holdings(live, w)).toBeGreaterThan(20);
    const want = snapshot(truth.indexer, w, false);
    expect(snapshot(live, w, false)).toBe(want);
    expect(snapshot(late, w, true)).toBe(snapshot(live, w, true));
  });

  it("relay drops what does not fit, then clears the lane: a replica never credits a block the worker lacks", async () => {
    // A bus that refuses everything while `down`: the in-process bus behind a switch.
    const inner = new InProcessBus({ maxRecords: 100_000 });
    let down = true;
    const bus: EventBus = {
      get connected() {
        return !down;
      },
      maxPayloadBytes: inner.maxPayloadBytes,
      maxGroupBytes: inner.maxGroupBytes,
      publish: (r) => (down ? Promise.reject(new EventBusError("unavailable", "down")) : inner.publish(r)),
      publishGroup: (rs) => (down ? Promise.reject(new EventBusError("unavailable", "down")) : inner.publishGroup(rs)),
      subscribe: (h, o) => inner.subscribe(h, o),
      close: () => inner.close(),
    };
    const w = new Workload(2, 2, 1);
    const truth = new Truth();
    const relay = new KvEventRelay({ bus, maxBufferedBatches: 50, retryInitialMs: 5, retryMaxMs: 20 });
    const ix = new KvIndexer({ blockSize: BLOCK });
    await KvEventReplica.start({ bus, indexer: ix });
    for (let i = 0; i < 400; i++) {
      const step = w.next();
      truth.apply(step);
      feed(relay, step);
    }
    expect(relay.stats().dropped).toBeGreaterThan(0);
    expect(relay.stats().buffered).toBeLessThanOrEqual(50 + 2 * 2);
    await until("a retry", () => relay.stats().retries > 0);
    down = false;
    await relay.flush();
    expect(relay.stats().clears.relay_overflow).toBeGreaterThan(0);
    for (const keys of w.keys) {
      const want = new Map(truth.indexer.findMatches(keys).map((m) => [`${m.workerId}/${m.dpRank}`, m.blocks]));
      for (const m of ix.findMatches(keys)) {
        expect(m.blocks).toBeLessThanOrEqual(want.get(`${m.workerId}/${m.dpRank}`) ?? 0);
      }
    }
    // Once the bus is back, the relay is lossless again: a fresh lane is complete.
    const after = new Workload(3, 1, 1);
    const afterTruth = new Truth();
    for (let i = 0; i < 200; i++) {
      const step = after.next();
      const renamed = { ...step, workerId: `after-${step.workerId}` };
      afterTruth.apply(renamed);
      feed(relay, renamed);
    }
    await relay.flush();
    for (const keys of after.keys) {
      const fresh = ix.findMatches(keys).filter((m) => m.workerId.startsWith("after-"));
      expect(fresh).toEqual(afterTruth.indexer.findMatches(keys));
    }
    relay.close();
  });
});

describe("NatsJetStreamBus (real nats-server -js)", () => {
  let server: NatsServer;
  const buses: { close(): Promise<void> }[] = [];
  const open = async (namespace: string, extra: Parameters<typeof NatsJetStreamBus.connect>[0] = {}) => {
    const bus = await NatsJetStreamBus.connect({ servers: server.url, namespace, ...extra });
    buses.push(bus);
    return bus;
  };

  beforeAll(async () => {
    server = await NatsServer.start();
  });

  afterAll(async () => {
    await Promise.all(buses.map((b) => b.close().catch(() => undefined)));
    await server?.dispose();
  });

  it("creates the namespace's stream once, and updates it when its settings change", async () => {
    const a = await open("idem", { stream: { maxAgeMs: 600_000, maxBytes: 64 * 1024 * 1024, duplicateWindowMs: 60_000 } });
    expect(a.stats().streamUpdates).toBe(1);
    const b = await open("idem", { stream: { maxAgeMs: 600_000, maxBytes: 64 * 1024 * 1024, duplicateWindowMs: 60_000 } });
    expect(b.stats().streamUpdates).toBe(0);
    const c = await open("idem", { stream: { maxAgeMs: 300_000, maxBytes: 32 * 1024 * 1024, maxMsgs: 1_000_000 } });
    expect(c.stats().streamUpdates).toBe(1);
    const info = await c.jsm.streams.info(streamName("idem"));
    expect(info.config).toMatchObject({
      name: "KVROUTE_EVENTS_idem",
      subjects: ["kvroute.events.idem.>"],
      storage: "file",
      retention: "limits",
      discard: "old",
      max_age: 300_000 * 1e6,
      max_bytes: 32 * 1024 * 1024,
      max_msgs: 1_000_000,
      duplicate_window: 120_000 * 1e6,
    });
    await expect(open("idem", { stream: { storage: "memory" } })).rejects.toMatchObject({ reason: "stream_config" });
  });

  it("recreates a deleted stream, and the relay's retry lands in it", async () => {
    const bus = await open("gone", { publishTimeoutMs: 1000 });
    await bus.jsm.streams.delete(streamName("gone"));
    const relay = new KvEventRelay({ bus, retryInitialMs: 20 });
    const step = new Workload(8, 1, 1).next() as Extract<Step, { kind: "batch" }>;
    relay.applyBatch("w", 0, step.seq, step.payload);
    await relay.flush();
    expect(relay.stats()).toMatchObject({ published: 2, dropped: 0 });
    expect(relay.stats().retries).toBeGreaterThan(0);
    expect(bus.stats().streamUpdates).toBe(2);
    // The relay_start clear, then the batch.
    expect((await bus.jsm.streams.info(streamName("gone"))).state.messages).toBe(2);
    relay.close();
  });

  it("publishes a record once per id, on its worker's subject, with its fields in headers", async () => {
    const bus = await open("ids", { model: "llama/3.1-8b" });
    const payload = new Workload(4, 1, 1).next() as Extract<Step, { kind: "batch" }>;
    const record: BusRecord = { kind: "batch", workerId: "host:8000", dpRank: 1, epoch: 42, seq: 5n, payload: payload.payload };
    const first = await bus.publish(record);
    const again = await bus.publish(record);
    expect(first.duplicate).toBe(false);
    expect(again).toEqual({ seq: first.seq, duplicate: true });
    const clear = await bus.publish({ kind: "clear", workerId: "host:8000", dpRank: 1, epoch: 43, reason: "source" });
    expect(clear.seq).toBe(first.seq + 1);

    const stored = (await bus.jsm.streams.getMessage(streamName("ids"), { seq: first.seq }))!;
    expect(stored.subject).toBe("kvroute.events.ids.llama_3_1-8b.host_8000");
    expect(stored.subject).toBe(recordSubject("ids", "llama/3.1-8b", "host:8000"));
    expect(stored.header.get("Nats-Msg-Id")).toBe("host%3A8000:1:42:5");
    expect(recordId(record)).toBe("host%3A8000:1:42:5");
    expect(stored.header.get("Kvr-Worker")).toBe("host%3A8000");
    expect(stored.header.get("Kvr-Model")).toBe("llama%2F3.1-8b");
    expect(Buffer.from(stored.data).equals(payload.payload)).toBe(true);

    const seen: [number, BusRecord][] = [];
    const sub = await bus.subscribe((r, m) => seen.push([m.seq, r]), { fromStart: true });
    await until("2 records", () => seen.length === 2);
    expect(seen[0]).toEqual([first.seq, { ...record, model: "llama/3.1-8b" }]);
    expect(seen[1]).toEqual([clear.seq, { kind: "clear", workerId: "host:8000", dpRank: 1, epoch: 43, reason: "source", model: "llama/3.1-8b" }]);
    // A foreign message on the stream's subjects is skipped and counted.
    await bus.connection.request("kvroute.events.ids.x.y", new TextEncoder().encode("hello"));
    await until("the foreign message", () => sub.stats().invalid === 1);
    // A model filter only sees that model.
    const other: BusRecord[] = [];
    await bus.subscribe((r) => other.push(r), { fromStart: true, model: "other" });
    await bus.publish({ ...record, seq: 6n, model: "other" });
    await until("the other model's record", () => other.length === 1);
    expect(other[0]).toMatchObject({ seq: 6n, model: "other" });
  });

  it("two replicas of one stream agree, and a replica started after 10,000 batches catches up to the same answers", async () => {
    const bus = await open("fleet");
    const w = new Workload(5);
    const truth = new Truth();
    const relay = new KvEventRelay({ bus });
    const ixA = new KvIndexer({ blockSize: BLOCK });
    const replicaA = await KvEventReplica.start({ bus, indexer: ixA });
    let batches = 0;
    while (batches < 10_000) {
      const step = w.next();
      if (step.kind === "batch") batches++;
      truth.apply(step);
      feed(relay, step);
    }
    await relay.flush();
    const stats = relay.stats();
    expect(stats).toMatchObject({ received: 10_000, dropped: 0, buffered: 0, deduped: 0 });
    await replicaA.waitForSeq(stats.lastAckSeq);

    const ixB = new KvIndexer({ blockSize: BLOCK });
    const replicaB = await KvEventReplica.start({ bus, indexer: ixB });
    await replicaB.waitForSeq(stats.lastAckSeq);
    expect(replicaB.stats()).toMatchObject({ applied: 10_000, lastStreamSeq: stats.lastAckSeq, duplicates: 0, errors: 0 });
    const { resets: _a, ...statsA } = replicaA.stats();
    const { resets: _b, ...statsB } = replicaB.stats();
    expect(statsA).toEqual(statsB);

    expect(holdings(ixA, w)).toBeGreaterThan(20);
    expect(snapshot(ixB, w, true)).toBe(snapshot(ixA, w, true));
    expect(snapshot(ixA, w, false)).toBe(snapshot(truth.indexer, w, false));

    // The same records through the in-process bus give the same answers.
    const ixIn = new KvIndexer({ blockSize: BLOCK });
    const inBus = new InProcessBus({ maxRecords: 0 });
    await KvEventReplica.start({ bus: inBus, indexer: ixIn, fromStart: false });
    const natsRecords: BusRecord[] = [];
    const sub = await bus.subscribe((r) => natsRecords.push(r), { fromStart: true });
    await until("the stream", () => sub.stats().lastSeq >= stats.lastAckSeq);
    for (const r of natsRecords) inBus.publishSync(r);
    expect(snapshot(ixIn, w, true)).toBe(snapshot(ixA, w, true));
    await Promise.all([replicaA.close(), replicaB.close(), sub.close()]);
    relay.close();
  });

  it("carries a worker's ZMQ events end to end: publisher -> VllmEventSource -> relay -> NATS -> replica", async () => {
    const bus = await open("e2e");
    const relay = new KvEventRelay({ bus });
    const ix = new KvIndexer({ blockSize: BLOCK });
    const replica = await KvEventReplica.start({ bus, indexer: ix });
    const pub = await VllmEventPublisher.start({ endpoint: "tcp://127.0.0.1:0", bind: true, topic: "kv@w1" });
    const src = new VllmEventSource({ workerId: "w1", endpoint: pub.endpoint, topic: "kv@w1", sink: relay }).start();
    try {
      await until("the source's subscription", () => pub.stats().pub.subscriptions >= 1);
      const w = new Workload(7, 1, 1);
      const truth = new Truth();
      let n = 0;
      while (n < 2000) {
        const step = w.next();
        if (step.kind !== "batch") continue;
        truth.apply({ ...step, workerId: "w1" });
        pub.publish(step.payload);
        n++;
        if (n % 100 === 0) await new Promise((r) => setImmediate(r));
      }
      await until("2000 batches at the relay", () => relay.stats().received === 2000);
      await relay.flush();
      await replica.waitForSeq(relay.stats().lastAckSeq);
      expect(src.stats()).toMatchObject({ delivered: 2000, gaps: 0 });
      expect(replica.stats()).toMatchObject({ applied: 2000, cleared: 1 });
      expect(holdings(ix, w)).toBeGreaterThan(5);
      expect(snapshot(ix, w, false)).toBe(snapshot(truth.indexer, w, false));
    } finally {
      await src.close();
      await pub.close();
      await replica.close();
      relay.close();
    }
  });

  it("loses no event when nats-server is SIGKILLed mid-stream and restarted on the same port and store", async () => {
    const bus = await open("crash", { publishTimeoutMs: 1000 });
    const w = new Workload(6);
    const truth = new Truth();
    const relay = new KvEventRelay({ bus, retryInitialMs: 20, retryMaxMs: 200 });
    const ix = new KvIndexer({ blockSize: BLOCK });
    const replica = await KvEventReplica.start({ bus, indexer: ix });
    let batches = 0;
    let stop = false;
    // A fleet's pace: a few batches per tick, until told to stop, so the kill lands mid-stream.
    const feeding = (async () => {
      for (let i = 0; !stop || i < 6000; i++) {
        const step = w.next();
        if (step.kind === "batch") batches++;
        truth.apply(step);
        feed(relay, step);
        if (i % 10 === 9) await new Promise((r) => setTimeout(r, 1));
      }
    })();
    await until("some acks", () => relay.stats().acked > 1000);
    await server.stop("SIGKILL");
    await until("the relay to notice", () => relay.stats().retries > 0);
    const down = relay.stats();
    await new Promise((r) => setTimeout(r, 1000)); // the fleet goes on while the server is down
    expect(relay.stats().buffered).toBeGreaterThan(down.buffered);
    await server.restart();
    await until("the relay to publish again", () => relay.stats().acked > down.acked + 1000);
    stop = true;
    await feeding;
    await relay.flush();

    const stats = relay.stats();
    expect(stats.received).toBe(batches);
    expect(stats.dropped).toBe(0);
    expect(stats.connected).toBe(true);
    await replica.waitForSeq(stats.lastAckSeq);
    const rs = replica.stats();
    expect(rs).toMatchObject({ applied: batches, errors: 0, malformed: 0, connected: true });
    expect(rs.resets).toBeGreaterThan(0);
    expect(holdings(ix, w)).toBeGreaterThan(20);
    expect(snapshot(ix, w, false)).toBe(snapshot(truth.indexer, w, false));

    // The stream holds each batch exactly once: a replica started now agrees too.
    const ixLate = new KvIndexer({ blockSize: BLOCK });
    const late = await KvEventReplica.start({ bus, indexer: ixLate });
    await late.waitForSeq(stats.lastAckSeq);
    expect(late.stats()).toMatchObject({ applied: batches, duplicates: 0 });
    expect(snapshot(ixLate, w, true)).toBe(snapshot(ix, w, true));
    await Promise.all([replica.close(), late.close()]);
    relay.close();
  });
});
