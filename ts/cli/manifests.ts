/**
 * `kvroute manifests --preset P --model M`: prints the Kubernetes YAML of a deployment preset
 * (ts/kubernetes/manifests.ts) for `kubectl apply -f -`.
 */
import { KvrouteError } from "../errors.js";
import { manifestsYaml, DEFAULT_VLLM_IMAGE, type ManifestOptions } from "../kubernetes/manifests.js";
import { ROUTER_MODES } from "../config/schema.js";
import { ENGINE_HASH_ALGORITHMS, type EngineHashAlgorithm } from "../core/block-hasher.js";
import type { RouterMode } from "../router/types.js";
import { TOPOLOGY_PRESETS, type TopologyPreset } from "../workers/topology.js";
import { parseArgs } from "node:util";
import { positiveInt, UsageError } from "./args.js";

const HELP = `Usage: kvroute manifests --preset <preset> --model M [options] [-- <vllm serve args>]

Prints the Kubernetes manifests of a deployment (YAML, for 'kubectl apply -f -'): a Deployment
and a Service per worker role running the same 'vllm serve' command lines as 'kvroute up', the
gateway (ConfigMap, Deployment, Service) discovering the workers through
'--registry k8s://<namespace>/<services>', and the ServiceAccount, Role and RoleBinding it needs.
Presets: ${TOPOLOGY_PRESETS.join(", ")} (as kvroute up). See docs/kubernetes.md.

  --preset P                  ${TOPOLOGY_PRESETS.join(" | ")}
  --model M                   the model vLLM serves (Hugging Face name or a path in the image)
  --served-model-name NAME    the name clients send (default: the model)
  --namespace NS              metadata.namespace of every object (default default)
  --name NAME                 prefix of every object's name (default kvroute)
  --image IMG                 vLLM image (default ${DEFAULT_VLLM_IMAGE})
  --gateway-image IMG         image with the kvroute CLI (default kvroute:<version>)
  --gateway-replicas N        default 1
  --workers N                 aggregated workers, DP size (dp), or prefill and decode each
  --prefill-workers N         disagg presets
  --decode-workers N          disagg presets
  --data-parallel-size N      DP ranks per worker pod (dp: the group's size)
  --tensor-parallel-size N    GPUs per DP rank (--tensor-parallel-size of vllm serve)
  --block-size N
  --hash-algorithm A          ${ENGINE_HASH_ALGORITHMS.join(" | ")}
  --python-hash-seed S        PYTHONHASHSEED of every worker (default 0)
  --max-model-len N
  --gpu-memory-utilization X
  --router-mode M             ${ROUTER_MODES.join(" | ")} (default kv)

Exit codes: 0 printed, 2 bad usage.`;

export async function runManifests(argv: string[]): Promise<number> {
  const dashDash = argv.indexOf("--");
  const own = dashDash >= 0 ? argv.slice(0, dashDash) : argv;
  const passthrough = dashDash >= 0 ? argv.slice(dashDash + 1) : [];
  try {
    let values;
    try {
      values = parseArgs({
        args: own,
        strict: true,
        allowPositionals: false,
        options: {
          preset: { type: "string" },
          model: { type: "string" },
          "served-model-name": { type: "string" },
          namespace: { type: "string" },
          name: { type: "string" },
          image: { type: "string" },
          "gateway-image": { type: "string" },
          "gateway-replicas": { type: "string" },
          workers: { type: "string" },
          "prefill-workers": { type: "string" },
          "decode-workers": { type: "string" },
          "data-parallel-size": { type: "string" },
          "tensor-parallel-size": { type: "string" },
          "block-size": { type: "string" },
          "hash-algorithm": { type: "string" },
          "python-hash-seed": { type: "string" },
          "max-model-len": { type: "string" },
          "gpu-memory-utilization": { type: "string" },
          "router-mode": { type: "string" },
          help: { type: "boolean", short: "h" },
        },
      }).values;
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    const preset = values.preset as TopologyPreset | undefined;
    if (preset === undefined) throw new UsageError(`--preset is required (${TOPOLOGY_PRESETS.join(", ")})`);
    if (!TOPOLOGY_PRESETS.includes(preset)) throw new UsageError(`unknown preset '${preset}' (expected ${TOPOLOGY_PRESETS.join(", ")})`);
    if (!values.model) throw new UsageError("--model is required");
    const options: ManifestOptions = { preset, model: values.model };
    const int = (flag: keyof typeof values) => positiveInt(flag, values[flag] as string);
    if (values["served-model-name"] !== undefined) options.servedModelName = values["served-model-name"];
    if (values.namespace !== undefined) options.namespace = values.namespace;
    if (values.name !== undefined) options.name = values.name;
    if (values.image !== undefined) options.image = values.image;
    if (values["gateway-image"] !== undefined) options.gatewayImage = values["gateway-image"];
    if (values["gateway-replicas"] !== undefined) options.gatewayReplicas = int("gateway-replicas");
    if (values.workers !== undefined) options.workers = int("workers");
    if (values["prefill-workers"] !== undefined) options.prefillWorkers = int("prefill-workers");
    if (values["decode-workers"] !== undefined) options.decodeWorkers = int("decode-workers");
    if (values["data-parallel-size"] !== undefined) options.dataParallelSize = int("data-parallel-size");
    if (values["tensor-parallel-size"] !== undefined) options.tensorParallelSize = int("tensor-parallel-size");
    if (values["block-size"] !== undefined) options.blockSize = int("block-size");
    if (values["max-model-len"] !== undefined) options.maxModelLen = int("max-model-len");
    if (values["hash-algorithm"] !== undefined) {
      if (!ENGINE_HASH_ALGORITHMS.includes(values["hash-algorithm"] as EngineHashAlgorithm)) throw new UsageError(`--hash-algorithm must be one of ${ENGINE_HASH_ALGORITHMS.join(", ")}`);
      options.hashAlgorithm = values["hash-algorithm"] as EngineHashAlgorithm;
    }
    if (values["python-hash-seed"] !== undefined) options.pythonHashSeed = values["python-hash-seed"];
    if (values["gpu-memory-utilization"] !== undefined) {
      const x = Number(values["gpu-memory-utilization"]);
      if (!(x > 0 && x <= 1)) throw new UsageError(`--gpu-memory-utilization must be in (0, 1]: got '${values["gpu-memory-utilization"]}'`);
      options.gpuMemoryUtilization = x;
    }
    if (values["router-mode"] !== undefined) {
      if (!ROUTER_MODES.includes(values["router-mode"] as RouterMode)) throw new UsageError(`--router-mode must be one of ${ROUTER_MODES.join(", ")}`);
      options.routerMode = values["router-mode"] as RouterMode;
    }
    if (passthrough.length > 0) options.extraArgs = passthrough;
    process.stdout.write(manifestsYaml(options));
    return 0;
  } catch (err) {
    if (err instanceof UsageError || err instanceof KvrouteError) {
      console.error(`kvroute manifests: ${err.message}\n\nRun 'kvroute manifests --help' for usage.`);
      return 2;
    }
    throw err;
  }
}
