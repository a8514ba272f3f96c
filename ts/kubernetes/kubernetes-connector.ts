/**
 * KubernetesConnector: how a planner scales workers that run as Deployments (one per role).
 *
 * - Replicas are read and written through each Deployment's `scale` subresource, the write
 *   carrying the resourceVersion it read: a 409 Conflict (the Deployment changed in between,
 *   usually its status) is retried from a fresh read.
 * - Scale-up writes the new count. Scale-down first drains the pods it chooses (already draining,
 *   then not ready, then fewest requests in flight, then newest): it annotates them
 *   `kvroute.dev/draining=true`, so every KubernetesRegistry drops them at once and no new request
 *   goes there, waits until each has nothing in flight (its /metrics: running + waiting) or
 *   `drainTimeoutMs` passes, marks them `controller.kubernetes.io/pod-deletion-cost` far below
 *   the others, and only then lowers the count: the ReplicaSet controller deletes those pods first.
 * - Hand-made changes are noticed and respected: the count the connector last wrote is compared
 *   with the one it reads; a difference is logged and counted, and becomes the new baseline
 *   (`current()` reports it, the planner decides from it). A count changed by hand while a
 *   scale-down was draining aborts that scale-down (the victims are put back in service).
 *
 * The planner side (issue: Planner) calls `current()` and `scale(role, replicas)`; see
 * PlannerConnector below. RBAC: manifests.ts's connectorRbac().
 */
import { KvrouteError } from "../errors.js";
import { inFlightRequests } from "../workers/engine-http.js";
import type { WorkerRole } from "../workers/config.js";
import { formatHost } from "../workers/command-line.js";
import { KubeApiError, KubeClient, resourcePath, type KubeObject } from "./kube-client.js";
import type { Pod } from "./kubernetes-registry.js";
import { ANNOTATIONS, POD_DELETION_COST } from "./pod-annotations.js";

/** What a planner needs of the fleet it scales (the minimal form of the planner's connector). */
export interface PlannerConnector {
  /** Replicas per role as the fleet has them now (hand-made changes included). */
  current(): Promise<Partial<Record<WorkerRole, number>>>;
  /** Sets a role's replica count: scale-up at once, scale-down after draining the pods it removes. */
  scale(role: WorkerRole, replicas: number, options?: ScaleOptions): Promise<ScaleResult>;
}

export interface ScaleOptions {
  /** Aborting a scale-down while it drains puts its pods back in service and writes nothing. */
  signal?: AbortSignal;
  /** Called once the pods of a scale-down are marked draining (out of every registry). */
  onDraining?: (pods: string[]) => void;
}

export interface ScaleResult {
  role: WorkerRole;
  from: number;
  to: number;
  /** False when a hand-made change during the drain took precedence. */
  applied: boolean;
  /** Pods drained and marked to go first (scale-down). */
  drained: string[];
  /** Pods still running requests when the drain timed out (deleted anyway). */
  drainTimedOut: string[];
  /** 409 Conflicts retried. */
  conflicts: number;
}

export interface KubernetesConnectorOptions {
  namespace: string;
  /** The Deployment of each role, e.g. `{ prefill: "kvroute-prefill", decode: "kvroute-decode" }`. */
  deployments: Partial<Record<WorkerRole, string>>;
  /** Default: KubeClient.fromEnvironment(). */
  client?: KubeClient;
  /**
   * Requests a pod has in flight; null when unknown. Default: its /metrics
   * (`vllm:num_requests_running` + `vllm:num_requests_waiting`) at podIP and the container port
   * named `http`.
   */
  inFlight?: (pod: Pod) => Promise<number | null>;
  /** Longest wait for a drained pod to finish. Default 120 s. */
  drainTimeoutMs?: number;
  /** How often a draining pod's in-flight count is read. Default 500 ms. */
  drainCheckMs?: number;
  /** Conflicts retried per write. Default 5. */
  conflictRetries?: number;
  log?: (message: string) => void;
  /** Called between the read and the write of each scale write (a seam for tests and audit). */
  beforeWrite?: (role: WorkerRole) => Promise<void>;
}

export class ScaleError extends KvrouteError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("KVR_SCALE", message, options);
  }
}

interface Scale extends KubeObject {
  spec: { replicas?: number };
  status: { replicas?: number; selector?: string };
}

/** The cost a drained pod gets: below any a user would set by hand. */
const DRAINED_DELETION_COST = "-2147483647";

