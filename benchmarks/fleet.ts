/**
 * `npm run bench:fleet`: what sharing load between router replicas over NATS costs. 16 simulated
 * workers (records only, no processes), prompts of 2,048 tokens (128 blocks) with a shared
 * 1,024-token prefix; each decision is `route()` + `started()` as the gateway calls them, and
 * requests finish 64 decisions later (so ~64 are in flight per replica, as under load).
 *
 *   - baseline: one KvRouter, no NATS (the embedded default);
 *   - 1 replica publishing its lifecycle to NATS (a real `nats-server` on a free loopback port);
 *   - 2 replicas in this process sharing load: each publishes its own and books the other's
 *     (started with prompt keys, finished), decisions alternating between them; throughput
 *     counts until every message of the other replica has been folded in.
 *
 * Added routing latency = p50/p99 of (route + started) with the sync minus without, measured in
 * the same run. One process plays both replicas and the NATS clients next to the nats-server.
 * Last, the wait fleet mode adds before a response ends: finished to the NATS acknowledgement.
 *
 *   npx tsx benchmarks/fleet.ts [decisions]   (default 20,000 per case)
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { KvRouter, MemoryRegistry } from "../ts/index.js";
import { ReplicaLoadSync } from "../ts/fleet/replica-load.js";
import { NatsServer } from "../__test__/helpers/nats-server.js";
import { benchWorkerRecords } from "./lib/records.js";
import { fmt, machine, percentile, printTable, rng, type Row } from "./lib/table.js";

const N = Number(process.argv[2] ?? 20_000);
const WORKERS = 16;
const IN_FLIGHT = 64;
const records = benchWorkerRecords(WORKERS, "m", 16);
const rand = rng(11);
const PREFIX = Uint32Array.from({ length: 1024 }, () => Math.floor(rand() * 128_000));
const prompts = Array.from({ length: 512 }, () => {
  const p = new Uint32Array(2048);
  p.set(PREFIX);
  for (let i = 1024; i < 2048; i++) p[i] = Math.floor(rand() * 128_000);
  return p;
});

function router(): KvRouter {
  return new KvRouter({ registry: new MemoryRegistry(records), seed: 1, log: () => {} });
}

interface Result {
  perSecond: number;
  p50: number;
  p99: number;
}

/** `n` decisions over `routers` in turn; each finishes IN_FLIGHT decisions later. */
async function run(routers: KvRouter[], n: number, settle: () => Promise<void>): Promise<Result> {
  const lat: number[] = [];
  const open: { r: KvRouter; id: string }[] = [];
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const r = routers[i % routers.length]!;
    const t = process.hrtime.bigint();
    const d = r.route({ model: "m", tokens: prompts[i % prompts.length]!, maxTokens: 128 });
    r.started(d);
    lat.push(Number(process.hrtime.bigint() - t) / 1000);
    open.push({ r, id: d.requestId });
    if (open.length > IN_FLIGHT) {
      const o = open.shift()!;
      o.r.finished(o.id, "ok");
    }
    // Let NATS deliver now and then, as a gateway's event loop would between requests.
    if (i % 256 === 255) await new Promise((res) => setImmediate(res));
  }
  for (const o of open.splice(0)) o.r.finished(o.id, "ok");
  const routed = process.hrtime.bigint();
  await settle();
  const settleMs = Number(process.hrtime.bigint() - routed) / 1e6;
  if (settleMs > 1000) console.error(`settling took ${settleMs.toFixed(0)} ms (routing ${(Number(routed - start) / 1e6).toFixed(0)} ms)`);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  lat.sort((a, b) => a - b);
  return { perSecond: n / seconds, p50: percentile(lat, 0.5), p99: percentile(lat, 0.99) };
}

/**
 * How long the gateway holds the end of a response in fleet mode: from `finished` to the NATS
 * server's acknowledgement (`lifecycleDelivered`), one request at a time.
 */
