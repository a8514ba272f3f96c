/**
 * KubernetesRegistry against a real kube-apiserver + kube-controller-manager (+ etcd), started by
 * this file on loopback (helpers/kube-cluster.ts; binaries from scripts/k8s/build.sh). Pods are
 * made Running/Ready by the test's kubelet (helpers/kubelet.ts); the real EndpointSlice controller
 * publishes them; the registry reads them with a service account holding only the Role that
 * `kvroute manifests` writes.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient } from "../ts/kubernetes/kube-client.js";
import { KubernetesRegistry, RegistryReadOnlyError } from "../ts/kubernetes/kubernetes-registry.js";
import { registryRbac } from "../ts/kubernetes/manifests.js";
import { ANNOTATIONS, workerAnnotations } from "../ts/kubernetes/pod-annotations.js";
import type { WorkerRecord } from "../ts/workers/config.js";
import { findFreePortRange } from "../ts/workers/ports.js";
import { kvroute, stopCliProcesses } from "./helpers/cli-process.js";
import { createObject, KubeCluster, podHostIp, waitFor } from "./helpers/kube-cluster.js";
import { Kubelet } from "./helpers/kubelet.js";
import { metric, startMocker, type MockerProcess } from "./helpers/mocker-process.js";

const NS = "kvroute-reg";
const SERVICE = "workers";

let cluster: KubeCluster;
let kubelet: Kubelet;
let ip: string;
let saClient: KubeClient;

beforeAll(async () => {
  // Without the watch cache, a watch from a compacted resourceVersion gets 410 Gone for certain.
  cluster = await KubeCluster.start({ watchCache: false });
  ip = podHostIp();
  kubelet = new Kubelet(cluster.client);
  await kubelet.createNode();
  await cluster.createNamespace(NS);
  await cluster.client.create(`/api/v1/namespaces/${NS}/services`, {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: SERVICE },
    spec: { selector: { app: "worker" }, ports: [{ name: "http", port: 8000, targetPort: "http" }] },
  });
  for (const object of registryRbac(NS, "kvroute-gateway")) await createObject(cluster.client, object);
  saClient = new KubeClient({ server: cluster.server, token: await cluster.serviceAccountToken(NS, "kvroute-gateway"), caFile: cluster.caFile });
}, 300_000);

afterAll(async () => {
  stopCliProcesses();
  await saClient?.close();
  await kubelet?.stop();
  await cluster?.stop();
});

function annotations(port: number, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...workerAnnotations({ model: "toy", role: "decode", blockSize: 32, hashAlgorithm: "xxhash", hashSeed: "0", kvEventsPort: port + 1, kvReplayPort: port + 2, dataParallelSize: 2 }),
    ...extra,
  };
}

/** Resolves with the first change matching `pred`, and how long after `since` it came. */
function nextChange(registry: KubernetesRegistry, pred: (c: { type: string; record: WorkerRecord }) => boolean): Promise<{ record: WorkerRecord; at: number }> {
  return new Promise((resolve) => {
    const off = registry.watch((c) => {
      if (!pred(c)) return;
      off();
      resolve({ record: c.record, at: performance.now() });
    });
  });
}

