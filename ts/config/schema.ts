/**
 * The gateway's configuration: one schema, validated once at the edge (file, environment, flags),
 * trusted everywhere after. The schema is data: the validator, the environment variable names
 * (`KVROUTE_<PATH>`), and the reference table in docs/gateway.md all come from it, so they cannot
 * drift apart.
 *
 * Invariant of a validated `GatewayConfig`: every field is present with a value in range; worker
 * ids are unique across all models; model names are unique; every worker of a model serves it
 * under the model's block size, hash algorithm and seed.
 */
import { ENGINE_HASH_ALGORITHMS, type EngineHashAlgorithm } from "../core/block-hasher.js";
import { InvalidConfigError } from "../errors.js";
import type { RouterMode } from "../router/types.js";
import type { WorkerRole } from "../workers/config.js";
import { DISAGG_POLICIES, type DisaggPolicyName } from "../gateway/disagg-policy.js";

export const ROUTER_MODES: readonly RouterMode[] = ["kv", "round-robin", "random", "least-loaded"];
export const WORKER_ROLES: readonly WorkerRole[] = ["aggregated", "prefill", "decode"];
/** Who answers HTTP (GatewayConfig.front). */
export type GatewayFront = "node" | "native";
export const GATEWAY_FRONTS: readonly GatewayFront[] = ["node", "native"];

export interface WorkerEntry {
  /** Unique over the whole config; names the worker in headers, metrics and events. */
  id: string;
  /** HTTP base URL of the worker's OpenAI server, e.g. `http://10.0.0.5:8000`. */
  url: string;
  /**
   * vLLM's KV-event PUB endpoint as the gateway connects to it (`tcp://10.0.0.5:5557`); rank r is
   * at port + r (vLLM's offset). Or one endpoint per DP rank. Null: no KV view of this worker.
   */
  kvEvents: string | string[] | null;
  /** vLLM's replay (ROUTER) endpoint, same forms; null: gaps mark the view stale instead. */
  kvEventsReplay: string | string[] | null;
  /** ZMQ topic prefix (vLLM's default ""). */
  kvEventsTopic: string;
  /** The DP ranks this process hosts (`[0..n-1]` for internal DP, `[r]` for an external rank). */
  dpRanks: number[];
  /** The DP group size (`--data-parallel-size`). */
  dataParallelSize: number;
  role: WorkerRole;
  /** KV blocks on the GPU, when known (improves load estimates). */
  numGpuBlocks: number | null;
}

export interface ModelEntry {
  /** The served model name clients send as `model`. */
  name: string;
  blockSize: number;
  hashAlgorithm: EngineHashAlgorithm;
  /** The workers' PYTHONHASHSEED, or null when unset. */
  hashSeed: string | null;
  /** Block keys: `tokens` (router keys from token ids, the default) or `engine` (vLLM's own hashes). */
  keying: "tokens" | "engine";
  /**
   * The model's tokenizer folder (Hugging Face: `tokenizer.json`, `tokenizer_config.json`...):
   * text and chat requests are keyed by the token ids vLLM computes with it. Null: only token-id
   * prompts are keyed; text and chat are routed by load (`kvroute_requests_untokenized_total`).
   */
  tokenizer: string | null;
  workers: WorkerEntry[];
}

export interface QueueConfig {
  /** Requests held while every worker is at `maxActivePerWorker`; beyond that: 503. */
  maxSize: number;
  /** How long a request may wait for a slot; then 503. */
  timeoutMs: number;
  /** Requests in flight per (worker, DP rank) before it counts as busy (vLLM's max_num_seqs is 256-1024). */
  maxActivePerWorker: number;
}

