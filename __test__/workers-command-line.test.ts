import { loadTokenizationGolden, tokenizerDir } from "./helpers/tokenization-golden.js";
import { describe, expect, it } from "vitest";
import { InvalidConfigError } from "../ts/errors.js";
import {
  buildCommandLine,
  cacheConfigInfo,
  connectableEndpoint,
  inFlightRequests,
  kvTransferConfigFor,
  mockerCommand,
  parsePrometheus,
  planTopology,
  workerRecordFor,
  type VllmWorkerConfig,
} from "../ts/workers/index.js";

const base: VllmWorkerConfig = { model: "Qwen/Qwen3-0.6B", port: 8000 };

/** The value following `flag` in argv. */
function flagValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

describe("buildCommandLine", () => {
  it("builds a plain aggregated vllm serve command", () => {
    expect(buildCommandLine(base)).toEqual({
      command: "vllm",
      args: ["serve", "Qwen/Qwen3-0.6B", "--host", "127.0.0.1", "--port", "8000"],
      env: {},
    });
  });

  it("maps every engine option to vLLM's flag, extra args last and verbatim", () => {
    const spec = JSON.stringify({ method: "eagle3", model: "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", num_speculative_tokens: 3 });
    const cl = buildCommandLine({
      ...base,
      servedModelName: "qwen",
      host: "0.0.0.0",
      blockSize: 64,
      prefixCachingHashAlgo: "xxhash",
      numGpuBlocksOverride: 512,
      gpuMemoryUtilization: 0.85,
      maxModelLen: 4096,
      pythonHashSeed: 0,
      extraArgs: ["--speculative-config", spec, "--enable-prompt-embeds"],
      env: { VLLM_LOGGING_LEVEL: "DEBUG" },
    });
    expect(cl.args).toEqual([
      "serve", "Qwen/Qwen3-0.6B",
      "--host", "0.0.0.0",
      "--port", "8000",
      "--served-model-name", "qwen",
      "--block-size", "64",
      "--prefix-caching-hash-algo", "xxhash",
      "--num-gpu-blocks-override", "512",
      "--gpu-memory-utilization", "0.85",
      "--max-model-len", "4096",
      "--speculative-config", spec,
      "--enable-prompt-embeds",
    ]);
    expect(cl.env).toEqual({ VLLM_LOGGING_LEVEL: "DEBUG", PYTHONHASHSEED: "0" });
  });

  it("turns kvEvents into --kv-events-config with the zmq publisher and prefix caching on", () => {
    const cl = buildCommandLine({
      ...base,
      kvEvents: { endpoint: "tcp://*:5557", replayEndpoint: "tcp://*:5657", topic: "kv@w0", bufferSteps: 2000 },
    });
    expect(cl.args).toContain("--enable-prefix-caching");
    expect(JSON.parse(flagValue(cl.args, "--kv-events-config")!)).toEqual({
      enable_kv_cache_events: true,
      publisher: "zmq",
      endpoint: "tcp://*:5557",
      replay_endpoint: "tcp://*:5657",
      topic: "kv@w0",
      buffer_steps: 2000,
    });
    expect(buildCommandLine({ ...base, kvEvents: { endpoint: "tcp://*:5557" }, enablePrefixCaching: false }).args).toContain(
      "--no-enable-prefix-caching",
    );
  });

  it("gives prefill and decode workers the NIXL connector (kv_both; the role travels per request)", () => {
    for (const role of ["prefill", "decode"] as const) {
      const cl = buildCommandLine({ ...base, role, nixlSideChannelPort: 20097 });
      expect(JSON.parse(flagValue(cl.args, "--kv-transfer-config")!)).toEqual({ kv_connector: "NixlConnector", kv_role: "kv_both" });
      expect(cl.env["VLLM_NIXL_SIDE_CHANNEL_PORT"]).toBe("20097");
    }
    expect(buildCommandLine({ ...base, role: "aggregated" }).args).not.toContain("--kv-transfer-config");
  });

  it("maps each connector and role as vLLM, LMCache and Dynamo expect", () => {
    expect(kvTransferConfigFor("none", "aggregated")).toBeNull();
    expect(kvTransferConfigFor("nixl", "aggregated")).toEqual({ kv_connector: "NixlConnector", kv_role: "kv_both" });
    expect(kvTransferConfigFor("lmcache", "aggregated")).toEqual({ kv_connector: "LMCacheConnectorV1", kv_role: "kv_both" });
    expect(kvTransferConfigFor("lmcache", "prefill", { port: 7100 })).toEqual({
      kv_connector: "LMCacheConnectorV1",
      kv_role: "kv_producer",
      kv_connector_extra_config: { discard_partial_chunks: false, lmcache_rpc_port: "producer7100" },
    });
    expect(kvTransferConfigFor("lmcache", "decode", { port: 7200 })).toEqual({
      kv_connector: "LMCacheConnectorV1",
      kv_role: "kv_consumer",
      kv_connector_extra_config: { discard_partial_chunks: false, lmcache_rpc_port: "consumer7200" },
    });
    expect(kvTransferConfigFor("kvbm", "aggregated")).toEqual({
      kv_connector: "DynamoConnector",
      kv_connector_module_path: "kvbm.vllm_integration.connector",
      kv_role: "kv_both",
    });
    expect(kvTransferConfigFor(["lmcache", "nixl"], "prefill")).toEqual({
      kv_connector: "MultiConnector",
      kv_role: "kv_both",
      kv_connector_extra_config: {
        connectors: [
          { kv_connector: "LMCacheConnectorV1", kv_role: "kv_both" },
          { kv_connector: "NixlConnector", kv_role: "kv_both" },
        ],
      },
    });
    expect(kvTransferConfigFor(["kvbm", "nixl"], "prefill")).toEqual({
      kv_connector: "PdConnector",
      kv_role: "kv_both",
      kv_connector_module_path: "kvbm.vllm_integration.connector",
      kv_connector_extra_config: {
        connectors: [
          { kv_connector: "DynamoConnector", kv_connector_module_path: "kvbm.vllm_integration.connector", kv_role: "kv_both" },
          { kv_connector: "NixlConnector", kv_role: "kv_both" },
        ],
      },
    });
  });

  it("rejects disaggregated roles without a transferring connector, and bad connectors", () => {
    expect(() => buildCommandLine({ ...base, role: "prefill", connector: "none" })).toThrow(/prefill worker needs a KV connector/);
    expect(() => buildCommandLine({ ...base, role: "decode", connector: "kvbm" })).toThrow(InvalidConfigError);
    expect(() => kvTransferConfigFor(["none", "nixl"], "aggregated")).toThrow(/cannot be combined/);
    expect(() => kvTransferConfigFor("bogus" as never, "aggregated")).toThrow(/unknown KV connector 'bogus'/);
  });

  it("uses a verbatim kvTransferConfig instead of the derived one", () => {
    const custom = { kv_connector: "P2pNcclConnector", kv_role: "kv_producer" as const, kv_port: 21001 };
    const cl = buildCommandLine({ ...base, role: "prefill", kvTransferConfig: custom });
    expect(JSON.parse(flagValue(cl.args, "--kv-transfer-config")!)).toEqual(custom);
  });

  it("passes internal and external data parallelism", () => {
    const internal = buildCommandLine({ ...base, dataParallel: { size: 4 } }).args;
    expect(flagValue(internal, "--data-parallel-size")).toBe("4");
    expect(internal).not.toContain("--data-parallel-rank");
    const external = buildCommandLine({ ...base, dataParallel: { size: 4, rank: 2 } }).args;
    expect(flagValue(external, "--data-parallel-size")).toBe("4");
    expect(flagValue(external, "--data-parallel-rank")).toBe("2");
    expect(buildCommandLine(base).args).not.toContain("--data-parallel-size");
  });

  it("runs any command in place of vllm serve, with the same flags", () => {
    const cl = buildCommandLine({ ...base, command: ["/usr/bin/node", "/x/dist/cli.mjs", "mock"], extraArgs: ["--speedup", "50"] });
    expect(cl.command).toBe("/usr/bin/node");
    expect(cl.args.slice(0, 3)).toEqual(["/x/dist/cli.mjs", "mock", "Qwen/Qwen3-0.6B"]);
    expect(cl.args.slice(-2)).toEqual(["--speedup", "50"]);
    const mock = mockerCommand();
    expect(mock[0]).toBe(process.execPath);
    expect(mock[1]).toMatch(/dist[\\/]cli\.mjs$/);
    expect(mock[2]).toBe("mock");
  });

  it("rejects invalid configs naming the field", () => {
    const bad: [Partial<VllmWorkerConfig>, RegExp][] = [
      [{ model: "" }, /'model' is required/],
      [{ port: 0 }, /'port' must be a port/],
      [{ port: 70000 }, /'port' must be a port/],
      [{ role: "encode" as never }, /'role' must be one of/],
      [{ blockSize: 0 }, /'blockSize' must be a positive integer/],
      [{ gpuMemoryUtilization: 1.5 }, /'gpuMemoryUtilization' must be in/],
      [{ dataParallel: { size: 2, rank: 2 } }, /'dataParallel.rank' must be in \[0, 2\)/],
      [{ dataParallel: { size: 2 }, kvEvents: { endpoint: "ipc:///tmp/kv" } }, /must contain 'inproc' or 'tcp'/],
      [{ command: [] }, /'command' must name a binary/],
      [{ id: "a b" }, /invalid id/],
    ];
    for (const [patch, message] of bad) {
      expect(() => buildCommandLine({ ...base, ...patch } as VllmWorkerConfig), JSON.stringify(patch)).toThrow(message);
    }
  });
});

