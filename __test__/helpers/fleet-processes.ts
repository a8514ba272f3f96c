/**
 * Fleet-mode processes as an operator runs them: `kvroute worker --engine mock --registry ...`
 * (one mocker worker that registers itself in etcd) and `kvroute serve --registry ... --bus ...`
 * gateways. Started on free loopback ports, killed after each test by `stopFleetProcesses()`
 * (SIGKILL to the CLI and to the mocker's process group it leads).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { findFreePortRange } from "../../ts/workers/index.js";
import type { WorkerRecord } from "../../ts/workers/config.js";
import { CLI } from "./cli-process.js";
import { MODEL } from "./gateway-fleet.js";

export interface FleetProcess {
  child: ChildProcess;
  output: () => string;
  exit: Promise<number | null>;
}

const running: FleetProcess[] = [];

function start(args: string[], env: NodeJS.ProcessEnv, ready: RegExp): FleetProcess & { ready: Promise<string> } {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stderr!.on("data", (d) => (err += d));
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const readyP = new Promise<string>((resolve, reject) => {
    child.stdout!.on("data", (d) => {
      out += d;
      const m = ready.exec(out);
      if (m) resolve(m[1]!);
    });
    void exit.then((code) => reject(new Error(`kvroute ${args[0]} exited ${code} before ready:\n${err.slice(-3000)}`)));
  });
  readyP.catch(() => {});
  const p = { child, output: () => err, exit, ready: readyP };
  running.push(p);
  return p;
}

export interface WorkerProcess extends FleetProcess {
  id: string;
  record: WorkerRecord;
  /** SIGKILL to the CLI and the engine it spawned: a machine dying, nobody deregisters. */
  kill9(): Promise<void>;
}

/** `kvroute worker --engine mock` registering in `registry` (etcd URL); resolves with its record once healthy. */
export async function startWorkerProcess(options: { id: string; registry?: string; bus?: string; leaseTtl?: number; env?: NodeJS.ProcessEnv; extra?: string[] }): Promise<WorkerProcess> {
  const base = await findFreePortRange(3);
  const args = ["worker", "--engine", "mock", "--model", MODEL, "--id", options.id, "--port", String(base), "--event-port", String(base + 1), "--replay-port", String(base + 2)];
  args.push("--block-size", "16", "--hash-seed", "0", "--num-gpu-blocks", "4000", "--speedup", "20", "--max-restarts", "0", "--stop-grace", "1", "--quiet");
  if (options.registry) args.push("--registry", options.registry);
  if (options.bus) args.push("--bus", options.bus);
  if (options.leaseTtl) args.push("--lease-ttl", String(options.leaseTtl));
  args.push(...(options.extra ?? []));
  const p = start(args, options.env ?? {}, /^(\{.*\})\n/m);
  const record = JSON.parse(await p.ready) as WorkerRecord;
  return {
    ...p,
    id: options.id,
    record,
    kill9: async () => {
      const engines = childrenOf(p.child.pid!);
      p.child.kill("SIGKILL");
      await p.exit;
      for (const pid of engines) killGroup(pid);
    },
  };
}

/** A `kvroute serve` gateway; resolves with its URL once it prints ready. */
export async function startServeProcess(args: string[], env: NodeJS.ProcessEnv = {}): Promise<FleetProcess & { url: string }> {
  const port = await findFreePortRange(1);
  const p = start(["serve", "--host", "127.0.0.1", "--port", String(port), ...args], { KVROUTE_METRICS_SCRAPE_INTERVAL_MS: "200", ...env }, /kvroute serve: ready (\{.*\})\n/);
  const ready = JSON.parse(await p.ready) as { url: string };
  return { ...p, url: ready.url };
}

/** Runs a kvroute command expected to fail; resolves with its exit code and stderr. */
export async function runToExit(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stderr: string }> {
  const p = start(args, env, /(?!)/);
  const code = await p.exit;
  return { code, stderr: p.output() };
}

export async function stopFleetProcesses(): Promise<void> {
  const all = running.splice(0);
  await Promise.all(
    all.map(async (p) => {
      if (p.child.exitCode !== null || p.child.signalCode !== null) return;
      const engines = childrenOf(p.child.pid!);
      p.child.kill("SIGKILL");
      await p.exit;
      for (const pid of engines) killGroup(pid);
    }),
  );
}

/** Direct children of `pid` (Linux /proc). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}