export interface DisaggConfig {
  /**
   * Conditional disaggregation: prefill on the decode worker itself when the prompt tokens it
   * does not have cached are at most this many (0: always prefill remotely).
   */
  localPrefillMaxTokens: number;
  /** Conditional disaggregation policy (ts/gateway/disagg-policy.ts). */
  policy: DisaggPolicyName;
  /** `isl`: remote prefill only for at least this many uncached prompt tokens (Dynamo: 2,048). */
  islMinTokens: number;
  /** `isl`: ...and at least this percentage of the prompt uncached (Dynamo: 70). */
  islMinPercent: number;
  /** `prefill-load`: bypass the prefill worker when it has this many requests in flight. */
  prefillBusyActive: number;
  /** Decode-busy veto: no local prefill on a decode worker with this many in flight (0: off). */
  decodeBusyActive: number;
}

export interface GatewayConfig {
  host: string;
  port: number;
  routerMode: RouterMode;
  /**
   * Who answers HTTP: "node" (node:http, every request through the JS gateway) or "native" (the
   * native front, crates/kvroute-front: non-streamed completions and chat routed and forwarded on
   * a Rust thread, everything else handed to the JS gateway; docs/gateway.md).
   */
  front: GatewayFront;
  /** Re-issues of a request whose worker failed mid-response (Dynamo's --migration-limit); 0: off. */
  migrationLimit: number;
  /** Requests whose body is larger are refused with 413 before the body is buffered. */
  maxBodyBytes: number;
  /** Largest `prompt_embeds` tensor (decoded bytes); larger ones get 400. */
  promptEmbedsMaxBytes: number;
  /** Time for a client to send the whole request (headers and body): slow clients get 408. */
  clientTimeoutMs: number;
  /** Time for a worker to answer with headers (504 when it does not; covers queueing and prefill). */
  upstreamTimeoutMs: number;
  /** Longest silence inside a worker's response body before the stream counts as broken. */
  upstreamIdleTimeoutMs: number;
  /** Keep-alive connections per worker (undici Pool). */
  connectionsPerWorker: number;
  /** Attempts to reach another worker when one refuses the connection (before any response). */
  connectRetries: number;
  /** A worker that failed a request is avoided this long (unless no other is left); 0: never. */
  failureCooldownMs: number;
  /** The tokenization parity check runs on one tokenized request in this many (0: never). */
  tokenizationCheckEvery: number;
  /** A model whose workers all left is still served (503, not 404) this long. */
  modelGraceMs: number;
  /** Keys clients send as `Authorization: Bearer <key>`; empty: no key needed. */
  apiKeys: string[];
  /** The key of /metrics and /v1/kvroute/route; empty: open without API keys, off with them. */
  adminApiKey: string;
  queue: QueueConfig;
  /** How often each worker's /metrics is scraped into the router (0: never). */
  metricsScrapeIntervalMs: number;
  disagg: DisaggConfig;
  /** Passed to the KvRouter constructor (overlapWeight, temperature, busy thresholds, ...). */
  router: Record<string, unknown>;
  /** Fleet mode's etcd registry, `etcd://host:port` (`etcds://` for TLS), or `k8s://<namespace>/<services>`; "": the in-memory registry. */
  registry: string;
  /** Fleet mode's NATS server for router replicas' shared load, `nats://host:port` (`tls://` for TLS); "": none. */
  bus: string;
  fleet: FleetConfig;
  models: ModelEntry[];
}

/** Fleet mode (docs/fleet.md): names, leases and credentials of etcd and NATS. */
export interface FleetConfig {
  namespace: string;
  leaseTtlSeconds: number;
  /** In-flight requests another replica announced are forgotten after this long without news. */
  loadExpiryMs: number;
  /** How long a response's end may wait for NATS to acknowledge its `finished` (0: no wait). */
  finishAckMs: number;
  /** Where each replica reads KV events: each worker's ZMQ publisher, or the JetStream stream (`kvroute worker --bus` relays). */
  kvEvents: "zmq" | "bus";
  etcdUsername: string;
  etcdPassword: string;
  etcdCa: string;
  etcdCert: string;
  etcdKey: string;
  natsToken: string;
  natsUser: string;
  natsPassword: string;
  natsCreds: string;
  natsCa: string;
  natsCert: string;
  natsKey: string;
}

