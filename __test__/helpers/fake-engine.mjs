#!/usr/bin/env node
// A tiny stand-in for `vllm serve` that misbehaves on request, for the supervision tests that a
// well-behaved engine (the mocker) cannot exercise. Takes vLLM's argv (only --host and --port
// matter) and is steered by the environment:
//   FAKE_ENGINE_MODE        healthy (default) | never-healthy (/health answers 503) |
//                           503-then-hang (the first /health answers 503, later ones never) |
//                           exit-early (prints an error, exits 3) | no-listen (never binds) |
//                           segfault (writes a backtrace to stderr, then dies by SIGSEGV)
//   FAKE_ENGINE_GRANDCHILD  1: fork a long-sleeping grandchild (prints "grandchild <pid>")
//   FAKE_ENGINE_IGNORE_SIGTERM 1: survive SIGTERM (only SIGKILL ends it)
//   FAKE_ENGINE_FAIL_IF_EXISTS <path>: behave as exit-early while that file exists (crash loops)
//   FAKE_ENGINE_UNHEALTHY_IF_EXISTS <path>: /health answers 503 while that file exists
// Serves /health, /metrics (vllm:num_requests_running = open /slow requests) and /slow?ms=N.
import { spawn } from "node:child_process";
import { existsSync, writeSync } from "node:fs";
import { createServer } from "node:http";

const argv = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
};
const host = flag("--host", "127.0.0.1");
const port = Number(flag("--port", "8000"));
const failFile = process.env.FAKE_ENGINE_FAIL_IF_EXISTS;
const unhealthyFile = process.env.FAKE_ENGINE_UNHEALTHY_IF_EXISTS;
const mode = failFile && existsSync(failFile) ? "exit-early" : (process.env.FAKE_ENGINE_MODE ?? "healthy");

console.log(`fake-engine pid ${process.pid} mode ${mode} argv ${JSON.stringify(argv)}`);
console.log(`PYTHONHASHSEED=${process.env.PYTHONHASHSEED ?? "<unset>"}`);

if (process.env.FAKE_ENGINE_IGNORE_SIGTERM === "1") {
  process.on("SIGTERM", () => console.log("fake-engine ignoring SIGTERM"));
}
if (process.env.FAKE_ENGINE_GRANDCHILD === "1") {
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)"], { stdio: "ignore" });
  console.log(`grandchild ${child.pid}`);
}
if (mode === "exit-early") {
  console.error("RuntimeError: CUDA out of memory (fake)");
  process.exit(3);
}
if (mode === "segfault") {
  // Written straight to the pipe, then the signal at once: the supervisor may see the exit
  // before it has read these lines, as with a native crash handler's backtrace.
  writeSync(2, Array.from({ length: 40 }, (_, i) => `backtrace frame ${i}`).join("\n") + "\nCaught signal 11 (Segmentation fault, fake)\n");
  process.kill(process.pid, "SIGSEGV");
}
if (mode === "no-listen") {
  setInterval(() => {}, 1000);
} else {
  let running = 0;
  let healthChecks = 0;
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/health" && mode === "503-then-hang" && healthChecks++ > 0) {
      // Never answered: the supervisor's probe times out.
    } else if (url.pathname === "/health") {
      const unhealthy = mode === "never-healthy" || mode === "503-then-hang" || (unhealthyFile !== undefined && existsSync(unhealthyFile));
      res.statusCode = unhealthy ? 503 : 200;
      res.end();
    } else if (url.pathname === "/metrics") {
      res.setHeader("content-type", "text/plain; version=0.0.4");
      res.end(
        `# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="fake"} ${running}.0\n` +
          `vllm:num_requests_waiting{model_name="fake"} 0.0\n` +
          `vllm:cache_config_info{block_size="32",num_gpu_blocks="777",prefix_caching_hash_algo="xxhash"} 1.0\n`,
      );
    } else if (url.pathname === "/slow") {
      running++;
      setTimeout(() => {
        running--;
        res.end("done");
      }, Number(url.searchParams.get("ms") ?? "1000"));
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  server.listen(port, host, () => console.log(`fake-engine listening on ${host}:${port}`));
}
