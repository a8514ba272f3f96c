/** The mocker: a simulated vLLM engine and its OpenAI-compatible server (docs/mocker.md). */
export { BlockPool } from "./block-pool.js";
export {
  DEFAULT_TIMING,
  resolveHashSeed,
  resolveMockEngineConfig,
  type KvEventPublisherLike,
  type KvEventsConfig,
  type KvTransferConfig,
  type LoraModule,
  type MockEngineConfig,
  type ResolvedMockEngineConfig,
  type TimingModel,
} from "./config.js";
export { DEFAULT_ENGINE_PROFILE, ENGINE_PROFILE_NAMES, engineProfile, type EngineProfile, type EngineProfileName } from "./profiles.js";
export { EngineCore, type CoreOutput, type RequestTimings } from "./engine-core.js";
export { MockServer, type MockServerOptions } from "./http-server.js";
export { VllmMetrics } from "./metrics.js";
export {
  MockEngine,
  MockRequest,
  replayLayoutFor,
  type GenerateRequest,
  type KvCacheDebugView,
  type KvEventEndpoint,
  type MockRequestResult,
} from "./mock-engine.js";
export * as toyTokenizer from "./toy-tokenizer.js";