export class KubernetesConnector implements PlannerConnector {
  private readonly client: KubeClient;
  private readonly ownClient: boolean;
  /** The count this connector last wrote or accepted, per role. */
  private readonly baseline = new Map<WorkerRole, number>();
  /** Hand-made changes noticed, per role. */
  readonly handChanges = new Map<WorkerRole, number>();

  constructor(private readonly options: KubernetesConnectorOptions) {
    this.ownClient = options.client === undefined;
    this.client = options.client ?? KubeClient.fromEnvironment();
  }

  async current(): Promise<Partial<Record<WorkerRole, number>>> {
    const out: Partial<Record<WorkerRole, number>> = {};
    for (const role of Object.keys(this.options.deployments) as WorkerRole[]) out[role] = this.observe(role, await this.readScale(role));
    return out;
  }

  async scale(role: WorkerRole, replicas: number, options: ScaleOptions = {}): Promise<ScaleResult> {
    if (!Number.isInteger(replicas) || replicas < 0) throw new ScaleError(`scale ${role}: replicas must be an integer ≥ 0: got ${replicas}`);
    const scale = await this.readScale(role);
    const from = this.observe(role, scale);
    const result: ScaleResult = { role, from, to: replicas, applied: true, drained: [], drainTimedOut: [], conflicts: 0 };
    if (replicas === from) return result;
    if (replicas < from) {
      const victims = await this.chooseVictims(scale, from - replicas);
      await Promise.all(victims.map((p) => this.annotate(p, { [ANNOTATIONS.draining]: "true" })));
      result.drained = victims.map((p) => p.metadata.name);
      this.log(`scale ${role} ${from} -> ${replicas}: draining ${result.drained.join(", ")}`);
      options.onDraining?.(result.drained);
      result.drainTimedOut = await this.waitDrained(victims, options.signal);
      const now = options.signal?.aborted ? from : this.observe(role, await this.readScale(role));
      if (now !== from || options.signal?.aborted) {
        // Cancelled, or changed by hand while draining (that change wins): the victims serve again.
        await Promise.all(victims.map((p) => this.annotate(p, { [ANNOTATIONS.draining]: null })));
        this.log(`scale ${role}: ${options.signal?.aborted ? "cancelled" : `replicas changed by hand to ${now}`} while draining; scale-down to ${replicas} not applied`);
        return { ...result, from: now, applied: false, drainTimedOut: [] };
      }
      await Promise.all(victims.map((p) => this.annotate(p, { [POD_DELETION_COST]: DRAINED_DELETION_COST })));
    }
    const write = await this.writeReplicas(role, from, replicas);
    result.conflicts = write.conflicts;
    if (!write.written) {
      result.applied = false;
      if (result.drained.length > 0) await Promise.all(result.drained.map((name) => this.annotateName(name, { [ANNOTATIONS.draining]: null, [POD_DELETION_COST]: null })));
    }
    return result;
  }

  async close(): Promise<void> {
    if (this.ownClient) await this.client.close();
  }

  private deployment(role: WorkerRole): string {
    const name = this.options.deployments[role];
    if (!name) throw new ScaleError(`no Deployment configured for role ${role}`);
    return name;
  }

  private scalePath(role: WorkerRole): string {
    return resourcePath("apps/v1", this.options.namespace, "deployments", this.deployment(role), "scale");
  }

  private readScale(role: WorkerRole): Promise<Scale> {
    return this.client.get<Scale>(this.scalePath(role));
  }

  /** The scale's count, noticing a change made by someone else since the last look. */
  private observe(role: WorkerRole, scale: Scale): number {
    const replicas = scale.spec.replicas ?? 0;
    const last = this.baseline.get(role);
    if (last !== undefined && last !== replicas) {
      this.handChanges.set(role, (this.handChanges.get(role) ?? 0) + 1);
      this.log(`${role}: replicas changed by hand ${last} -> ${replicas} (Deployment ${this.deployment(role)}); respected`);
    }
    this.baseline.set(role, replicas);
    return replicas;
  }

