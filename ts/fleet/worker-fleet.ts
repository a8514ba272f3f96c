/**
 * The worker side of fleet mode (`kvroute worker --registry etcd://... --bus nats://...`): each
 * worker's record goes to etcd under its own lease once healthy (and leaves on drain, stop or
 * crash), and, with a bus, the worker's KV events are relayed from its ZMQ publisher onto the
 * JetStream stream (one KvEventRelay per model), where every router replica, late ones included,
 * reads them. Settings come from the gateway schema (`fleet.*`, `KVROUTE_FLEET_*`).
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { GatewayConfig } from "../config/schema.js";
import { KvEventRelay } from "../events/bus/kv-event-relay.js";
import { NatsJetStreamBus } from "../events/bus/nats-jetstream-bus.js";
import { WorkerFeeds } from "../gateway/worker-feeds.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import type { WorkerRecord, WorkerRegistryHook } from "../workers/config.js";
import { openFleet } from "./fleet-mode.js";

export interface WorkerFleet {
  /** Give it to the workers' supervision (`registry`). */
  hook: WorkerRegistryHook;
  close(): Promise<void>;
}

export async function openWorkerFleet(config: GatewayConfig, log: (m: string) => void): Promise<WorkerFleet> {
  const fleet = await openFleet(config, { registryGiven: false, follow: false, log });
  const local = new MemoryRegistry();
  const nats: NatsConnection | null = fleet.nats;
  const relays = new Map<string, { bus: Promise<NatsJetStreamBus>; relay: Promise<KvEventRelay> }>();
  let feeds: WorkerFeeds | null = null;
  if (nats) {
    const relayFor = (model: string) => {
      let r = relays.get(model);
      if (!r) {
        const bus = NatsJetStreamBus.connect({ connection: nats, namespace: config.fleet.namespace, model });
        r = { bus, relay: bus.then((b) => new KvEventRelay({ bus: b, model })) };
        relays.set(model, r);
      }
      return r.relay;
    };
    // The relay is made asynchronously; batches arriving before it is ready wait in this queue.
    feeds = new WorkerFeeds({
      registry: local,
      scrapeIntervalMs: 0,
      log,
      sinkFor: (record: WorkerRecord) => {
        const relay = relayFor(record.model);
        return {
          applyBatch: (workerId, dpRank, seq, payload) => void relay.then((r) => r.applyBatch(workerId, dpRank, seq, payload)),
          clear: (workerId, dpRank) => void relay.then((r) => r.clear(workerId, dpRank)),
        };
      },
    }).start();
  }
  const hook: WorkerRegistryHook = {
    register: async (record) => {
      await fleet.registry?.register(record);
      await local.register(record);
    },
    deregister: async (id) => {
      await local.deregister(id);
      await fleet.registry?.deregister(id);
    },
  };
  return {
    hook,
    close: async () => {
      await feeds?.close();
      for (const r of relays.values()) {
        const relay = await r.relay.catch(() => null);
        await relay?.flush().catch(() => {});
        relay?.close();
        await (await r.bus.catch(() => null))?.close().catch(() => {});
      }
      await fleet.close();
    },
  };
}