/** A worker as written in a config (only `id` and `url` are required). */
export interface WorkerEntryInput {
  id: string;
  url: string;
  kvEvents?: string | string[] | null;
  kvEventsReplay?: string | string[] | null;
  kvEventsTopic?: string;
  /** A rank count (ranks 0..n-1) or the ranks themselves. */
  dpRanks?: number | number[];
  dataParallelSize?: number;
  role?: WorkerRole;
  numGpuBlocks?: number | null;
}

/** A model as written in a config (only `name` is required). */
export interface ModelEntryInput {
  name: string;
  blockSize?: number;
  hashAlgorithm?: EngineHashAlgorithm;
  hashSeed?: string | number | null;
  keying?: "tokens" | "engine";
  tokenizer?: string | null;
  workers?: WorkerEntryInput[];
}

/** A config as written (file, code): every field optional, validated into a GatewayConfig. */
export interface GatewayConfigInput {
  host?: string;
  port?: number;
  routerMode?: RouterMode;
  front?: GatewayFront;
  migrationLimit?: number;
  maxBodyBytes?: number;
  promptEmbedsMaxBytes?: number;
  clientTimeoutMs?: number;
  upstreamTimeoutMs?: number;
  upstreamIdleTimeoutMs?: number;
  connectionsPerWorker?: number;
  connectRetries?: number;
  failureCooldownMs?: number;
  tokenizationCheckEvery?: number;
  modelGraceMs?: number;
  /** One key or several. */
  apiKeys?: string | string[];
  adminApiKey?: string;
  queue?: Partial<QueueConfig>;
  metricsScrapeIntervalMs?: number;
  disagg?: Partial<DisaggConfig>;
  router?: Record<string, unknown>;
  registry?: string;
  bus?: string;
  fleet?: Partial<FleetConfig>;
  models?: ModelEntryInput[];
}

/** What the schema knows about one field. */
type Field =
  | { kind: "int"; min: number; max?: number; default?: number; env?: boolean; doc: string }
  | { kind: "string"; enum?: readonly string[]; default?: string; env?: boolean; nonEmpty?: boolean; doc: string }
  /** A list of non-empty strings (one string reads as a list of one); its variable holds one. */
  | { kind: "strings"; default: readonly string[]; envVar?: string; env?: undefined; doc: string }
  | { kind: "object"; fields: Record<string, Field>; doc: string; default?: undefined }
  | { kind: "opaque"; doc: string; default?: Record<string, unknown> }
  | { kind: "models"; doc: string; default?: undefined };

const DEFAULT_MAX_BODY = 8 * 1024 * 1024;

