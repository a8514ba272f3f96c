/**
 * KubernetesRegistry: the `Registry` of workers running as pods. The workers of a deployment are
 * the ready endpoints of the EndpointSlices of its worker Services (one per role; label
 * `kubernetes.io/service-name in (<services>)`) whose pods are Ready; each worker's record is read from its pod's annotations
 * (pod-annotations.ts), its URL from the endpoint's address and the Service's HTTP port. Both
 * collections are listed, then watched from their resourceVersion (list-watch.ts): a pod turning
 * ready is a worker the moment the EndpointSlice controller publishes it, and one turning not
 * ready, terminating, deleted or annotated `kvroute.dev/draining` is gone as soon.
 *
 * RBAC it needs, in its namespace only: get, list, watch on `endpointslices`
 * (discovery.k8s.io) and `pods` (manifests.ts writes that Role).
 *
 * Membership belongs to Kubernetes: `register` and `deregister` reject (KVR_REGISTRY_READ_ONLY).
 * A pod whose annotations do not make a valid record is left out, logged once per version and
 * counted (`stats().invalidPods`).
 *
 * Invariant: `records` is exactly the set derived from the cached slices and pods; listeners have
 * been told every difference between successive sets (a changed record is `added` again, as
 * MemoryRegistry does for a re-registration).
 */
import { InvalidConfigError, KvrouteError } from "../errors.js";
import type { Registry } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import { KubeClient, resourcePath, type KubeObject } from "./kube-client.js";
import { ListWatch, type ListWatchStats } from "./list-watch.js";
import { ANNOTATIONS, recordFromPod } from "./pod-annotations.js";

export class RegistryReadOnlyError extends KvrouteError {
  constructor(message: string) {
    super("KVR_REGISTRY_READ_ONLY", message);
  }
}

/** discovery.k8s.io/v1 EndpointSlice, the fields read here. */
export interface EndpointSlice extends KubeObject {
  addressType: "IPv4" | "IPv6" | "FQDN";
  endpoints?: {
    addresses: string[];
    conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null };
    targetRef?: { kind?: string; name?: string; namespace?: string };
  }[];
  ports?: { name?: string; port?: number; protocol?: string }[] | null;
}

/** core/v1 Pod, the fields read here. */
export interface Pod extends KubeObject {
  spec?: { nodeName?: string; containers?: { name: string; ports?: { name?: string; containerPort: number }[] }[] };
  status?: { phase?: string; podIP?: string; conditions?: { type: string; status: string }[] };
}

export interface KubernetesRegistryOptions {
  namespace: string;
  /** The Service(s) whose EndpointSlices list the workers (e.g. one per role). */
  service: string | readonly string[];
  /** Default: KubeClient.fromEnvironment() (the pod's service account). */
  client?: KubeClient;
  /** The Service port that is the workers' HTTP port. Default "http", else the slice's only port. */
  portName?: string;
  /** Label selector of the pods watched for annotations (default: every pod of the namespace). */
  podSelector?: string;
  log?: (message: string) => void;
}

export interface KubernetesRegistryStats {
  workers: number;
  /** Ready endpoints left out because their pod's annotations do not make a valid record. */
  invalidPods: number;
  /** Ready endpoints with no usable HTTP port in their slice. */
  noPort: number;
  slices: ListWatchStats;
  pods: ListWatchStats;
}

type Listener = Parameters<Registry["watch"]>[0];

export class KubernetesRegistry implements Registry {
  readonly namespace: string;
  readonly services: readonly string[];
  private readonly client: KubeClient;
  private readonly ownClient: boolean;
  private readonly slices: ListWatch<EndpointSlice>;
  private readonly pods: ListWatch<Pod>;
  private records = new Map<string, WorkerRecord>();
  private readonly listeners = new Set<Listener>();
  private readonly reported = new Set<string>();
  private invalidPods = 0;
  private noPort = 0;
  private started = false;

  constructor(private readonly options: KubernetesRegistryOptions) {
    this.namespace = options.namespace;
    this.services = typeof options.service === "string" ? [options.service] : [...options.service];
    if (this.services.length === 0) throw new InvalidConfigError("kubernetes registry: at least one service");
    this.ownClient = options.client === undefined;
    this.client = options.client ?? KubeClient.fromEnvironment();
    const log = options.log;
    this.slices = new ListWatch<EndpointSlice>({
      client: this.client,
      path: resourcePath("discovery.k8s.io/v1", this.namespace, "endpointslices"),
      labelSelector: `kubernetes.io/service-name in (${this.services.join(",")})`,
      onChange: () => this.refresh(),
      ...(log ? { log } : {}),
    });
    this.pods = new ListWatch<Pod>({
      client: this.client,
      path: resourcePath("v1", this.namespace, "pods"),
      ...(options.podSelector ? { labelSelector: options.podSelector } : {}),
      onChange: () => this.refresh(),
      ...(log ? { log } : {}),
    });
  }

