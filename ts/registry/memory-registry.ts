/**
 * MemoryRegistry: the embedded default `Registry` — worker records in a Map, change listeners
 * called synchronously, so a worker registered now is routable on the very next request. Records
 * are validated at the boundary (register) and trusted inside: they are stored as given, so
 * register a new record rather than mutate a registered one. EtcdRegistry (fleet issue) keeps the
 * same interface with leases and a watch.
 */
import { InvalidInputError } from "../errors.js";
import { ENGINE_HASH_ALGORITHMS } from "../core/block-hasher.js";
import type { Registry } from "../router/types.js";
import type { WorkerRecord } from "../workers/config.js";

export type RegistryChange = Parameters<Parameters<Registry["watch"]>[0]>[0];
type Listener = (change: RegistryChange) => void;

const ROLES = new Set(["aggregated", "prefill", "decode"]);

export class MemoryRegistry implements Registry {
  private readonly records = new Map<string, WorkerRecord>();
  private readonly listeners = new Set<Listener>();

  /** Optionally pre-filled (validated like `register`, no listeners yet to call). */
  constructor(records: readonly WorkerRecord[] = []) {
    for (const r of records) {
      validateRecord(r);
      this.records.set(r.id, r);
    }
  }

  /** Records of one model, or all, in registration order. */
  list(model?: string): WorkerRecord[] {
    const all = [...this.records.values()];
    return model === undefined ? all : all.filter((r) => r.model === model);
  }

  get(id: string): WorkerRecord | undefined {
    return this.records.get(id);
  }

  /**
   * Adds the worker, or replaces its record (a restart, new ranks, a new URL); listeners get
   * `added` either way. Takes effect before the promise settles. Rejects with InvalidInputError
   * for a malformed record (nothing changes), or with the first error a listener threw (after
   * every listener ran).
   */
  register(record: WorkerRecord): Promise<void> {
    try {
      validateRecord(record);
    } catch (err) {
      return Promise.reject(err);
    }
    this.records.delete(record.id); // a replaced record moves to the end, like a fresh one
    this.records.set(record.id, record);
    return this.notify({ type: "added", record });
  }

  /** Removes the worker; listeners get `removed` with its last record. Unknown ids are a no-op. */
  deregister(id: string): Promise<void> {
    const record = this.records.get(id);
    if (record === undefined) return Promise.resolve();
    this.records.delete(id);
    return this.notify({ type: "removed", record });
  }

  watch(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  private notify(change: RegistryChange): Promise<void> {
    let first: unknown;
    let failed = false;
    for (const l of [...this.listeners]) {
      try {
        l(change);
      } catch (err) {
        if (!failed) first = err;
        failed = true;
      }
    }
    return failed ? Promise.reject(first) : Promise.resolve();
  }
}

/** Throws InvalidInputError naming the first bad field of a worker record. */
export function validateRecord(r: WorkerRecord): void {
  const bad = (field: string, why: string): never => {
    throw new InvalidInputError(`worker record${typeof r?.id === "string" ? ` ${JSON.stringify(r.id)}` : ""}: ${field} ${why}`);
  };
  if (r === null || typeof r !== "object") throw new InvalidInputError("worker record must be an object");
  if (typeof r.id !== "string" || r.id.length === 0) bad("id", "must be a non-empty string");
  if (typeof r.model !== "string" || r.model.length === 0) bad("model", "must be a non-empty string");
  if (!ROLES.has(r.role)) bad("role", `must be aggregated, prefill or decode (got ${JSON.stringify(r.role)})`);
  if (typeof r.url !== "string" || !URL.canParse(r.url)) bad("url", `must be an absolute URL (got ${JSON.stringify(r.url)})`);
  if (!Number.isInteger(r.blockSize) || r.blockSize <= 0) bad("blockSize", "must be a positive integer");
  if (!ENGINE_HASH_ALGORITHMS.includes(r.hashAlgorithm)) bad("hashAlgorithm", `must be one of ${ENGINE_HASH_ALGORITHMS.join(", ")}`);
  if (r.hashSeed !== null && typeof r.hashSeed !== "string") bad("hashSeed", "must be a string or null");
  if (r.numGpuBlocks !== null && !(Number.isInteger(r.numGpuBlocks) && r.numGpuBlocks > 0)) bad("numGpuBlocks", "must be a positive integer or null");
  if (r.tokenizer !== undefined && r.tokenizer !== null && (typeof r.tokenizer !== "string" || r.tokenizer.length === 0)) bad("tokenizer", "must be a non-empty path or null");
  if (!Number.isInteger(r.dataParallelSize) || r.dataParallelSize < 1) bad("dataParallelSize", "must be an integer ≥ 1");
  if (!Array.isArray(r.dpRanks) || r.dpRanks.length === 0) bad("dpRanks", "must be a non-empty array");
  const seen = new Set<number>();
  for (const d of r.dpRanks) {
    if (!Number.isInteger(d) || d < 0 || d >= r.dataParallelSize) bad("dpRanks", `must hold integers in [0, ${r.dataParallelSize}) (got ${JSON.stringify(d)})`);
    if (seen.has(d)) bad("dpRanks", `lists rank ${d} twice`);
    seen.add(d);
  }
  if (r.kvEvents !== null) {
    const k = r.kvEvents;
    if (typeof k !== "object" || !Array.isArray(k.endpoints)) bad("kvEvents", "must be null or { endpoints, replayEndpoints, topic }");
    if (k.endpoints.length !== r.dpRanks.length) bad("kvEvents.endpoints", "must have one endpoint per entry of dpRanks");
    if (k.endpoints.some((e) => typeof e !== "string" || e.length === 0)) bad("kvEvents.endpoints", "must hold non-empty strings");
    if (k.replayEndpoints !== null && (!Array.isArray(k.replayEndpoints) || k.replayEndpoints.length !== k.endpoints.length)) {
      bad("kvEvents.replayEndpoints", "must be null or match endpoints one to one");
    }
    if (typeof k.topic !== "string") bad("kvEvents.topic", "must be a string");
    if (k.subscriberBinds !== undefined && typeof k.subscriberBinds !== "boolean") bad("kvEvents.subscriberBinds", "must be a boolean");
  }
}
