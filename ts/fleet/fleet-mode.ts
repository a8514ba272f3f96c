/**
 * Fleet mode for startGateway (docs/fleet.md): `registry: etcd://...` swaps the MemoryRegistry
 * for an EtcdRegistry, `registry: k8s://<namespace>/<services>` for a KubernetesRegistry (the
 * ready pods of those Services; open-registry.ts, docs/kubernetes.md); `bus: nats://...` opens one NATS connection, shares this replica's
 * request load with the others (ReplicaLoadSync) and, with `fleet.kvEvents: "bus"`, reads KV
 * events from the JetStream stream (KvEventReplica per model) instead of each worker's ZMQ
 * publisher. Its counters go to /metrics. Nothing else in the gateway changes.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { Counter, Gauge, type Registry as MetricsRegistry } from "prom-client";
import type { FleetConfig, GatewayConfig } from "../config/schema.js";
import { KvEventReplica } from "../events/bus/kv-event-replica.js";
import { NatsJetStreamBus } from "../events/bus/nats-jetstream-bus.js";
import { InvalidConfigError } from "../errors.js";
import { KubernetesRegistry } from "../kubernetes/kubernetes-registry.js";
import { registerKubernetesRegistryMetrics } from "../kubernetes/registry-metrics.js";
import { EtcdRegistry } from "../registry/etcd-registry.js";
import { openRegistry, type OpenedRegistry } from "../registry/open-registry.js";
import type { KvRouter } from "../router/kv-router.js";
import type { Registry } from "../router/types.js";
import { connectNats, type NatsAuthOptions } from "./nats-connect.js";
import { ReplicaLoadSync } from "./replica-load.js";

export interface FleetConnections {
  registry: EtcdRegistry | KubernetesRegistry | null;
  nats: NatsConnection | null;
  close(): Promise<void>;
}

/** NATS credentials and TLS from the fleet settings ("" = unset). */
export function natsAuthFromConfig(f: FleetConfig): NatsAuthOptions {
  const o: NatsAuthOptions = {};
  if (f.natsToken) o.token = f.natsToken;
  if (f.natsUser) (o.user = f.natsUser), (o.password = f.natsPassword);
  if (f.natsCreds) o.credsFile = f.natsCreds;
  if (f.natsCa || f.natsCert || f.natsKey) o.tls = { ...(f.natsCa ? { ca: f.natsCa } : {}), ...(f.natsCert ? { cert: f.natsCert } : {}), ...(f.natsKey ? { key: f.natsKey } : {}) };
  return o;
}

/** Opens what the config asks for: the etcd registry (unless one is given) and the NATS connection. */
export async function openFleet(config: GatewayConfig, options: { registryGiven: boolean; follow?: boolean; log: (m: string) => void }): Promise<FleetConnections> {
  const f = config.fleet;
  let registry: EtcdRegistry | KubernetesRegistry | null = null;
  let opened: OpenedRegistry | null = null;
  let nats: NatsConnection | null = null;
  try {
    if (config.registry && /^k8s:/i.test(config.registry) && !options.registryGiven) {
      // Kubernetes owns membership: a worker joins by becoming a ready pod, never by registering.
      if (options.follow === false) throw new InvalidConfigError(`registry ${config.registry}: workers do not register in Kubernetes; a pod joins when it is ready (docs/kubernetes.md)`);
      opened = await openRegistry(config.registry, { log: options.log });
      registry = opened.registry as KubernetesRegistry;
    } else if (config.registry && !options.registryGiven) {
      registry = await EtcdRegistry.connect({
        endpoints: config.registry,
        namespace: f.namespace,
        ttlSeconds: f.leaseTtlSeconds,
        follow: options.follow ?? true,
        log: options.log,
        ...(f.etcdUsername ? { username: f.etcdUsername, password: f.etcdPassword } : {}),
        ...(f.etcdCa || f.etcdCert || f.etcdKey
          ? { tls: { ...(f.etcdCa ? { ca: f.etcdCa } : {}), ...(f.etcdCert ? { cert: f.etcdCert } : {}), ...(f.etcdKey ? { key: f.etcdKey } : {}) } }
          : {}),
      });
    }
    if (config.bus) nats = await connectNats({ servers: config.bus, name: "kvroute-gateway", ...natsAuthFromConfig(f) });
  } catch (err) {
    if (registry instanceof EtcdRegistry) await registry.close("release");
    await opened?.close();
    throw err;
  }
  return {
    registry,
    nats,
    close: async () => {
      await nats?.drain().catch(() => {});
      await registry?.close();
    },
  };
}

export interface FleetReplica {
  load: ReplicaLoadSync | null;
  /** Resolves once the load subscription is in place. */
  ready(): Promise<void>;
  /** Per model read from the KV-event stream: its replica's counters. */
  kvStreams(): { model: string; stats: ReturnType<KvEventReplica["stats"]> }[];
  close(): Promise<void>;
}

/**
 * This replica's part in the fleet: load sync over NATS, and the KV-event stream when the
 * config reads events from the bus (one KvEventReplica per model, started as models appear).
 */