  /** Lists both collections (rejects with the API's error: RBAC, no namespace...), then watches. */
  async start(): Promise<this> {
    const started = await Promise.allSettled([this.pods.start(), this.slices.start()]);
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      await this.close();
      throw failed.reason;
    }
    this.started = true;
    this.refresh();
    return this;
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await Promise.all([this.slices.stop(), this.pods.stop()]);
    if (this.ownClient) await this.client.close();
  }

  private get where(): string {
    return `service${this.services.length > 1 ? "s" : ""} ${this.namespace}/${this.services.join(",")}`;
  }

  list(model?: string): WorkerRecord[] {
    const all = [...this.records.values()];
    return model === undefined ? all : all.filter((r) => r.model === model);
  }

  get(id: string): WorkerRecord | undefined {
    return this.records.get(id);
  }

  register(record: WorkerRecord): Promise<void> {
    return Promise.reject(
      new RegistryReadOnlyError(`worker ${record?.id}: the Kubernetes registry follows the ready pods of ${this.where}; a worker joins by becoming ready`),
    );
  }

  deregister(id: string): Promise<void> {
    return Promise.reject(new RegistryReadOnlyError(`worker ${id}: the Kubernetes registry follows the ready pods of ${this.where}; annotate the pod ${ANNOTATIONS.draining}=true to take it out`));
  }

  watch(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  stats(): KubernetesRegistryStats {
    return { workers: this.records.size, invalidPods: this.invalidPods, noPort: this.noPort, slices: { ...this.slices.stats }, pods: { ...this.pods.stats } };
  }

  /** Recomputes the records from the cached slices and pods and tells listeners the difference. */
  private refresh(): void {
    if (!this.started) return;
    const next = this.derive();
    const changes: Parameters<Listener>[0][] = [];
    for (const [id, old] of this.records) if (!next.has(id)) changes.push({ type: "removed", record: old });
    for (const [id, record] of next) {
      const old = this.records.get(id);
      if (!old || JSON.stringify(old) !== JSON.stringify(record)) changes.push({ type: "added", record });
    }
    this.records = next;
    for (const change of changes) {
      for (const l of [...this.listeners]) {
        try {
          l(change);
        } catch (err) {
          this.options.log?.(`kubernetes registry: a listener threw on ${change.type} ${change.record.id}: ${String(err)}`);
        }
      }
    }
  }

  private derive(): Map<string, WorkerRecord> {
    const out = new Map<string, WorkerRecord>();
    for (const slice of this.slices.objects.values()) {
      if (slice.addressType === "FQDN") continue;
      const ports = slice.ports ?? [];
      const port = ports.find((p) => p.name === (this.options.portName ?? "http")) ?? (ports.length === 1 && this.options.portName === undefined ? ports[0] : undefined);
      for (const ep of slice.endpoints ?? []) {
        // A nil `ready` means ready (the API's rule); terminating endpoints are never ready.
        if (ep.conditions?.ready === false || ep.conditions?.terminating === true) continue;
        const podName = ep.targetRef?.kind === "Pod" ? ep.targetRef.name : undefined;
        const address = ep.addresses[0];
        if (!podName || !address) continue;
        const pod = this.pods.objects.get(podName);
        if (!pod || pod.metadata.deletionTimestamp || pod.metadata.annotations?.[ANNOTATIONS.draining] === "true") continue;
        // A Service with publishNotReadyAddresses lists every pod as ready: ask the pod itself.
        if (!pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True")) continue;
        if (port?.port === undefined) {
          this.reportOnce(`port:${slice.metadata.name}:${slice.metadata.resourceVersion}`, () => this.noPort++, `EndpointSlice ${slice.metadata.name} has no port named ${this.options.portName ?? "http"}: its endpoints are left out`);
          continue;
        }
        try {
          out.set(podName, recordFromPod(podName, address, port.port, pod.metadata.annotations ?? {}));
        } catch (err) {
          this.reportOnce(`pod:${podName}:${pod.metadata.resourceVersion}`, () => this.invalidPods++, `${(err as Error).message}; left out`);
        }
      }
    }
    return out;
  }

  /** Counts and logs a problem once per object version (refresh runs on every change). */
  private reportOnce(key: string, count: () => void, message: string): void {
    if (this.reported.has(key)) return;
    if (this.reported.size > 10_000) this.reported.clear();
    this.reported.add(key);
    count();
    this.options.log?.(`kubernetes registry: ${message}`);
  }
}