describe("KubernetesRegistry (real kube-apiserver)", () => {
  it("a pod made ready appears within 2 s with its record from annotations; not ready, draining or deleted, it leaves", async () => {
    const registry = await new KubernetesRegistry({ namespace: NS, service: SERVICE, client: saClient }).start();
    try {
      expect(registry.list()).toEqual([]);
      await kubelet.createPod(NS, { name: "decode-a", labels: { app: "worker" }, annotations: annotations(9100), httpPort: 9100 });
      const added = nextChange(registry, (c) => c.type === "added" && c.record.id === "decode-a");
      const readyAt = performance.now();
      await kubelet.setReady(NS, "decode-a", ip, true);
      const { record, at } = await added;
      expect(at - readyAt).toBeLessThan(2000);
      expect(record).toEqual({
        id: "decode-a",
        model: "toy",
        role: "decode",
        url: `http://${ip}:9100`,
        kvEvents: { endpoints: [`tcp://${ip}:9101`, `tcp://${ip}:9102`], replayEndpoints: [`tcp://${ip}:9102`, `tcp://${ip}:9103`], topic: "" },
        blockSize: 32,
        hashAlgorithm: "xxhash",
        hashSeed: "0",
        numGpuBlocks: null,
        dataParallelSize: 2,
        dpRanks: [0, 1],
        tokenizer: null,
      });
      expect(registry.list("toy").map((r) => r.id)).toEqual(["decode-a"]);

      // Not ready: gone.
      const removed = nextChange(registry, (c) => c.type === "removed" && c.record.id === "decode-a");
      await kubelet.setReady(NS, "decode-a", ip, false);
      await removed;
      expect(registry.get("decode-a")).toBeUndefined();

      // Ready again, then drained by annotation: gone while the pod stays ready.
      const back = nextChange(registry, (c) => c.type === "added" && c.record.id === "decode-a");
      await kubelet.setReady(NS, "decode-a", ip, true);
      await back;
      const drained = nextChange(registry, (c) => c.type === "removed" && c.record.id === "decode-a");
      await cluster.client.mergePatch(`/api/v1/namespaces/${NS}/pods/decode-a`, { metadata: { annotations: { [ANNOTATIONS.draining]: "true" } } });
      await drained;

      // Deleted (a second pod, ready, then deleted): gone.
      await kubelet.createPod(NS, { name: "decode-b", labels: { app: "worker" }, annotations: annotations(9200), httpPort: 9200 });
      const bAdded = nextChange(registry, (c) => c.type === "added" && c.record.id === "decode-b");
      await kubelet.setReady(NS, "decode-b", ip, true);
      await bAdded;
      const bRemoved = nextChange(registry, (c) => c.type === "removed" && c.record.id === "decode-b");
      await cluster.client.delete(`/api/v1/namespaces/${NS}/pods/decode-b`);
      await bRemoved;
      await kubelet.finishDeletion(NS, "decode-b");
      expect(registry.list()).toEqual([]);
      expect(registry.stats().slices.lists).toBe(1); // no polling: one list, then the watch
      expect(registry.stats().pods.lists).toBe(1);
    } finally {
      await registry.close();
    }
  });

  it("a pod with bad annotations is left out, counted and logged; membership is Kubernetes' (register rejects)", async () => {
    const logs: string[] = [];
    const registry = await new KubernetesRegistry({ namespace: NS, service: SERVICE, client: saClient, log: (m) => logs.push(m) }).start();
    try {
      await kubelet.createPod(NS, { name: "bad", labels: { app: "worker" }, annotations: annotations(9300, { [ANNOTATIONS.blockSize]: "sixteen" }), httpPort: 9300 });
      await kubelet.setReady(NS, "bad", ip, true);
      await waitFor(Date.now() + 30_000, async () => registry.stats().invalidPods === 1, () => JSON.stringify(registry.stats()));
      expect(logs.join("\n")).toMatch(/pod bad: annotation kvroute.dev\/block-size must be an integer/);
      expect(registry.get("bad")).toBeUndefined();
      // Fixed annotations: it joins.
      const fixed = nextChange(registry, (c) => c.type === "added" && c.record.id === "bad");
      await cluster.client.mergePatch(`/api/v1/namespaces/${NS}/pods/bad`, { metadata: { annotations: { [ANNOTATIONS.blockSize]: "16" } } });
      expect((await fixed).record.blockSize).toBe(16);
      await expect(registry.register((await fixed).record)).rejects.toBeInstanceOf(RegistryReadOnlyError);
      await expect(registry.deregister("bad")).rejects.toThrow(/kvroute.dev\/draining/);
    } finally {
      await registry.close();
      await cluster.client.delete(`/api/v1/namespaces/${NS}/pods/bad`, { gracePeriodSeconds: 0 });
    }
  });

  it("survives an apiserver restart after etcd compacted its resourceVersion: 410 Gone, one relist, nothing missed", async () => {
    const logs: string[] = [];
    const registry = await new KubernetesRegistry({ namespace: NS, service: SERVICE, client: saClient, log: (m) => logs.push(m) }).start();
    try {
      await kubelet.createPod(NS, { name: "survivor", labels: { app: "worker" }, annotations: annotations(9400), httpPort: 9400 });
      const added = nextChange(registry, (c) => c.type === "added" && c.record.id === "survivor");
      await kubelet.setReady(NS, "survivor", ip, true);
      await added;
      const before = registry.stats();
      // History moves on without the registry (a write it does not watch), then is compacted away.
      // (Two writes: a watch from version v starts at v + 1, which must be older than the compaction.)
      await cluster.client.create(`/api/v1/namespaces/${NS}/configmaps`, { apiVersion: "v1", kind: "ConfigMap", metadata: { name: "unrelated" } });
      await cluster.client.mergePatch(`/api/v1/namespaces/${NS}/configmaps/unrelated`, { data: { touched: "yes" } });
      await cluster.compactEtcd();
      await cluster.restartApiserver();
      const removed = nextChange(registry, (c) => c.type === "removed" && c.record.id === "survivor");
      await kubelet.setReady(NS, "survivor", ip, false);
      await removed;
      const after = registry.stats();
      // The broken watches came back from a compacted resourceVersion: 410 Gone, relisted.
      expect(after.slices.gone).toBeGreaterThanOrEqual(1);
      expect(after.pods.gone).toBeGreaterThanOrEqual(1);
      expect(after.slices.lists).toBe(before.slices.lists + after.slices.gone);
      expect(after.pods.lists).toBe(before.pods.lists + after.pods.gone);
      expect(logs.some((l) => /kubernetes watch/.test(l))).toBe(true);
    } finally {
      await registry.close();
      await cluster.client.delete(`/api/v1/namespaces/${NS}/pods/survivor`, { gracePeriodSeconds: 0 });
    }
  }, 240_000);

  it("why pods get the host's address, not 127.0.0.1: the EndpointSlice controller cannot publish a loopback podIP", async () => {
    await cluster.client.create(`/api/v1/namespaces/${NS}/services`, {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "loopback" },
      spec: { selector: { app: "loopback" }, ports: [{ name: "http", port: 8000, targetPort: "http" }] },
    });
    await kubelet.createPod(NS, { name: "loopback", labels: { app: "loopback" }, annotations: annotations(9500), httpPort: 9500 });
    await kubelet.setReady(NS, "loopback", "127.0.0.1", true); // the pod itself accepts it
    await waitFor(Date.now() + 30_000, async () => {
      const events = await cluster.client.list<{ reason?: string; message?: string }>(`/api/v1/namespaces/${NS}/events`);
      return events.items.some((e) => e.reason === "FailedToUpdateEndpointSlices" && /may not be in the loopback range/.test(e.message ?? ""));
    }, () => "no FailedToUpdateEndpointSlices event");
    await cluster.client.delete(`/api/v1/namespaces/${NS}/pods/loopback`, { gracePeriodSeconds: 0 });
  });

  it("the minimal Role is enough and nothing more is granted; a wrong token fails at start with the API's answer", async () => {
    // The service account may read pods and slices of its namespace only.
    await expect(saClient.get(`/api/v1/namespaces/default/pods`)).rejects.toMatchObject({ status: 403 });
    await expect(saClient.create(`/api/v1/namespaces/${NS}/pods`, { metadata: { name: "x" } })).rejects.toMatchObject({ status: 403 });
    const wrong = new KubeClient({ server: cluster.server, token: "not-a-token", caFile: cluster.caFile });
    try {
      await expect(new KubernetesRegistry({ namespace: NS, service: SERVICE, client: wrong }).start()).rejects.toMatchObject({ status: 401, code: "KVR_KUBE_API" });
    } finally {
      await wrong.close();
    }
  });
});

