/**
 * Real mocker processes (`node dist/cli.mjs mock`, started through VllmWorker exactly as vLLM
 * workers are) in front of which the gateway tests put a real gateway. Nothing is mocked at the
 * HTTP level.
 */
import { connect, type Socket } from "node:net";
import { Agent, request } from "undici";
import { findFreePortRange, mockerCommand, VllmWorker, type VllmWorkerConfig, type WorkerRegistryHook, type WorkerRole } from "../../ts/workers/index.js";
import { startGateway, type RunningGateway } from "../../ts/gateway/index.js";
import { Tokenizer } from "../../ts/tokenizer/index.js";
import type { GatewayConfig } from "../../ts/config/index.js";

export const MODEL = "toy";

export interface MockWorkerOptions {
  id: string;
  role?: WorkerRole;
  /** Simulated time / wall time (default 20). */
  speedup?: number | "inf";
  numGpuBlocks?: number;
  kvEvents?: boolean;
  dataParallelSize?: number;
  blockSize?: number;
  extraArgs?: string[];
  /** A tokenizer folder: the mocker tokenizes with it (`--tokenizer`), and so does the fleet's gateway. */
  tokenizer?: string;
  /** Extra environment of the worker process. */
  env?: Record<string, string>;
}

/**
 * Starts one mocker worker; registers it in `registry` once healthy. Free ports are found by
 * probing, which races with other tests: a start that fails on a taken port is retried on others.
 */
export async function startMockWorker(options: MockWorkerOptions, registry: WorkerRegistryHook | null): Promise<VllmWorker> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startMockWorkerOnce(options, registry);
    } catch (err) {
      const reason = (err as { reason?: string }).reason;
      if (attempt >= 3 || (reason !== "spawn" && reason !== "exited")) throw err;
    }
  }
}

async function startMockWorkerOnce(options: MockWorkerOptions, registry: WorkerRegistryHook | null): Promise<VllmWorker> {
  const dp = options.dataParallelSize ?? 1;
  const base = await findFreePortRange(1 + 2 * dp);
  const config: VllmWorkerConfig = {
    id: options.id,
    model: MODEL,
    port: base,
    role: options.role ?? "aggregated",
    command: mockerCommand(),
    pythonHashSeed: "0",
    numGpuBlocksOverride: options.numGpuBlocks ?? 4000,
    blockSize: options.blockSize ?? 16,
    extraArgs: ["--speedup", String(options.speedup ?? 20), ...(options.tokenizer ? ["--tokenizer", options.tokenizer] : []), ...(options.extraArgs ?? [])],
  };
  if (dp > 1) config.dataParallel = { size: dp };
  if (options.env) config.env = options.env;
  if (options.kvEvents !== false) config.kvEvents = { endpoint: `tcp://*:${base + 1}`, replayEndpoint: `tcp://*:${base + 1 + dp}` };
  if (config.role !== "aggregated") config.nixlSideChannelPort = (await findFreePortRange(1)) as number;
  const worker = new VllmWorker(config, { logger: null, registry, maxRestarts: 0, livenessIntervalMs: 0, startTimeoutMs: 30_000, stopGraceMs: 2000 });
  await worker.start();
  return worker;
}

export interface Fleet {
  gateway: RunningGateway;
  workers: VllmWorker[];
  stop(): Promise<void>;
}

/** A gateway (in this process) and `n` mocker workers registering in its registry. */
export async function startFleet(n: number, gatewayConfig: Partial<GatewayConfig> = {}, worker: Partial<MockWorkerOptions> = {}): Promise<Fleet> {
  const tokenizers: Record<string, Tokenizer> = worker.tokenizer ? { [MODEL]: Tokenizer.fromDir(worker.tokenizer) } : {};
  const gateway = await startGateway({ host: "127.0.0.1", port: 0, metricsScrapeIntervalMs: 200, ...gatewayConfig }, { log: null, tokenizers });
  const started = await Promise.allSettled(Array.from({ length: n }, (_, i) => startMockWorker({ id: `w${i}`, ...worker }, gateway.registry)));
  const workers = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) {
    // Leave nothing running behind a failed start.
    await gateway.close();
    await Promise.all(workers.map((w) => w.stop({ graceMs: 1000 })));
    throw failed.reason;
  }
  return {
    gateway,
    workers,
    stop: async () => {
      await gateway.close();
      await Promise.all(workers.map((w) => w.stop({ graceMs: 1000 })));
    },
  };
}

export const agent = new Agent({ connections: 64, keepAliveTimeout: 10_000 });

export interface JsonResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: any;
  text: string;
}

export async function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<JsonResponse> {
  const res = await request(url + path, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
    dispatcher: agent,
  });
  const text = await res.body.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // SSE or empty
  }
  return { status: res.statusCode, headers: res.headers, json, text };
}

export async function get(url: string, path: string): Promise<JsonResponse> {
  const res = await request(url + path, { dispatcher: agent });
  const text = await res.body.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.statusCode, headers: res.headers, json, text };
}

/** Parses an SSE body into its `data:` payloads (JSON objects, or "[DONE]"). */
export function sseData(text: string): any[] {
  return text
    .split("\n\n")
    .filter((e) => e.startsWith("data: "))
    .map((e) => e.slice(6))
    .map((d) => (d === "[DONE]" ? d : JSON.parse(d)));
}

/** A sample value of a Prometheus text metric (sum over series matching the labels). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== "{" && rest[0] !== " ") continue;
    if (!Object.entries(labels).every(([k, v]) => rest.includes(`${k}="${v}"`))) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}

/** A raw TCP connection to the gateway, for clients that misbehave. */
export function rawSocket(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const s = connect({ host: hostname, port: Number(port) }, () => resolve(s));
    s.once("error", reject);
  });
}

/** Running + waiting request ids on a worker (the mocker's /debug/requests). */
export async function workerRequests(url: string): Promise<string[]> {
  const r = await get(url, "/debug/requests");
  const out: string[] = [];
  for (const rank of r.json.ranks as { running: string[]; waiting: string[]; transferring: string[] }[]) out.push(...rank.running, ...rank.waiting, ...rank.transferring);
  return out;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
