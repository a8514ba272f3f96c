/**
 * Fleet mode's registry against a real etcd (Debian's etcd-server) started on free loopback
 * ports, with real mocker workers (`kvroute worker --registry etcd://...` processes and
 * VllmWorker-supervised ones): discovery while serving, lease expiry after kill -9, etcd outages,
 * a gateway that starts before etcd, corrupt records. docs/fleet.md cites these tests by name.
 */
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { startGateway, type RunningGateway } from "../ts/gateway/index.js";
import { EtcdRegistry } from "../ts/registry/etcd-registry.js";
import { workerKey } from "../ts/registry/etcd-keys.js";
import type { WorkerRecord } from "../ts/workers/config.js";
import { EtcdServer } from "./helpers/etcd-server.js";
import { get, metricValue, MODEL, post, startMockWorker } from "./helpers/gateway-fleet.js";
import { startServeProcess, startWorkerProcess, stopFleetProcesses } from "./helpers/fleet-processes.js";
import { kvroute } from "./helpers/cli-process.js";
import { findFreePortRange } from "../ts/workers/index.js";

let etcd: EtcdServer;
const closers: (() => Promise<unknown> | unknown)[] = [];

beforeAll(async () => {
  etcd = await EtcdServer.start();
});
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  await stopFleetProcesses();
  if (!etcd.running) await etcd.restart();
});
afterAll(async () => {
  await etcd?.dispose();
});

function record(id: string, port = 9, model = MODEL): WorkerRecord {
  return { id, model, role: "aggregated", url: `http://127.0.0.1:${port}`, kvEvents: null, blockSize: 16, hashAlgorithm: "sha256", hashSeed: "0", numGpuBlocks: null, dataParallelSize: 1, dpRanks: [0] };
}

async function registry(opts: { namespace: string; follow?: boolean; ttl?: number; logs?: string[] }): Promise<EtcdRegistry> {
  const r = await EtcdRegistry.connect({ endpoints: etcd.url, namespace: opts.namespace, ttlSeconds: opts.ttl ?? 2, follow: opts.follow ?? true, log: (m) => opts.logs?.push(m) });
  closers.push(() => r.close());
  return r;
}

async function gateway(namespace: string, extra: Record<string, unknown> = {}): Promise<RunningGateway> {
  const g = await startGateway(
    { host: "127.0.0.1", port: 0, registry: etcd.url, fleet: { namespace, leaseTtlSeconds: 2 }, routerMode: "round-robin", metricsScrapeIntervalMs: 200, ...extra },
    { log: null, servedModels: [MODEL] },
  );
  closers.push(() => g.close());
  return g;
}

const complete = (url: string, i: number) => post(url, "/v1/completions", { model: MODEL, prompt: Array.from({ length: 40 }, (_, k) => 1000 + i * 50 + k), max_tokens: 2 });

