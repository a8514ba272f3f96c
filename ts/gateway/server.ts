/**
 * startGateway(): the whole gateway in one call, as `kvroute serve` runs it: a MemoryRegistry (or
 * the registry given) holding the configured workers, a KvRouter over it, WorkerFeeds attaching a
 * VllmEventSource per worker (all its DP ranks) to the router's event sink and scraping each
 * worker's /metrics into the router, and a node:http server with createGateway()'s handler.
 *
 * Slow clients are bounded by node:http itself: `headersTimeout` and `requestTimeout` are
 * `clientTimeoutMs`, so a client trickling its headers or body is answered 408 and disconnected.
 * Requests node:http refuses itself (408, 431, malformed) are answered in the OpenAI error shape
 * (client-errors.ts).
 */
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo, Socket } from "node:net";
import { validateGatewayConfig, type GatewayConfig, type GatewayConfigInput, type ModelEntry, type WorkerEntry } from "../config/schema.js";
import { endpointForRank } from "../events/vllm-event-publisher.js";
import { MemoryRegistry } from "../registry/memory-registry.js";
import { KvRouter, type KvRouterOptions, type ModelRoutingConfig, type RouterEventSink } from "../router/kv-router.js";
import type { Registry } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";
import { answerClientError } from "./client-errors.js";
import type { PromptTokenizer } from "./context.js";
import { createGateway, type Gateway } from "./gateway.js";
import { registerKvEventMetrics } from "./kv-event-metrics.js";
import { WorkerFeeds } from "./worker-feeds.js";
import { markHandedOff } from "./front-handoff.js";
import { KvrouteError } from "../errors.js";
import { native } from "../native.js";
import type { NativeFront } from "../../index.js";
import { openFleet, registerFleetMetrics, startFleetReplica, type FleetReplica } from "../fleet/fleet-mode.js";

export interface StartGatewayOptions {
  /** Default: a new MemoryRegistry. The configured workers are registered in it. */
  registry?: Registry;
  /** Default: a KvRouter over the registry with `config.routerMode` and `config.router`. */
  router?: KvRouter;
  /** Per-model tokenizers given in code (they win over `models[].tokenizer` folders). */
  tokenizers?: Readonly<Record<string, PromptTokenizer>>;
  /** A tokenizer for every model without one of its own. */
  tokenizer?: PromptTokenizer;
  /** Default: stderr; null: nowhere. */
  log?: ((message: string) => void) | null;
  /** Models served for good besides the configured ones (503, not 404, while they have no worker). */
  servedModels?: readonly string[];
}

export interface RunningGateway {
  /** `http://host:port` (127.0.0.1 for a wildcard host). */
  readonly url: string;
  readonly port: number;
  readonly server: http.Server;
  readonly gateway: Gateway;
  readonly router: KvRouter;
  readonly registry: Registry;
  readonly feeds: WorkerFeeds;
  readonly config: GatewayConfig;
  /** Stops listening, closes connections, event sources and the router. */
  close(): Promise<void>;
}

/** A configured worker as the registry record the router and feeds use. */
export function workerRecordFromConfig(model: ModelEntry, w: WorkerEntry): WorkerRecord {
  const perRank = (value: string | string[]): string[] => (Array.isArray(value) ? value : w.dpRanks.map((r) => endpointForRank(value, r)));
  return {
    id: w.id,
    model: model.name,
    role: w.role,
    url: w.url,
    kvEvents: w.kvEvents
      ? { endpoints: perRank(w.kvEvents), replayEndpoints: w.kvEventsReplay ? perRank(w.kvEventsReplay) : null, topic: w.kvEventsTopic }
      : null,
    blockSize: model.blockSize,
    hashAlgorithm: model.hashAlgorithm,
    hashSeed: model.hashSeed,
    numGpuBlocks: w.numGpuBlocks,
    dataParallelSize: w.dataParallelSize,
    dpRanks: w.dpRanks,
    tokenizer: model.tokenizer,
  };
}

/** KvRouter options from the gateway config (mode, `router` settings, per-model hashing). */
export function routerOptionsFromConfig(config: GatewayConfig, registry: Registry, log?: (m: string) => void): KvRouterOptions {
  const models: Record<string, ModelRoutingConfig> = {};
  for (const m of config.models) {
    models[m.name] = { blockSize: m.blockSize, keying: m.keying, hashAlgorithm: m.hashAlgorithm, hashSeed: m.hashSeed };
  }
  return {
    ...(config.router as Partial<KvRouterOptions>),
    registry,
    mode: config.routerMode,
    models: { ...models, ...((config.router as { models?: Record<string, ModelRoutingConfig> }).models ?? {}) },
    ...(log ? { log } : {}),
  };
}

