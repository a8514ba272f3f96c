/**
 * A real Kubernetes control plane for tests, on free loopback ports: Debian's etcd, kube-apiserver
 * (static token file, RBAC, service-account keys, its own self-signed serving certificate) and
 * kube-controller-manager running the endpointslice, deployment, replicaset and serviceaccount
 * controllers. The binaries come from scripts/k8s/build.sh (.cache/k8s/bin, or $KVROUTE_K8S_BIN).
 *
 * There is no kubelet and no scheduler: `Kubelet` (kubelet.ts) plays their part for the pods a test
 * cares about. Gotchas: etcd reads every ETCD_* environment variable as a flag (they are removed);
 * an open watch delays the apiserver's graceful stop (it is killed: its store is thrown away).
 */
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { networkInterfaces, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { KubeApiError, KubeClient, resourcePath, type KubeObject } from "../../ts/kubernetes/kube-client.js";
import { freePort } from "./nats-server.js";
import { startWatched, type WatchedProcess } from "./watched-process.js";

const REPO = resolve(fileURLToPath(new URL("../..", import.meta.url)));

export function kubeBinary(name: "kube-apiserver" | "kube-controller-manager"): string {
  const dir = process.env["KVROUTE_K8S_BIN"] ?? join(REPO, ".cache/k8s/bin");
  const path = join(dir, name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run scripts/k8s/build.sh (builds kube-apiserver and kube-controller-manager once, ~10 min)`);
  return path;
}

function etcdBinary(): string {
  for (const c of [process.env["ETCD_BIN_FOR_TESTS"], "etcd", "/usr/bin/etcd"]) {
    if (c && spawnSync(c, ["--version"], { stdio: "ignore", env: cleanEnv() }).status === 0) return c;
  }
  throw new Error("etcd not found: install Debian's etcd-server (apt-get install -y etcd-server)");
}

/** The environment without ETCD_* (etcd would read them as flags) and without proxies. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("ETCD_") && !/^(https?|no)_proxy$/i.test(k)) env[k] = v;
  return env;
}

/**
 * The address tests give pods as their podIP. EndpointSlice validation refuses loopback
 * (127.0.0.0/8, ::1) and link-local addresses, so this is the machine's first other IPv4 address
 * (a real interface: processes bound to it are reachable at it).
 */
export function podHostIp(): string {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family === "IPv4" && !a.internal && !a.address.startsWith("169.254.")) return a.address;
    }
  }
  throw new Error("no non-loopback IPv4 address on this machine: EndpointSlices refuse 127.0.0.1 as a pod address");
}

export interface KubeClusterOptions {
  /** How long to wait for the apiserver and the controllers. Default 240 s (a busy machine: 5 s when idle). */
  readyTimeoutMs?: number;
  /**
   * The apiserver's watch cache (default on). Off, watches are served by etcd itself: one from a
   * compacted resourceVersion gets 410 Gone for certain (the cache may still serve it).
   */
  watchCache?: boolean;
}

export class KubeCluster {
  private constructor(
    private readonly dir: string,
    readonly server: string,
    /** A system:masters token (what the test itself and the controller manager use). */
    readonly adminToken: string,
    readonly caFile: string,
    readonly client: KubeClient,
    private readonly processes: WatchedProcess[],
  ) {}

  /** Starts the control plane; a port taken between probing and binding is retried on others. */
  static async start(options: KubeClusterOptions = {}): Promise<KubeCluster> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await KubeCluster.startOnce(options);
      } catch (err) {
        if (attempt >= 3 || !/address already in use/i.test(String(err))) throw err;
      }
    }
  }

  private static async startOnce(options: KubeClusterOptions): Promise<KubeCluster> {
    const deadline = Date.now() + (options.readyTimeoutMs ?? 240_000);
    const apiserverBin = kubeBinary("kube-apiserver");
    const kcmBin = kubeBinary("kube-controller-manager");
    const dir = mkdtempSync(join(tmpdir(), "kvroute-kube-"));
    const processes: WatchedProcess[] = [];
    const env = cleanEnv();
    try {
      const [etcdPort, etcdPeerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
      const etcdUrl = `http://127.0.0.1:${etcdPort}`;
      const etcd = startWatched("etcd", etcdBinary(), [
        "--name", "kvroute-test",
        "--data-dir", join(dir, "etcd"),
        "--listen-client-urls", etcdUrl,
        "--advertise-client-urls", etcdUrl,
        "--listen-peer-urls", `http://127.0.0.1:${etcdPeerPort}`,
        "--initial-advertise-peer-urls", `http://127.0.0.1:${etcdPeerPort}`,
        "--initial-cluster", `kvroute-test=http://127.0.0.1:${etcdPeerPort}`,
        "--listen-metrics-urls", "",
        "--log-level", "warn",
      ], { env });
      processes.push(etcd);

      const adminToken = randomBytes(16).toString("hex");
      writeFileSync(join(dir, "tokens.csv"), `${adminToken},kvroute-admin,kvroute-admin,"system:masters"\n`);
      const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
      writeFileSync(join(dir, "sa.key"), privateKey.export({ type: "pkcs8", format: "pem" }));
      const certDir = join(dir, "certs");
      const server = `https://127.0.0.1:${apiPort}`;
      await waitFor(deadline, async () => (await fetch(`${etcdUrl}/health`).then((r) => r.ok).catch(() => false)), () => `etcd not ready:\n${etcd.output()}`, [etcd]);
      const apiserverArgs = [
        `--etcd-servers=${etcdUrl}`,
        "--bind-address=127.0.0.1",
        `--secure-port=${apiPort}`,
        "--advertise-address=127.0.0.1",
        `--cert-dir=${certDir}`,
        `--token-auth-file=${join(dir, "tokens.csv")}`,
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc",
        `--service-account-key-file=${join(dir, "sa.key")}`,
        `--service-account-signing-key-file=${join(dir, "sa.key")}`,
        "--service-cluster-ip-range=10.96.0.0/16",
        // The `kubernetes` Service's Endpoints would hold 127.0.0.1, which Endpoints refuse.
        "--endpoint-reconciler-type=none",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--shutdown-delay-duration=0s",
        `--watch-cache=${options.watchCache ?? true}`,
        "--v=0",
      ];
      const apiserver = startWatched("kube-apiserver", apiserverBin, apiserverArgs, { env });
      processes.push(apiserver);
      const caFile = join(certDir, "apiserver.crt");
      await waitFor(deadline, () => Promise.resolve(existsSync(caFile)), () => `kube-apiserver wrote no certificate:\n${apiserver.output()}`, processes);
      const client = new KubeClient({ server, token: adminToken, caFile, timeoutMs: 10_000 });
      await waitFor(
        deadline,
        async () => (await client.get<string>("/readyz").then(() => true, () => false)),
        () => `kube-apiserver not ready:\n${apiserver.output().slice(-8000)}`,
        processes,
      );

      const kubeconfig = join(dir, "kcm.kubeconfig");
      writeFileSync(kubeconfig, kubeconfigYaml(server, caFile, adminToken));
      const kcm = startWatched("kube-controller-manager", kcmBin, [
        `--kubeconfig=${kubeconfig}`,
        "--controllers=endpointslice,deployment,replicaset,serviceaccount",
        "--leader-elect=false",
        "--secure-port=0",
        "--use-service-account-credentials=false",
        "--concurrent-service-endpoint-syncs=2",
        "--v=0",
      ], { env });
      processes.push(kcm);
      // The serviceaccount controller creates `default` in every namespace: the controllers are up.
      await waitFor(
        deadline,
        async () => (await client.get("/api/v1/namespaces/default/serviceaccounts/default").then(() => true, () => false)),
        () => `kube-controller-manager not ready:\n${kcm.output().slice(-8000)}`,
        processes,
      );
      const cluster = new KubeCluster(dir, server, adminToken, caFile, client, processes);
      cluster.restartArgs = { binary: apiserverBin, args: apiserverArgs, env };
      cluster.etcdUrl = etcdUrl;
      return cluster;
    } catch (err) {
      for (const p of processes.reverse()) await p.stop("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  private restartArgs: { binary: string; args: string[]; env: NodeJS.ProcessEnv } | null = null;

  /**
   * Kills the apiserver and starts it again on the same port, certificates and etcd: watches
   * break, and clients resume from resourceVersions the new apiserver's cache may not hold.
   */
  async restartApiserver(): Promise<void> {
    const i = this.processes.findIndex((p) => p.name === "kube-apiserver");
    await this.processes[i]!.stop("SIGKILL");
    const { binary, args, env } = this.restartArgs!;
    const apiserver = startWatched("kube-apiserver", binary, args, { env });
    this.processes[i] = apiserver;
    await waitFor(Date.now() + 120_000, async () => (await this.client.get<string>("/readyz").then(() => true, () => false)), () => `kube-apiserver not ready after restart:\n${apiserver.output().slice(-8000)}`, this.processes);
  }

  private etcdUrl = "";

  /** Compacts etcd's history up to its current revision (older resourceVersions are gone). */
  async compactEtcd(): Promise<number> {
    const post = async (path: string, body: unknown) => {
      const res = await fetch(`${this.etcdUrl}${path}`, { method: "POST", body: JSON.stringify(body) });
      if (!res.ok) throw new Error(`etcd ${path}: ${res.status} ${await res.text()}`);
      return (await res.json()) as { header: { revision: string } };
    };
    const revision = (await post("/v3/kv/range", { key: Buffer.from("/").toString("base64") })).header.revision;
    await post("/v3/kv/compaction", { revision, physical: true });
    return Number(revision);
  }

  /** The CA PEM (the apiserver's self-signed chain). */
  get ca(): string {
    return readFileSync(this.caFile, "utf8");
  }

  /** Environment variables that point `kvroute` (KubeClient.fromEnvironment) at this cluster. */
  envFor(token: string): Record<string, string> {
    return { KVROUTE_K8S_SERVER: this.server, KVROUTE_K8S_TOKEN: token, KVROUTE_K8S_CA_FILE: this.caFile };
  }

  /** Creates a namespace and waits for its `default` service account (pods need it). */
  async createNamespace(name: string): Promise<void> {
    await this.client.create("/api/v1/namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
    await waitFor(Date.now() + 60_000, async () => (await this.client.get(`/api/v1/namespaces/${name}/serviceaccounts/default`).then(() => true, () => false)), () => `no default service account in ${name}`, this.processes);
  }

  /**
   * A token for a service account (TokenRequest API, as a pod's projected token): the account's
   * RBAC is what the token may do.
   */
  async serviceAccountToken(namespace: string, account: string): Promise<string> {
    const res = await this.client.create<{ status: { token: string } }>(`/api/v1/namespaces/${namespace}/serviceaccounts/${account}/token`, {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenRequest",
      spec: { audiences: ["https://kubernetes.default.svc"], expirationSeconds: 3600 },
    });
    return res.status.token;
  }

  /** Logs of every process (for failure messages). */
  output(): string {
    return this.processes.map((p) => `--- ${p.name}\n${p.output().slice(-4000)}`).join("\n");
  }

  async stop(): Promise<void> {
    await this.client.close();
    // Controllers, then the apiserver (killed: an open watch delays its graceful stop), then etcd.
    for (const p of [...this.processes].reverse()) await p.stop(p.name === "etcd" ? "SIGTERM" : "SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function kubeconfigYaml(server: string, caFile: string, token: string): string {
  return [
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: test",
    "  cluster:",
    `    server: ${server}`,
    `    certificate-authority: ${caFile}`,
    "users:",
    "- name: admin",
    "  user:",
    `    token: ${token}`,
    "contexts:",
    "- name: test",
    "  context: {cluster: test, user: admin}",
    "current-context: test",
    "",
  ].join("\n");
}

/** Polls `check` until it holds; fails early when one of `processes` exits. */
export async function waitFor(deadline: number, check: () => Promise<boolean>, describe: () => string, processes: readonly WatchedProcess[] = []): Promise<void> {
  for (;;) {
    if (await check()) return;
    const dead = processes.find((p) => !p.running);
    if (dead) throw new Error(`${dead.name} exited: ${describe()}\n--- ${dead.name}\n${dead.output().slice(-8000)}`);
    if (Date.now() > deadline) throw new Error(`timed out: ${describe()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const RESOURCES: Record<string, string> = {
  ServiceAccount: "serviceaccounts",
  Service: "services",
  ConfigMap: "configmaps",
  Pod: "pods",
  Deployment: "deployments",
  Role: "roles",
  RoleBinding: "rolebindings",
};

/** Creates a namespaced object of a known kind (in its metadata.namespace, else `namespace`). */
export async function createObject<T = KubeObject>(client: KubeClient, object: KubeObject, namespace?: string): Promise<T> {
  const resource = RESOURCES[object.kind ?? ""];
  if (!resource || !object.apiVersion) throw new Error(`createObject: unknown kind ${object.kind}`);
  const ns = object.metadata.namespace ?? namespace;
  if (!ns) throw new Error(`createObject: ${object.kind} ${object.metadata.name} has no namespace`);
  return client.create<T>(resourcePath(object.apiVersion, ns, resource), object);
}

/** True for a KubeApiError with this status. */
export function isStatus(err: unknown, status: number): boolean {
  return err instanceof KubeApiError && err.status === status;
}
