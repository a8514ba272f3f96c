/**
 * `npm run bench:gateway`: what the gateway costs. Zero-delay mockers (`kvroute mock --zero-time`,
 * KV events on) are loaded straight (the baseline), then through the gateway (`kvroute serve`, kv
 * mode, following the mockers' KV events and metrics), with the same closed-loop load generator
 * (undici, keep-alive, fixed concurrency) in the same run. Reported per row: requests/s, latency
 * p50/p99 of each path and the difference (the latency the gateway adds), and the gateway's CPU
 * time per request (from /proc), i.e. how many requests/s one core of gateway sustains.
 *
 * Every process is a separate OS process (load generator, gateway, mockers): on a 2-core machine
 * they share both cores, so the "through the gateway" requests/s is the whole system's. Options
 * (env): BENCH_SECONDS (default 5 per row), BENCH_MOCKERS (default 2).
 * Needs the built CLI (`npm run build:ts`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { Pool } from "undici";
import { findFreePortRange, kvrouteCliPath } from "../ts/workers/index.js";
import { fmt, machine, percentile, rng } from "./lib/table.js";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const MOCKERS = Number(process.env.BENCH_MOCKERS ?? 2);
const CLI = kvrouteCliPath();
const MODEL = "bench";

console.log(`kvroute bench:gateway — ${machine()}`);
console.log(`${MOCKERS} zero-delay mockers (KV events on); ${SECONDS} s per row after 1 s of warm-up; load generator, gateway and mockers are separate processes\n`);

function start(args: string[], readyPattern: RegExp): Promise<{ child: ChildProcess; ready: RegExpExecArray }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = readyPattern.exec(out);
      if (m) resolve({ child, ready: m });
    });
    child.once("exit", (code) => reject(new Error(`kvroute ${args[0]} exited (${code}) before ready: ${out}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

/** CPU seconds (user + system) a process has used. */
function cpuSeconds(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return NaN;
  }
}

interface Result {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  requests: number;
}

/** Closed loop: `concurrency` clients, each sends its next request when the last one is answered. */
async function load(urls: string[], concurrency: number, body: (i: number) => Buffer, path: string, seconds: number): Promise<Result> {
  const pools = urls.map((u) => new Pool(u, { connections: concurrency, pipelining: 1, keepAliveTimeout: 30_000 }));
  const lat: number[] = [];
  let errors = 0;
  let measuring = false;
  let stopAt = Infinity;
  let n = 0;
  const client = async (k: number) => {
    let i = k;
    while (performance.now() < stopAt) {
      const pool = pools[i % pools.length]!;
      const t = performance.now();
      try {
        const res = await pool.request({ method: "POST", path, headers: { "content-type": "application/json" }, body: body(i) });
        await res.body.dump({ limit: 1 << 30 });
        if (res.statusCode !== 200) errors++;
      } catch {
        errors++;
      }
      if (measuring) lat.push(performance.now() - t);
      i += concurrency;
      n++;
    }
  };
  stopAt = performance.now() + 1000 + seconds * 1000;
  const clients = Array.from({ length: concurrency }, (_, k) => client(k));
  await new Promise((r) => setTimeout(r, 1000));
  measuring = true;
  const t0 = performance.now();
  await Promise.all(clients);
  const elapsed = (performance.now() - t0) / 1000;
  await Promise.all(pools.map((p) => p.close()));
  lat.sort((a, b) => a - b);
  return { rps: lat.length / elapsed, p50: percentile(lat, 0.5), p99: percentile(lat, 0.99), errors, requests: lat.length };
}

// ---- the fleet ----

