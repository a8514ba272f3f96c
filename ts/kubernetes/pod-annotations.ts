/**
 * The pod annotations that describe a vLLM worker to kvroute, both ways: `workerAnnotations`
 * writes them from a worker's config (the manifests generator), `recordFromPod` reads a worker
 * record back from a ready endpoint and its pod (the Kubernetes registry). The address and the HTTP
 * port come from the EndpointSlice; everything else from these annotations.
 *
 * | annotation                         | record field                 | default            |
 * |------------------------------------|------------------------------|--------------------|
 * | kvroute.dev/model                  | model (served name)          | required           |
 * | kvroute.dev/role                   | role                         | aggregated         |
 * | kvroute.dev/block-size             | blockSize                    | 16                 |
 * | kvroute.dev/hash-algorithm         | hashAlgorithm                | sha256             |
 * | kvroute.dev/hash-seed              | hashSeed (PYTHONHASHSEED)    | null               |
 * | kvroute.dev/kv-events-port         | kvEvents.endpoints (+ rank)  | no KV events       |
 * | kvroute.dev/kv-replay-port         | kvEvents.replayEndpoints     | no replay          |
 * | kvroute.dev/kv-events-topic        | kvEvents.topic               | ""                 |
 * | kvroute.dev/data-parallel-size     | dataParallelSize             | 1                  |
 * | kvroute.dev/data-parallel-rank     | dpRanks = [rank] (external)  | all ranks          |
 * | kvroute.dev/num-gpu-blocks         | numGpuBlocks                 | null               |
 * | kvroute.dev/tokenizer              | tokenizer (gateway's path)   | null               |
 * | kvroute.dev/draining               | (the pod is left out)        | —                  |
 */
import { InvalidInputError } from "../errors.js";
import { endpointForRank } from "../events/vllm-event-publisher.js";
import { validateRecord } from "../registry/memory-registry.js";
import { formatHost } from "../workers/command-line.js";
import { VLLM_DEFAULT_BLOCK_SIZE, VLLM_DEFAULT_HASH_ALGORITHM, type WorkerRecord, type WorkerRole } from "../workers/config.js";
import type { EngineHashAlgorithm } from "../core/block-hasher.js";

export const ANNOTATION_PREFIX = "kvroute.dev/";
export const ANNOTATIONS = {
  model: "kvroute.dev/model",
  role: "kvroute.dev/role",
  blockSize: "kvroute.dev/block-size",
  hashAlgorithm: "kvroute.dev/hash-algorithm",
  hashSeed: "kvroute.dev/hash-seed",
  kvEventsPort: "kvroute.dev/kv-events-port",
  kvReplayPort: "kvroute.dev/kv-replay-port",
  kvEventsTopic: "kvroute.dev/kv-events-topic",
  dataParallelSize: "kvroute.dev/data-parallel-size",
  dataParallelRank: "kvroute.dev/data-parallel-rank",
  numGpuBlocks: "kvroute.dev/num-gpu-blocks",
  tokenizer: "kvroute.dev/tokenizer",
  /** Set by KubernetesConnector before a scale-down: registries drop the pod at once. */
  draining: "kvroute.dev/draining",
} as const;

/** What the ReplicaSet controller reads to pick the pods a scale-down deletes (lowest first). */
export const POD_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost";

export interface WorkerAnnotationInput {
  model: string;
  role: WorkerRole;
  blockSize?: number;
  hashAlgorithm?: EngineHashAlgorithm;
  hashSeed?: string | null;
  kvEventsPort?: number;
  kvReplayPort?: number;
  kvEventsTopic?: string;
  dataParallelSize?: number;
  dataParallelRank?: number;
  numGpuBlocks?: number;
  tokenizer?: string;
}

/** The annotations of a worker pod (values are strings, as the API requires). */
export function workerAnnotations(w: WorkerAnnotationInput): Record<string, string> {
  const a: Record<string, string> = { [ANNOTATIONS.model]: w.model, [ANNOTATIONS.role]: w.role };
  const set = (key: string, value: string | number | null | undefined) => {
    if (value !== undefined && value !== null) a[key] = String(value);
  };
  set(ANNOTATIONS.blockSize, w.blockSize);
  set(ANNOTATIONS.hashAlgorithm, w.hashAlgorithm);
  set(ANNOTATIONS.hashSeed, w.hashSeed);
  set(ANNOTATIONS.kvEventsPort, w.kvEventsPort);
  set(ANNOTATIONS.kvReplayPort, w.kvReplayPort);
  set(ANNOTATIONS.kvEventsTopic, w.kvEventsTopic);
  set(ANNOTATIONS.dataParallelSize, w.dataParallelSize);
  set(ANNOTATIONS.dataParallelRank, w.dataParallelRank);
  set(ANNOTATIONS.numGpuBlocks, w.numGpuBlocks);
  set(ANNOTATIONS.tokenizer, w.tokenizer);
  return a;
}

/**
 * A worker record from one ready endpoint: `id` (the pod's name), its `address` and HTTP `port`,
 * and the pod's annotations. Throws InvalidInputError naming the bad annotation.
 */
export function recordFromPod(id: string, address: string, port: number, annotations: Readonly<Record<string, string>>): WorkerRecord {
  const text = (key: string): string | undefined => annotations[key];
  const int = (key: string, min: number): number | undefined => {
    const v = text(key);
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || Number(v) < min) throw new InvalidInputError(`pod ${id}: annotation ${key} must be an integer ≥ ${min}: got ${JSON.stringify(v)}`);
    return Number(v);
  };
  const model = text(ANNOTATIONS.model);
  if (!model) throw new InvalidInputError(`pod ${id}: annotation ${ANNOTATIONS.model} is missing`);
  const host = formatHost(address);
  const dpSize = int(ANNOTATIONS.dataParallelSize, 1) ?? 1;
  const rank = int(ANNOTATIONS.dataParallelRank, 0);
  const dpRanks = rank !== undefined ? [rank] : Array.from({ length: dpSize }, (_, r) => r);
  const eventsPort = int(ANNOTATIONS.kvEventsPort, 1);
  const replayPort = int(ANNOTATIONS.kvReplayPort, 1);
  // vLLM offsets both ports by the DP rank (an external rank in its own pod too).
  const perRank = (p: number) => dpRanks.map((r) => endpointForRank(`tcp://${host}:${p}`, r));
  const record: WorkerRecord = {
    id,
    model,
    role: (text(ANNOTATIONS.role) ?? "aggregated") as WorkerRole,
    url: `http://${host}:${port}`,
    kvEvents:
      eventsPort === undefined
        ? null
        : { endpoints: perRank(eventsPort), replayEndpoints: replayPort === undefined ? null : perRank(replayPort), topic: text(ANNOTATIONS.kvEventsTopic) ?? "" },
    blockSize: int(ANNOTATIONS.blockSize, 1) ?? VLLM_DEFAULT_BLOCK_SIZE,
    hashAlgorithm: (text(ANNOTATIONS.hashAlgorithm) ?? VLLM_DEFAULT_HASH_ALGORITHM) as EngineHashAlgorithm,
    hashSeed: text(ANNOTATIONS.hashSeed) ?? null,
    numGpuBlocks: int(ANNOTATIONS.numGpuBlocks, 1) ?? null,
    dataParallelSize: dpSize,
    dpRanks,
    tokenizer: text(ANNOTATIONS.tokenizer) ?? null,
  };
  try {
    validateRecord(record);
  } catch (err) {
    throw new InvalidInputError(`pod ${id}: ${(err as Error).message}`);
  }
  return record;
}