describe("EtcdRegistry", () => {
  it("lists then watches from the listed revision: records written during connect are all seen, deletes too", async () => {
    const writer = await registry({ namespace: "listwatch", follow: false });
    for (let i = 0; i < 20; i++) await writer.register(record(`early-${i}`));
    // Writes racing the reader's list and watch start.
    const racing = (async () => {
      for (let i = 0; i < 40; i++) await writer.register(record(`race-${i}`));
    })();
    const reader = await registry({ namespace: "listwatch" });
    await racing;
    await writer.deregister("early-3");
    await vi.waitFor(() => expect(reader.list().length).toBe(59), { timeout: 10_000, interval: 20 });
    expect(reader.get("early-3")).toBeUndefined();
    expect(reader.get("race-39")?.url).toBe("http://127.0.0.1:9");
    // Names with '/' (Hugging Face models) survive the key scheme.
    await writer.register(record("w/slash", 9, "Qwen/Qwen3-0.6B"));
    await vi.waitFor(() => expect(reader.get("w/slash")?.model).toBe("Qwen/Qwen3-0.6B"), { timeout: 5000, interval: 20 });
  });

  it("corrupt records are skipped, logged once per key, counted in /metrics; a good worker beside them serves", async () => {
    const raw = new Etcd3({ hosts: `http://127.0.0.1:${etcd.port}` });
    closers.push(() => raw.close());
    const prefix = "/kvroute/corrupt/workers/";
    await raw.put(`${prefix}${MODEL}/bad-json`).value("{not json");
    await raw.put(`${prefix}${MODEL}/bad-shape`).value(JSON.stringify({ ...record("bad-shape"), blockSize: -1 }));
    await raw.put(`${prefix}${MODEL}/other-id`).value(JSON.stringify(record("not-the-key")));
    await raw.put(`${prefix}no-model-segment`).value(JSON.stringify(record("x")));
    const g = await gateway("corrupt");
    const writer = await registry({ namespace: "corrupt", follow: false });
    const w = await startMockWorker({ id: "good", kvEvents: false }, writer);
    closers.push(() => w.stop({ graceMs: 500 }));
    await vi.waitFor(() => expect(g.registry.get("good")).toBeDefined(), { timeout: 5000, interval: 20 });
    await raw.put(`${prefix}${MODEL}/bad-json`).value("{still not json"); // same key again: counted, not logged again
    await vi.waitFor(async () => {
      const m = (await get(g.url, "/metrics")).text;
      expect(metricValue(m, "kvroute_registry_records_invalid_total", { reason: "bad_json" })).toBe(2);
      expect(metricValue(m, "kvroute_registry_records_invalid_total", { reason: "bad_record" })).toBe(2);
      expect(metricValue(m, "kvroute_registry_records_invalid_total", { reason: "bad_key" })).toBe(1);
    }, { timeout: 5000, interval: 50 });
    expect(g.registry.list().map((r) => r.id)).toEqual(["good"]);
    expect((await complete(g.url, 1)).status).toBe(200);
  });

  it("a worker that loses etcd for longer than its TTL registers again once etcd is back; one that died meanwhile is gone", async () => {
    const logs: string[] = [];
    const survivor = await registry({ namespace: "outage", follow: false, logs });
    const doomed = await registry({ namespace: "outage", follow: false });
    await survivor.register(record("survivor"));
    await doomed.register(record("doomed"));
    const reader = await registry({ namespace: "outage" });
    await vi.waitFor(() => expect(reader.list().length).toBe(2), { timeout: 5000, interval: 20 });
    await etcd.stop("SIGKILL");
    await doomed.close("release"); // dies while etcd is away: nobody revokes its lease
    // Longer than a TTL: the survivor's client gives its lease up (etcd3 fires `lost` after 2 TTLs).
    await vi.waitFor(() => expect(logs.some((l) => l.includes("lease of survivor lost"))).toBe(true), { timeout: 20_000, interval: 50 });
    await etcd.restart();
    await vi.waitFor(() => expect(survivor.stats().reRegistrations).toBeGreaterThanOrEqual(1), { timeout: 15_000, interval: 50 });
    // etcd restores leases with a fresh TTL at restart: the dead one's key goes within that TTL.
    await vi.waitFor(() => expect(reader.list().map((r) => r.id)).toEqual(["survivor"]), { timeout: 15_000, interval: 50 });
  });

  it("a gateway started while etcd is down starts serving once it is up", async () => {
    await etcd.stop();
    const logs: string[] = [];
    const g = await startGateway({ host: "127.0.0.1", port: 0, registry: etcd.url, fleet: { namespace: "late-etcd" } }, { log: (m) => logs.push(m), servedModels: [MODEL] });
    closers.push(() => g.close());
    expect(logs.join("\n")).toMatch(/etcd at 127\.0\.0\.1:\d+ is not reachable/);
    expect((await complete(g.url, 1)).status).toBe(503);
    await etcd.restart();
    const writer = await registry({ namespace: "late-etcd", follow: false });
    const w = await startMockWorker({ id: "after-etcd", kvEvents: false }, writer);
    closers.push(() => w.stop({ graceMs: 500 }));
    await vi.waitFor(() => expect(g.registry.get("after-etcd")).toBeDefined(), { timeout: 15_000, interval: 50 });
    const r = await complete(g.url, 2);
    expect(r.status).toBe(200);
    expect(r.headers["x-kvroute-worker"]).toBe("after-etcd");
  });
});

