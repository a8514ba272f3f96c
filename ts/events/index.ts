/** KV events: vLLM's ZMQ publisher protocol, both ends, over a pure-TypeScript ZMTP. */
export type { KvEventSink } from "./types.js";
export {
  VllmEventSource,
  type RankEvent,
  type RankStats,
  type VllmEventSourceEvents,
  type VllmEventSourceOptions,
  type VllmEventSourceStats,
} from "./vllm-event-source.js";
export {
  encodeSeq,
  endpointForRank,
  isBindEndpoint,
  REPLAY_END_SEQ,
  VllmEventPublisher,
  type ReplayLayout,
  type VllmEventPublisherOptions,
  type VllmEventPublisherStats,
} from "./vllm-event-publisher.js";
export * from "./zmtp/index.js";
export * from "./codec.js";
export { indexerSink, type IndexerSink, type IndexerSinkOptions, type IndexerSinkStats } from "./indexer-sink.js";
