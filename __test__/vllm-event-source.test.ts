/**
 * VllmEventSource against VllmEventPublisher, end to end over real sockets: ordering, gaps and
 * replay, stale views, restarts, reconnects, data-parallel ranks. Against libzmq (a Python
 * publisher behaving as vLLM's): vllm-event-interop.test.ts.
 */
import net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import {
  encodeSeq,
  RouterSocket,
  VllmEventPublisher,
  VllmEventSource,
  type KvEventSink,
  type VllmEventPublisherOptions,
  type VllmEventSourceOptions,
} from "../ts/events/index.js";
import { freePorts, waitUntil } from "./helpers/zmq-peer.js";

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

/** Records what the source did, as "rank:payload" and "rank:clear". */
class RecordingSink implements KvEventSink {
  readonly ops: string[] = [];
  applyBatch(workerId: string, dpRank: number, _seq: bigint, payload: Buffer): void {
    expect(workerId).toBe("w1");
    this.ops.push(`${dpRank}:${payload.toString()}`);
  }
  clear(_workerId: string, dpRank: number): void {
    this.ops.push(`${dpRank}:clear`);
  }
  applied(rank = 0): number {
    return this.ops.filter((o) => o.startsWith(`${rank}:`) && !o.endsWith(":clear")).length;
  }
}

async function publisher(options: VllmEventPublisherOptions): Promise<VllmEventPublisher> {
  const pub = await VllmEventPublisher.start({ bind: true, ...options });
  closers.push(() => pub.close());
  return pub;
}

function source(options: Omit<VllmEventSourceOptions, "workerId" | "sink">, sink = new RecordingSink()) {
  const src = new VllmEventSource({
    workerId: "w1",
    sink,
    replayTimeoutMs: 3000,
    socket: { reconnectIvlMs: 20, reconnectIvlMaxMs: 200 },
    ...options,
  });
  const events: string[] = [];
  for (const name of ["gap", "replay", "stale", "restart", "connected", "disconnected"] as const) {
    src.on(name, (e: { ok?: boolean }) => events.push(name === "replay" ? `replay:${e.ok ? "ok" : "failed"}` : name));
  }
  closers.push(() => src.close());
  return { src: src.start(), sink, events };
}

/** Publishes one batch per name (the name is the payload). */
function publishAll(pub: VllmEventPublisher, names: string[], sendLive = true): void {
  for (const n of names) pub.publish(Buffer.from(n), { sendLive });
}

const range = (prefix: string, from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => `${prefix}${from + i}`);
const ops = (rank: number, names: string[]) => names.map((n) => `${rank}:${n}`);

async function subscribed(pub: VllmEventPublisher, n = 1): Promise<void> {
  await waitUntil(() => pub.stats().pub.subscriptions >= n, "the source's subscription");
}

