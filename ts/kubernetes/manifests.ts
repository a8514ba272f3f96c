/**
 * Kubernetes manifests of a deployment preset (`kvroute manifests`): the same presets as
 * `kvroute up` (topology.ts) and the same `vllm serve` command lines `VllmWorker` runs
 * (buildCommandLine), laid out for a cluster:
 *
 * - a Deployment and a Service per worker role (`<name>-worker`, or `<name>-prefill` and
 *   `<name>-decode`), pods annotated for the Kubernetes registry (pod-annotations.ts), GPU
 *   requests, startup/readiness/liveness probes on vLLM's /health, PYTHONHASHSEED from one value
 *   in the env and in the `kvroute.dev/hash-seed` annotation;
 * - the gateway: a ConfigMap with its config file, a Deployment running
 *   `kvroute serve --registry k8s://<namespace>/<worker services>`, a Service, and the
 *   ServiceAccount, Role and RoleBinding that registry needs (get/list/watch pods and
 *   endpointslices in the namespace, nothing else).
 *
 * Every pod listens on the same ports (its own IP): HTTP 8000, KV events 5557 (+ rank), replay
 * after the event ports, NIXL side channel 5600 on the pod's IP (VLLM_NIXL_SIDE_CHANNEL_HOST).
 */
import { stringify } from "yaml";
import { InvalidConfigError } from "../errors.js";
import { buildCommandLine } from "../workers/command-line.js";
import { VLLM_DEFAULT_BLOCK_SIZE, VLLM_DEFAULT_HASH_ALGORITHM, type VllmWorkerConfig, type WorkerRole } from "../workers/config.js";
import { planTopology, TOPOLOGY_PRESETS, type TopologyPreset } from "../workers/topology.js";
import type { EngineHashAlgorithm } from "../core/block-hasher.js";
import type { RouterMode } from "../router/types.js";
import { workerAnnotations } from "./pod-annotations.js";
import type { KubeObject } from "./kube-client.js";

export const WORKER_HTTP_PORT = 8000;
export const WORKER_EVENT_PORT = 5557;
export const NIXL_SIDE_CHANNEL_PORT = 5600;
export const DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0";

export interface ManifestOptions {
  preset: TopologyPreset;
  /** The model vLLM loads (a Hugging Face name or a path in the image). */
  model: string;
  servedModelName?: string;
  /** metadata.namespace of every object. Default "default". */
  namespace?: string;
  /** Prefix of every object's name. Default "kvroute". */
  name?: string;
  /** vLLM image. Default DEFAULT_VLLM_IMAGE. */
  image?: string;
  /** Image with the kvroute CLI as its entrypoint's `kvroute`. Default `kvroute:<version>`. */
  gatewayImage?: string;
  gatewayReplicas?: number;
  workers?: number;
  prefillWorkers?: number;
  decodeWorkers?: number;
  dataParallelSize?: number;
  tensorParallelSize?: number;
  blockSize?: number;
  hashAlgorithm?: EngineHashAlgorithm;
  /** Default "0" (Dynamo's scripts export PYTHONHASHSEED=0). */
  pythonHashSeed?: string;
  maxModelLen?: number;
  gpuMemoryUtilization?: number;
  routerMode?: RouterMode;
  /** Appended to every `vllm serve`. */
  extraArgs?: readonly string[];
  /** Version written into labels and the default gateway image. */
  version?: string;
}

interface RoleGroup {
  role: WorkerRole;
  /** Object name suffix: worker, prefill, decode. */
  suffix: string;
  replicas: number;
  config: VllmWorkerConfig;
}

