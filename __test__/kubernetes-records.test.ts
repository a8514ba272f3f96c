/** Pod annotations -> worker records, and the `--registry` URL forms (no cluster needed). */
import { describe, expect, it } from "vitest";
import { InvalidConfigError, InvalidInputError } from "../ts/errors.js";
import { ANNOTATIONS, recordFromPod, workerAnnotations } from "../ts/kubernetes/pod-annotations.js";
import { openRegistry, parseK8sRegistryUrl } from "../ts/registry/open-registry.js";
import { MemoryRegistry } from "../ts/registry/memory-registry.js";
import { metricsInFlight } from "../ts/kubernetes/kubernetes-connector.js";
import { startMocker } from "./helpers/mocker-process.js";
import { openFleet } from "../ts/fleet/fleet-mode.js";
import { validateGatewayConfig } from "../ts/config/schema.js";
import { parseK8sConnectorUrl } from "../ts/kubernetes/kubernetes-worker-connector.js";

describe("recordFromPod", () => {
  it("defaults to vLLM's: aggregated, block size 16, sha256, no seed, no events, one rank", () => {
    expect(recordFromPod("p", "10.0.0.5", 8000, { [ANNOTATIONS.model]: "m" })).toEqual({
      id: "p",
      model: "m",
      role: "aggregated",
      url: "http://10.0.0.5:8000",
      kvEvents: null,
      blockSize: 16,
      hashAlgorithm: "sha256",
      hashSeed: null,
      numGpuBlocks: null,
      dataParallelSize: 1,
      dpRanks: [0],
      tokenizer: null,
    });
  });

  it("offsets event ports by DP rank (internal: every rank; external: its own), brackets IPv6", () => {
    const internal = recordFromPod("p", "fd00::7", 8000, workerAnnotations({ model: "m", role: "decode", kvEventsPort: 5557, kvReplayPort: 5559, dataParallelSize: 2 }));
    expect(internal.url).toBe("http://[fd00::7]:8000");
    expect(internal.kvEvents).toEqual({ endpoints: ["tcp://[fd00::7]:5557", "tcp://[fd00::7]:5558"], replayEndpoints: ["tcp://[fd00::7]:5559", "tcp://[fd00::7]:5560"], topic: "" });
    const external = recordFromPod("q", "10.0.0.6", 8000, workerAnnotations({ model: "m", role: "aggregated", kvEventsPort: 5557, dataParallelSize: 4, dataParallelRank: 3 }));
    expect(external.dpRanks).toEqual([3]);
    expect(external.kvEvents?.endpoints).toEqual(["tcp://10.0.0.6:5560"]);
    expect(external.kvEvents?.replayEndpoints).toBeNull();
  });

  it("names the bad annotation", () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{}, /kvroute.dev\/model is missing/],
      [{ [ANNOTATIONS.model]: "m", [ANNOTATIONS.role]: "boss" }, /role must be aggregated, prefill or decode/],
      [{ [ANNOTATIONS.model]: "m", [ANNOTATIONS.blockSize]: "0" }, /block-size must be an integer ≥ 1/],
      [{ [ANNOTATIONS.model]: "m", [ANNOTATIONS.hashAlgorithm]: "md5" }, /hashAlgorithm/],
      [{ [ANNOTATIONS.model]: "m", [ANNOTATIONS.dataParallelSize]: "2", [ANNOTATIONS.dataParallelRank]: "2" }, /dpRanks/],
      [{ [ANNOTATIONS.model]: "m", [ANNOTATIONS.kvEventsPort]: "-1" }, /kv-events-port/],
    ];
    for (const [annotations, message] of cases) {
      expect(() => recordFromPod("p", "10.0.0.5", 8000, annotations)).toThrow(InvalidInputError);
      expect(() => recordFromPod("p", "10.0.0.5", 8000, annotations)).toThrow(message);
    }
  });
});

describe("--registry URLs", () => {
  it("k8s://<namespace>/<service>[,<service>...] with port and pods parameters", () => {
    expect(parseK8sRegistryUrl("k8s://llm/workers")).toEqual({ namespace: "llm", services: ["workers"] });
    expect(parseK8sRegistryUrl("k8s://llm/kvroute-prefill,kvroute-decode?port=api&pods=app%3Dvllm")).toEqual({
      namespace: "llm",
      services: ["kvroute-prefill", "kvroute-decode"],
      port: "api",
      pods: "app=vllm",
    });
    for (const bad of ["k8s://llm", "k8s://llm/", "k8s://Bad_NS/svc", "k8s://llm/Bad_Svc", "k8s://llm/svc?selector=x"]) {
      expect(() => parseK8sRegistryUrl(bad)).toThrow(InvalidConfigError);
    }
  });

  it("fleet mode's registry setting takes k8s://, refused on the worker side (pods join by becoming ready)", async () => {
    const config = validateGatewayConfig({ registry: "k8s://llm/workers" });
    await expect(openFleet(config, { registryGiven: false, follow: false, log: () => {} })).rejects.toThrow(/workers do not register in Kubernetes/);
    const bad = validateGatewayConfig({ registry: "k8s://llm" });
    await expect(openFleet(bad, { registryGiven: false, log: () => {} })).rejects.toThrow(InvalidConfigError);
  });

  it("memory: is the embedded registry; an unknown scheme is a clear error", async () => {
    const opened = await openRegistry("memory:");
    expect(opened.registry).toBeInstanceOf(MemoryRegistry);
    await expect(openRegistry("zookeeper://x")).rejects.toThrow(/unknown scheme/);
  });
});

describe("metricsInFlight (the connector's default drain probe)", () => {
  it("reads running + waiting from a worker's /metrics at podIP and the container port named http", async () => {
    const m = await startMocker(["toy", "--host", "127.0.0.1", "--port", "0", "--speedup", "1"]);
    try {
      const pod = { metadata: { name: "p" }, status: { podIP: "127.0.0.1" }, spec: { containers: [{ name: "vllm", ports: [{ name: "http", containerPort: m.port }] }] } };
      expect(await metricsInFlight(pod)).toBe(0);
      const slow = fetch(`${m.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "toy", prompt: "a slow one", max_tokens: 400, stream: true }) });
      const res = await slow;
      const reader = res.body!.getReader();
      await reader.read(); // the request is running
      expect(await metricsInFlight(pod)).toBe(1);
      await reader.cancel();
      expect(await metricsInFlight({ metadata: { name: "q" }, status: {} })).toBeNull();
    } finally {
      await m.stop();
    }
  });
});

describe("the planner's k8s:// connector setting", () => {
  it("names the Deployments of each kind, by default those kvroute manifests writes", () => {
    expect(parseK8sConnectorUrl("k8s://llm")).toEqual({ namespace: "llm", deployments: { prefill: "kvroute-prefill", decode: "kvroute-decode", aggregated: "kvroute-worker" } });
    expect(parseK8sConnectorUrl("k8s://llm?name=qwen&decode=dec")).toEqual({ namespace: "llm", deployments: { prefill: "qwen-prefill", decode: "dec", aggregated: "qwen-worker" } });
    for (const bad of ["k8s://Bad_NS", "k8s://llm/svc", "k8s://llm?replicas=3", "etcd://x"]) expect(() => parseK8sConnectorUrl(bad)).toThrow(InvalidConfigError);
  });
});
