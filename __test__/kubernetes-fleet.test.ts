/**
 * `kvroute manifests` and KubernetesConnector against a real kube-apiserver +
 * kube-controller-manager (+ etcd) started by this file (helpers/kube-cluster.ts): every object of
 * every preset is created in the apiserver (and the Deployment and ReplicaSet controllers make its
 * pods); the connector scales a Deployment through `scale`, draining first, with the pods the
 * ReplicaSet controller deletes chosen by pod-deletion-cost, hand-made changes respected and 409s
 * retried. The test's kubelet (helpers/kubelet.ts) runs the pods.
 */
import { parseAllDocuments } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KubeClient, resourcePath } from "../ts/kubernetes/kube-client.js";
import { KubernetesConnector } from "../ts/kubernetes/kubernetes-connector.js";
import { KubernetesWorkerConnector } from "../ts/kubernetes/kubernetes-worker-connector.js";
import { KubernetesRegistry, type Pod } from "../ts/kubernetes/kubernetes-registry.js";
import { buildManifests, connectorRbac } from "../ts/kubernetes/manifests.js";
import { ANNOTATIONS, POD_DELETION_COST, workerAnnotations } from "../ts/kubernetes/pod-annotations.js";
import { parseK8sRegistryUrl } from "../ts/registry/open-registry.js";
import { buildCommandLine } from "../ts/workers/command-line.js";
import { TOPOLOGY_PRESETS } from "../ts/workers/topology.js";
import { kvroute, stopCliProcesses } from "./helpers/cli-process.js";
import { createObject, KubeCluster, podHostIp, waitFor } from "./helpers/kube-cluster.js";
import { Kubelet } from "./helpers/kubelet.js";

let cluster: KubeCluster;
let kubelet: Kubelet;
let ip: string;

beforeAll(async () => {
  cluster = await KubeCluster.start();
  ip = podHostIp();
  kubelet = new Kubelet(cluster.client);
  await kubelet.createNode();
}, 300_000);

afterAll(async () => {
  stopCliProcesses();
  await kubelet?.stop();
  await cluster?.stop();
});

const pods = (ns: string, selector: string) => cluster.client.list<Pod>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: selector }).then((l) => l.items);
const live = (list: Pod[]) => list.filter((p) => !p.metadata.deletionTimestamp);

