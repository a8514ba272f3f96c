/**
 * Names in etcd: where a worker record lives, and how a value read back is checked. Pure
 * functions, so docs/fleet.md, the registry and tests agree on one scheme.
 *
 *   <prefix>/<namespace>/workers/<model>/<workerId>      (prefix: "/kvroute")
 *
 * Model and worker id are `encodeURIComponent`-ed, so a model like `Qwen/Qwen3-0.6B` stays one
 * path segment and the key parses back to exactly the names it was made from.
 */
import { InvalidConfigError } from "../errors.js";
import type { WorkerRecord } from "../workers/config.js";
import { validateRecord } from "./memory-registry.js";

export const DEFAULT_ETCD_PREFIX = "/kvroute";
export const DEFAULT_NAMESPACE = "default";

/** `<prefix>/<namespace>/workers/`: every worker key of the namespace starts with it. */
export function workersPrefix(prefix: string, namespace: string): string {
  if (!/^\/[^\s]*[^/\s]$/.test(prefix)) throw new InvalidConfigError(`etcd prefix must start with '/' and not end with one, got "${prefix}"`);
  if (namespace.length === 0 || namespace.includes("/")) throw new InvalidConfigError(`namespace must be non-empty without '/', got "${namespace}"`);
  return `${prefix}/${namespace}/workers/`;
}

export function workerKey(prefix: string, namespace: string, model: string, workerId: string): string {
  return `${workersPrefix(prefix, namespace)}${encodeURIComponent(model)}/${encodeURIComponent(workerId)}`;
}

export type ParsedRecord = { ok: true; record: WorkerRecord } | { ok: false; reason: "bad_key" | "bad_json" | "bad_record"; detail: string };

/** Checks one key/value read under `workersPrefix`: the key's shape, the JSON, the record, and that they agree. */
export function parseWorkerEntry(keyPrefix: string, key: string, value: string): ParsedRecord {
  const rest = key.startsWith(keyPrefix) ? key.slice(keyPrefix.length).split("/") : [];
  let model: string;
  let id: string;
  try {
    if (rest.length !== 2 || rest[0]!.length === 0 || rest[1]!.length === 0) throw new Error("shape");
    model = decodeURIComponent(rest[0]!);
    id = decodeURIComponent(rest[1]!);
  } catch {
    return { ok: false, reason: "bad_key", detail: `key is not ${keyPrefix}<model>/<workerId>` };
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (err) {
    return { ok: false, reason: "bad_json", detail: `value is not JSON (${(err as Error).message})` };
  }
  try {
    validateRecord(parsed as WorkerRecord);
  } catch (err) {
    return { ok: false, reason: "bad_record", detail: (err as Error).message };
  }
  const record = parsed as WorkerRecord;
  if (record.id !== id || record.model !== model) {
    return { ok: false, reason: "bad_record", detail: `record names ${JSON.stringify(record.model)}/${JSON.stringify(record.id)}, key names ${JSON.stringify(model)}/${JSON.stringify(id)}` };
  }
  return { ok: true, record };
}