describe("workerRecordFor", () => {
  it("describes the worker as the router reaches it", () => {
    const record = workerRecordFor({
      ...base,
      id: "w0",
      host: "0.0.0.0",
      servedModelName: "qwen",
      role: "decode",
      blockSize: 64,
      prefixCachingHashAlgo: "sha256_cbor",
      pythonHashSeed: 42,
      numGpuBlocksOverride: 1000,
      kvEvents: { endpoint: "tcp://*:5557", replayEndpoint: "tcp://*:5657", topic: "kv" },
    });
    expect(record).toEqual({
      id: "w0",
      model: "qwen",
      role: "decode",
      url: "http://127.0.0.1:8000",
      kvEvents: { endpoints: ["tcp://127.0.0.1:5557"], replayEndpoints: ["tcp://127.0.0.1:5657"], topic: "kv" },
      blockSize: 64,
      hashAlgorithm: "sha256_cbor",
      hashSeed: "42",
      numGpuBlocks: 1000,
      dataParallelSize: 1,
      dpRanks: [0],
      tokenizer: null,
    });
  });

  it("names the tokenizer folder vLLM loads when the gateway can load it too (--tokenizer, or a model folder)", () => {
    const golden = loadTokenizationGolden();
    const qwen = tokenizerDir(golden, "qwen3");
    const llama = tokenizerDir(golden, "llama3_1");
    expect(workerRecordFor({ ...base, extraArgs: ["--tokenizer", qwen] }).tokenizer).toBe(qwen);
    expect(workerRecordFor({ ...base, extraArgs: [`--tokenizer=${qwen}`] }).tokenizer).toBe(qwen);
    expect(workerRecordFor({ ...base, model: llama }).tokenizer).toBe(llama);
    // A hub name is vLLM's to fetch: the gateway cannot load it.
    expect(workerRecordFor({ ...base, model: "Qwen/Qwen3-0.6B", extraArgs: ["--tokenizer", "Qwen/Qwen3-0.6B"] }).tokenizer).toBeNull();
  });

  it("lists one endpoint per DP rank at vLLM's port offsets", () => {
    const kvEvents = { endpoint: "tcp://*:5557", replayEndpoint: "tcp://*:5657" };
    const internal = workerRecordFor({ ...base, dataParallel: { size: 3 }, kvEvents });
    expect(internal.dpRanks).toEqual([0, 1, 2]);
    expect(internal.kvEvents!.endpoints).toEqual(["tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", "tcp://127.0.0.1:5559"]);
    expect(internal.kvEvents!.replayEndpoints).toEqual(["tcp://127.0.0.1:5657", "tcp://127.0.0.1:5658", "tcp://127.0.0.1:5659"]);
    const external = workerRecordFor({ ...base, advertiseHost: "10.0.0.7", dataParallel: { size: 4, rank: 2 }, kvEvents });
    expect(external.dpRanks).toEqual([2]);
    expect(external.dataParallelSize).toBe(4);
    expect(external.url).toBe("http://10.0.0.7:8000");
    expect(external.kvEvents!.endpoints).toEqual(["tcp://10.0.0.7:5559"]);
  });

  it("falls back to what the engine reports, then to vLLM's defaults, and to the inherited seed", () => {
    expect(workerRecordFor(base, { inheritedHashSeed: "7", engine: { blockSize: 32, numGpuBlocks: 99, hashAlgorithm: "xxhash" } })).toMatchObject({
      blockSize: 32,
      numGpuBlocks: 99,
      hashAlgorithm: "xxhash",
      hashSeed: "7",
      kvEvents: null,
    });
    expect(workerRecordFor(base)).toMatchObject({ blockSize: 16, hashAlgorithm: "sha256", hashSeed: null, numGpuBlocks: null });
  });

  it("turns bind endpoints into connectable ones", () => {
    expect(connectableEndpoint("tcp://*:5557", "10.1.2.3")).toBe("tcp://10.1.2.3:5557");
    expect(connectableEndpoint("tcp://0.0.0.0:5557", "::1")).toBe("tcp://[::1]:5557");
    expect(connectableEndpoint("tcp://router:5557", "10.1.2.3")).toBe("tcp://router:5557");
    expect(connectableEndpoint("ipc:///tmp/kv", "10.1.2.3")).toBe("ipc:///tmp/kv");
  });
});

