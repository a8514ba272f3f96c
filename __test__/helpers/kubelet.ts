/**
 * What a kubelet (and the scheduler) would do for the pods of a test, through the real API: a
 * `Node` object; pods bound to it (`pods/<name>/binding`); their status set to Running with a podIP
 * and Ready, or not ready (`PATCH pods/<name>/status`); a deleted pod's removal confirmed (grace 0)
 * as a kubelet does once its containers stopped. The EndpointSlice and ReplicaSet controllers then
 * act on them exactly as on a real node's pods.
 *
 * `follow()` does it for every pod of a namespace as they come (Deployments' pods).
 */
import type { KubeClient } from "../../ts/kubernetes/kube-client.js";
import { ListWatch } from "../../ts/kubernetes/list-watch.js";
import type { Pod } from "../../ts/kubernetes/kubernetes-registry.js";

export interface PodSpecInput {
  name: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  /** The container's port named `http`. */
  httpPort: number;
}

export class Kubelet {
  private readonly follows: ListWatch<Pod>[] = [];

  constructor(
    private readonly client: KubeClient,
    readonly nodeName = "kvroute-test-node",
  ) {}

  async createNode(): Promise<void> {
    await this.client.create("/api/v1/nodes", { apiVersion: "v1", kind: "Node", metadata: { name: this.nodeName, labels: { "kubernetes.io/hostname": this.nodeName } } });
  }

  /** A pod already placed on the node (as if scheduled), still Pending. */
  async createPod(namespace: string, pod: PodSpecInput): Promise<void> {
    await this.client.create(`/api/v1/namespaces/${namespace}/pods`, {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: pod.name, labels: pod.labels ?? {}, annotations: pod.annotations ?? {} },
      spec: {
        nodeName: this.nodeName,
        containers: [{ name: "worker", image: "vllm/vllm-openai:latest", ports: [{ name: "http", containerPort: pod.httpPort }] }],
      },
    });
  }

  /** Binds a pending pod to the node (the scheduler's job). */
  async bind(namespace: string, name: string): Promise<void> {
    await this.client.create(`/api/v1/namespaces/${namespace}/pods/${name}/binding`, {
      apiVersion: "v1",
      kind: "Binding",
      metadata: { name },
      target: { apiVersion: "v1", kind: "Node", name: this.nodeName },
    });
  }

  /** Running with `ip` as its podIP, Ready or not (since `since`, default now). */
  async setReady(namespace: string, name: string, ip: string, ready: boolean, since = new Date()): Promise<void> {
    const now = since.toISOString();
    const status = ready ? "True" : "False";
    await this.client.mergePatch(`/api/v1/namespaces/${namespace}/pods/${name}/status`, {
      status: {
        phase: "Running",
        hostIP: ip,
        podIP: ip,
        podIPs: [{ ip }],
        startTime: now,
        conditions: [
          { type: "PodScheduled", status: "True", lastTransitionTime: now },
          { type: "Initialized", status: "True", lastTransitionTime: now },
          { type: "ContainersReady", status, lastTransitionTime: now },
          { type: "Ready", status, lastTransitionTime: now },
        ],
      },
    });
  }

  /** Confirms a deletion (what a kubelet does once the containers stopped). */
  async finishDeletion(namespace: string, name: string): Promise<void> {
    await this.client.delete(`/api/v1/namespaces/${namespace}/pods/${name}`, { apiVersion: "v1", kind: "DeleteOptions", gracePeriodSeconds: 0 }).catch(() => {});
  }

  /**
   * Every pod of `namespace` (matching `selector`) is bound, made Running and Ready at `ip`, and
   * removed once deleted. Resolves when the watch is running.
   */
  async follow(namespace: string, ip: string, selector?: string): Promise<void> {
    const handled = new Set<string>();
    const lw = new ListWatch<Pod>({
      client: this.client,
      path: `/api/v1/namespaces/${namespace}/pods`,
      ...(selector ? { labelSelector: selector } : {}),
      onChange: (type, pod) => {
        const name = pod.metadata.name;
        if (type === "DELETED") return;
        if (pod.metadata.deletionTimestamp) {
          void this.finishDeletion(namespace, name);
          return;
        }
        if (handled.has(`${pod.metadata.uid}`)) return;
        handled.add(`${pod.metadata.uid}`);
        void (async () => {
          if (!pod.spec?.nodeName) await this.bind(namespace, name);
          await this.setReady(namespace, name, ip, true);
        })().catch(() => handled.delete(`${pod.metadata.uid}`));
      },
    });
    this.follows.push(await lw.start());
  }

  async stop(): Promise<void> {
    await Promise.all(this.follows.splice(0).map((f) => f.stop()));
  }
}