/** Every object of the preset, in apply order (RBAC and config before what uses them). */
export function buildManifests(options: ManifestOptions): KubeObject[] {
  if (!TOPOLOGY_PRESETS.includes(options.preset)) throw new InvalidConfigError(`unknown preset '${String(options.preset)}' (expected ${TOPOLOGY_PRESETS.join(", ")})`);
  if (!options.model) throw new InvalidConfigError("manifests: a model is required (--model)");
  const ns = options.namespace ?? "default";
  const name = options.name ?? "kvroute";
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name) || name.length > 40) throw new InvalidConfigError(`manifests: name '${name}' must be a DNS label of at most 40 characters`);
  const version = options.version ?? "0.1.0";
  const seed = options.pythonHashSeed ?? "0";
  const groups = roleGroups(options);
  const services = groups.map((g) => `${name}-${g.suffix}`);
  const servedModel = options.servedModelName ?? options.model;

  const objects: KubeObject[] = [...registryRbac(ns, `${name}-gateway`, labels(name, version, "gateway"))];
  objects.push({
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: `${name}-gateway`, namespace: ns, labels: labels(name, version, "gateway") },
    data: {
      "config.yaml": stringify({ host: "0.0.0.0", port: 8000, routerMode: options.routerMode ?? "kv", metricsScrapeIntervalMs: 1000 }),
    },
  } as KubeObject);
  for (const g of groups) objects.push(workerService(ns, name, version, g), workerDeployment(ns, name, version, g, options, seed, servedModel));
  objects.push(gatewayDeployment(ns, name, version, options, services), gatewayService(ns, name, version));
  return objects;
}

/** The YAML stream `kvroute manifests` prints. */
export function manifestsYaml(options: ManifestOptions): string {
  return buildManifests(options)
    .map((o) => stringify(o, { lineWidth: 0 }))
    .join("---\n");
}

