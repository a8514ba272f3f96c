// In-process MockEngines whose KV event batches are decoded into an array (no sockets), closed
// after each test of the file that calls useEventEngines().
import { afterEach } from "vitest";
import { decodeKvEventBatch, type DecodedKvEventBatch } from "../../ts/events/codec.js";
import { MockEngine, type MockEngineConfig } from "../../ts/mocker/index.js";

/** Returns engine(config): a zero-time engine with KV events on, `defaults` under `config`. */
export function useEventEngines(defaults: Partial<MockEngineConfig>) {
  const engines: MockEngine[] = [];
  afterEach(async () => {
    await Promise.all(engines.splice(0).map((e) => e.close()));
  });
  return async (config: Partial<MockEngineConfig> = {}) => {
    const batches: DecodedKvEventBatch[] = [];
    const e = await MockEngine.start({
      model: "mock-8b",
      zeroTime: true,
      kvEventsConfig: { enableKvCacheEvents: true },
      eventPublisherFactory: () => ({
        publish: (p: Buffer) => BigInt(batches.push(decodeKvEventBatch(p)) - 1),
        close: () => {},
      }),
      ...defaults,
      ...config,
    });
    engines.push(e);
    return { e, batches };
  };
}