/** The schema of the top level and its nested objects, with defaults and docs. */
export const GATEWAY_SCHEMA: Record<string, Field> = {
  host: { kind: "string", default: "0.0.0.0", env: true, nonEmpty: true, doc: "Address the gateway listens on." },
  port: { kind: "int", min: 0, max: 65535, default: 8000, env: true, doc: "Port the gateway listens on (0: any free port)." },
  routerMode: { kind: "string", enum: ROUTER_MODES, default: "kv", env: true, doc: "kv, round-robin, random or least-loaded." },
  front: {
    kind: "string",
    enum: GATEWAY_FRONTS,
    default: "node",
    env: true,
    doc: "node: node:http answers every request; native: a Rust thread answers non-streamed completions and chat and hands the rest to node:http.",
  },
  migrationLimit: { kind: "int", min: 0, max: 100, default: 0, env: true, doc: "Re-issues of a request whose worker failed mid-response; 0 disables migration." },
  maxBodyBytes: { kind: "int", min: 1024, default: DEFAULT_MAX_BODY, env: true, doc: "Largest request body; larger ones get 413 before they are buffered." },
  promptEmbedsMaxBytes: {
    kind: "int",
    min: 1,
    default: 4 * 1024 * 1024,
    env: true,
    doc: "Largest prompt_embeds tensor a completion may carry (decoded bytes); larger ones get 400 before any worker sees them.",
  },
  clientTimeoutMs: { kind: "int", min: 100, default: 30_000, env: true, doc: "Time a client has to send its whole request (slow clients get 408)." },
  upstreamTimeoutMs: { kind: "int", min: 100, default: 300_000, env: true, doc: "Time a worker has to answer with headers; then 504." },
  upstreamIdleTimeoutMs: { kind: "int", min: 100, default: 120_000, env: true, doc: "Longest silence inside a worker's response before it counts as broken." },
  connectionsPerWorker: { kind: "int", min: 1, default: 128, env: true, doc: "Keep-alive connections per worker." },
  connectRetries: { kind: "int", min: 0, max: 100, default: 2, env: true, doc: "Other workers tried when one refuses the connection." },
  failureCooldownMs: { kind: "int", min: 0, default: 2000, env: true, doc: "A worker that failed a request is avoided this long, unless no other is left; 0: never." },
  tokenizationCheckEvery: {
    kind: "int",
    min: 0,
    default: 64,
    env: true,
    doc: "Compare the worker's prompt_token_ids with the router's own tokens on each worker's first 8 tokenized requests, then on one in N (1: every one; 0: never).",
  },
  modelGraceMs: {
    kind: "int",
    min: 0,
    default: 600_000,
    env: true,
    doc: "A model whose workers all left the registry still gets 503 (retry later), not 404, this long; configured models and up's always do.",
  },
  apiKeys: {
    kind: "strings",
    default: [],
    envVar: "KVROUTE_API_KEY",
    doc: "Keys clients must send as 'Authorization: Bearer <key>' (the file may list several; the variable and --api-key give them); none: no key needed.",
  },
  adminApiKey: {
    kind: "string",
    default: "",
    env: true,
    doc: "Key of /metrics and /v1/kvroute/route; unset: they are open when apiKeys is empty, off (403) when it is not.",
  },
  queue: {
    kind: "object",
    doc: "Admission when every worker is busy (DESIGN.md, Request life).",
    fields: {
      maxSize: { kind: "int", min: 0, default: 1024, env: true, doc: "Requests held while every worker is busy; beyond that: 503." },
      timeoutMs: { kind: "int", min: 1, default: 30_000, env: true, doc: "Longest wait in the queue; then 503." },
      maxActivePerWorker: { kind: "int", min: 1, default: 256, env: true, doc: "In-flight requests per (worker, DP rank) before it counts as busy." },
    },
  },
  metricsScrapeIntervalMs: { kind: "int", min: 0, default: 1000, env: true, doc: "How often workers' /metrics are scraped into the router; 0: never." },
  disagg: {
    kind: "object",
    doc: "Prefill/decode disaggregation.",
    fields: {
      localPrefillMaxTokens: { kind: "int", min: 0, default: 512, env: true, doc: "threshold policy: prefill on the decode worker when at most this many prompt tokens are uncached there; 0: always remote." },
      policy: { kind: "string", enum: DISAGG_POLICIES, default: "threshold", env: true, doc: "Conditional disaggregation: threshold, always, isl, prefill-load or isl-or-load." },
      islMinTokens: { kind: "int", min: 0, default: 2048, env: true, doc: "isl policies: remote prefill only when at least this many prompt tokens are uncached on the decode worker." },
      islMinPercent: { kind: "int", min: 0, max: 100, default: 70, env: true, doc: "isl policies: ...and at least this percentage of the prompt." },
      prefillBusyActive: { kind: "int", min: 1, default: 8, env: true, doc: "prefill-load policies: prefill locally when the best prefill worker has this many requests in flight." },
      decodeBusyActive: { kind: "int", min: 0, default: 0, env: true, doc: "Decode-busy veto: never prefill locally on a decode worker with this many requests in flight; 0: off." },
    },
  },
  router: { kind: "opaque", default: {}, doc: "Options of the KvRouter (overlapWeight, temperature, busy thresholds...)." },
  registry: { kind: "string", default: "", env: true, doc: "Fleet mode: the etcd registry, etcd://host:port[,host:port] (etcds:// for TLS), or k8s://<namespace>/<service>[,<service>...] (ready pods of Kubernetes Services, docs/kubernetes.md); empty: in-memory." },
  bus: { kind: "string", default: "", env: true, doc: "Fleet mode: NATS for the replicas' shared load, nats://host:port (tls:// for TLS); empty: none." },
  fleet: {
    kind: "object",
    doc: "Fleet mode (docs/fleet.md).",
    fields: {
      namespace: { kind: "string", default: "default", env: true, nonEmpty: true, doc: "etcd key and NATS subject namespace of this fleet." },
      leaseTtlSeconds: { kind: "int", min: 1, max: 3600, default: 10, env: true, doc: "Lease TTL of the records this process registers." },
      loadExpiryMs: { kind: "int", min: 1000, default: 600_000, env: true, doc: "Another replica's in-flight request is forgotten after this long without news." },
      finishAckMs: { kind: "int", min: 0, max: 10_000, default: 100, env: true, doc: "A response's end waits up to this long for NATS to acknowledge its finished message, so the client's next turn finds it over on every replica; 0: no wait." },
      kvEvents: { kind: "string", enum: ["zmq", "bus"], default: "zmq", env: true, doc: "Where replicas read KV events: zmq (each worker's publisher) or bus (the JetStream stream that 'kvroute worker --bus' fills; late replicas replay it)." },
      etcdUsername: { kind: "string", default: "", env: true, doc: "etcd user (with etcdPassword)." },
      etcdPassword: { kind: "string", default: "", env: true, doc: "etcd password." },
      etcdCa: { kind: "string", default: "", env: true, doc: "CA certificate file of etcd's TLS." },
      etcdCert: { kind: "string", default: "", env: true, doc: "Client certificate file for etcd (--client-cert-auth)." },
      etcdKey: { kind: "string", default: "", env: true, doc: "Client key file for etcd." },
      natsToken: { kind: "string", default: "", env: true, doc: "NATS token." },
      natsUser: { kind: "string", default: "", env: true, doc: "NATS user (with natsPassword)." },
      natsPassword: { kind: "string", default: "", env: true, doc: "NATS password." },
      natsCreds: { kind: "string", default: "", env: true, doc: "NATS credentials file (JWT + nkey seed)." },
      natsCa: { kind: "string", default: "", env: true, doc: "CA certificate file of NATS's TLS." },
      natsCert: { kind: "string", default: "", env: true, doc: "Client certificate file for NATS (verify: true)." },
      natsKey: { kind: "string", default: "", env: true, doc: "Client key file for NATS." },
    },
  },
  models: { kind: "models", doc: "Served models and their workers." },
};