async function finishAck(r: KvRouter, n: number): Promise<{ p50: number; p99: number }> {
  const lat: number[] = [];
  for (let i = 0; i < n; i++) {
    const d = r.route({ model: "m", tokens: prompts[i % prompts.length]!, maxTokens: 128 });
    r.started(d);
    const t = process.hrtime.bigint();
    r.finished(d.requestId, "ok");
    await r.lifecycleDelivered();
    lat.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  lat.sort((a, b) => a - b);
  return { p50: percentile(lat, 0.5), p99: percentile(lat, 0.99) };
}

async function main(): Promise<void> {
  console.log(`kvroute bench:fleet — ${machine()}`);
  console.log(`${N} decisions per case, ${WORKERS} simulated workers, 2,048-token prompts, ${IN_FLIGHT} in flight per replica`);
  const nats = await NatsServer.start();
  const conns: NatsConnection[] = [];
  try {
    // Warm-up (JIT, native first calls).
    await run([router()], 2000, async () => {});
    const base = await run([router()], N, async () => {});
    console.error("baseline done");

    const c1 = await connect({ servers: nats.url });
    conns.push(c1);
    const solo = router();
    const soloSync = new ReplicaLoadSync({ connection: c1, router: solo, namespace: "bench1" });
    await soloSync.ready();
    const one = await run([solo], N, () => c1.flush());
    soloSync.close();
    console.error("1 replica done");

    const [ca, cb] = await Promise.all([connect({ servers: nats.url }), connect({ servers: nats.url })]);
    conns.push(ca, cb);
    const ra = router();
    const rb = router();
    const sa = new ReplicaLoadSync({ connection: ca, router: ra, namespace: "bench2", replicaId: "a" });
    const sb = new ReplicaLoadSync({ connection: cb, router: rb, namespace: "bench2", replicaId: "b" });
    await Promise.all([sa.ready(), sb.ready()]);
    const expected = (s: ReplicaLoadSync) => (s.stats().received["finished"] ?? 0);
    const two = await run([ra, rb], N, async () => {
      await Promise.all([ca.flush(), cb.flush()]);
      // Every started and finished of the other replica folded in (core NATS may drop messages
      // of a slow consumer: then the snapshots clean up, and the loss is reported below).
      const deadline = Date.now() + 30_000;
      const folded = () => expected(sa) >= N / 2 && expected(sb) >= N / 2;
      const clean = () => sa.stats().remoteInFlight === 0 && sb.stats().remoteInFlight === 0;
      while (!folded() && !clean() && Date.now() < deadline) await new Promise((res) => setTimeout(res, 1));
    });
    const lost = N - expected(sa) - expected(sb);
    const ack = await finishAck(ra, 2000);
    const remoteLeft = sa.stats().remoteInFlight + sb.stats().remoteInFlight;
    sa.close();
    sb.close();

    const rows: Row[] = [
      { name: "1 router, no NATS: decisions/s", value: base.perSecond, unit: "decisions/s", baseline: "baseline (embedded default)" },
      { name: "1 router, no NATS: route+started p50", value: base.p50, unit: "µs", baseline: `p99 ${fmt(base.p99)} µs` },
      { name: "1 replica publishing to NATS: decisions/s", value: one.perSecond, unit: "decisions/s", baseline: `${((one.perSecond / base.perSecond) * 100).toFixed(0)}% of baseline` },
      { name: "1 replica publishing: added latency p50", value: one.p50 - base.p50, unit: "µs", baseline: `p99 +${fmt(one.p99 - base.p99)} µs` },
      { name: "2 replicas sharing load: decisions/s (both)", value: two.perSecond, unit: "decisions/s", baseline: `${((two.perSecond / base.perSecond) * 100).toFixed(0)}% of baseline, folds included` },
      { name: "2 replicas: added latency p50", value: two.p50 - base.p50, unit: "µs", baseline: `p99 +${fmt(two.p99 - base.p99)} µs` },
      { name: "2 replicas: a response's end waits for the finished ack, p50", value: ack.p50, unit: "µs", baseline: `p99 ${fmt(ack.p99)} µs; 0 without NATS` },
      { name: "2 replicas: finished messages not received", value: lost, unit: "messages", baseline: "0 expected (core NATS drops only for slow consumers)" },
      { name: "2 replicas: remote requests left after all finished", value: remoteLeft, unit: "requests", baseline: "0 unless messages were lost (snapshots clear them within 1 s)" },
    ];
    printTable("fleet load sync", rows);
    const slow = nats.output.split("\n").filter((l) => /slow consumer/i.test(l)).length;
    if (slow > 0) console.log(`\nnats-server logged ${slow} slow-consumer line(s): messages to a client that did not read in time were dropped`);
  } finally {
    await Promise.all(conns.map((c) => c.close()));
    await nats.dispose();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
