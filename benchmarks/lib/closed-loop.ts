/**
 * A closed-loop HTTP load generator for the gateway benchmarks: `concurrency` clients on keep-alive
 * connections, each sending its next request as soon as the last one is fully read. Latency is
 * measured to the last byte; for streams the first byte too (a Nagle-like stall shows there).
 */
import { Pool } from "undici";
import { percentile } from "./table.js";

export interface LoadResult {
  rps: number;
  p50: number;
  p99: number;
  /** First response byte, p50 (ms). */
  firstByteP50: number;
  errors: number;
  requests: number;
  /** The first error's text, to tell "rejects token ids" from a crash. */
  firstError: string | null;
}

export interface LoadOptions {
  concurrency: number;
  /** The body of the i-th request. */
  body: (i: number) => Buffer;
  path: string;
  seconds: number;
  warmupSeconds?: number;
  /** Called when the measured window opens and when it closes (e.g. to read a process's CPU time). */
  onWindow?: (edge: "start" | "end") => void;
}

/** Runs the load against `urls` (requests spread round-robin) and reports the measured window. */
export async function closedLoop(urls: readonly string[], o: LoadOptions): Promise<LoadResult> {
  const pools = urls.map((u) => new Pool(u, { connections: o.concurrency, pipelining: 1, keepAliveTimeout: 30_000 }));
  const lat: number[] = [];
  const firstByte: number[] = [];
  let errors = 0;
  let firstError: string | null = null;
  let measuring = false;
  let stopAt = Infinity;
  const fail = (why: string) => {
    errors++;
    firstError ??= why;
  };
  const client = async (k: number) => {
    let i = k;
    while (performance.now() < stopAt) {
      const pool = pools[i % pools.length]!;
      const t = performance.now();
      let t1 = NaN;
      try {
        const res = await pool.request({ method: "POST", path: o.path, headers: { "content-type": "application/json" }, body: o.body(i) });
        let text = "";
        for await (const chunk of res.body) {
          if (Number.isNaN(t1)) t1 = performance.now();
          if (res.statusCode !== 200 && text.length < 300) text += String(chunk);
        }
        if (res.statusCode !== 200) fail(`${res.statusCode} ${text.slice(0, 200)}`);
      } catch (err) {
        fail(String(err));
      }
      if (measuring) {
        lat.push(performance.now() - t);
        firstByte.push(t1 - t);
      }
      i += o.concurrency;
    }
  };
  const warmup = (o.warmupSeconds ?? 1) * 1000;
  stopAt = performance.now() + warmup + o.seconds * 1000;
  const clients = Array.from({ length: o.concurrency }, (_, k) => client(k));
  await new Promise((r) => setTimeout(r, warmup));
  measuring = true;
  errors = 0;
  o.onWindow?.("start");
  const t0 = performance.now();
  await Promise.all(clients);
  const elapsed = (performance.now() - t0) / 1000;
  o.onWindow?.("end");
  await Promise.all(pools.map((p) => p.close()));
  lat.sort((a, b) => a - b);
  firstByte.sort((a, b) => a - b);
  return {
    rps: lat.length / elapsed,
    p50: percentile(lat, 0.5),
    p99: percentile(lat, 0.99),
    firstByteP50: percentile(firstByte, 0.5),
    errors,
    requests: lat.length,
    firstError,
  };
}