export async function startGateway(input: GatewayConfigInput | GatewayConfig, options: StartGatewayOptions = {}): Promise<RunningGateway> {
  const config = validateGatewayConfig(input);
  const log = options.log === undefined ? (m: string) => process.stderr.write(`kvroute: ${m}\n`) : (options.log ?? (() => {}));
  // Fleet mode: etcd and NATS are reached (or refuse, failing the start) before anything else runs.
  const fleet = await openFleet(config, { registryGiven: options.registry !== undefined, log });
  const registry = options.registry ?? fleet.registry ?? new MemoryRegistry();
  try {
    for (const model of config.models) {
      for (const w of model.workers) await registry.register(workerRecordFromConfig(model, w));
    }
  } catch (err) {
    await fleet.close();
    throw err;
  }
  const ownRouter = !options.router;
  const router = options.router ?? new KvRouter(routerOptionsFromConfig(config, registry, log));
  const replica: FleetReplica = startFleetReplica(config, { nats: fleet.nats, router, registry, log });
  await replica.ready();
  const kvFromBus = fleet.nats !== null && config.fleet.kvEvents === "bus";
  const sinks = new Map<string, RouterEventSink>();
  const feeds = new WorkerFeeds({
    registry,
    sinkFor: (record) => {
      if (kvFromBus) return null;
      let sink = sinks.get(record.model);
      if (!sink) sinks.set(record.model, (sink = router.eventSink(record.model)));
      return sink;
    },
    eventStatsFor: (model) => router.eventStats(model),
    skippedReasonsFor: (model) => router.skippedReasons(model),
    onMetrics: (record, text) => void router.updateMetricsFromPrometheus(record.id, text),
    scrapeIntervalMs: config.metricsScrapeIntervalMs,
    log,
  }).start();
  let gateway: Gateway;
  try {
    gateway = createGateway({
      router,
      registry,
      config,
      ...(options.tokenizer ? { tokenizer: options.tokenizer } : {}),
      ...(options.tokenizers ? { tokenizers: options.tokenizers } : {}),
      ...(options.servedModels ? { servedModels: options.servedModels } : {}),
      log,
    });
  } catch (err) {
    // A configured tokenizer folder that does not load: nothing is left running.
    await feeds.close();
    await replica.close();
    if (ownRouter) router.close();
    await fleet.close();
    throw err;
  }
  // Read at scrape time from the feeds and the router (a caller's own metrics registry included).
  registerKvEventMetrics(gateway.metrics.registry, { workers: () => feeds.kvEventStats(), eventStats: (model) => router.eventStats(model) });
  registerFleetMetrics(gateway.metrics.registry, { registry, replica });
  const server = http.createServer(
    {
      requestTimeout: config.clientTimeoutMs,
      headersTimeout: Math.min(config.clientTimeoutMs, 60_000),
      // node:http checks those timeouts on this period; keep it well under clientTimeoutMs.
      connectionsCheckingInterval: Math.min(1000, Math.max(100, Math.floor(config.clientTimeoutMs / 4))),
      keepAliveTimeout: 65_000,
    },
    config.front === "native" ? (req, res) => (markHandedOff(req), gateway(req, res)) : gateway,
  );
  server.on("clientError", (err: Error, socket) => answerClientError(err, socket as Socket, config.clientTimeoutMs));
  let port: number;
  let socketDir: string | null = null;
  try {
    if (config.front === "native") {
      // node:http listens on a private socket; the native front owns the public port.
      socketDir = mkdtempSync(join(tmpdir(), "kvroute-front-"));
      const socketPath = join(socketDir, "gateway.sock");
      await listen(server, { path: socketPath });
      const front = startNativeFront(config, socketPath);
      gateway.attachFront(front);
      port = front.port;
    } else {
      await listen(server, { port: config.port, host: config.host });
      port = (server.address() as AddressInfo).port;
    }
  } catch (err) {
    // The port is taken: nothing stays running (and fleet mode's leases are revoked).
    server.close();
    if (socketDir) rmSync(socketDir, { recursive: true, force: true });
    await gateway.close();
    await feeds.close();
    await replica.close();
    if (ownRouter) router.close();
    await fleet.close();
    throw err;
  }
  const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host.includes(":") ? `[${config.host}]` : config.host;
  let closing: Promise<void> | null = null;
  return {
    url: `http://${host}:${port}`,
    port,
    server,
    gateway,
    router,
    registry,
    feeds,
    config,
    close: () =>
      (closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeAllConnections();
        await closed;
        await gateway.close();
        if (socketDir) rmSync(socketDir, { recursive: true, force: true });
        await feeds.close();
        await replica.close();
        if (ownRouter) router.close();
        await fleet.close();
      })()),
  };
}

function listen(server: http.Server, at: { port: number; host: string } | { path: string }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const done = () => {
      server.off("error", reject);
      resolve();
    };
    if ("path" in at) server.listen(at.path, done);
    else server.listen(at.port, at.host, done);
  });
}

/** The native front on the configured address, handing what it does not answer to `socketPath`. */
function startNativeFront(config: GatewayConfig, socketPath: string): NativeFront {
  try {
    return new native.NativeFront({
      host: config.host,
      port: config.port,
      jsSocket: socketPath,
      // With API keys every request is checked in JS.
      fastLane: config.apiKeys.length === 0,
      maxBodyBytes: config.maxBodyBytes,
      clientTimeoutMs: config.clientTimeoutMs,
      upstreamTimeoutMs: config.upstreamTimeoutMs,
      upstreamIdleTimeoutMs: config.upstreamIdleTimeoutMs,
      migrationLimit: config.migrationLimit,
      connectionsPerWorker: config.connectionsPerWorker,
      failureCooldownMs: config.failureCooldownMs,
      maxActivePerWorker: config.queue.maxActivePerWorker,
      tokenizationCheckEvery: config.tokenizationCheckEvery,
      clockMs: performance.now(),
    });
  } catch (err) {
    throw new KvrouteError("KVR_LISTEN", `the native front could not listen on ${config.host}:${config.port}: ${(err as Error).message}`, { cause: err });
  }
}
