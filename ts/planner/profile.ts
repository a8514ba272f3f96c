/**
 * Performance profiles: how fast one worker prefills and decodes, the data the SLA planner sizes
 * the fleet from. The field names are Dynamo's profiler's, so its users recognise them and can
 * bring their own files:
 *
 * - prefill, one point per input length: `prefill_isl` (tokens), `prefill_ttft` (ms, one request
 *   alone), `prefill_thpt_per_gpu` (prompt tokens/s/GPU);
 * - decode, scattered points: `x_kv_usage` (0..1 of `max_kv_tokens`), `y_context_length` (tokens
 *   per sequence), `z_itl` (ms between tokens), `z_thpt_per_gpu` (output tokens/s/GPU);
 * - `max_kv_tokens`: KV tokens one worker holds.
 *
 * Read here: our JSON (`kvroute profile` writes it: those fields flat, plus `gpus_per_worker`,
 * `model`, `engine`), the same fields nested under `prefill` / `decode`, Dynamo's `raw_data.npz`
 * files, and Dynamo's results folder (`selected_prefill_interpolation/raw_data.npz` and
 * `selected_decode_interpolation/raw_data.npz`). Everything is validated once, here.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { ProfileError } from "./errors.js";
import { readNpz } from "./npz.js";

export const PROFILE_FORMAT = "kvroute-profile/1";

export interface PrefillProfile {
  isl: number[];
  ttftMs: number[];
  thptPerGpu: number[];
}

export interface DecodeProfile {
  kvUsage: number[];
  contextLength: number[];
  itlMs: number[];
  thptPerGpu: number[];
}

export interface PerfProfile {
  prefill: PrefillProfile;
  decode: DecodeProfile;
  maxKvTokens: number;
  /** GPUs one worker uses (tensor parallel size); throughputs are per GPU. Default 1. */
  gpusPerWorker: number;
  /** Where it came from, for messages. */
  source: string;
  model?: string;
  engine?: string;
}

/** The JSON `kvroute profile` writes (Dynamo's names, flat). */
export interface ProfileJson {
  format: typeof PROFILE_FORMAT;
  model?: string;
  engine?: string;
  gpus_per_worker: number;
  prefill_isl: number[];
  prefill_ttft: number[];
  prefill_thpt_per_gpu: number[];
  x_kv_usage: number[];
  y_context_length: number[];
  z_itl: number[];
  z_thpt_per_gpu: number[];
  max_kv_tokens: number;
}

export function profileToJson(p: PerfProfile): ProfileJson {
  return {
    format: PROFILE_FORMAT,
    ...(p.model !== undefined ? { model: p.model } : {}),
    ...(p.engine !== undefined ? { engine: p.engine } : {}),
    gpus_per_worker: p.gpusPerWorker,
    prefill_isl: p.prefill.isl,
    prefill_ttft: p.prefill.ttftMs,
    prefill_thpt_per_gpu: p.prefill.thptPerGpu,
    x_kv_usage: p.decode.kvUsage,
    y_context_length: p.decode.contextLength,
    z_itl: p.decode.itlMs,
    z_thpt_per_gpu: p.decode.thptPerGpu,
    max_kv_tokens: p.maxKvTokens,
  };
}

type Fields = Record<string, unknown>;

/**
 * Loads a profile from one path or several (their fields merged: a Dynamo prefill npz and a
 * decode npz, say). A path is a JSON file, an .npz file, or a Dynamo results folder.
 */
export function loadProfile(paths: string | readonly string[]): PerfProfile {
  const list = typeof paths === "string" ? [paths] : paths;
  if (list.length === 0) throw new ProfileError("no profile given");
  const fields: Fields = {};
  for (const path of list) Object.assign(fields, readFields(path));
  return parseProfile(fields, list.join(", "));
}

