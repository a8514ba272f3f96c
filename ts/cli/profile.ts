/**
 * `kvroute profile`: measures a worker type and writes the SLA planner's profile (JSON with
 * Dynamo's field names). `--engine mock` sweeps the mocker's engine on a simulated clock in this
 * process (seconds); `--engine vllm` sweeps a running server (`--url`) or one it starts (`--cmd`,
 * stopped afterwards) over HTTP.
 */
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { KvrouteError } from "../errors.js";
import { ENGINE_PROFILE_NAMES, engineProfile } from "../mocker/profiles.js";
import { sweepHttpEngine } from "../planner/http-profiler.js";
import { DEFAULT_SWEEP, sweepMockEngine } from "../planner/mock-profiler.js";
import { profileToJson, type PerfProfile } from "../planner/profile.js";
import { parseCommandArgs, positiveInt, UsageError } from "./args.js";

const HELP = `Usage: kvroute profile --engine mock|vllm [options] --out FILE

Sweeps one worker type and writes the SLA planner's profile: prefill TTFT and throughput per GPU
against input length, decode ITL and throughput per GPU against KV usage and context length, and
max_kv_tokens (Dynamo's field names: prefill_isl, prefill_ttft, prefill_thpt_per_gpu, x_kv_usage,
y_context_length, z_itl, z_thpt_per_gpu, max_kv_tokens).

  --engine mock           the mocker's engine on a simulated clock (seconds of wall time)
    --profile NAME        ${ENGINE_PROFILE_NAMES.join(", ")}
  --engine vllm           an OpenAI-compatible server over HTTP
    --url URL             a running server (e.g. http://127.0.0.1:8000)
    --cmd "COMMAND"       start the server with this shell command, wait for --url/health, stop it after
    --model NAME          default: the first of /v1/models
    --max-kv-tokens N     default: vllm:cache_config_info on /metrics
    --concurrency LIST    decode batch sizes (default 1,4,16,64)
    --time-scale S        multiply measured times (a mocker at --speedup S: S)
    --startup-timeout S   --cmd: seconds to wait for /health (default 600)
  --isl LIST              input lengths (default ${DEFAULT_SWEEP.isl.join(",")}; vllm: 512,2048,8192)
  --contexts LIST         decode context lengths (default ${DEFAULT_SWEEP.contexts.join(",")}; vllm: 1024,4096)
  --gpus N                GPUs per worker (throughputs are per GPU; default 1)
  --out FILE              where to write the JSON (default: stdout)`;

function list(flag: string, v: string | undefined, fallback: number[]): number[] {
  if (v === undefined) return fallback;
  const xs = v.split(",").map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x <= 0)) throw new UsageError(`--${flag} must be a comma-separated list of positive integers: got '${v}'`);
  return xs;
}

async function waitHealthy(url: string, timeoutMs: number, exited: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited()) throw new UsageError(`--cmd exited before ${url}/health answered`);
    const ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new UsageError(`${url}/health did not answer within ${timeoutMs / 1000} s`);
}

export async function runProfile(argv: string[]): Promise<number> {
  let profile: PerfProfile;
  let out: string | undefined;
  try {
    const { values } = parseCommandArgs(argv, {
      engine: { type: "string" },
      profile: { type: "string" },
      url: { type: "string" },
      cmd: { type: "string" },
      model: { type: "string" },
      "max-kv-tokens": { type: "string" },
      concurrency: { type: "string" },
      "time-scale": { type: "string" },
      "startup-timeout": { type: "string" },
      isl: { type: "string" },
      contexts: { type: "string" },
      gpus: { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    out = values.out;
    const gpus = values.gpus === undefined ? 1 : positiveInt("gpus", values.gpus);
    if (values.engine === "mock") {
      const name = values.profile ?? "llama-3.1-8b-h100";
      engineProfile(name);
      profile = sweepMockEngine({ engine: { profile: name }, gpusPerWorker: gpus, isl: list("isl", values.isl, DEFAULT_SWEEP.isl), contexts: list("contexts", values.contexts, DEFAULT_SWEEP.contexts) });
    } else if (values.engine === "vllm") {
      if (values.url === undefined) throw new UsageError("--engine vllm needs --url (with or without --cmd)");
      const url = values.url.replace(/\/+$/, "");
      const scale = values["time-scale"] === undefined ? 1 : Number(values["time-scale"]);
      if (!(scale > 0)) throw new UsageError(`--time-scale must be > 0: got '${values["time-scale"]}'`);
      let stop = async () => {};
      if (values.cmd !== undefined) {
        const child = spawn(values.cmd, { shell: true, stdio: ["ignore", "inherit", "inherit"], detached: true });
        let gone = false;
        const exitedP = new Promise<void>((r) => child.once("exit", () => ((gone = true), r())));
        stop = async () => {
          if (gone) return;
          try {
            process.kill(-child.pid!, "SIGTERM");
          } catch {
            /* already gone */
          }
          await exitedP;
        };
        const timeout = values["startup-timeout"] === undefined ? 600 : positiveInt("startup-timeout", values["startup-timeout"]);
        try {
          await waitHealthy(url, timeout * 1000, () => gone);
        } catch (err) {
          await stop();
          throw err;
        }
      }
      try {
        profile = await sweepHttpEngine({
          url,
          model: values.model,
          gpusPerWorker: gpus,
          isl: list("isl", values.isl, [512, 2048, 8192]),
          contexts: list("contexts", values.contexts, [1024, 4096]),
          concurrencies: list("concurrency", values.concurrency, [1, 4, 16, 64]),
          maxKvTokens: values["max-kv-tokens"] === undefined ? undefined : positiveInt("max-kv-tokens", values["max-kv-tokens"]),
          timeScale: scale,
          log: (l) => process.stderr.write(`kvroute profile: ${l}\n`),
        });
      } finally {
        await stop();
      }
    } else {
      throw new UsageError(`--engine must be mock or vllm: got '${values.engine ?? ""}'`);
    }
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute profile: ${err.message}${err instanceof UsageError ? "\n\nRun 'kvroute profile --help' for usage." : ""}`);
      return 2;
    }
    throw err;
  }
  const text = `${JSON.stringify(profileToJson(profile), null, 1)}\n`;
  if (out === undefined) process.stdout.write(text);
  else {
    mkdirSync(dirname(resolve(out)), { recursive: true });
    writeFileSync(out, text);
    console.error(`kvroute profile: wrote ${resolve(out)} (${profile.prefill.isl.length} prefill points, ${profile.decode.kvUsage.length} decode points)`);
  }
  return 0;
}
