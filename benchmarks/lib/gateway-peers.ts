/**
 * The peers of `bench:gateway`, Rust routers from PyPI: SGLang's model gateway (`sglang-router`,
 * cache_aware) and vLLM's router (`vllm-router`, round_robin). Installed on first use into a
 * virtualenv under the ignored `.cache/` folder (never by a test); each starts pinned to the
 * gateway's cores, in front of the same mockers as kvroute.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { request } from "undici";

export const PEER_VERSIONS = { sglang: "0.3.2", vllmRouter: "0.1.17" } as const;

export interface Peer {
  name: string;
  child: ChildProcess;
  url: string;
}

/** The virtualenv's bin folder, made and filled on first use; null (with the reason printed) when that fails. */
export function ensurePeerVenv(repoRoot: string): string | null {
  const venv = join(repoRoot, ".cache", "gateway-peers");
  const bin = join(venv, "bin");
  const ready = join(venv, `.installed-${PEER_VERSIONS.sglang}-${PEER_VERSIONS.vllmRouter}`);
  if (existsSync(ready)) return bin;
  try {
    console.log(`installing the peers into ${venv} (first run only)...`);
    execFileSync("python3", ["-m", "venv", venv], { stdio: "inherit" });
    execFileSync(join(bin, "pip"), ["install", "-q", `sglang-router==${PEER_VERSIONS.sglang}`, `vllm-router==${PEER_VERSIONS.vllmRouter}`], { stdio: "inherit" });
    execFileSync("touch", [ready]);
    return bin;
  } catch (err) {
    console.log(`peers not installed (${String(err).split("\n")[0]}): their rows are skipped`);
    return null;
  }
}

/** Starts a peer router on `port` in front of `workers`, pinned with taskset; resolves once it answers. */
export async function startPeer(kind: "sglang" | "vllm-router", bin: string, workers: readonly string[], port: number, metricsPort: number, cpus: string): Promise<Peer> {
  // Both default their Prometheus listener to port 29000: each gets its own.
  const common = ["--host", "127.0.0.1", "--port", String(port), "--prometheus-port", String(metricsPort), "--log-level", "error"];
  const argv =
    kind === "sglang"
      ? [join(bin, "python"), "-m", "sglang_router.launch_router", ...common, "--policy", "cache_aware", "--worker-urls", ...workers]
      : [join(bin, "vllm-router"), ...common, "--policy", "round_robin", "--worker-urls", ...workers];
  const child = spawn("taskset", ["-c", cpus, ...argv], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    if (stderr.length < 4000) stderr += d.toString();
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  // A benchmark, not a test: polling the peer's port until it answers is the simple way here.
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${kind} exited (${child.exitCode}): ${stderr}`);
    try {
      const res = await request(`${url}/v1/models`);
      await res.body.dump();
      if (res.statusCode < 500) return { name: kind === "sglang" ? `sglang-router ${PEER_VERSIONS.sglang} cache_aware` : `vllm-router ${PEER_VERSIONS.vllmRouter} round_robin`, child, url };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  child.kill("SIGKILL");
  throw new Error(`${kind} did not answer within 60 s: ${stderr}`);
}
