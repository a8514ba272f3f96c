/** Types shared by the KV-event sources, publishers and their consumers. */

/**
 * Where a VllmEventSource delivers KV-event batches, typically an adapter over
 * `KvIndexer.applyEventBatch`. Calls are synchronous and, per (workerId, dpRank), in sequence
 * order with no batch twice; `clear` comes before the first batch of a rebuilt view.
 */
export interface KvEventSink {
  /** One vLLM KVEventBatch, the msgpack bytes exactly as the worker published them. */
  applyBatch(workerId: string, dpRank: number, seq: bigint, payload: Buffer): void;
  /** Forget every block of (workerId, dpRank): its view went stale or the worker restarted. */
  clear(workerId: string, dpRank: number): void;
}
