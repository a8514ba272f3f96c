/**
 * Fleet mode end to end, real parts only: a mocker process publishes vLLM KV events over ZMQ, a
 * VllmEventSource feeds a KvEventRelay into NATS JetStream (a real nats-server -js), and router
 * replicas consume the stream. A replica started after 10,000 block events have flowed catches up
 * to the same answers as one that saw them live, and both hold exactly the mocker's cached set.
 */
import { afterEach, describe, expect, it } from "vitest";
import { KvIndexer } from "../ts/core/kv-indexer.js";
import { KvEventRelay, KvEventReplica, NatsJetStreamBus } from "../ts/events/bus/index.js";
import { VllmEventSource } from "../ts/events/index.js";
import { startMocker } from "./helpers/mocker-process.js";
import { NatsServer } from "./helpers/nats-server.js";
import { freePorts, waitUntil } from "./helpers/zmq-peer.js";

const cleanups: (() => Promise<unknown> | unknown)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

const engineIndexer = () => new KvIndexer({ blockSize: 16, keying: "engine", hashAlgorithm: "sha256", hashSeed: "0" });

describe("KV events across a fleet over NATS JetStream", () => {
  it("a late replica catches up to the live one; both equal the worker's own cache", async () => {
    const nats = await NatsServer.start();
    cleanups.push(() => nats.dispose());
    const eventPort = await freePorts(1);
    const mocker = await startMocker(
      [
        "mock-8b", "--host", "127.0.0.1", "--port", "0", "--zero-time", "--num-gpu-blocks-override", "256",
        "--kv-events-config", JSON.stringify({ enable_kv_cache_events: true, publisher: "zmq", endpoint: `tcp://*:${eventPort}` }),
      ],
      { PYTHONHASHSEED: "0" },
    );
    cleanups.push(mocker.stop);

    const relayBus = await NatsJetStreamBus.connect({ servers: nats.url, namespace: "fleet" });
    const replicaBus = await NatsJetStreamBus.connect({ servers: nats.url, namespace: "fleet" });
    cleanups.push(() => relayBus.close(), () => replicaBus.close());
    const relay = new KvEventRelay({ bus: relayBus });
    const source = new VllmEventSource({ workerId: "w0", endpoint: `tcp://127.0.0.1:${eventPort}`, sink: relay }).start();
    cleanups.push(() => source.close());
    const live = engineIndexer();
    const liveReplica = await KvEventReplica.start({ bus: replicaBus, indexer: live });
    cleanups.push(() => liveReplica.close());
    await waitUntil(() => source.stats().connected, "the subscription");

    // Traffic with shared prefixes and a small cache, so blocks are stored and evicted.
    const prefixes = Array.from({ length: 6 }, (_, p) => Array.from({ length: 64 + 16 * p }, (_, i) => 1000 * (p + 1) + i));
    let sent = 0;
    const blockEvents = () => live.eventStats().blocksStored + live.eventStats().blocksRemoved;
    while (blockEvents() < 10_000) {
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          const i = sent++;
          const prompt = [...prefixes[i % prefixes.length]!, ...Array.from({ length: 8 + (i % 40) }, (_, k) => 50_000 + ((i * 131 + k) % 9000))];
          const r = await fetch(`${mocker.url}/v1/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ model: "mock-8b", prompt, max_tokens: 24, ignore_eos: true }),
          });
          expect(r.status).toBe(200);
          await r.arrayBuffer();
        }),
      );
      if (sent > 20_000) throw new Error(`only ${blockEvents()} block events after ${sent} requests`);
    }

    // The worker is idle now: wait until everything it published went through NATS to the live replica.
    const view = (await (await fetch(`${mocker.url}/debug/kv-cache`)).json()) as { cachedBlocks: string[]; lastEventSeq: number };
    await waitUntil(() => source.stats().ranks[0]!.lastSeq === BigInt(view.lastEventSeq), "the source to see the last batch");
    await waitUntil(() => relay.stats().buffered === 0 && relay.stats().lastAckSeq > 0, "the relay to publish everything");
    await waitUntil(() => liveReplica.stats().lastStreamSeq === relay.stats().lastAckSeq, "the live replica to apply everything");

    const late = engineIndexer();
    const lateReplica = await KvEventReplica.start({ bus: replicaBus, indexer: late });
    cleanups.push(() => lateReplica.close());
    await waitUntil(() => lateReplica.stats().lastStreamSeq === liveReplica.stats().lastStreamSeq, "the late replica to catch up", 30_000);

    const cached = view.cachedBlocks.map(BigInt);
    expect(cached.length).toBeGreaterThan(50);
    expect(live.stats().blocks).toBe(cached.length);
    expect(late.stats()).toEqual(live.stats());
    for (const h of cached) {
      const q = BigUint64Array.of(h);
      expect(late.findMatches(q)).toEqual(live.findMatches(q));
      expect(live.findMatches(q).map((m) => m.workerId)).toEqual(["w0"]);
    }
    // Whole-prompt queries (multi-block chains) agree too.
    const { BlockHasher } = await import("../ts/core/block-hasher.js");
    const hasher = new BlockHasher({ blockSize: 16, algorithm: "sha256", seed: "0" });
    for (const p of prefixes) expect(late.findMatches(hasher.hash(p))).toEqual(live.findMatches(hasher.hash(p)));
  });
});