describe("kvroute manifests (real kube-apiserver)", () => {
  it("every manifest of every preset is created by the apiserver, and the controllers make its pods", async () => {
    for (const preset of TOPOLOGY_PRESETS) {
      const ns = `m-${preset}`;
      await cluster.createNamespace(ns);
      const objects = buildManifests({ preset, model: "Qwen/Qwen3-0.6B", namespace: ns, tensorParallelSize: preset === "dp" ? 1 : 2 });
      const kinds = objects.map((o) => o.kind).sort();
      expect(kinds).toEqual(expect.arrayContaining(["ConfigMap", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]));
      for (const o of objects) {
        const created = await createObject<{ metadata: { uid?: string } }>(cluster.client, o);
        expect(created.metadata.uid, `${preset}: ${o.kind} ${o.metadata.name}`).toBeTruthy();
      }
      // Each worker Deployment runs exactly the command line VllmWorker builds, and gets its pods.
      for (const d of objects.filter((o) => o.kind === "Deployment")) {
        const spec = (d as unknown as { spec: { replicas: number; selector: { matchLabels: Record<string, string> } } }).spec;
        const selector = Object.entries(spec.selector.matchLabels).map(([k, v]) => `${k}=${v}`).join(",");
        await waitFor(Date.now() + 60_000, async () => (await pods(ns, selector)).length === spec.replicas, () => `${preset}: pods of ${d.metadata.name}`);
      }
    }
    // One preset end to end: the gateway's own URL and Role discover the generated workers.
    const ns = "m-disagg-router";
    await kubelet.follow(ns, ip, "app.kubernetes.io/component=worker");
    const gateway = buildManifests({ preset: "disagg-router", model: "Qwen/Qwen3-0.6B", namespace: ns }).find((o) => o.kind === "Deployment" && o.metadata.name === "kvroute-gateway")!;
    const args = (gateway as unknown as { spec: { template: { spec: { containers: { args: string[] }[] } } } }).spec.template.spec.containers[0]!.args;
    const url = parseK8sRegistryUrl(args[args.indexOf("--registry") + 1]!);
    expect(url).toEqual({ namespace: ns, services: ["kvroute-prefill", "kvroute-decode"] });
    const client = new KubeClient({ server: cluster.server, token: await cluster.serviceAccountToken(ns, "kvroute-gateway"), caFile: cluster.caFile });
    const registry = await new KubernetesRegistry({ namespace: ns, service: url.services, client }).start();
    try {
      await waitFor(Date.now() + 60_000, async () => registry.list().length === 4, () => JSON.stringify(registry.list()));
      const roles = registry.list().map((r) => r.role).sort();
      expect(roles).toEqual(["decode", "decode", "prefill", "prefill"]);
      for (const r of registry.list()) {
        expect(r).toMatchObject({ model: "Qwen/Qwen3-0.6B", url: `http://${ip}:8000`, blockSize: 16, hashAlgorithm: "sha256", hashSeed: "0" });
        expect(r.kvEvents).toEqual({ endpoints: [`tcp://${ip}:5557`], replayEndpoints: [`tcp://${ip}:5558`], topic: "" });
      }
    } finally {
      await registry.close();
      await client.close();
    }
  }, 180_000);

  it("the worker containers carry buildCommandLine's argv, PYTHONHASHSEED and GPU requests", () => {
    const objects = buildManifests({ preset: "disagg", model: "m", namespace: "x", pythonHashSeed: "7", tensorParallelSize: 2 });
    const prefill = objects.find((o) => o.metadata.name === "kvroute-prefill" && o.kind === "Deployment") as unknown as {
      spec: { template: { metadata: { annotations: Record<string, string> }; spec: { containers: { command: string[]; args: string[]; env: { name: string; value?: string }[]; resources: { limits: Record<string, string> } }[] } } };
    };
    const c = prefill.spec.template.spec.containers[0]!;
    const line = buildCommandLine({ model: "m", host: "0.0.0.0", port: 8000, role: "prefill", blockSize: 16, prefixCachingHashAlgo: "sha256", pythonHashSeed: "7", nixlSideChannelPort: 5600, extraArgs: ["--tensor-parallel-size", "2"] });
    expect([...c.command, ...c.args]).toEqual([line.command, ...line.args]);
    expect(c.env.find((e) => e.name === "PYTHONHASHSEED")?.value).toBe("7");
    expect(prefill.spec.template.metadata.annotations[ANNOTATIONS.hashSeed]).toBe("7");
    expect(c.resources.limits["nvidia.com/gpu"]).toBe("2");
  });

  it("the CLI prints a YAML stream of those objects; bad usage exits 2", async () => {
    const ok = kvroute(["manifests", "--preset", "agg-router", "--model", "Qwen/Qwen3-0.6B", "--namespace", "llm", "--workers", "3"]);
    let out = "";
    ok.child.stdout!.on("data", (d) => (out += d));
    expect(await ok.exit).toBe(0);
    const docs = parseAllDocuments(out).map((d) => d.toJSON() as { kind: string; metadata: { name: string; namespace: string }; spec?: { replicas?: number } });
    expect(docs.map((d) => `${d.kind}/${d.metadata.name}`)).toEqual(buildManifests({ preset: "agg-router", model: "Qwen/Qwen3-0.6B", namespace: "llm", workers: 3 }).map((o) => `${o.kind}/${o.metadata.name}`));
    expect(docs.find((d) => d.kind === "Deployment" && d.metadata.name === "kvroute-worker")?.spec?.replicas).toBe(3);
    for (const args of [["--preset", "nope", "--model", "m"], ["--preset", "agg"], ["--preset", "agg", "--model", "m", "--workers", "0"]]) {
      const bad = kvroute(["manifests", ...args]);
      expect(await bad.exit).toBe(2);
      expect(bad.stderr()).toMatch(/kvroute manifests: /);
    }
  });
});