/** ServiceAccount, Role and RoleBinding of a Kubernetes registry reader in `namespace`. */
export function registryRbac(namespace: string, account: string, objectLabels: Record<string, string> = {}): KubeObject[] {
  return rbac(namespace, account, objectLabels, [
    { apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["get", "list", "watch"] },
    { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
  ]);
}

/** What KubernetesConnector needs besides reading pods: scale Deployments, annotate pods. */
export function connectorRbac(namespace: string, account: string, objectLabels: Record<string, string> = {}): KubeObject[] {
  return rbac(namespace, account, objectLabels, [
    { apiGroups: ["apps"], resources: ["deployments"], verbs: ["get", "list", "watch"] },
    { apiGroups: ["apps"], resources: ["deployments/scale"], verbs: ["get", "update", "patch"] },
    { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch", "patch"] },
  ]);
}

function rbac(namespace: string, account: string, objectLabels: Record<string, string>, rules: unknown[]): KubeObject[] {
  const metadata = { name: account, namespace, labels: objectLabels };
  return [
    { apiVersion: "v1", kind: "ServiceAccount", metadata },
    { apiVersion: "rbac.authorization.k8s.io/v1", kind: "Role", metadata, rules } as KubeObject,
    {
      apiVersion: "rbac.authorization.k8s.io/v1",
      kind: "RoleBinding",
      metadata,
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: account },
      subjects: [{ kind: "ServiceAccount", name: account, namespace }],
    } as KubeObject,
  ];
}

function labels(name: string, version: string, component: string, role?: WorkerRole): Record<string, string> {
  return {
    "app.kubernetes.io/name": "kvroute",
    "app.kubernetes.io/instance": name,
    "app.kubernetes.io/component": component,
    "app.kubernetes.io/version": version,
    ...(role ? { "kvroute.dev/role": role } : {}),
  };
}

function selector(name: string, component: string, role?: WorkerRole): Record<string, string> {
  return { "app.kubernetes.io/instance": name, "app.kubernetes.io/component": component, ...(role ? { "kvroute.dev/role": role } : {}) };
}

/** One worker config per role, from the preset's plan (the same flags `kvroute up` gives). */
function roleGroups(options: ManifestOptions): RoleGroup[] {
  const plan = planTopology(options.preset, {
    engine: "vllm",
    model: options.model,
    host: "0.0.0.0",
    basePort: WORKER_HTTP_PORT,
    baseEventPort: WORKER_EVENT_PORT,
    dpLayout: "internal",
    assignGpus: false,
    pythonHashSeed: options.pythonHashSeed ?? "0",
    ...(options.servedModelName !== undefined ? { servedModelName: options.servedModelName } : {}),
    ...(options.workers !== undefined ? { workers: options.workers } : {}),
    ...(options.prefillWorkers !== undefined ? { prefillWorkers: options.prefillWorkers } : {}),
    ...(options.decodeWorkers !== undefined ? { decodeWorkers: options.decodeWorkers } : {}),
    ...(options.dataParallelSize !== undefined ? { dataParallelSize: options.dataParallelSize } : {}),
    // Explicit, so that the flag and the pods' annotations cannot disagree.
    blockSize: options.blockSize ?? VLLM_DEFAULT_BLOCK_SIZE,
    prefixCachingHashAlgo: options.hashAlgorithm ?? VLLM_DEFAULT_HASH_ALGORITHM,
    ...(options.maxModelLen !== undefined ? { maxModelLen: options.maxModelLen } : {}),
    ...(options.gpuMemoryUtilization !== undefined ? { gpuMemoryUtilization: options.gpuMemoryUtilization } : {}),
    extraArgs: [...(options.tensorParallelSize && options.tensorParallelSize > 1 ? ["--tensor-parallel-size", String(options.tensorParallelSize)] : []), ...(options.extraArgs ?? [])],
  });
  const groups: RoleGroup[] = [];
  for (const config of plan) {
    const role = config.role ?? "aggregated";
    const existing = groups.find((g) => g.role === role);
    if (existing) {
      existing.replicas++;
      continue;
    }
    // Each pod has its own IP: every replica uses the first slot's ports.
    const dp = config.dataParallel?.size ?? 1;
    const podConfig: VllmWorkerConfig = { ...config, port: WORKER_HTTP_PORT, env: {} };
    if (config.kvEvents) {
      podConfig.kvEvents = { ...config.kvEvents, endpoint: `tcp://*:${WORKER_EVENT_PORT}`, replayEndpoint: `tcp://*:${WORKER_EVENT_PORT + dp}` };
    }
    if (config.nixlSideChannelPort !== undefined) podConfig.nixlSideChannelPort = NIXL_SIDE_CHANNEL_PORT;
    groups.push({ role, suffix: role === "aggregated" ? "worker" : role, replicas: 1, config: podConfig });
  }
  return groups;
}

function workerService(ns: string, name: string, version: string, g: RoleGroup): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: `${name}-${g.suffix}`, namespace: ns, labels: labels(name, version, "worker", g.role) },
    spec: {
      selector: selector(name, "worker", g.role),
      ports: [{ name: "http", port: WORKER_HTTP_PORT, targetPort: "http" }],
    },
  } as KubeObject;
}

