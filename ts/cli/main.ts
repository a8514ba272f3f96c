/**
 * The `kvroute` command line. Each subcommand lives in its own module and exports `run(argv)`,
 * returning the process exit code. Loaded by bin.ts (the executable), after `serve`'s heap respawn.
 */
import { runDemo } from "./demo.js";
import { runHash } from "./hash.js";
import { runManifests } from "./manifests.js";
import { runMock } from "./mock.js";
import { runPlanner } from "./planner.js";
import { runProfile } from "./profile.js";
import { runReplayCommand } from "./replay.js";
import { runServe } from "./serve.js";
import { runTokenize } from "./tokenize.js";
import { runUp } from "./up.js";
import { runWorker } from "./worker.js";

const USAGE = `kvroute — KV-cache-aware routing for vLLM fleets

Usage: kvroute <command> [options]

Commands:
  demo      See what kvroute is for: KV-aware routing vs round-robin on a simulated fleet (~15 s)
  replay    Replay a workload trace against simulated workers and compare routing policies
            (--planner: a planner sizes the fleet to TTFT and ITL targets)
  profile   Sweep a worker type (mock or vLLM) into the SLA planner's profile
  planner   The SLA / load planner beside a gateway (decisions, metrics, decision log)
  hash      Block hashes of token sequences (JSON lines on stdin -> JSON lines on stdout)
  tokenize  Token ids exactly as vLLM computes them for a tokenizer folder (JSON lines in and out)
  serve     The KV-aware OpenAI gateway in front of a configured fleet (file, env, flags)
  up        A whole deployment: gateway + workers of a preset (agg, agg-router, disagg, disagg-router, dp)
  mock      A simulated vLLM server (vllm serve flags; KV events, metrics, timing model)
  worker    Start and supervise vLLM (or mocker) workers, one or a launch topology
  manifests Kubernetes YAML of a preset: workers, gateway (k8s registry), RBAC (docs/kubernetes.md)
  help      Show this help

Run 'kvroute <command> --help' for a command's options.`;

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, Command> = {
  demo: runDemo,
  replay: runReplayCommand,
  hash: runHash,
  tokenize: runTokenize,
  mock: runMock,
  profile: runProfile,
  planner: runPlanner,
  serve: runServe,
  up: runUp,
  worker: runWorker,
  manifests: runManifests,
};

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(USAGE);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`kvroute: unknown command '${name}'\n\n${USAGE}`);
    return 2;
  }
  return command(rest);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(`kvroute: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  },
);