/** `queue.maxSize` -> `KVROUTE_QUEUE_MAX_SIZE`. */
export function envName(path: string): string {
  return "KVROUTE_" + path.replace(/\./g, "_").replace(/([a-z0-9])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Every scalar field that can come from the environment: path, env name, kind. */
export function envFields(): { path: string; env: string; field: Field }[] {
  const out: { path: string; env: string; field: Field }[] = [];
  const walk = (fields: Record<string, Field>, prefix: string) => {
    for (const [name, field] of Object.entries(fields)) {
      const path = prefix ? `${prefix}.${name}` : name;
      if (field.kind === "object") walk(field.fields, path);
      else if ((field.kind === "int" || field.kind === "string") && field.env) out.push({ path, env: envName(path), field });
      else if (field.kind === "strings" && field.envVar) out.push({ path, env: field.envVar, field });
    }
  };
  walk(GATEWAY_SCHEMA, "");
  return out;
}

/** Where a value came from, for error messages. */
export type ConfigSource = string;

function fail(source: ConfigSource, path: string, message: string): never {
  throw new InvalidConfigError(`${source}: '${path}' ${message}`);
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? value.slice(0, 57) + "..." : value);
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return String(value);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function closest(name: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const c of candidates) {
    const d = editDistance(name.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

function rejectUnknown(source: ConfigSource, path: string, obj: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key)) continue;
    const hint = closest(key, known);
    const where = path ? `${path}.${key}` : key;
    fail(source, where, `is not a known setting${hint ? ` (did you mean '${path ? `${path}.` : ""}${hint}'?)` : ` (known: ${known.join(", ")})`}`);
  }
}

function checkInt(source: ConfigSource, path: string, value: unknown, min: number, max?: number): number {
  if (typeof value !== "number" || !Number.isInteger(value)) fail(source, path, `must be an integer: got ${describe(value)}`);
  if (value < min || (max !== undefined && value > max)) {
    fail(source, path, `must be ${max === undefined ? `>= ${min}` : `in [${min}, ${max}]`}: got ${value}`);
  }
  return value;
}

function checkString(source: ConfigSource, path: string, value: unknown, options: { enum?: readonly string[]; nonEmpty?: boolean } = {}): string {
  if (typeof value !== "string") fail(source, path, `must be a string: got ${describe(value)}`);
  if (options.nonEmpty && value.length === 0) fail(source, path, "must not be empty");
  if (options.enum && !options.enum.includes(value)) fail(source, path, `must be one of ${options.enum.join(", ")}: got ${describe(value)}`);
  return value;
}

function checkStrings(source: ConfigSource, path: string, value: unknown): string[] {
  const list = typeof value === "string" ? [value] : value;
  if (!Array.isArray(list)) fail(source, path, `must be a string or an array of strings: got ${describe(value)}`);
  return list.map((v, i) => {
    // Never quote the value: these are secrets.
    if (typeof v !== "string") fail(source, `${path}[${i}]`, `must be a string: got ${v === null ? "null" : typeof v}`);
    if (v.length === 0) fail(source, `${path}[${i}]`, "must not be empty");
    return v;
  });
}

function validateFields(source: ConfigSource, prefix: string, fields: Record<string, Field>, input: Record<string, unknown>): Record<string, unknown> {
  rejectUnknown(source, prefix, input, Object.keys(fields));
  const out: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(fields)) {
    const path = prefix ? `${prefix}.${name}` : name;
    const value = input[name];
    switch (field.kind) {
      case "int":
        out[name] = value === undefined ? field.default : checkInt(source, path, value, field.min, field.max);
        break;
      case "string":
        out[name] = value === undefined ? field.default : checkString(source, path, value, field);
        break;
      case "strings":
        out[name] = checkStrings(source, path, value ?? field.default);
        break;
      case "object":
        if (value !== undefined && !isPlainObject(value)) fail(source, path, `must be an object: got ${describe(value)}`);
        out[name] = validateFields(source, path, field.fields, (value as Record<string, unknown> | undefined) ?? {});
        break;
      case "opaque":
        if (value !== undefined && !isPlainObject(value)) fail(source, path, `must be an object: got ${describe(value)}`);
        out[name] = { ...(field.default ?? {}), ...((value as Record<string, unknown> | undefined) ?? {}) };
        break;
      case "models":
        out[name] = validateModels(source, path, value ?? []);
        break;
    }
  }
  return out;
}

