/**
 * `kvroute demo`: what kvroute is for, in one command. Replays a generated multi-turn chat
 * workload (ts/replay/workload.ts) against simulated vLLM workers twice — KV-aware routing, then
 * round-robin — and prints the comparison and the path of the HTML report.
 */
import { KvrouteError } from "../errors.js";
import { isPolicyChild, withoutFlags } from "../replay/policy-jobs.js";
import { chatWorkload } from "../replay/workload.js";
import { DEFAULT_ENGINE_PROFILE } from "../mocker/profiles.js";
import { parseCommandArgs, positiveInt, UsageError } from "./args.js";
import { parseClock, parsePolicies, positiveNumber, runReplayWithUi, shellQuote } from "./replay.js";

const HELP = `Usage: kvroute demo [options]

Replays a generated multi-turn chat workload (system prompts shared per application, each turn's
prompt the whole conversation so far) against simulated vLLM workers (the mocker's engine:
vLLM's scheduler and prefix cache, Llama-3.1-8B-on-H100 timing), routed by kvroute's KV-aware
policy and by round-robin, and shows the difference: prefix-cache hit rate, time to first token,
load balance. Takes a few seconds (virtual clock).

  --workers N          simulated workers (default 8)
  --conversations N    conversations in the workload (default 300, ~3,000 requests)
  --policy LIST        default kv,round-robin
  --clock C            virtual (default) or real (mocker processes behind the gateway)
  --speedup S          real clock: simulated / wall time (default 5)
  --html FILE          the report (default kvroute-demo.html)
  --json FILE          results as JSON
  --jobs N             policies replayed side by side (default: the number of CPUs)
  --quiet              no progress bar`;

export async function runDemo(argv: string[]): Promise<number> {
  try {
    const { values } = parseCommandArgs(argv, {
      workers: { type: "string" },
      conversations: { type: "string" },
      policy: { type: "string" },
      clock: { type: "string" },
      speedup: { type: "string" },
      html: { type: "string" },
      json: { type: "string" },
      jobs: { type: "string" },
      quiet: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    const workers = positiveInt("workers", values.workers, 8);
    const trace = chatWorkload({ conversations: positiveInt("conversations", values.conversations, 300) });
    const clock = parseClock(values.clock);
    if (!isPolicyChild()) {
      console.log(
        `kvroute demo: ${trace.requests.length.toLocaleString("en-US")} chat requests (multi-turn conversations, shared system prompts) on ${workers} simulated vLLM workers, ${clock} clock`,
      );
    }
    return await runReplayWithUi({
      trace,
      replay: {
        policies: parsePolicies(values.policy ?? "kv,round-robin"),
        clock,
        workers,
        // The generated workload is sized for 8B workers (the mocker's default profile).
        profile: DEFAULT_ENGINE_PROFILE,
        speedup: positiveNumber("speedup", values.speedup),
      },
      html: values.html ?? "kvroute-demo.html",
      json: values.json,
      quiet: values.quiet === true,
      command: ["kvroute", "demo", ...argv].map(shellQuote).join(" "),
      title: "kvroute demo",
      name: "demo",
      jobs: values.jobs === undefined ? undefined : positiveInt("jobs", values.jobs),
      childArgv: (policy) => ["demo", ...withoutFlags(argv, ["policy", "json", "html", "jobs"], ["quiet"]), "--policy", policy, "--quiet"],
    });
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute demo: ${err.message}${err instanceof UsageError ? "\n\nRun 'kvroute demo --help' for usage." : ""}`);
      return 2;
    }
    throw err;
  }
}