describe("planTopology", () => {
  const opts = { engine: "vllm" as const, basePort: 9000, baseEventPort: 6000 };

  it("agg: N aggregated workers, no connector, no KV events, one GPU each", () => {
    const configs = planTopology("agg", { ...opts, workers: 2 });
    expect(configs.map((c) => [c.id, c.role, c.port, c.kvEvents, c.env?.["CUDA_VISIBLE_DEVICES"]])).toEqual([
      ["worker-0", "aggregated", 9000, undefined, "0"],
      ["worker-1", "aggregated", 9001, undefined, "1"],
    ]);
    expect(configs[0]!.pythonHashSeed).toBe("0");
    expect(buildCommandLine(configs[0]!).args).not.toContain("--kv-transfer-config");
  });

  it("agg-router: KV events on consecutive PUB ports, replay ports after them", () => {
    const configs = planTopology("agg-router", { ...opts, workers: 3, topic: "kv" });
    expect(configs.map((c) => c.kvEvents)).toEqual([
      { endpoint: "tcp://127.0.0.1:6000", replayEndpoint: "tcp://127.0.0.1:6003", topic: "kv" },
      { endpoint: "tcp://127.0.0.1:6001", replayEndpoint: "tcp://127.0.0.1:6004", topic: "kv" },
      { endpoint: "tcp://127.0.0.1:6002", replayEndpoint: "tcp://127.0.0.1:6005", topic: "kv" },
    ]);
  });

  it("disagg-router: prefill then decode workers, NIXL, distinct side-channel ports, KV events", () => {
    // Event sockets follow the workers' HTTP host: every interface only for a wildcard host.
    expect(planTopology("agg-router", { ...opts, workers: 1, host: "0.0.0.0" })[0]!.kvEvents).toMatchObject({ endpoint: "tcp://*:6000", replayEndpoint: "tcp://*:6001" });
    expect(planTopology("agg-router", { ...opts, workers: 1, host: "::1" })[0]!.kvEvents).toMatchObject({ endpoint: "tcp://[::1]:6000", replayEndpoint: "tcp://[::1]:6001" });
    const configs = planTopology("disagg-router", { ...opts, prefillWorkers: 2, decodeWorkers: 1 });
    expect(configs.map((c) => [c.id, c.role, c.port, c.nixlSideChannelPort])).toEqual([
      ["prefill-0", "prefill", 9000, 20096],
      ["prefill-1", "prefill", 9001, 20097],
      ["decode-0", "decode", 9002, 20098],
    ]);
    for (const c of configs) {
      expect(JSON.parse(flagValue(buildCommandLine(c).args, "--kv-transfer-config")!).kv_connector).toBe("NixlConnector");
      expect(c.kvEvents).toBeDefined();
    }
    expect(planTopology("disagg", opts).map((c) => [c.role, c.kvEvents])).toEqual([
      ["prefill", undefined],
      ["decode", undefined],
    ]);
  });

  it("dp: external layout for vLLM (one process per rank, as dep.sh), internal for the mocker", () => {
    const ext = planTopology("dp", { ...opts, workers: 4 });
    expect(ext.map((c) => [c.id, c.port, c.dataParallel, c.kvEvents!.endpoint, c.env?.["CUDA_VISIBLE_DEVICES"]])).toEqual([
      ["dp-rank0", 9000, { size: 4, rank: 0 }, "tcp://127.0.0.1:6000", "0"],
      ["dp-rank1", 9001, { size: 4, rank: 1 }, "tcp://127.0.0.1:6000", "1"],
      ["dp-rank2", 9002, { size: 4, rank: 2 }, "tcp://127.0.0.1:6000", "2"],
      ["dp-rank3", 9003, { size: 4, rank: 3 }, "tcp://127.0.0.1:6000", "3"],
    ]);
    // vLLM offsets each rank's port: the records do too, without collisions with the replay block.
    const records = ext.map((c) => workerRecordFor(c));
    expect(records.map((r) => r.kvEvents!.endpoints[0])).toEqual(["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "tcp://127.0.0.1:6002", "tcp://127.0.0.1:6003"]);
    expect(records.map((r) => r.kvEvents!.replayEndpoints![0])).toEqual(["tcp://127.0.0.1:6004", "tcp://127.0.0.1:6005", "tcp://127.0.0.1:6006", "tcp://127.0.0.1:6007"]);

    const internal = planTopology("dp", { ...opts, engine: "mock", command: ["node", "cli.mjs", "mock"], workers: 2, speedup: 100 });
    expect(internal).toHaveLength(1);
    expect(internal[0]!.dataParallel).toEqual({ size: 2 });
    expect(internal[0]!.env?.["CUDA_VISIBLE_DEVICES"]).toBeUndefined();
    expect(buildCommandLine(internal[0]!).args.slice(-2)).toEqual(["--speedup", "100"]);
  });

  it("DP groups in agg presets take as many event ports and GPUs as they have ranks", () => {
    const configs = planTopology("agg-router", { ...opts, workers: 2, dataParallelSize: 2, dpLayout: "internal" });
    expect(configs.map((c) => [c.kvEvents!.endpoint, c.kvEvents!.replayEndpoint, c.env?.["CUDA_VISIBLE_DEVICES"]])).toEqual([
      ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6004", "0,1"],
      ["tcp://127.0.0.1:6002", "tcp://127.0.0.1:6006", "2,3"],
    ]);
  });

  it("rejects unknown presets and mocker-only options for vLLM", () => {
    expect(() => planTopology("fleet" as never)).toThrow(/unknown topology 'fleet'/);
    expect(() => planTopology("agg", { speedup: 10 })).toThrow(/mocker option/);
    expect(() => planTopology("agg", { workers: 0 })).toThrow(/'workers' must be a positive integer/);
  });
});

describe("engine metrics", () => {
  const text = [
    "# HELP vllm:num_requests_running Number of requests in model execution batches.",
    "# TYPE vllm:num_requests_running gauge",
    'vllm:num_requests_running{engine="0",model_name="m"} 2.0',
    'vllm:num_requests_running{engine="1",model_name="m"} 1.0',
    'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0',
    'vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="27000",prefix_caching_hash_algo="sha256_cbor"} 1.0',
    'vllm:request_success_total{finished_reason="stop",model_name="a \\"quoted\\" {name}"} 5.0 1712345678000',
    "bad line",
  ].join("\n");

  it("sums running and waiting requests over engines", () => {
    expect(inFlightRequests(text)).toBe(6);
    expect(inFlightRequests("# nothing\n")).toBeNull();
  });

  it("reads the cache config labels", () => {
    expect(cacheConfigInfo(text)).toEqual({ blockSize: 16, numGpuBlocks: 27000, hashAlgorithm: "sha256_cbor" });
  });

  it("parses labels with escapes and timestamps", () => {
    const s = parsePrometheus(text).find((x) => x.name === "vllm:request_success_total")!;
    expect(s.labels).toEqual({ finished_reason: "stop", model_name: 'a "quoted" {name}' });
    expect(s.value).toBe(5);
  });
});