function readFields(path: string): Fields {
  if (!existsSync(path)) throw new ProfileError(`${path}: no such file or folder`);
  if (statSync(path).isDirectory()) {
    const parts = ["selected_prefill_interpolation/raw_data.npz", "selected_decode_interpolation/raw_data.npz"].map((p) => join(path, p));
    const json = join(path, "profile.json");
    if (parts.every(existsSync)) return Object.assign({}, ...parts.map(readFields)) as Fields;
    if (existsSync(json)) return readFields(json);
    throw new ProfileError(`${path}: a profile folder holds profile.json, or Dynamo's selected_prefill_interpolation/raw_data.npz and selected_decode_interpolation/raw_data.npz`);
  }
  const buf = readFileSync(path);
  if (path.endsWith(".npz") || buf.readUInt32LE(0) === 0x04034b50) {
    const out: Fields = {};
    for (const [name, arr] of readNpz(buf, path)) out[name] = Array.from(arr.data);
    return out;
  }
  let value: unknown;
  try {
    value = JSON.parse(buf.toString("utf8"));
  } catch (err) {
    throw new ProfileError(`${path}: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ProfileError(`${path}: a profile is a JSON object`);
  const v = value as Fields;
  // The nested form: { prefill: {...}, decode: {...}, max_kv_tokens? }
  const flat: Fields = { ...v };
  for (const k of ["prefill", "decode"]) {
    if (typeof v[k] === "object" && v[k] !== null && !Array.isArray(v[k])) Object.assign(flat, v[k] as Fields);
  }
  return flat;
}

/** Validates the fields (Dynamo's names) into a profile; `source` names it in errors. */
export function parseProfile(f: Fields, source: string): PerfProfile {
  const bad = (why: string): never => {
    throw new ProfileError(`${source}: ${why}`);
  };
  const arr = (name: string): number[] => {
    const v = f[name];
    if (v === undefined) bad(`missing ${name}`);
    if (!Array.isArray(v) || v.length === 0) bad(`${name} must be a non-empty array of numbers`);
    const out = (v as unknown[]).map((x, i) => (typeof x === "number" && Number.isFinite(x) ? x : bad(`${name}[${i}] is not a finite number (${JSON.stringify(x)})`)));
    return out;
  };
  const isl = arr("prefill_isl");
  const ttft = arr("prefill_ttft");
  const pThpt = arr("prefill_thpt_per_gpu");
  if (ttft.length !== isl.length || pThpt.length !== isl.length) bad(`prefill_isl, prefill_ttft and prefill_thpt_per_gpu must have the same length (${isl.length}, ${ttft.length}, ${pThpt.length})`);
  isl.forEach((x, i) => x > 0 || bad(`prefill_isl[${i}] must be > 0 (got ${x})`));
  ttft.forEach((x, i) => x > 0 || bad(`prefill_ttft[${i}] must be > 0 ms (got ${x})`));
  pThpt.forEach((x, i) => x > 0 || bad(`prefill_thpt_per_gpu[${i}] must be > 0 (got ${x})`));
  const kv = arr("x_kv_usage");
  const ctx = arr("y_context_length");
  const itl = arr("z_itl");
  const dThpt = arr("z_thpt_per_gpu");
  if (ctx.length !== kv.length || itl.length !== kv.length || dThpt.length !== kv.length) {
    bad(`x_kv_usage, y_context_length, z_itl and z_thpt_per_gpu must have the same length (${kv.length}, ${ctx.length}, ${itl.length}, ${dThpt.length})`);
  }
  kv.forEach((x, i) => (x >= 0 && x <= 1.5) || bad(`x_kv_usage[${i}] must be in [0, 1] (got ${x})`));
  ctx.forEach((x, i) => x > 0 || bad(`y_context_length[${i}] must be > 0 (got ${x})`));
  itl.forEach((x, i) => x > 0 || bad(`z_itl[${i}] must be > 0 ms (got ${x})`));
  dThpt.forEach((x, i) => x >= 0 || bad(`z_thpt_per_gpu[${i}] must be >= 0 (got ${x})`));
  let maxKv = f["max_kv_tokens"];
  if (Array.isArray(maxKv) && maxKv.length === 1) maxKv = maxKv[0]; // Dynamo stores [n]
  if (typeof maxKv !== "number" || !Number.isInteger(maxKv) || maxKv <= 0) bad(`max_kv_tokens must be a positive integer (got ${JSON.stringify(maxKv)})`);
  let gpus = f["gpus_per_worker"] ?? 1;
  if (Array.isArray(gpus) && gpus.length === 1) gpus = gpus[0];
  if (typeof gpus !== "number" || !Number.isInteger(gpus) || gpus < 1) bad(`gpus_per_worker must be a positive integer (got ${JSON.stringify(gpus)})`);
  // Prefill points sorted by length; a repeated length is ambiguous.
  const order = isl.map((_, i) => i).sort((a, b) => isl[a]! - isl[b]!);
  for (let k = 1; k < order.length; k++) if (isl[order[k]!] === isl[order[k - 1]!]) bad(`prefill_isl lists ${isl[order[k]!]} twice`);
  const str = (k: string) => (typeof f[k] === "string" ? (f[k] as string) : undefined);
  return {
    prefill: { isl: order.map((i) => isl[i]!), ttftMs: order.map((i) => ttft[i]!), thptPerGpu: order.map((i) => pThpt[i]!) },
    decode: { kvUsage: kv, contextLength: ctx, itlMs: itl, thptPerGpu: dThpt },
    maxKvTokens: maxKv as number,
    gpusPerWorker: gpus as number,
    source,
    ...(str("model") !== undefined ? { model: str("model") } : {}),
    ...(str("engine") !== undefined ? { engine: str("engine") } : {}),
  };
}

/**
 * The profile with every time multiplied by `factor` (throughputs divided by it): a mocker at
 * `--speedup S` runs S times faster than its simulated clock, so its wall-clock profile is the
 * simulated one scaled by 1 / S.
 */
export function scaleProfileTime(p: PerfProfile, factor: number): PerfProfile {
  if (!(factor > 0) || !Number.isFinite(factor)) throw new ProfileError(`a time scale must be a finite number > 0 (got ${factor})`);
  return {
    ...p,
    prefill: { isl: p.prefill.isl, ttftMs: p.prefill.ttftMs.map((x) => x * factor), thptPerGpu: p.prefill.thptPerGpu.map((x) => x / factor) },
    decode: { ...p.decode, itlMs: p.decode.itlMs.map((x) => x * factor), thptPerGpu: p.decode.thptPerGpu.map((x) => x / factor) },
  };
}