export function startFleetReplica(config: GatewayConfig, parts: { nats: NatsConnection | null; router: KvRouter; registry: Registry; log: (m: string) => void }): FleetReplica {
  const { nats, router, registry } = parts;
  if (!nats) return { load: null, ready: async () => {}, kvStreams: () => [], close: async () => {} };
  const load = new ReplicaLoadSync({ connection: nats, router, namespace: config.fleet.namespace, expiryMs: config.fleet.loadExpiryMs, finishAckTimeoutMs: config.fleet.finishAckMs, log: parts.log });
  const replicas = new Map<string, Promise<{ bus: NatsJetStreamBus; replica: KvEventReplica } | null>>();
  const ready = new Map<string, KvEventReplica>();
  let unwatch = () => {};
  if (config.fleet.kvEvents === "bus") {
    const follow = (model: string) => {
      if (replicas.has(model)) return;
      const started = (async () => {
        const bus = await NatsJetStreamBus.connect({ connection: nats, namespace: config.fleet.namespace, model });
        const replica = await KvEventReplica.start({ bus, indexer: router.eventSink(model), model });
        ready.set(model, replica);
        return { bus, replica };
      })().catch((err) => {
        parts.log(`fleet: KV-event stream of ${model} could not be followed: ${err instanceof Error ? err.message : String(err)}`);
        return null;
      });
      replicas.set(model, started);
    };
    for (const name of router.modelNames()) follow(name);
    for (const r of registry.list()) follow(r.model);
    unwatch = registry.watch((c) => c.type === "added" && follow(c.record.model));
  }
  return {
    load,
    ready: () => load.ready(),
    kvStreams: () => [...ready].map(([model, r]) => ({ model, stats: r.stats() })),
    close: async () => {
      unwatch();
      load.close();
      for (const p of replicas.values()) {
        const r = await p;
        await r?.replica.close();
        await r?.bus.close().catch(() => {});
      }
    },
  };
}

/** Fleet counters on /metrics, read at scrape time. */
export function registerFleetMetrics(metrics: MetricsRegistry, src: { registry: Registry; replica: FleetReplica }): void {
  const registers = [metrics];
  new Counter({
    name: "kvroute_fleet_kv_records_invalid_total",
    help: "Messages on the KV-event stream that were skipped, by model and reason (not_a_record: not a kvroute record; malformed: a batch that does not decode; failed: applying it threw)",
    labelNames: ["model", "reason"],
    registers,
    collect() {
      this.reset();
      for (const { model, stats } of src.replica.kvStreams()) {
        if (stats.invalid) this.inc({ model, reason: "not_a_record" }, stats.invalid);
        if (stats.malformed) this.inc({ model, reason: "malformed" }, stats.malformed);
        if (stats.errors) this.inc({ model, reason: "failed" }, stats.errors);
      }
    },
  });
  if (src.registry instanceof KubernetesRegistry) registerKubernetesRegistryMetrics(metrics, src.registry);
  const etcd = src.registry instanceof EtcdRegistry ? src.registry : null;
  if (etcd) {
    new Counter({
      name: "kvroute_registry_records_invalid_total",
      help: "Worker records read from etcd that failed validation and were skipped, by reason (bad_key, bad_json, bad_record)",
      labelNames: ["reason"],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(etcd.stats().invalidRecords)) this.inc({ reason }, n);
      },
    });
    new Gauge({
      name: "kvroute_registry_connected",
      help: "1 while etcd answers the registry's calls and watch",
      registers,
      collect() {
        this.set(etcd.stats().connected ? 1 : 0);
      },
    });
    new Counter({
      name: "kvroute_registry_reregistrations_total",
      help: "Records of this process put again under a new lease after etcd lost theirs",
      registers,
      collect() {
        this.reset();
        this.inc(etcd.stats().reRegistrations);
      },
    });
  }
  const load = src.replica.load;
  if (load) {
    const rows = (group: "received" | "invalid" | "expired") => Object.entries(load.stats()[group]);
    new Counter({
      name: "kvroute_fleet_load_messages_total",
      help: "Request-lifecycle messages received from other router replicas, by kind",
      labelNames: ["kind"],
      registers,
      collect() {
        this.reset();
        for (const [kind, n] of rows("received")) this.inc({ kind }, n);
      },
    });
    new Counter({
      name: "kvroute_fleet_load_messages_invalid_total",
      help: "Messages on the load subjects that were skipped, by reason (bad_json, bad_shape, overflow)",
      labelNames: ["reason"],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of rows("invalid")) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: "kvroute_fleet_load_expired_total",
      help: "Other replicas' requests forgotten without their finished message, by reason (snapshot, replica_gone, expired)",
      labelNames: ["reason"],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of rows("expired")) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: "kvroute_fleet_finish_unacked_total",
      help: "Responses ended without the NATS server's acknowledgement of their finished message (it took longer than fleet.finishAckMs, or the connection was lost)",
      registers,
      collect() {
        this.reset();
        this.inc(load.stats().finishUnacked);
      },
    });
    new Gauge({
      name: "kvroute_fleet_remote_requests",
      help: "Other replicas' requests in flight, booked in this replica's router",
      registers,
      collect() {
        this.set(load.stats().remoteInFlight);
      },
    });
    new Gauge({
      name: "kvroute_fleet_replicas",
      help: "Other router replicas heard from recently",
      registers,
      collect() {
        this.set(load.stats().replicas);
      },
    });
  }
}
