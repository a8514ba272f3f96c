/**
 * KV state over the JetStream stream: `kvroute worker --registry ... --bus ...` processes relay
 * their mocker's KV events onto NATS, and gateways with `fleet.kvEvents: bus` read them from the
 * stream. A replica started after the traffic replays the stream and must answer every prefix
 * lookup (the router's findMatches: overlap per worker) exactly as a replica that saw it live.
 * Garbage published on the event subjects is survived and counted.
 */
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { EtcdServer } from "./helpers/etcd-server.js";
import { startServeProcess, startWorkerProcess, stopFleetProcesses, type WorkerProcess } from "./helpers/fleet-processes.js";
import { get, metricValue, MODEL, post } from "./helpers/gateway-fleet.js";
import { NatsServer } from "./helpers/nats-server.js";

let etcd: EtcdServer;
let nats: NatsServer;
let workers: WorkerProcess[] = [];
const env = { KVROUTE_FLEET_NAMESPACE: "late", KVROUTE_FLEET_KV_EVENTS: "bus" };

beforeAll(async () => {
  [etcd, nats] = await Promise.all([EtcdServer.start(), NatsServer.start()]);
  workers = await Promise.all(["a", "b", "c"].map((id) => startWorkerProcess({ id, registry: etcd.url, bus: nats.url, env })));
}, 120_000);

afterAll(async () => {
  await stopFleetProcesses();
  await Promise.all([etcd?.dispose(), nats?.dispose()]);
});

const prompts = Array.from({ length: 24 }, (_, i) => Array.from({ length: 64 + (i % 5) * 16 }, (_, k) => 7000 + (i % 6) * 500 + k));

/** The router's prefix lookup for each prompt: overlap blocks per worker, sorted. */
async function matches(url: string): Promise<string[]> {
  const out: string[] = [];
  for (const prompt of prompts) {
    const r = await post(url, "/v1/kvroute/route", { model: MODEL, prompt });
    expect(r.status).toBe(200);
    const c = (r.json.candidates as { worker: string; dpRank: number; overlapBlocks: number }[]).map((x) => `${x.worker}/${x.dpRank}:${x.overlapBlocks}`).sort();
    out.push(c.join(" "));
  }
  return out;
}

describe("a replica started late", () => {
  it("answers findMatches exactly as an old one does, from the stream", async () => {
    const old = await startServeProcess(["--registry", etcd.url, "--bus", nats.url], env);
    // Traffic straight to the workers: no replica holds speculative credit, only the events count.
    for (const [i, prompt] of prompts.entries()) {
      const w = workers[i % workers.length]!;
      const r = await post(w.record.url, "/v1/completions", { model: MODEL, prompt, max_tokens: 4 });
      expect(r.status).toBe(200);
    }
    // The old replica saw it live: the last prompt is fully cached on its worker.
    const last = prompts.length - 1;
    const lastWorker = workers[last % workers.length]!.id;
    await vi.waitFor(async () => {
      const r = await post(old.url, "/v1/kvroute/route", { model: MODEL, prompt: prompts[last] });
      const c = (r.json.candidates as { worker: string; overlapBlocks: number }[]).find((x) => x.worker === lastWorker);
      expect(c?.overlapBlocks).toBe(Math.floor(prompts[last]!.length / 16));
    }, { timeout: 10_000, interval: 50 });
    const before = await matches(old.url);
    expect(before.some((m) => /:[1-9]/.test(m))).toBe(true);

    const late = await startServeProcess(["--registry", etcd.url, "--bus", nats.url], env);
    await vi.waitFor(async () => expect(await matches(late.url)).toEqual(before), { timeout: 15_000, interval: 100 });
    expect(await matches(old.url)).toEqual(before);
  });

  it("garbage on the KV-event subjects is survived and counted; lookups stay as they were", async () => {
    const gw = await startServeProcess(["--registry", etcd.url, "--bus", nats.url], env);
    await vi.waitFor(async () => expect((await matches(gw.url)).some((m) => /:[1-9]/.test(m))).toBe(true), { timeout: 15_000, interval: 100 });
    const before = await matches(gw.url);
    const nc = await connect({ servers: nats.url });
    const js = (await import("@nats-io/jetstream")).jetstream(nc);
    await js.publish(`kvroute.events.late.${MODEL}.a`, new Uint8Array([1, 2, 3])); // no kvroute headers
    await js.publish(`kvroute.events.late.${MODEL}.zz`, "not msgpack");
    await nc.close();
    await vi.waitFor(async () => {
      const m = (await get(gw.url, "/metrics")).text;
      expect(metricValue(m, "kvroute_fleet_kv_records_invalid_total")).toBe(2);
    }, { timeout: 5000, interval: 50 });
    expect(await matches(gw.url)).toEqual(before);
  });
});
