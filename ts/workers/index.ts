export {
  buildCommandLine,
  connectableEndpoint,
  kvEventsConfigFor,
  kvrouteCliPath,
  kvTransferConfigFor,
  mockerCommand,
  resolveWorkerConfig,
  workerRecordFor,
  type CommandLine,
  type ResolvedWorkerConfig,
} from "./command-line.js";
export {
  VLLM_DEFAULT_BLOCK_SIZE,
  VLLM_DEFAULT_HASH_ALGORITHM,
  type ConnectorName,
  type DataParallelOptions,
  type KvEventsOptions,
  type KvEventsRecord,
  type KvTransferConfig,
  type VllmWorkerConfig,
  type WorkerRecord,
  type WorkerRegistryHook,
  type WorkerRole,
} from "./config.js";
export { cacheConfigInfo, inFlightRequests, parsePrometheus, type PromSample } from "./engine-http.js";
export { WorkerFailedError, WorkerStartError, type WorkerErrorCode, type WorkerStartFailure } from "./errors.js";
export { stderrLogger, type WorkerLogger, type WorkerLogStream } from "./log-lines.js";
export { canBind, findFreePortRange } from "./ports.js";
export { groupAlive, groupMembers, isAlive } from "./process-group.js";
export {
  launchTopology,
  planTopology,
  TOPOLOGY_PRESETS,
  type EngineKind,
  type TopologyOptions,
  type TopologyPreset,
  DEFAULT_TOPOLOGY_MODEL,
} from "./topology.js";
export {
  VllmWorker,
  type DrainOptions,
  type DrainResult,
  type StopOptions,
  type SupervisionOptions,
  type VllmWorkerEvents,
  type WorkerState,
} from "./vllm-worker.js";
export { WorkerGroup, type WorkerGroupEvents, type WorkerGroupOptions } from "./worker-group.js";