const MODEL_KEYS = ["name", "blockSize", "hashAlgorithm", "hashSeed", "keying", "tokenizer", "workers"];
const WORKER_KEYS = ["id", "url", "kvEvents", "kvEventsReplay", "kvEventsTopic", "dpRanks", "dataParallelSize", "role", "numGpuBlocks"];

function validateModels(source: ConfigSource, path: string, value: unknown): ModelEntry[] {
  if (!Array.isArray(value)) fail(source, path, `must be an array of models: got ${describe(value)}`);
  const names = new Set<string>();
  const workerIds = new Set<string>();
  return value.map((m, i): ModelEntry => {
    const mp = `${path}[${i}]`;
    if (!isPlainObject(m)) fail(source, mp, `must be an object: got ${describe(m)}`);
    rejectUnknown(source, mp, m, MODEL_KEYS);
    const name = checkString(source, `${mp}.name`, m["name"], { nonEmpty: true });
    if (names.has(name)) fail(source, `${mp}.name`, `repeats the model name ${JSON.stringify(name)}`);
    names.add(name);
    const blockSize = m["blockSize"] === undefined ? 16 : checkInt(source, `${mp}.blockSize`, m["blockSize"], 1, 65536);
    const hashAlgorithm = (m["hashAlgorithm"] === undefined
      ? "sha256"
      : checkString(source, `${mp}.hashAlgorithm`, m["hashAlgorithm"], { enum: ENGINE_HASH_ALGORITHMS })) as EngineHashAlgorithm;
    const seed = m["hashSeed"];
    let hashSeed: string | null = null;
    if (typeof seed === "number" && Number.isInteger(seed) && seed >= 0) hashSeed = String(seed);
    else if (typeof seed === "string") hashSeed = seed;
    else if (seed !== undefined && seed !== null) fail(source, `${mp}.hashSeed`, `must be a string or a non-negative integer (PYTHONHASHSEED): got ${describe(seed)}`);
    const keying = (m["keying"] === undefined ? "tokens" : checkString(source, `${mp}.keying`, m["keying"], { enum: ["tokens", "engine"] })) as "tokens" | "engine";
    const tokenizer = m["tokenizer"] === undefined || m["tokenizer"] === null ? null : checkString(source, `${mp}.tokenizer`, m["tokenizer"], { nonEmpty: true });
    const workersValue = m["workers"] ?? [];
    if (!Array.isArray(workersValue)) fail(source, `${mp}.workers`, `must be an array: got ${describe(workersValue)}`);
    const workers = workersValue.map((w, j) => validateWorker(source, `${mp}.workers[${j}]`, w, workerIds));
    return { name, blockSize, hashAlgorithm, hashSeed, keying, tokenizer, workers };
  });
}