describe("fleet discovery with kvroute worker --registry", () => {
  it("a worker started while the gateway serves gets traffic within 2 s; kill -9 of a worker removes it within its TTL and requests go elsewhere", async () => {
    const g = await gateway("discovery");
    const first = await startWorkerProcess({ id: "first", registry: etcd.url, leaseTtl: 2, env: { KVROUTE_FLEET_NAMESPACE: "discovery" } });
    await vi.waitFor(() => expect(g.registry.get("first")).toBeDefined(), { timeout: 5000, interval: 20 });
    // Serving: a steady trickle of requests while the second worker starts.
    let i = 0;
    const seen = new Map<string, number>();
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        const r = await complete(g.url, i++);
        expect(r.status).toBe(200);
        const w = r.headers["x-kvroute-worker"] as string;
        if (!seen.has(w)) seen.set(w, Date.now());
      }
    })();
    const second = await startWorkerProcess({ id: "second", registry: etcd.url, leaseTtl: 2, env: { KVROUTE_FLEET_NAMESPACE: "discovery" } });
    const registeredAt = Date.now(); // it printed its record after etcd took it
    await vi.waitFor(() => expect(seen.has("second")).toBe(true), { timeout: 10_000, interval: 10 });
    expect(seen.get("second")! - registeredAt).toBeLessThan(2000);
    stop = true;
    await traffic;
    expect(second.record.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    // kill -9: the CLI and its engine die at once; nobody deregisters, the lease (2 s) expires.
    const killedAt = Date.now();
    await first.kill9();
    await vi.waitFor(() => expect(g.registry.get("first")).toBeUndefined(), { timeout: 15_000, interval: 20 });
    expect(Date.now() - killedAt).toBeLessThan(2000 + 2000); // within the TTL (+ etcd's expiry sweep, 500 ms, and slack)
    for (let k = 0; k < 6; k++) {
      const r = await complete(g.url, 1000 + k);
      expect(r.status).toBe(200);
      expect(r.headers["x-kvroute-worker"]).toBe("second");
    }
    // Drain/stop deregisters at once (no TTL wait).
    second.child.kill("SIGTERM");
    await second.exit;
    await vi.waitFor(() => expect(g.registry.get("second")).toBeUndefined(), { timeout: 5000, interval: 20 });
  });
});

describe("disaggregated fleet growing while it serves", () => {
  it("a prefill worker and a second decode worker started while the gateway serves are discovered and used, no restart", async () => {
    const g = await gateway("pd", { routerMode: "kv", disagg: { localPrefillMaxTokens: 256 } });
    const role = async (id: string, r: "prefill" | "decode") => {
      const side = await findFreePortRange(1);
      return startWorkerProcess({ id, registry: etcd.url, env: { KVROUTE_FLEET_NAMESPACE: "pd", VLLM_NIXL_SIDE_CHANNEL_PORT: String(side) }, extra: ["--role", r] });
    };
    await role("d1", "decode");
    await vi.waitFor(() => expect(g.registry.get("d1")).toBeDefined(), { timeout: 5000, interval: 20 });
    const long = (i: number) => post(g.url, "/v1/completions", { model: MODEL, prompt: Array.from({ length: 1200 }, (_, k) => 50_000 + i * 2000 + k), max_tokens: 4 });
    const before = await long(0);
    expect(before.status).toBe(200);
    expect(before.headers["x-kvroute-prefill-worker"]).toBeUndefined(); // no prefill worker yet: local prefill
    await role("p1", "prefill");
    await role("d2", "decode");
    const decodeSeen = new Set<string>();
    let n = 1;
    await vi.waitFor(async () => {
      const r = await long(n++);
      expect(r.status).toBe(200);
      decodeSeen.add(r.headers["x-kvroute-worker"] as string);
      expect(r.headers["x-kvroute-prefill-worker"]).toBe("p1");
      expect(decodeSeen.has("d2")).toBe(true);
    }, { timeout: 15_000, interval: 10 });
  });
});