describe("VllmEventSource with VllmEventPublisher", () => {
  it("delivers in order, each batch once", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", topic: "kv@w1" });
    const { src, sink, events } = source({ endpoint: pub.endpoint, topic: "kv@w1" });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 199));
    await waitUntil(() => sink.applied() === 200, "200 batches");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 199)));
    const stats = src.stats();
    expect(stats).toMatchObject({ received: 200, delivered: 200, gaps: 0, stale: 0, restarts: 0, connected: true });
    expect(stats.ranks[0]?.lastSeq).toBe(199n);
    expect(events).toEqual(["connected"]);
  });

  it("a gap triggers a replay: every batch arrives exactly once, in order", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0" });
    const { src, sink, events } = source({ endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 9));
    publishAll(pub, range("A", 10, 14), false); // lost on the live stream, kept for replay
    publishAll(pub, range("A", 15, 29));
    await waitUntil(() => sink.applied() === 30, "30 batches");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 29)));
    expect(src.stats()).toMatchObject({ gaps: 1, replays: { ok: 1, failed: 0 }, stale: 0, delivered: 30 });
    expect(events).toEqual(["connected", "gap", "replay:ok"]);
    expect(pub.stats().replayRequests).toBe(1);
  });

  it("replays with vLLM's pre-0.26 reply layout too", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0", replayLayout: "v0.9" });
    const { sink, events } = source({ endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 2));
    publishAll(pub, range("A", 3, 3), false);
    publishAll(pub, range("A", 4, 5));
    await waitUntil(() => sink.applied() === 6, "6 batches");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 5)));
    expect(events).toEqual(["connected", "gap", "replay:ok"]);
  });

  it("a gap without a replay endpoint marks the view stale: clear, then rebuild from what follows", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0" });
    const { src, sink, events } = source({ endpoint: pub.endpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 4));
    pub.publish(Buffer.from("lost"), { sendLive: false });
    publishAll(pub, range("A", 6, 8));
    await waitUntil(() => sink.applied() === 8, "8 batches");
    expect(sink.ops).toEqual([...ops(0, range("A", 0, 4)), "0:clear", ...ops(0, range("A", 6, 8))]);
    expect(src.stats()).toMatchObject({ gaps: 1, stale: 1, replays: { ok: 0, failed: 0 } });
    expect(events).toEqual(["connected", "gap", "stale"]);
  });

  it("a gap the replay buffer no longer covers: stale, clear, rebuild from the buffer", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0", bufferSteps: 5 });
    const { src, sink, events } = source({ endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 4));
    await waitUntil(() => sink.applied() === 5, "5 batches");
    publishAll(pub, range("A", 5, 14), false);
    publishAll(pub, range("A", 15, 15));
    await waitUntil(() => sink.applied() === 5 + 5, "the rebuilt view");
    // The ring holds the last 5: A11..A15.
    expect(sink.ops).toEqual([...ops(0, range("A", 0, 4)), "0:clear", ...ops(0, range("A", 11, 15))]);
    expect(src.stats()).toMatchObject({ gaps: 1, stale: 1, replays: { ok: 0, failed: 1 } });
    expect(events).toEqual(["connected", "gap", "stale", "replay:failed"]);
  });

  it("a seq the publisher never buffered (vLLM: encoding failed) ends in a stale view, not a loop", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0" });
    const { src, sink } = source({ endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 4));
    pub.skipSequence();
    publishAll(pub, range("A", 6, 7));
    await waitUntil(() => sink.applied() === 7, "7 batches");
    expect(sink.ops).toEqual([...ops(0, range("A", 0, 4)), "0:clear", ...ops(0, range("A", 6, 7))]);
    expect(src.stats()).toMatchObject({ gaps: 1, stale: 1, replays: { ok: 0, failed: 1 } });
    expect(pub.stats().replayRequests).toBe(1);
  });

  it("a replay that times out: stale, clear, then live batches again", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0" });
    const deaf = new RouterSocket(); // accepts the request, never answers
    const deafEndpoint = await deaf.bind("tcp://127.0.0.1:0");
    closers.push(() => deaf.close());
    const { src, sink, events } = source({ endpoint: pub.endpoint, replayEndpoint: deafEndpoint, replayTimeoutMs: 300 });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 1));
    pub.publish(Buffer.from("lost"), { sendLive: false });
    publishAll(pub, range("A", 3, 5));
    await waitUntil(() => sink.applied() === 5, "5 batches");
    expect(sink.ops).toEqual([...ops(0, range("A", 0, 1)), "0:clear", ...ops(0, range("A", 3, 5))]);
    expect(src.stats()).toMatchObject({ stale: 1, replays: { ok: 0, failed: 1 } });
    expect(events).toEqual(["connected", "gap", "stale", "replay:failed"]);
  });

  it("holds live batches during a replay up to its bound; what overflowed is replayed next", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0" });
    // A slow replay service serving, like vLLM, what was buffered when the request was read.
    const published: Buffer[] = [];
    let requests = 0;
    const slow = new RouterSocket();
    const slowEndpoint = await slow.bind("tcp://127.0.0.1:0");
    closers.push(() => slow.close());
    void (async () => {
      for await (const [id, , start] of slow) {
        requests++;
        const snapshot = published.slice();
        await new Promise((r) => setTimeout(r, 300));
        const from = Number(start!.readBigUInt64BE(0));
        for (let seq = from; seq < snapshot.length; seq++) {
          slow.send([id!, Buffer.alloc(0), Buffer.alloc(0), encodeSeq(BigInt(seq)), snapshot[seq]!]);
        }
        slow.send([id!, Buffer.alloc(0), Buffer.alloc(0), Buffer.alloc(8, 0xff), Buffer.alloc(0)]);
      }
    })().catch(() => undefined);
    const publish = (name: string, sendLive = true) => {
      published.push(Buffer.from(name));
      pub.publish(Buffer.from(name), { sendLive });
    };

    const { src, sink } = source({ endpoint: pub.endpoint, replayEndpoint: slowEndpoint, maxPendingBatches: 2 });
    await subscribed(pub);
    for (const n of range("A", 0, 4)) publish(n);
    await waitUntil(() => sink.applied() === 5, "5 batches");
    publish("A5", false);
    publish("A6"); // gap: a replay from A4 starts, A6 is held
    await waitUntil(() => requests === 1, "the replay request");
    for (const n of range("A", 7, 11)) publish(n); // A7 held, A8..A11 dropped: the bound is 2
    await waitUntil(() => src.stats().dropped === 4, "the hold buffer to overflow");
    await waitUntil(() => src.stats().replays.ok === 1, "the first replay (A5, A6), then A7 from the hold");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 7)));
    publish("A12"); // a gap again (A8..A11): a second replay brings them
    await waitUntil(() => sink.applied() === 13, "13 batches");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 12)));
    const stats = src.stats();
    expect(stats.replays).toEqual({ ok: 2, failed: 0 });
    expect(stats.stale).toBe(0);
  });

  it("a worker restart (seq back to 0): restart, clear, then the new run", async () => {
    const port = await freePorts(2);
    const endpoint = `tcp://127.0.0.1:${port}`;
    const replayEndpoint = `tcp://127.0.0.1:${port + 1}`;
    const a = await publisher({ endpoint, replayEndpoint });
    const { src, sink, events } = source({ endpoint, replayEndpoint });
    await subscribed(a);
    publishAll(a, range("A", 0, 4));
    await waitUntil(() => sink.applied() === 5, "run A");
    await a.close();
    await waitUntil(() => !src.stats().connected, "the disconnect");
    const b = await publisher({ endpoint, replayEndpoint });
    await subscribed(b);
    publishAll(b, range("B", 0, 2));
    await waitUntil(() => sink.applied() === 8, "run B");
    expect(sink.ops).toEqual([...ops(0, range("A", 0, 4)), "0:clear", ...ops(0, range("B", 0, 2))]);
    expect(src.stats()).toMatchObject({ restarts: 1, stale: 0, gaps: 0 });
    expect(events).toEqual(["connected", "disconnected", "connected", "restart"]);
  });

  it("a restart that happens to continue at last + 1 is caught by the replay anchor", async () => {
    const port = await freePorts(2);
    const endpoint = `tcp://127.0.0.1:${port}`;
    const replayEndpoint = `tcp://127.0.0.1:${port + 1}`;
    const a = await publisher({ endpoint, replayEndpoint });
    const { src, sink } = source({ endpoint, replayEndpoint });
    await subscribed(a);
    publishAll(a, range("A", 0, 2));
    await waitUntil(() => sink.applied() === 3, "run A");
    await a.close();
    await waitUntil(() => !src.stats().connected, "the disconnect");
    const b = await publisher({ endpoint, replayEndpoint });
    publishAll(b, range("B", 0, 2), false); // before the source is back
    await subscribed(b);
    publishAll(b, ["B3"]); // seq 3 = A's last + 1
    await waitUntil(() => sink.ops.includes("0:B3"), "B3");
    expect(sink.ops).toEqual([...ops(0, range("A", 0, 2)), "0:clear", "0:B2", "0:B3"]);
    expect(src.stats()).toMatchObject({ restarts: 1, replays: { ok: 1, failed: 0 } });
  });

  it("reconnects after a network cut; what was lost meanwhile is replayed, nothing twice", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0" });
    const proxy = await TcpProxy.start(pub.endpoint);
    closers.push(() => proxy.close());
    const { src, sink, events } = source({ endpoint: proxy.endpoint, replayEndpoint: pub.replayEndpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 4));
    await waitUntil(() => sink.applied() === 5, "5 batches");

    // A cut with nothing lost: the next batch is in order, checked by an anchor replay.
    proxy.cut(true);
    await waitUntil(() => pub.stats().pub.subscribers === 0, "the publisher to see the cut");
    proxy.resume();
    await waitUntil(() => events.filter((e) => e === "connected").length === 2, "the reconnect");
    await subscribed(pub);
    publishAll(pub, ["A5"]);
    await waitUntil(() => sink.applied() === 6, "A5");

    // A cut while batches are published: they are lost live and replayed.
    proxy.cut(true);
    await waitUntil(() => pub.stats().pub.subscribers === 0, "the publisher to see the cut");
    publishAll(pub, range("A", 6, 9));
    proxy.resume();
    await waitUntil(() => events.filter((e) => e === "connected").length === 3, "the second reconnect");
    await subscribed(pub);
    publishAll(pub, range("A", 10, 11));
    await waitUntil(() => sink.applied() === 12, "12 batches");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 11)));
    expect(src.stats()).toMatchObject({ restarts: 0, stale: 0, gaps: 1, replays: { ok: 2, failed: 0 } });
  });

  it("a live batch arriving after the replay that already applied it is dropped, not taken for a restart", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0" });
    const slowLink = await TcpProxy.start(pub.endpoint, 200); // the live path lags, the replay path does not
    closers.push(() => slowLink.close());
    const { src, sink, events } = source({ endpoint: slowLink.endpoint, replayEndpoint: pub.replayEndpoint });
    await subscribed(pub);
    publishAll(pub, range("A", 0, 2));
    await waitUntil(() => sink.applied() === 3, "3 batches");
    publishAll(pub, ["A3"], false);
    publishAll(pub, ["A4"]); // reveals the gap at t+200ms; the replay brings A3, A4 and A5
    await new Promise((r) => setTimeout(r, 60));
    publishAll(pub, ["A5"]); // its live copy lands ~60 ms after the replay is done
    await waitUntil(() => src.stats().duplicates === 2, "both live copies");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 5)));
    expect(src.stats()).toMatchObject({ restarts: 0, stale: 0, gaps: 1, replays: { ok: 1, failed: 0 } });
    expect(events).toEqual(["connected", "gap", "replay:ok"]);
  });

  it("catchUp replays the publisher's buffer before the first live batch", async () => {
    const pub = await publisher({ endpoint: "tcp://127.0.0.1:0", replayEndpoint: "tcp://127.0.0.1:0" });
    publishAll(pub, range("A", 0, 9)); // nobody listening yet
    const { sink, events } = source({ endpoint: pub.endpoint, replayEndpoint: pub.replayEndpoint, catchUp: true });
    await subscribed(pub);
    publishAll(pub, ["A10"]);
    await waitUntil(() => sink.applied() === 11, "11 batches");
    expect(sink.ops).toEqual(ops(0, range("A", 0, 10)));
    expect(events).toEqual(["connected", "replay:ok"]);
  });

  it("one subscription per data-parallel rank at vLLM's port offsets, sequences tracked per rank", async () => {
    const base = await freePorts(4);
    const replayBase = base + 2;
    const common = { endpoint: `tcp://127.0.0.1:${base}`, replayEndpoint: `tcp://127.0.0.1:${replayBase}` };
    const r0 = await publisher({ ...common, dataParallelRank: 0 });
    const r1 = await publisher({ ...common, dataParallelRank: 1 });
    expect(r1.endpoint).toBe(`tcp://127.0.0.1:${base + 1}`);
    const { src, sink } = source({ ...common, dataParallelSize: 2 });
    await subscribed(r0);
    await subscribed(r1);
    publishAll(r0, range("x", 0, 3));
    publishAll(r1, range("y", 0, 1));
    publishAll(r1, ["y2"], false);
    publishAll(r1, ["y3"]);
    await waitUntil(() => sink.applied(0) === 4 && sink.applied(1) === 4, "both ranks");
    expect(sink.ops.filter((o) => o.startsWith("0:"))).toEqual(ops(0, range("x", 0, 3)));
    expect(sink.ops.filter((o) => o.startsWith("1:"))).toEqual(ops(1, range("y", 0, 3)));
    const stats = src.stats();
    expect(stats.ranks.map((r) => r.lastSeq)).toEqual([3n, 3n]);
    expect(stats.ranks.map((r) => r.endpoint)).toEqual([`tcp://127.0.0.1:${base}`, `tcp://127.0.0.1:${base + 1}`]);
    expect(stats.replays.ok).toBe(1);
  });
});

