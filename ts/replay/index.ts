/** Trace replay: compare routing policies on simulated vLLM workers (docs/replay.md). */
export { writeKvEventBatch } from "./kv-batch-writer.js";
export { DEFAULT_SPEEDUP, runLiveReplay, type LiveReplayOptions } from "./live-replay.js";
export { describeFleet, describeSettings, prefillLoad, runReplay, writeReports, type ReplayOptions, type ReportMeta } from "./replay.js";
export { renderReport, type ReportInput } from "./report-html.js";
export { type Percentiles, type PolicyResult, type ReplayClock, type RequestRecord, type Timeline, type WorkerSummary } from "./result.js";
export { resultsTable } from "./terminal.js";
export { TimedRouter } from "./timed-router.js";
export { expandHashIds, parseTrace, readTrace, TraceError, type ReadTraceOptions, type Trace, type TraceFormat, type TraceRequest } from "./trace.js";
export { fleetEngine, REPLAY_DEFAULTS, runVirtualReplay, type FleetSettings, type ReplayProgress, type VirtualReplayOptions } from "./virtual-replay.js";
export { VirtualWorker } from "./virtual-worker.js";
export { rustEngineProblem, type ReplayEngineImpl } from "./rust-engines.js";
export { chatWorkload, type ChatWorkloadOptions } from "./workload.js";
