/**
 * `kvroute profile --engine vllm`: sweeps a running OpenAI-compatible server (vLLM, or a mocker
 * process) over HTTP and returns the profile in Dynamo's fields.
 *
 * - prefill, per input length: streaming `/v1/completions` with a prompt of fresh random token ids
 *   (no prefix hit), `max_tokens: 1`; TTFT = time to the first chunk, the median of `repeats`;
 *   throughput per GPU = isl / TTFT / gpus.
 * - decode, per context length and concurrency: `c` streaming requests (`ignore_eos`) start
 *   together; ITL = the mean gap between chunks once every stream has its first chunk.
 * - max_kv_tokens: from `--max-kv-tokens`, else vLLM's `cache_config_info` (num_gpu_blocks x
 *   block_size) on /metrics.
 * Wall time is multiplied by `timeScale` (a mocker running `--speedup S` is profiled with S).
 */
import { ProfileError } from "./errors.js";
import { parseProfile, PROFILE_FORMAT, type PerfProfile } from "./profile.js";

export interface HttpSweepOptions {
  url: string;
  model?: string;
  gpusPerWorker?: number;
  isl: number[];
  contexts: number[];
  concurrencies: number[];
  decodeTokens?: number;
  repeats?: number;
  maxKvTokens?: number;
  timeScale?: number;
  vocab?: number;
  log?: (line: string) => void;
}

let salt = 0;
function randomPrompt(n: number, vocab: number): number[] {
  salt++;
  return Array.from({ length: n }, () => 1 + Math.floor(Math.random() * (vocab - 2)));
}

/** Streams one completion; returns the arrival times (performance.now) of its chunks. */
async function stream(url: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<number[]> {
  const res = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...body, stream: true }), signal });
  if (!res.ok || res.body === null) throw new ProfileError(`${url}: /v1/completions answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
  const times: number[] = [];
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (event.startsWith("data: ") && !event.startsWith("data: [DONE]") && event.includes('"text"')) times.push(performance.now());
    }
  }
  return times;
}

async function maxKvTokensOf(url: string): Promise<number | null> {
  try {
    const text = await (await fetch(`${url}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith("vllm:cache_config_info"));
    const blocks = line && /num_gpu_blocks="(\d+)"/.exec(line)?.[1];
    const size = line && /block_size="(\d+)"/.exec(line)?.[1];
    return blocks && size ? Number(blocks) * Number(size) : null;
  } catch {
    return null;
  }
}

export async function sweepHttpEngine(o: HttpSweepOptions): Promise<PerfProfile> {
  const url = o.url.replace(/\/+$/, "");
  const log = o.log ?? (() => {});
  const scale = o.timeScale ?? 1;
  const gpus = o.gpusPerWorker ?? 1;
  const vocab = o.vocab ?? 30000;
  let model = o.model;
  if (model === undefined) {
    const res = await fetch(`${url}/v1/models`).catch((err: unknown) => {
      throw new ProfileError(`${url}: not reachable (${err instanceof Error ? err.message : String(err)})`);
    });
    const body = (await res.json()) as { data?: { id: string }[] };
    model = body.data?.[0]?.id;
    if (model === undefined) throw new ProfileError(`${url}: /v1/models lists no model`);
  }
  const maxKv = o.maxKvTokens ?? (await maxKvTokensOf(url));
  if (maxKv === null || !(maxKv > 0)) throw new ProfileError(`${url}: no cache_config_info on /metrics: give --max-kv-tokens`);
  const isl: number[] = [];
  const ttft: number[] = [];
  const pThpt: number[] = [];
  for (const n of o.isl) {
    const runs: number[] = [];
    for (let k = 0; k < (o.repeats ?? 3); k++) {
      const t0 = performance.now();
      const times = await stream(url, { model, prompt: randomPrompt(n, vocab), max_tokens: 1 });
      if (times.length === 0) throw new ProfileError(`${url}: no token for a ${n}-token prompt`);
      runs.push((times[0]! - t0) * scale);
    }
    runs.sort((a, b) => a - b);
    const t = runs[Math.floor(runs.length / 2)]!;
    isl.push(n);
    ttft.push(t);
    pThpt.push((n / t) * 1000 / gpus);
    log(`prefill isl ${n}: TTFT ${t.toFixed(1)} ms`);
  }
  const kv: number[] = [];
  const ctx: number[] = [];
  const itl: number[] = [];
  const dThpt: number[] = [];
  const tokens = o.decodeTokens ?? 32;
  for (const context of o.contexts) {
    for (const c of o.concurrencies) {
      if (c * (context + tokens) > maxKv) continue;
      const all = await Promise.all(Array.from({ length: c }, () => stream(url, { model, prompt: randomPrompt(context, vocab), max_tokens: tokens, ignore_eos: true })));
      const allFirst = Math.max(...all.map((t) => t[0] ?? Infinity));
      let gaps = 0;
      let count = 0;
      for (const t of all) {
        const later = t.filter((x) => x > allFirst);
        if (later.length >= 2) {
          gaps += later[later.length - 1]! - later[0]!;
          count += later.length - 1;
        }
      }
      if (count === 0) continue;
      const itlMs = (gaps / count) * scale;
      kv.push(Math.min(1, (c * (context + tokens / 2)) / maxKv));
      ctx.push(context);
      itl.push(itlMs);
      dThpt.push((c / itlMs) * 1000 / gpus);
      log(`decode context ${context} x ${c}: ITL ${itlMs.toFixed(2)} ms`);
    }
  }
  if (kv.length === 0) throw new ProfileError(`${url}: the decode sweep measured nothing (contexts too long for ${maxKv} KV tokens?)`);
  return parseProfile(
    { format: PROFILE_FORMAT, engine: `http:${url}`, model, gpus_per_worker: gpus, prefill_isl: isl, prefill_ttft: ttft, prefill_thpt_per_gpu: pThpt, x_kv_usage: kv, y_context_length: ctx, z_itl: itl, z_thpt_per_gpu: dThpt, max_kv_tokens: maxKv },
    `sweep of ${url}`,
  );
}