/** A TCP proxy whose connections can be cut, to simulate a network blip. */
class TcpProxy {
  private readonly sockets = new Set<net.Socket>();
  private refusing = false;
  private constructor(
    private readonly server: net.Server,
    readonly endpoint: string,
  ) {}

  /** Forwards to `target`, each chunk `delayMs` late (order kept). */
  static async start(target: string, delayMs = 0): Promise<TcpProxy> {
    const [, host, port] = /^tcp:\/\/(.+):(\d+)$/.exec(target)!;
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const proxy = new TcpProxy(server, `tcp://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    server.on("connection", (client) => {
      if (proxy.refusing) {
        client.destroy();
        return;
      }
      const upstream = net.connect(Number(port), host);
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on("close", () => proxy.sockets.delete(s));
        s.on("error", () => undefined);
      }
      if (delayMs === 0) {
        client.pipe(upstream).pipe(client);
      } else {
        const forward = (from: net.Socket, to: net.Socket) =>
          from.on("data", (d) => setTimeout(() => to.destroyed || to.write(d), delayMs));
        forward(client, upstream);
        forward(upstream, client);
      }
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    return proxy;
  }

  /** Drops every connection; with `hold`, refuses new ones until resume(). */
  cut(hold = false): void {
    this.refusing = hold;
    for (const s of this.sockets) s.destroy();
  }

  resume(): void {
    this.refusing = false;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}