async function main(): Promise<void> {
const base = await findFreePortRange(3 * MOCKERS);
const mockers = await Promise.all(
  Array.from({ length: MOCKERS }, (_, i) =>
    start(
      [
        "mock",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        String(base + i),
        "--zero-time",
        "--num-gpu-blocks-override",
        "20000",
        "--kv-events-config",
        JSON.stringify({ enable_kv_cache_events: true, publisher: "zmq", endpoint: `tcp://*:${base + MOCKERS + i}`, replay_endpoint: `tcp://*:${base + 2 * MOCKERS + i}` }),
      ],
      /kvroute mock: ready/,
    ),
  ),
);
const mockerUrls = mockers.map((_, i) => `http://127.0.0.1:${base + i}`);
const dir = mkdtempSync(join(os.tmpdir(), "kvroute-bench-"));
const configFile = join(dir, "gateway.json");
writeFileSync(
  configFile,
  JSON.stringify({
    host: "127.0.0.1",
    routerMode: "kv",
    queue: { maxActivePerWorker: 1024 },
    models: [
      {
        name: MODEL,
        hashSeed: 0,
        workers: mockerUrls.map((url, i) => ({
          id: `m${i}`,
          url,
          kvEvents: `tcp://127.0.0.1:${base + MOCKERS + i}`,
          kvEventsReplay: `tcp://127.0.0.1:${base + 2 * MOCKERS + i}`,
        })),
      },
    ],
  }),
);
const gateway = await start(["serve", "--config", configFile, "--port", "0"], /kvroute serve: ready (\{.*\})/);
const gatewayUrl = (JSON.parse(gateway.ready[1]!) as { url: string }).url;

// ---- the load ----

// 1,000 distinct 64-token prompts (4 blocks): KV events flow, the router has overlaps to score.
const rand = rng(7);
const prompts = Array.from({ length: 1000 }, () => Array.from({ length: 64 }, () => 256 + Math.floor(rand() * 100_000)));
const bodies = {
  plain: prompts.map((p) => Buffer.from(JSON.stringify({ model: MODEL, prompt: p, max_tokens: 4, ignore_eos: true }))),
  stream: prompts.map((p) => Buffer.from(JSON.stringify({ model: MODEL, prompt: p, max_tokens: 16, ignore_eos: true, stream: true }))),
};

interface Case {
  name: string;
  kind: keyof typeof bodies;
  concurrency: number;
}
const cases: Case[] = [
  { name: "non-streaming, 1 client", kind: "plain", concurrency: 1 },
  { name: "non-streaming, 64 clients", kind: "plain", concurrency: 64 },
  { name: "streaming (16 tokens), 64 clients", kind: "stream", concurrency: 64 },
];

const rows: string[][] = [];
for (const c of cases) {
  const body = (i: number) => bodies[c.kind][i % prompts.length]!;
  const direct = await load(mockerUrls, c.concurrency, body, "/v1/completions", SECONDS);
  const cpu0 = cpuSeconds(gateway.child.pid!);
  const via = await load([gatewayUrl], c.concurrency, body, "/v1/completions", SECONDS);
  const cpu = cpuSeconds(gateway.child.pid!) - cpu0;
  // Warm-up requests are not in `via.requests`; count them in at the same rate.
  const total = via.requests + via.rps * 1;
  const cpuPerRequestUs = (cpu / total) * 1e6;
  rows.push([
    c.name,
    fmt(direct.rps),
    fmt(via.rps),
    `${direct.p50.toFixed(2)} / ${direct.p99.toFixed(2)}`,
    `${via.p50.toFixed(2)} / ${via.p99.toFixed(2)}`,
    `${(via.p50 - direct.p50).toFixed(2)} / ${(via.p99 - direct.p99).toFixed(2)}`,
    `${cpuPerRequestUs.toFixed(0)} µs (${fmt(1e6 / cpuPerRequestUs)}/s)`,
    String(direct.errors + via.errors),
  ]);
}

const head = ["load", "direct req/s", "gateway req/s", "direct p50/p99 ms", "gateway p50/p99 ms", "added p50/p99 ms", "gateway CPU/req (1 core)", "errors"];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
console.log(head.map((h, i) => h.padEnd(widths[i]!)).join("  "));
console.log(widths.map((w) => "-".repeat(w)).join("  "));
for (const r of rows) console.log(r.map((v, i) => (i === 0 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  "));
console.log("\ntargets (2 cores): added p50 <= 1 ms; >= 3,000 non-streaming req/s through the gateway");

await stop(gateway.child);
await Promise.all(mockers.map((m) => stop(m.child)));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