function workerDeployment(ns: string, name: string, version: string, g: RoleGroup, options: ManifestOptions, seed: string, servedModel: string): KubeObject {
  const line = buildCommandLine(g.config);
  const dp = g.config.dataParallel?.size ?? 1;
  const gpus = dp * (options.tensorParallelSize ?? 1);
  const env = Object.entries(line.env).map(([k, v]) => ({ name: k, value: v }));
  if (!env.some((e) => e.name === "PYTHONHASHSEED")) env.push({ name: "PYTHONHASHSEED", value: seed });
  const ports: { name: string; containerPort: number }[] = [{ name: "http", containerPort: WORKER_HTTP_PORT }];
  if (g.config.kvEvents) {
    for (let r = 0; r < dp; r++) ports.push({ name: `kv-events-${r}`, containerPort: WORKER_EVENT_PORT + r });
    for (let r = 0; r < dp; r++) ports.push({ name: `kv-replay-${r}`, containerPort: WORKER_EVENT_PORT + dp + r });
  }
  if (g.config.nixlSideChannelPort !== undefined) {
    ports.push({ name: "nixl", containerPort: NIXL_SIDE_CHANNEL_PORT });
    // The decode worker reaches the prefill worker's NIXL side channel at the pod's own IP.
    (env as unknown[]).push({ name: "VLLM_NIXL_SIDE_CHANNEL_HOST", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } });
  }
  const annotations = workerAnnotations({
    model: servedModel,
    role: g.role,
    blockSize: g.config.blockSize ?? VLLM_DEFAULT_BLOCK_SIZE,
    hashAlgorithm: g.config.prefixCachingHashAlgo ?? VLLM_DEFAULT_HASH_ALGORITHM,
    hashSeed: seed,
    ...(g.config.kvEvents ? { kvEventsPort: WORKER_EVENT_PORT, kvReplayPort: WORKER_EVENT_PORT + dp, kvEventsTopic: g.config.kvEvents.topic ?? "" } : {}),
    dataParallelSize: dp,
  });
  const health = { httpGet: { path: "/health", port: "http" } };
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: `${name}-${g.suffix}`, namespace: ns, labels: labels(name, version, "worker", g.role) },
    spec: {
      replicas: g.replicas,
      selector: { matchLabels: selector(name, "worker", g.role) },
      template: {
        metadata: { labels: labels(name, version, "worker", g.role), annotations },
        spec: {
          automountServiceAccountToken: false,
          // A drained worker finishes its requests before SIGTERM; leave it the time to.
          terminationGracePeriodSeconds: 120,
          containers: [
            {
              name: "vllm",
              image: options.image ?? DEFAULT_VLLM_IMAGE,
              command: [line.command],
              args: line.args,
              env,
              ports,
              resources: { requests: { "nvidia.com/gpu": String(gpus) }, limits: { "nvidia.com/gpu": String(gpus) } },
              // Loading weights takes minutes: the startup probe allows 20 before liveness starts.
              startupProbe: { ...health, periodSeconds: 10, failureThreshold: 120 },
              readinessProbe: { ...health, periodSeconds: 5, failureThreshold: 2 },
              livenessProbe: { ...health, periodSeconds: 10, failureThreshold: 6 },
              volumeMounts: [{ name: "dshm", mountPath: "/dev/shm" }],
            },
          ],
          volumes: [{ name: "dshm", emptyDir: { medium: "Memory", sizeLimit: "8Gi" } }],
        },
      },
    },
  } as KubeObject;
}

function gatewayDeployment(ns: string, name: string, version: string, options: ManifestOptions, services: string[]): KubeObject {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: `${name}-gateway`, namespace: ns, labels: labels(name, version, "gateway") },
    spec: {
      replicas: options.gatewayReplicas ?? 1,
      selector: { matchLabels: selector(name, "gateway") },
      template: {
        metadata: { labels: labels(name, version, "gateway") },
        spec: {
          serviceAccountName: `${name}-gateway`,
          containers: [
            {
              name: "gateway",
              image: options.gatewayImage ?? `kvroute:${version}`,
              command: ["kvroute"],
              args: ["serve", "--config", "/etc/kvroute/config.yaml", "--registry", `k8s://${ns}/${services.join(",")}`],
              ports: [{ name: "http", containerPort: 8000 }],
              // /health answers 503 until some worker is ready: no traffic before that.
              readinessProbe: { httpGet: { path: "/health", port: "http" }, periodSeconds: 5 },
              livenessProbe: { tcpSocket: { port: "http" }, periodSeconds: 10 },
              resources: { requests: { cpu: "1", memory: "1Gi" } },
              volumeMounts: [{ name: "config", mountPath: "/etc/kvroute", readOnly: true }],
            },
          ],
          volumes: [{ name: "config", configMap: { name: `${name}-gateway` } }],
        },
      },
    },
  } as KubeObject;
}

function gatewayService(ns: string, name: string, version: string): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name: `${name}-gateway`, namespace: ns, labels: labels(name, version, "gateway") },
    spec: { selector: selector(name, "gateway"), ports: [{ name: "http", port: 8000, targetPort: "http" }] },
  } as KubeObject;
}
