/**
 * `kvroute serve`: the gateway in front of an existing fleet, configured by a file (JSON or YAML),
 * `KVROUTE_*` environment variables and flags (docs/gateway.md). Registers the configured workers,
 * follows their KV events and metrics, serves the OpenAI API until SIGINT/SIGTERM.
 */
import { describeSchema, loadGatewayConfig } from "../config/index.js";
import { InvalidConfigError, KvrouteError, TokenizerLoadError } from "../errors.js";
import { startGateway } from "../gateway/server.js";
import { accessHelp, ACCESS_OPTIONS, withAccessFlags } from "./access-flags.js";
import { parseCommandArgs, UsageError } from "./args.js";

/** Flag -> schema path. */
const FLAGS: Record<string, string> = {
  host: "host",
  port: "port",
  "router-mode": "routerMode",
  front: "front",
  "migration-limit": "migrationLimit",
  "max-body-bytes": "maxBodyBytes",
  "queue-max-size": "queue.maxSize",
  "queue-timeout-ms": "queue.timeoutMs",
  "max-active-per-worker": "queue.maxActivePerWorker",
  registry: "registry",
  bus: "bus",
  namespace: "fleet.namespace",
};

const HELP = `Usage: kvroute serve [--config FILE] [options]

Starts the KV-aware OpenAI gateway in front of the workers of the config file: registers them,
subscribes to their KV events (ZMQ, every DP rank), scrapes their /metrics, and serves
/v1/completions, /v1/chat/completions, /v1/models, /v1/kvroute/route, /health and /metrics.

  --config FILE               JSON or YAML (default: $KVROUTE_CONFIG)
  --host H                    listen address (default 0.0.0.0)
  --port P                    listen port (default 8000)
  --router-mode M             kv | round-robin | random | least-loaded (default kv)
  --front F                   node | native: native answers non-streamed completions and chat on
                              a Rust thread and hands the rest to node:http (default node)
  --migration-limit N         re-issues of a request whose worker failed mid-stream (default 0)
  --max-body-bytes N          larger request bodies get 413
  --queue-max-size N          requests held while every worker is busy
  --queue-timeout-ms N        longest wait in that queue
  --max-active-per-worker N   in-flight requests per worker DP rank before it counts as busy
  --registry etcd://H:P       fleet mode: discover workers in etcd (etcds:// for TLS)
  --registry k8s://NS/SVC[,SVC...]  the ready pods of those Kubernetes Services, followed through
                              their EndpointSlices (docs/kubernetes.md)
  --bus nats://H:P            fleet mode: share request load with the other replicas over NATS
  --namespace NS              fleet namespace (etcd keys, NATS subjects; default "default")
${accessHelp(30)}

Precedence: flags > environment > file > defaults. Environment variables:
${describeSchema()
  .map((d) => `  ${d.env.padEnd(40)} ${d.path}${d.default ? ` (default ${d.default})` : ""}`)
  .join("\n")}

A model's tokenizer folder (models[].tokenizer: a Hugging Face folder with tokenizer.json,
tokenizer_config.json...) keys its text and chat requests by the token ids vLLM computes; a model
without one has them routed by load only (one warning at start).

Exit codes: 0 stopped by a signal, 1 could not start, 2 bad usage or configuration (including a
tokenizer folder that does not load).`;

export async function runServe(argv: string[]): Promise<number> {
  let config;
  try {
    const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {
      config: { type: "string" },
      help: { type: "boolean", short: "h" },
      ...ACCESS_OPTIONS,
    };
    for (const f of Object.keys(FLAGS)) options[f] = { type: "string" };
    const values = parseCommandArgs(argv, options).values as Record<string, string | boolean | string[] | undefined>;
    if (values["help"]) {
      console.log(HELP);
      return 0;
    }
    const overrides: Record<string, string | undefined> = {};
    const overrideSources: Record<string, string> = {};
    for (const [flag, path] of Object.entries(FLAGS)) {
      const v = values[flag];
      if (typeof v === "string") {
        overrides[path] = v;
        overrideSources[path] = `--${flag}`;
      }
    }
    config = withAccessFlags(loadGatewayConfig({ file: values["config"] as string | undefined, overrides, overrideSources }), {
      "api-key": values["api-key"] as string[] | undefined,
      "admin-api-key": values["admin-api-key"] as string | undefined,
    });
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute serve: ${err.message}\n\nRun 'kvroute serve --help' for usage.`);
      return 2;
    }
    throw err;
  }
  if (config.models.length === 0) console.error("kvroute serve: warning: no models configured; every request will get 404");
  let running;
  try {
    running = await startGateway(config);
  } catch (err) {
    console.error(`kvroute serve: ${err instanceof Error ? err.message : String(err)}`);
    return err instanceof TokenizerLoadError || err instanceof InvalidConfigError ? 2 : 1;
  }
  warnUntokenized("kvroute serve", running.gateway.tokenizers.missing(config.models.map((m) => m.name)));
  const workers = running.registry.list().length;
  const fleet = config.registry || config.bus ? { fleet: { registry: config.registry || null, bus: config.bus || null, namespace: config.fleet.namespace } } : {};
  console.log(
    `kvroute serve: ready ${JSON.stringify({ url: running.url, routerMode: config.routerMode, models: config.models.map((m) => m.name), workers, ...fleet })}`,
  );
  await waitForSignal();
  console.error("kvroute serve: stopping");
  await running.close();
  return 0;
}

/** One warning at start naming the models whose text and chat requests cannot be keyed. */
export function warnUntokenized(command: string, models: readonly string[]): void {
  if (models.length === 0) return;
  console.error(
    `${command}: warning: no tokenizer for model${models.length > 1 ? "s" : ""} ${models.join(", ")} (models[].tokenizer, or --tokenizer DIR): ` +
      "text and chat requests are routed by load only, without KV-cache overlap (counted in kvroute_requests_untokenized_total); token-id prompts are keyed as usual",
  );
}

export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals) => {
      process.off("SIGINT", on);
      process.off("SIGTERM", on);
      resolve(signal);
    };
    process.on("SIGINT", on);
    process.on("SIGTERM", on);
  });
}
