/**
 * KubernetesWorkerConnector: KubernetesConnector in the shape the planner's loop drives
 * (ts/planner/connector.ts's contract): `running(kind)` answered at once from a watch of the
 * Deployments, `scale(kind, n, reason)` returning once the change is under way.
 *
 * - running(kind): the Deployment's `spec.replicas` as the watch last saw it (a `kubectl scale`
 *   by hand shows at once), less the pods this connector is draining for a scale-down not yet
 *   written (draining workers do not count).
 * - scale(kind, n): up resolves when the new count is written; down resolves once the chosen pods
 *   are draining (out of every registry), the rest (wait for their requests, pod-deletion-cost,
 *   the write) goes on in the background. A new `scale` for a kind with a change under way
 *   cancels it first (the drained pods serve again) unless it asks for the same count.
 * - close(): cancels what is under way (the fleet stays as it is) and stops the watch; the
 *   Deployments' pods are not this connector's to stop.
 */
import { InvalidConfigError } from "../errors.js";
import type { WorkerConnector } from "../planner/connector.js";
import type { WorkerRole } from "../workers/config.js";
import { KubeClient, resourcePath, type KubeObject } from "./kube-client.js";
import { KubernetesConnector, type KubernetesConnectorOptions, type ScaleResult } from "./kubernetes-connector.js";
import { ListWatch } from "./list-watch.js";

/**
 * `k8s://<namespace>[?prefill=<Deployment>&decode=<Deployment>&aggregated=<Deployment>&name=<prefix>]`:
 * the Deployments of each kind, by default those `kvroute manifests --name <prefix>` writes
 * (`<prefix>-prefill`, `<prefix>-decode`, `<prefix>-worker`; prefix `kvroute`).
 */
export function parseK8sConnectorUrl(url: string): { namespace: string; deployments: Partial<Record<WorkerRole, string>> } {
  const bad = (why: string): never => {
    throw new InvalidConfigError(`connector ${JSON.stringify(url)}: ${why} (expected k8s://<namespace>[?prefill=D&decode=D&aggregated=D&name=PREFIX])`);
  };
  if (!URL.canParse(url) || !/^k8s:$/i.test(new URL(url).protocol)) bad("not a k8s:// URL");
  const u = new URL(url);
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(u.hostname)) bad(`namespace ${JSON.stringify(u.hostname)} is not a DNS label`);
  if (u.pathname !== "" && u.pathname !== "/") bad("no path after the namespace");
  for (const key of u.searchParams.keys()) if (!["prefill", "decode", "aggregated", "name"].includes(key)) bad(`unknown parameter ${JSON.stringify(key)}`);
  const prefix = u.searchParams.get("name") ?? "kvroute";
  return {
    namespace: u.hostname,
    deployments: {
      prefill: u.searchParams.get("prefill") ?? `${prefix}-prefill`,
      decode: u.searchParams.get("decode") ?? `${prefix}-decode`,
      aggregated: u.searchParams.get("aggregated") ?? `${prefix}-worker`,
    },
  };
}

interface Deployment extends KubeObject {
  spec?: { replicas?: number };
}

interface Operation {
  target: number;
  abort: AbortController;
  /** Pods drained for this scale-down (0 until marked, and for a scale-up). */
  drained: number;
  done: Promise<void>;
}

export class KubernetesWorkerConnector implements WorkerConnector {
  readonly name = "kubernetes";
  /** The last result of each kind's scale (for logs and tests). */
  readonly results = new Map<WorkerRole, ScaleResult>();
  private readonly operations = new Map<WorkerRole, Operation>();
  private readonly log: (message: string) => void;

  private constructor(
    private readonly options: KubernetesConnectorOptions,
    readonly connector: KubernetesConnector,
    private readonly deployments: ListWatch<Deployment>,
    private readonly ownClient: KubeClient | null,
  ) {
    this.log = options.log ?? (() => {});
  }

  /** Lists the namespace's Deployments (rejects when it cannot: RBAC, namespace...), then watches them. */
  static async start(options: KubernetesConnectorOptions): Promise<KubernetesWorkerConnector> {
    const client = options.client ?? KubeClient.fromEnvironment();
    const shared = { ...options, client };
    const deployments = new ListWatch<Deployment>({
      client,
      path: resourcePath("apps/v1", options.namespace, "deployments"),
      onChange: () => {},
      ...(options.log ? { log: options.log } : {}),
    });
    try {
      await deployments.start();
    } catch (err) {
      if (!options.client) await client.close();
      throw err;
    }
    return new KubernetesWorkerConnector(shared, new KubernetesConnector(shared), deployments, options.client ? null : client);
  }

  running(kind: WorkerRole): number {
    const name = this.options.deployments[kind];
    const spec = (name && this.deployments.objects.get(name)?.spec?.replicas) || 0;
    const op = this.operations.get(kind);
    if (op && op.drained > 0 && spec > op.target) return spec - Math.min(op.drained, spec - op.target);
    return spec;
  }

  async scale(kind: WorkerRole, count: number, reason: string): Promise<void> {
    const current = this.operations.get(kind);
    if (current) {
      if (current.target === count) return;
      current.abort.abort();
      await current.done;
    }
    const abort = new AbortController();
    let underWay!: () => void;
    let failed!: (err: unknown) => void;
    const started = new Promise<void>((resolve, reject) => ((underWay = resolve), (failed = reject)));
    const op: Operation = { target: count, abort, drained: 0, done: Promise.resolve() };
    this.operations.set(kind, op);
    this.log(`kubernetes connector: ${kind} -> ${count}: ${reason}`);
    op.done = this.connector
      .scale(kind, count, {
        signal: abort.signal,
        onDraining: (pods) => {
          op.drained = pods.length;
          underWay();
        },
      })
      .then(
        (result) => {
          this.results.set(kind, result);
          underWay();
        },
        (err: unknown) => {
          this.log(`kubernetes connector: scale ${kind} -> ${count} failed: ${err instanceof Error ? err.message : String(err)}`);
          failed(err); // a no-op once the change was under way
        },
      )
      .finally(() => {
        if (this.operations.get(kind) === op) this.operations.delete(kind);
      });
    await started;
  }

  /** Resolves when every change under way has finished (tests, orderly shutdown). */
  async settled(): Promise<void> {
    while (this.operations.size > 0) await Promise.all([...this.operations.values()].map((o) => o.done));
  }

  async close(): Promise<void> {
    for (const op of this.operations.values()) op.abort.abort();
    await this.settled();
    await this.deployments.stop();
    await this.ownClient?.close();
  }
}
