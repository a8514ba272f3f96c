/**
 * KV events across the event bus, end to end: batches handed to a KvEventRelay (as a
 * VllmEventSource would) until a KvEventReplica has applied all of them to its KvIndexer, through
 * NATS JetStream (a real `nats-server -js` started here on a free loopback port, file storage) and,
 * as the baseline in the same run, through the InProcessBus. Also: a replica started after the
 * fact replaying the whole stream (catch-up), and the serial-per-lane publish ceiling.
 *
 *   npx tsx benchmarks/events-nats.ts [batches]        (default 20,000 batches per case)
 *
 * Batches hold 16 BlockStored events of one 16-token block each (chained per 64-block prompt),
 * encoded up front in vLLM's newest wire form. One process plays relay, NATS client of the
 * replica and indexer, next to the nats-server: on a 2-core machine they share the cores.
 */
import { encodeKvEventBatch, type KvEvent } from "../ts/events/codec.js";
import { InProcessBus, KvEventRelay, KvEventReplica, KvIndexer, NatsJetStreamBus, type EventBus } from "../ts/index.js";
import { NatsServer } from "../__test__/helpers/nats-server.js";
import { fmt, machine, printTable, type Row } from "./lib/table.js";

const TOTAL = Number(process.argv[2] ?? 20_000);
const EVENTS_PER_BATCH = 16;

/** `count` payloads per lane, `EVENTS_PER_BATCH` chained one-block BlockStored events each. */
function payloads(lanes: number, count: number): Buffer[][] {
  const out: Buffer[][] = [];
  for (let l = 0; l < lanes; l++) {
    const lane: Buffer[] = [];
    let hash = BigInt(l + 1) << 40n;
    for (let b = 0; b < count; b++) {
      const events: KvEvent[] = [];
      for (let e = 0; e < EVENTS_PER_BATCH; e++) {
        const n = b * EVENTS_PER_BATCH + e;
        const first = n % 64 === 0;
        const parent = hash;
        hash += 1n;
        events.push({
          type: "BlockStored",
          blockHashes: [hash],
          parentBlockHash: first ? null : parent,
          tokenIds: Array.from({ length: 16 }, (_, i) => ((l * 7919 + n * 31 + i) % 150_000) + 1),
          blockSize: 16,
          medium: "GPU",
        });
      }
      lane.push(encodeKvEventBatch({ ts: b, dataParallelRank: 0, events }));
    }
    out.push(lane);
  }
  return out;
}

interface Result {
  seconds: number;
  batches: number;
  /** Log position of the last record (NATS: stream sequence; groups take one). */
  lastSeq: number;
  /** Publishes (a group of batches counts once). */
  messages: number;
}

/** Feeds every lane's batches to a relay on `publishBus`; waits until a replica on `readBus` applied them. */
async function endToEnd(publishBus: EventBus, readBus: EventBus, lanes: Buffer[][], maxGroupBatches = 64): Promise<Result> {
  const indexer = new KvIndexer({ blockSize: 16 });
  const replica = await KvEventReplica.start({ bus: readBus, indexer, fromStart: false });
  const relay = new KvEventRelay({ bus: publishBus, clearOnStart: false, maxGroupBatches });
  const batches = lanes.reduce((n, l) => n + l.length, 0);
  const t = process.hrtime.bigint();
  // Feed the lanes interleaved, yielding now and then like a socket reader would.
  const longest = Math.max(...lanes.map((l) => l.length));
  for (let i = 0; i < longest; i++) {
    lanes.forEach((lane, l) => {
      const p = lane[i];
      if (p) relay.applyBatch(`worker-${l}`, 0, BigInt(i), p);
    });
    if (i % 64 === 63) await new Promise((r) => setImmediate(r));
  }
  await relay.flush();
  const { lastAckSeq, messages } = relay.stats();
  await replica.waitForSeq(lastAckSeq);
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  const applied = replica.stats().applied;
  if (applied !== batches) throw new Error(`replica applied ${applied} of ${batches} batches`);
  relay.close();
  await replica.close();
  return { seconds, batches, lastSeq: lastAckSeq, messages };
}

/** A replica started after the fact: replays `upTo` stream records. */
async function catchUp(bus: EventBus, upTo: number): Promise<Result> {
  const indexer = new KvIndexer({ blockSize: 16 });
  const t = process.hrtime.bigint();
  const replica = await KvEventReplica.start({ bus, indexer, fromStart: true });
  await replica.waitForSeq(upTo);
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  const batches = replica.stats().applied;
  await replica.close();
  return { seconds, batches, lastSeq: upTo, messages: upTo };
}

function rows(name: string, r: Result, note?: string): Row[] {
  const perSec = r.batches / r.seconds;
  return [
    { name, value: perSec, unit: "batches/s", ...(note ? { baseline: note } : {}) },
    { name: "", value: perSec * EVENTS_PER_BATCH, unit: "events/s", baseline: `${fmt(r.batches / r.messages)} batches per NATS message` },
  ];
}

async function main(): Promise<void> {
  console.log(`kvroute bench:events (bus) — ${machine()}`);
  const server = await NatsServer.start();
  const out: Row[] = [];
  try {
    const pubBus = await NatsJetStreamBus.connect({ servers: server.url, namespace: "bench" });
    const readBus = await NatsJetStreamBus.connect({ servers: server.url, namespace: "bench" });
    let lastSeq = 0;
    let published = 0;
    for (const laneCount of [1, 8]) {
      const lanes = payloads(laneCount, Math.ceil(TOTAL / laneCount));
      const inBus = new InProcessBus({ maxRecords: 0 });
      const base = await endToEnd(inBus, inBus, lanes);
      const baseRate = `in-process bus: ${fmt(base.batches / base.seconds)} batches/s`;
      const grouped = await endToEnd(pubBus, readBus, lanes);
      out.push(...rows(`${laneCount} lane(s), relay -> NATS -> replica`, grouped, baseRate));
      const single = await endToEnd(pubBus, readBus, lanes, 1);
      out.push(...rows(`${laneCount} lane(s), same, one publish per batch`, single, baseRate));
      lastSeq = single.lastSeq;
      published += grouped.batches + single.batches;
    }
    const caught = await catchUp(readBus, lastSeq);
    if (caught.batches !== published) throw new Error(`late replica applied ${caught.batches} of ${published}`);
    out.push(...rows(`late replica replaying the stream (${caught.batches.toLocaleString("en")} batches)`, { ...caught, messages: lastSeq }));
    await pubBus.close();
    await readBus.close();
  } finally {
    await server.dispose();
  }
  printTable(`KV events through the event bus (${EVENTS_PER_BATCH} events/batch, NATS file storage, one process)`, out);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
