/**
 * `npm run bench:mocker`: requests/s one mocker process sustains with zero simulated time, for
 * small non-streaming requests, against a bare node:http server answering a fixed JSON body of
 * the same size (the baseline: what node:http itself costs on this machine), measured in the same
 * run with the same load generator (keep-alive node:http agent in this process).
 *
 * Each server runs in its own process, pinned to one CPU with `taskset` when available, so the
 * number is "one core". Options (env): BENCH_SECONDS (default 5), BENCH_CONCURRENCY (default 64).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import http from "node:http";
import os from "node:os";
import { fileURLToPath } from "node:url";
import { machine, percentile, printTable, type Row } from "./lib/table.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const hasTaskset = spawnSync("taskset", ["--version"]).status === 0;
const cpus = os.cpus().length;
// The server gets CPU 0; the load generator (this process) runs on the others.
const serverCpu = "0";
if (hasTaskset && cpus > 1) spawnSync("taskset", ["-p", "-c", `1-${cpus - 1}`, String(process.pid)], { stdio: "ignore" });

console.log(`kvroute bench:mocker — ${machine()}`);
console.log(`load: ${CONCURRENCY} concurrent keep-alive connections, ${SECONDS} s per row; server pinned to CPU ${hasTaskset ? serverCpu : "(no taskset: unpinned)"}`);

function start(args: string[], readyPattern: RegExp): Promise<{ child: ChildProcess; port: number }> {
  const cmd = hasTaskset ? "taskset" : process.execPath;
  const argv = hasTaskset ? ["-c", serverCpu, process.execPath, ...args] : args;
  const child = spawn(cmd, argv, { cwd: root, stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = readyPattern.exec(out);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.once("exit", (code) => reject(new Error(`server exited (${code}) before ready: ${out}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

interface Load {
  path: string;
  body: string;
}

/** Closed-loop load: CONCURRENCY clients each send the next request when the last answered. */
async function run(port: number, load: Load, seconds: number): Promise<{ rps: number; p50: number; p99: number; errors: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  const body = Buffer.from(load.body);
  const latencies: number[] = [];
  let done = 0;
  let errors = 0;
  let measuring = false;
  const one = () =>
    new Promise<void>((resolve) => {
      const t = performance.now();
      const req = http.request(
        { host: "127.0.0.1", port, path: load.path, method: "POST", agent, headers: { "content-type": "application/json", "content-length": body.length } },
        (res) => {
          res.on("data", () => {});
          res.on("end", () => {
            if (res.statusCode !== 200) errors++;
            if (measuring) {
              done++;
              latencies.push(performance.now() - t);
            }
            resolve();
          });
        },
      );
      req.on("error", () => {
        errors++;
        resolve();
      });
      req.end(body);
    });
  let stopAt = performance.now() + 1000; // warm-up
  const worker = async () => {
    while (performance.now() < stopAt) await one();
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  measuring = true;
  const t0 = performance.now();
  stopAt = t0 + seconds * 1000;
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const elapsed = (performance.now() - t0) / 1000;
  agent.destroy();
  latencies.sort((a, b) => a - b);
  return { rps: done / elapsed, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99), errors };
}

const prompt = "You are a helpful assistant. Summarize the following text in one sentence please.";
const loads: { name: string; load: Load }[] = [
  { name: "completions, ~80-token text prompt, max_tokens=1", load: { path: "/v1/completions", body: JSON.stringify({ model: "mock", prompt, max_tokens: 1 }) } },
  { name: "completions, ~80-token text prompt, max_tokens=16", load: { path: "/v1/completions", body: JSON.stringify({ model: "mock", prompt, max_tokens: 16 }) } },
  {
    name: "chat, one user message, max_tokens=16",
    load: { path: "/v1/chat/completions", body: JSON.stringify({ model: "mock", messages: [{ role: "user", content: prompt }], max_tokens: 16 }) },
  },
];

async function main(): Promise<void> {
  const rows: Row[] = [];

  // Baseline: bare node:http, reads the body, answers a fixed completion-sized JSON.
  const fixed = JSON.stringify({
    id: "cmpl-0123456789abcdef",
    object: "text_completion",
    created: 1767225600,
    model: "mock",
    choices: [{ index: 0, text: " word".repeat(16), logprobs: null, finish_reason: "length", stop_reason: null, token_ids: null, prompt_logprobs: null, prompt_token_ids: null, routed_experts: null, weight_versions: null }],
    service_tier: null,
    system_fingerprint: "vllm-0.33.0-00000000",
    usage: { prompt_tokens: 80, total_tokens: 96, completion_tokens: 16, prompt_tokens_details: null, completion_tokens_details: null },
    kv_transfer_params: null,
    ec_transfer_params: null,
    metrics: null,
  });
  const baselineScript = `
  const http = require("node:http");
  const body = ${JSON.stringify(fixed)};
  const s = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => { JSON.parse(Buffer.concat(chunks).toString()); res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }); res.end(body); });
  });
  s.keepAliveTimeout = 65000;
  s.listen(0, "127.0.0.1", () => console.log("ready " + s.address().port));
  process.on("SIGTERM", () => process.exit(0));`;
  {
    const { child, port } = await start(["-e", baselineScript], /ready (\d+)/);
    const r = await run(port, loads[1]!.load, SECONDS);
    rows.push({ name: "baseline: bare node:http, fixed JSON (same size)", value: r.rps, unit: "req/s", baseline: `p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, errors ${r.errors}` });
    await stop(child);
  }

  const mockArgs = ["dist/cli.mjs", "mock", "mock", "--host", "127.0.0.1", "--port", "0", "--zero-time", "--num-gpu-blocks-override", "20000"];
  for (const { name, load } of loads) {
    const { child, port } = await start(mockArgs, /"port":(\d+)/);
    const r = await run(port, load, SECONDS);
    rows.push({ name: `mocker (zero time): ${name}`, value: r.rps, unit: "req/s", baseline: `p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, errors ${r.errors}` });
    await stop(child);
  }

  printTable("One mocker process, one core, small non-streaming requests", rows);
  const target = rows.find((r) => r.name.includes("max_tokens=16") && r.name.startsWith("mocker"))!;
  console.log(`\ntarget >= 5,000 req/s (completions, max_tokens=16): ${target.value >= 5000 ? "met" : "NOT met"} (${target.value.toFixed(0)} req/s)`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