describe("KubernetesConnector (real kube-apiserver)", () => {
  const NS = "planner";
  let client: KubeClient;

  beforeAll(async () => {
    await cluster.createNamespace(NS);
    for (const o of connectorRbac(NS, "kvroute-planner")) await createObject(cluster.client, o);
    client = new KubeClient({ server: cluster.server, token: await cluster.serviceAccountToken(NS, "kvroute-planner"), caFile: cluster.caFile });
    await cluster.client.create(`/api/v1/namespaces/${NS}/services`, {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "decode" },
      spec: { selector: { app: "decode" }, ports: [{ name: "http", port: 8000, targetPort: "http" }] },
    });
    await createObject(cluster.client, {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "decode", namespace: NS },
      spec: {
        replicas: 3,
        selector: { matchLabels: { app: "decode" } },
        template: {
          metadata: { labels: { app: "decode" }, annotations: workerAnnotations({ model: "toy", role: "decode" }) },
          spec: { containers: [{ name: "vllm", image: "vllm/vllm-openai:v0.11.0", ports: [{ name: "http", containerPort: 8000 }] }] },
        },
      },
    } as never);
    await kubelet.follow(NS, ip, "app=decode");
    await waitFor(Date.now() + 60_000, async () => live(await pods(NS, "app=decode")).filter(isReady).length === 3, () => "3 ready decode pods");
  }, 120_000);

  afterAll(async () => {
    await client?.close();
  });

  const replicas = async () => (await cluster.client.get<{ spec: { replicas: number } }>(resourcePath("apps/v1", NS, "deployments", "decode", "scale"))).spec.replicas;
  const byAge = async () => live(await pods(NS, "app=decode")).sort((a, b) => Date.parse(a.metadata.creationTimestamp!) - Date.parse(b.metadata.creationTimestamp!) || (a.metadata.name < b.metadata.name ? -1 : 1));

  it("scale-down drains the chosen pod first (the registry drops it, it finishes), then the ReplicaSet controller deletes that very pod", async () => {
    const registry = await new KubernetesRegistry({ namespace: NS, service: "decode", client: cluster.client }).start();
    await waitFor(Date.now() + 30_000, async () => registry.list().length === 3, () => JSON.stringify(registry.list()));
    // The idle pod has been ready for an hour: left alone, the ReplicaSet controller would delete a
    // pod ready more recently (it ranks by readiness time after pod-deletion-cost).
    const victim = (await byAge())[0]!.metadata.name;
    await kubelet.setReady(NS, victim, ip, true, new Date(Date.now() - 3600_000));
    let released = false;
    let checks = 0;
    const connector = new KubernetesConnector({
      namespace: NS,
      deployments: { decode: "decode" },
      client,
      drainCheckMs: 50,
      // Requests in flight as each pod's /metrics would say: the victim has one until the test lets it finish.
      inFlight: async (pod) => (pod.metadata.name !== victim ? 3 : checks++ === 0 ? 0 : released ? 0 : 1),
    });
    try {
      const scaling = connector.scale("decode", 2);
      // Draining: out of the registry, annotated, still counted in the Deployment.
      await waitFor(Date.now() + 30_000, async () => registry.get(victim) === undefined && checks > 2, () => JSON.stringify(registry.list().map((r) => r.id)));
      expect(registry.list().length).toBe(2);
      const pod = await cluster.client.get<Pod>(resourcePath("v1", NS, "pods", victim));
      expect(pod.metadata.annotations?.[ANNOTATIONS.draining]).toBe("true");
      expect(await replicas()).toBe(3);
      released = true;
      const result = await scaling;
      expect(result).toMatchObject({ role: "decode", from: 3, to: 2, applied: true, drained: [victim], drainTimedOut: [] });
      expect(await replicas()).toBe(2);
      // The ReplicaSet controller deleted the drained pod (lowest pod-deletion-cost), not the newest.
      await waitFor(Date.now() + 60_000, async () => (await byAge()).length === 2, () => "2 pods left");
      expect((await byAge()).map((p) => p.metadata.name)).not.toContain(victim);
      expect(await connector.current()).toEqual({ decode: 2 });
    } finally {
      await registry.close();
    }
  });

  it("scale-up through `scale`; a hand-made change is noticed and respected; one during a drain wins; a 409 is retried", async () => {
    const logs: string[] = [];
    let interfere: (() => Promise<void>) | null = null;
    const connector = new KubernetesConnector({
      namespace: NS,
      deployments: { decode: "decode" },
      client,
      drainCheckMs: 50,
      log: (m) => logs.push(m),
      inFlight: async () => {
        if (interfere) {
          const f = interfere;
          interfere = null;
          await f();
        }
        return 0;
      },
      beforeWrite: async () => {
        // Another writer touches the Deployment between the connector's read and its write.
        if (conflictOnce) {
          conflictOnce = false;
          await cluster.client.mergePatch(resourcePath("apps/v1", NS, "deployments", "decode"), { metadata: { annotations: { touched: String(Date.now()) } } });
        }
      },
    });
    let conflictOnce = true;
    expect(await connector.current()).toEqual({ decode: 2 });
    const up = await connector.scale("decode", 3);
    expect(up).toMatchObject({ from: 2, to: 3, applied: true, drained: [] });
    expect(up.conflicts).toBeGreaterThanOrEqual(1); // the forced one (the Deployment's status may add more)
    expect(await replicas()).toBe(3);
    await waitFor(Date.now() + 60_000, async () => live(await pods(NS, "app=decode")).filter(isReady).length === 3, () => "3 ready pods");

    // By hand: 3 -> 4. Noticed, reported, not reverted.
    await cluster.client.mergePatch(resourcePath("apps/v1", NS, "deployments", "decode", "scale"), { spec: { replicas: 4 } });
    expect(await connector.current()).toEqual({ decode: 4 });
    expect(connector.handChanges.get("decode")).toBe(1);
    expect(logs.join("\n")).toMatch(/replicas changed by hand 3 -> 4/);
    expect(await replicas()).toBe(4);
    await waitFor(Date.now() + 60_000, async () => live(await pods(NS, "app=decode")).filter(isReady).length === 4, () => "4 ready pods");

    // A scale-down 4 -> 3 during which someone sets 5 by hand: the hand wins, the victim serves again.
    interfere = async () => {
      await cluster.client.mergePatch(resourcePath("apps/v1", NS, "deployments", "decode", "scale"), { spec: { replicas: 5 } });
    };
    const down = await connector.scale("decode", 3);
    expect(down).toMatchObject({ from: 5, to: 3, applied: false });
    expect(down.drained).toHaveLength(1);
    expect(await replicas()).toBe(5);
    const back = await cluster.client.get<Pod>(resourcePath("v1", NS, "pods", down.drained[0]!));
    expect(back.metadata.annotations?.[ANNOTATIONS.draining]).toBeUndefined();
    expect(back.metadata.annotations?.[POD_DELETION_COST]).toBeUndefined();
    expect(await connector.current()).toEqual({ decode: 5 });
  });
});