describe("kvroute serve --registry k8s://<namespace>/<service>", () => {
  it("serves requests on mocker workers registered as ready pods, and stops using a pod made not ready", async () => {
    await cluster.client.create(`/api/v1/namespaces/${NS}/services`, {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "gw-workers" },
      spec: { selector: { app: "gw-worker" }, ports: [{ name: "http", port: 8000, targetPort: "http" }] },
    });
    const mockers: MockerProcess[] = [];
    try {
      for (const name of ["gw-a", "gw-b"]) {
        // The mocker listens on the pod address the EndpointSlice publishes (not loopback: refused there).
        const base = await findFreePortRange(3, "0.0.0.0");
        const events = { enable_kv_cache_events: true, publisher: "zmq", endpoint: `tcp://*:${base + 1}`, replay_endpoint: `tcp://*:${base + 2}` };
        mockers.push(await startMocker(["toy", "--host", "0.0.0.0", "--port", String(base), "--block-size", "16", "--speedup", "20", "--kv-events-config", JSON.stringify(events)], { PYTHONHASHSEED: "0" }));
        await kubelet.createPod(NS, {
          name,
          labels: { app: "gw-worker" },
          annotations: workerAnnotations({ model: "toy", role: "aggregated", blockSize: 16, hashAlgorithm: "sha256", hashSeed: "0", kvEventsPort: base + 1, kvReplayPort: base + 2 }),
          httpPort: base,
        });
        await kubelet.setReady(NS, name, ip, true);
      }
      const token = await cluster.serviceAccountToken(NS, "kvroute-gateway");
      const serve = kvroute(["serve", "--registry", `k8s://${NS}/gw-workers`, "--host", "127.0.0.1", "--port", "0", "--router-mode", "round-robin"], cluster.envFor(token));
      const ready = (await serve.readyPromise) as { url: string };
      const complete = async (prompt: string) => {
        const res = await fetch(`${ready.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "toy", prompt, max_tokens: 4 }) });
        expect(res.status).toBe(200);
        await res.json();
        return res.headers.get("x-kvroute-worker");
      };
      await waitFor(Date.now() + 30_000, async () => {
        const models = (await (await fetch(`${ready.url}/v1/models`)).json()) as { data: { id: string }[] };
        return models.data.some((m) => m.id === "toy") && (await fetch(`${ready.url}/health`)).status === 200;
      }, () => serve.stderr());
      const used = new Set<string | null>();
      for (let i = 0; i < 6; i++) used.add(await complete(`request ${i} for the fleet`));
      expect([...used].sort()).toEqual(["gw-a", "gw-b"]);
      // The requests really reached the mocker processes behind the pods.
      for (const m of mockers) expect(metric(await (await fetch(`${m.url}/metrics`)).text(), "vllm:prompt_tokens_total")).toBeGreaterThan(0);

      // gw-b not ready: the gateway stops routing to it.
      await kubelet.setReady(NS, "gw-b", ip, false);
      await waitFor(Date.now() + 30_000, async () => {
        const workers = await Promise.all([0, 1, 2, 3].map((i) => complete(`after not-ready ${i} ${Date.now()}`)));
        return workers.every((w) => w === "gw-a");
      }, () => serve.stderr());
      for (let i = 0; i < 6; i++) expect(await complete(`only a ${i}`)).toBe("gw-a");
      const metrics = await (await fetch(`${ready.url}/metrics`)).text();
      expect(metric(metrics, "kvroute_registry_workers")).toBe(1);
      expect(metrics).toMatch(/kvroute_registry_records_invalid_total\{reason="bad_annotations"\} 0/);
      expect(metrics).toMatch(/kvroute_kubernetes_lists_total\{resource="endpointslices"\} 1/);
      serve.child.kill("SIGTERM");
      expect(await serve.exit).toBe(0);
    } finally {
      await Promise.all(mockers.map((m) => m.stop()));
    }
  }, 120_000);

  it("a bad registry URL is a usage error (exit 2) naming the expected form", async () => {
    const serve = kvroute(["serve", "--registry", "k8s://Not_A_Namespace/svc", "--port", "0"]);
    expect(await serve.exit).toBe(2);
    expect(serve.stderr()).toMatch(/k8s:\/\/<namespace>\/<service>/);
  });
});