  /**
   * Writes `to` if the count is still `from`, retrying conflicts; not written when the count was
   * changed by hand meanwhile.
   */
  private async writeReplicas(role: WorkerRole, from: number, to: number): Promise<{ written: boolean; conflicts: number }> {
    const retries = this.options.conflictRetries ?? 5;
    for (let conflicts = 0; ; conflicts++) {
      const scale = await this.readScale(role);
      if ((scale.spec.replicas ?? 0) !== from) {
        this.observe(role, scale);
        return { written: false, conflicts };
      }
      try {
        await this.options.beforeWrite?.(role);
        await this.client.mergePatch(this.scalePath(role), { metadata: { resourceVersion: scale.metadata.resourceVersion }, spec: { replicas: to } });
        this.baseline.set(role, to);
        this.log(`${role}: replicas ${from} -> ${to}${conflicts ? ` (${conflicts} conflict${conflicts > 1 ? "s" : ""} retried)` : ""}`);
        return { written: true, conflicts };
      } catch (err) {
        if (!(err instanceof KubeApiError && err.status === 409) || conflicts >= retries) {
          throw new ScaleError(`scale ${role} (${this.deployment(role)}) ${from} -> ${to}: ${(err as Error).message}`, { cause: err });
        }
      }
    }
  }

  private async chooseVictims(scale: Scale, count: number): Promise<Pod[]> {
    const selector = scale.status.selector;
    if (!selector) throw new ScaleError(`scale: Deployment ${scale.metadata.name} reports no selector`);
    const pods = (await this.client.list<Pod>(resourcePath("v1", this.options.namespace, "pods"), { labelSelector: selector })).items.filter((p) => !p.metadata.deletionTimestamp);
    const load = new Map<string, number>();
    await Promise.all(pods.map(async (p) => load.set(p.metadata.name, (await this.inFlight(p).catch(() => null)) ?? Number.MAX_SAFE_INTEGER)));
    const rank = (p: Pod) => [
      p.metadata.annotations?.[ANNOTATIONS.draining] === "true" ? 0 : 1,
      isReady(p) ? 1 : 0,
      load.get(p.metadata.name)!,
      -Date.parse(p.metadata.creationTimestamp ?? "0"),
    ];
    return pods
      .sort((a, b) => {
        const [x, y] = [rank(a), rank(b)];
        for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i]! - y[i]!;
        return a.metadata.name < b.metadata.name ? -1 : 1;
      })
      .slice(0, count);
  }

  /** Waits until every pod has nothing in flight; returns those that still had at the timeout. */
  private async waitDrained(pods: Pod[], signal?: AbortSignal): Promise<string[]> {
    const deadline = Date.now() + (this.options.drainTimeoutMs ?? 120_000);
    let busy = pods;
    for (;;) {
      if (signal?.aborted) return [];
      const counts = await Promise.all(busy.map((p) => this.inFlight(p).catch(() => null)));
      // Unknown (unreachable) counts as done: a pod that cannot answer cannot serve either.
      busy = busy.filter((_, i) => (counts[i] ?? 0) > 0);
      if (busy.length === 0) return [];
      if (Date.now() >= deadline) {
        const names = busy.map((p) => p.metadata.name);
        this.log(`drain timed out with requests in flight on ${names.join(", ")}`);
        return names;
      }
      await new Promise((r) => setTimeout(r, this.options.drainCheckMs ?? 500));
    }
  }

  private inFlight(pod: Pod): Promise<number | null> {
    return (this.options.inFlight ?? metricsInFlight)(pod);
  }

  private annotate(pod: Pod, annotations: Record<string, string | null>): Promise<unknown> {
    return this.annotateName(pod.metadata.name, annotations);
  }

  private annotateName(name: string, annotations: Record<string, string | null>): Promise<unknown> {
    return this.client.mergePatch(resourcePath("v1", this.options.namespace, "pods", name), { metadata: { annotations } }).catch((err: unknown) => {
      // A pod deleted meanwhile needs no annotation.
      if (!(err instanceof KubeApiError && err.status === 404)) throw err;
    });
  }

  private log(message: string): void {
    this.options.log?.(`kubernetes connector: ${message}`);
  }
}

function isReady(pod: Pod): boolean {
  return pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") === true;
}

/** A pod's in-flight requests from its vLLM /metrics (podIP, container port `http`). */
export async function metricsInFlight(pod: Pod): Promise<number | null> {
  const ip = pod.status?.podIP;
  const port = pod.spec?.containers?.flatMap((c) => c.ports ?? []).find((p) => p.name === "http")?.containerPort;
  if (!ip || !port) return null;
  const res = await fetch(`http://${formatHost(ip)}:${port}/metrics`, { signal: AbortSignal.timeout(2000) });
  if (!res.ok) return null;
  return inFlightRequests(await res.text());
}