describe("KubernetesWorkerConnector (the planner loop's contract)", () => {
  const NS = "planner";
  const replicas = async () => (await cluster.client.get<{ spec: { replicas: number } }>(resourcePath("apps/v1", NS, "deployments", "decode", "scale"))).spec.replicas;

  it("running() follows the Deployment (hand changes included, draining pods not counted); scale-down returns once draining; a new decision cancels it", async () => {
    const client = new KubeClient({ server: cluster.server, token: await cluster.serviceAccountToken(NS, "kvroute-planner"), caFile: cluster.caFile });
    let busy = true;
    const connector = await KubernetesWorkerConnector.start({ namespace: NS, deployments: { decode: "decode" }, client, drainCheckMs: 50, inFlight: async () => (busy ? 1 : 0) });
    try {
      const start = await replicas();
      expect(connector.running("decode")).toBe(start);
      await waitFor(Date.now() + 60_000, async () => live(await pods(NS, "app=decode")).filter(isReady).length === start, () => `${start} ready pods`);

      // Down by one: returns while the pod drains; the Deployment is untouched until it finishes.
      await connector.scale("decode", start - 1, "test: less load");
      const draining = live(await pods(NS, "app=decode")).filter((p) => p.metadata.annotations?.[ANNOTATIONS.draining] === "true");
      expect(draining).toHaveLength(1);
      expect(connector.running("decode")).toBe(start - 1);
      expect(await replicas()).toBe(start);

      // The load comes back before the drain ends: the scale-down is cancelled, the pod serves again.
      await connector.scale("decode", start, "test: load back");
      expect(await replicas()).toBe(start);
      expect(connector.running("decode")).toBe(start);
      const again = await cluster.client.get<Pod>(resourcePath("v1", NS, "pods", draining[0]!.metadata.name));
      expect(again.metadata.annotations?.[ANNOTATIONS.draining]).toBeUndefined();

      // Down again, and this time the pod finishes: the count is written.
      await connector.scale("decode", start - 1, "test: less load");
      busy = false;
      await connector.settled();
      expect(await replicas()).toBe(start - 1);
      expect(connector.results.get("decode")).toMatchObject({ applied: true, from: start, to: start - 1 });
      await waitFor(Date.now() + 30_000, async () => connector.running("decode") === start - 1, () => "running follows the write");

      // By hand: running() shows it as soon as the watch does.
      await cluster.client.mergePatch(resourcePath("apps/v1", NS, "deployments", "decode", "scale"), { spec: { replicas: start + 1 } });
      await waitFor(Date.now() + 30_000, async () => connector.running("decode") === start + 1, () => `running ${connector.running("decode")}`);
    } finally {
      await connector.close();
      await client.close();
    }
  });
});

function isReady(p: Pod): boolean {
  return p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true;
}