describe("etcd outage with real workers", () => {
  it("etcd stopped longer than a TTL and restarted: every live kvroute worker is registered again and serves through the gateway", async () => {
    const g = await gateway("outage-real");
    const env = { KVROUTE_FLEET_NAMESPACE: "outage-real" };
    const ws = await Promise.all(["r1", "r2"].map((id) => startWorkerProcess({ id, registry: etcd.url, leaseTtl: 2, env })));
    await vi.waitFor(() => expect(g.registry.list().length).toBe(2), { timeout: 5000, interval: 20 });
    await etcd.stop("SIGKILL");
    // Longer than the TTL: each worker's client gives its lease up (after 2 TTLs) and says so.
    await vi.waitFor(() => {
      for (const w of ws) expect(w.output()).toContain(`lease of ${w.id} lost`);
    }, { timeout: 20_000, interval: 50 });
    // Meanwhile the gateway keeps its last view and keeps serving.
    expect((await complete(g.url, 3)).status).toBe(200);
    await etcd.restart();
    await vi.waitFor(() => {
      for (const w of ws) expect(w.output()).toContain(`${w.id} registered again`);
    }, { timeout: 15_000, interval: 50 });
    // Old leases (restored by etcd with a fresh TTL) expire; the new ones hold the records.
    const raw = new Etcd3({ hosts: `http://127.0.0.1:${etcd.port}` });
    closers.push(() => raw.close());
    await vi.waitFor(async () => {
      const keys = await raw.getAll().prefix("/kvroute/outage-real/workers/").keys();
      expect(keys.sort()).toEqual([workerKey("/kvroute", "outage-real", MODEL, "r1"), workerKey("/kvroute", "outage-real", MODEL, "r2")]);
      expect(g.registry.list().map((r) => r.id).sort()).toEqual(["r1", "r2"]);
    }, { timeout: 15_000, interval: 100 });
    const seen = new Set<string>();
    for (let i = 0; i < 8 && seen.size < 2; i++) seen.add((await complete(g.url, 100 + i)).headers["x-kvroute-worker"] as string);
    expect([...seen].sort()).toEqual(["r1", "r2"]);
  });
});

describe("kvroute up --registry", () => {
  it("registers up's workers in etcd, where a separate kvroute serve gateway finds and uses them", async () => {
    const port = await findFreePortRange(1);
    const up = kvroute(["up", "agg-router", "--workers", "2", "--engine", "mock", "--model", MODEL, "--port", String(port), "--host", "127.0.0.1", "--registry", etcd.url, "--speedup", "20", "--quiet"], {
      KVROUTE_FLEET_NAMESPACE: "up",
    });
    closers.push(async () => {
      if (up.child.exitCode === null) {
        up.child.kill("SIGTERM");
        await up.exit;
      }
    });
    const ready = await up.readyPromise;
    expect(ready.workers).toHaveLength(2);
    const reader = await registry({ namespace: "up" });
    await vi.waitFor(() => expect(reader.list().map((r) => r.id).sort()).toEqual(ready.workers.map((w: { id: string }) => w.id).sort()), { timeout: 5000, interval: 20 });
    const other = await startServeProcess(["--registry", etcd.url, "--namespace", "up"]);
    await expect.poll(async () => (await complete(other.url, 7)).status, { timeout: 5000, interval: 50 }).toBe(200);
    // up stops: its workers drain out of etcd at once (deregistered, not left to expire).
    up.child.kill("SIGTERM");
    expect(await up.exit).toBe(0);
    await vi.waitFor(() => expect(reader.list()).toEqual([]), { timeout: 5000, interval: 20 });
  });
});