function validateEndpoints(source: ConfigSource, path: string, value: unknown, ranks: number): string | string[] | null {
  if (value === undefined || value === null) return null;
  const check = (v: unknown, p: string) => {
    const s = checkString(source, p, v, { nonEmpty: true });
    if (!/^(tcp|ipc|inproc):\/\//.test(s)) fail(source, p, `must be a ZMQ endpoint such as "tcp://host:5557": got ${describe(s)}`);
    if (s.startsWith("tcp://") && s.includes("*")) fail(source, p, `must name the host to connect to, not a bind wildcard: got ${describe(s)}`);
    return s;
  };
  if (Array.isArray(value)) {
    if (value.length !== ranks) fail(source, path, `has ${value.length} endpoints for ${ranks} DP rank(s)`);
    return value.map((v, k) => check(v, `${path}[${k}]`));
  }
  return check(value, path);
}

function validateWorker(source: ConfigSource, path: string, w: unknown, ids: Set<string>): WorkerEntry {
  if (!isPlainObject(w)) fail(source, path, `must be an object: got ${describe(w)}`);
  rejectUnknown(source, path, w, WORKER_KEYS);
  const id = checkString(source, `${path}.id`, w["id"], { nonEmpty: true });
  if (!/^[A-Za-z0-9][A-Za-z0-9._:@-]*$/.test(id)) fail(source, `${path}.id`, `must be letters, digits, . _ : @ -: got ${describe(id)}`);
  if (ids.has(id)) fail(source, `${path}.id`, `repeats the worker id ${JSON.stringify(id)}`);
  ids.add(id);
  const url = checkString(source, `${path}.url`, w["url"], { nonEmpty: true });
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    fail(source, `${path}.url`, `must be an http(s) URL: got ${describe(url)}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") fail(source, `${path}.url`, `must be an http(s) URL: got ${describe(url)}`);
  const role = (w["role"] === undefined ? "aggregated" : checkString(source, `${path}.role`, w["role"], { enum: WORKER_ROLES })) as WorkerRole;
  let dpRanks: number[];
  const dp = w["dpRanks"];
  if (dp === undefined) dpRanks = [0];
  else if (typeof dp === "number") dpRanks = Array.from({ length: checkInt(source, `${path}.dpRanks`, dp, 1, 1024) }, (_, r) => r);
  else if (Array.isArray(dp) && dp.length > 0) {
    dpRanks = dp.map((r, k) => checkInt(source, `${path}.dpRanks[${k}]`, r, 0, 1023));
    if (new Set(dpRanks).size !== dpRanks.length) fail(source, `${path}.dpRanks`, "repeats a rank");
  } else fail(source, `${path}.dpRanks`, `must be a rank count or a non-empty array of ranks: got ${describe(dp)}`);
  const maxRank = Math.max(...dpRanks);
  const dataParallelSize = w["dataParallelSize"] === undefined ? maxRank + 1 : checkInt(source, `${path}.dataParallelSize`, w["dataParallelSize"], 1, 1024);
  if (maxRank >= dataParallelSize) fail(source, `${path}.dpRanks`, `has rank ${maxRank}, outside dataParallelSize ${dataParallelSize}`);
  const kvEvents = validateEndpoints(source, `${path}.kvEvents`, w["kvEvents"], dpRanks.length);
  const kvEventsReplay = validateEndpoints(source, `${path}.kvEventsReplay`, w["kvEventsReplay"], dpRanks.length);
  if (kvEventsReplay && !kvEvents) fail(source, `${path}.kvEventsReplay`, "needs 'kvEvents' too");
  const kvEventsTopic = w["kvEventsTopic"] === undefined ? "" : checkString(source, `${path}.kvEventsTopic`, w["kvEventsTopic"]);
  const numGpuBlocks = w["numGpuBlocks"] === undefined || w["numGpuBlocks"] === null ? null : checkInt(source, `${path}.numGpuBlocks`, w["numGpuBlocks"], 1);
  return { id, url: url.replace(/\/+$/, ""), kvEvents, kvEventsReplay, kvEventsTopic, dpRanks, dataParallelSize, role, numGpuBlocks };
}

/**
 * Validates a whole config object (already merged from file, env and flags) and fills defaults.
 * Throws InvalidConfigError naming the source and the field: `config.yaml: 'models[0].workers[1].url' must be...`.
 */
export function validateGatewayConfig(input: GatewayConfigInput | unknown, source: ConfigSource = "config"): GatewayConfig {
  if (!isPlainObject(input)) throw new InvalidConfigError(`${source}: must be an object: got ${describe(input)}`);
  return validateFields(source, "", GATEWAY_SCHEMA, input) as unknown as GatewayConfig;
}

/** Defaults only (no models): what a library caller starts from. */
export function defaultGatewayConfig(): GatewayConfig {
  return validateGatewayConfig({});
}

/** Scalar fields with their defaults and docs, for docs/gateway.md and `kvroute serve --help`. */
export function describeSchema(): { path: string; env: string; default: string; doc: string }[] {
  return envFields().map(({ path, env, field }) => ({
    path,
    env,
    default: field.default === undefined ? "" : Array.isArray(field.default) ? field.default.join(",") : String(field.default),
    doc: field.doc,
  }));
}
