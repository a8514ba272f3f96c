/** The event bus: in-process (embedded default) and NATS JetStream (fleet mode), docs/event-bus.md. */
export { InProcessBus, type InProcessBusOptions } from "./in-process-bus.js";
export { KvEventRelay, type KvEventRelayEvents, type KvEventRelayOptions, type KvEventRelayStats } from "./kv-event-relay.js";
export { KvEventReplica, type EventApplier, type KvEventReplicaOptions, type KvEventReplicaStats } from "./kv-event-replica.js";
export {
  NatsJetStreamBus,
  type NatsJetStreamBusOptions,
  type NatsJetStreamBusStats,
  type NatsStreamOptions,
  type ResolvedStreamSettings,
} from "./nats-jetstream-bus.js";
export { DEFAULT_SUBJECT_PREFIX, HEADERS as NATS_RECORD_HEADERS, recordSubject, streamName, subjectToken } from "./nats-subjects.js";
export {
  EventBusError,
  recordId,
  type BatchRecord,
  type BusRecord,
  type BusSubscription,
  type BusSubscriptionStats,
  type ClearRecord,
  type EventBus,
  type EventBusErrorReason,
  type PublishAck,
  type RecordHandler,
  type RecordMeta,
  type SubscribeOptions,
} from "./types.js";
