/**
 * The wait fleet mode puts before the end of a response (`KvRouter.lifecycleDelivered`): it
 * settles once a real nats-server has acknowledged the `finished`, never waits longer than
 * `finishAckTimeoutMs`, counts every end without the acknowledgement (here the server is killed:
 * the wait runs out or the connection fails it, whichever comes first), and is absent
 * when the wait is off or nothing finished.
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KvRouter, MemoryRegistry } from "../ts/index.js";
import { ReplicaLoadSync } from "../ts/fleet/replica-load.js";
import { benchWorkerRecords } from "../benchmarks/lib/records.js";
import { NatsServer } from "./helpers/nats-server.js";

let nats: NatsServer;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await NatsServer.start();
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 50 });
}, 60_000);

afterAll(async () => {
  await nc?.close().catch(() => {});
  await nats?.dispose();
});

function routerWithSync(finishAckTimeoutMs: number): { router: KvRouter; sync: ReplicaLoadSync } {
  const router = new KvRouter({ registry: new MemoryRegistry(benchWorkerRecords(2, "m", 16)), seed: 1, log: () => {} });
  const sync = new ReplicaLoadSync({ connection: nc, router, namespace: `ack${finishAckTimeoutMs}`, finishAckTimeoutMs });
  return { router, sync };
}

function finishOne(router: KvRouter): void {
  const d = router.route({ model: "m", tokens: Uint32Array.from({ length: 64 }, (_, i) => i), maxTokens: 8 });
  router.started(d);
  router.finished(d.requestId, "ok");
}

describe("the finished acknowledgement", () => {
  it("is one wait for every request that ends in the same turn, settled by the server", async () => {
    const { router, sync } = routerWithSync(60_000);
    await sync.ready();
    expect(router.lifecycleDelivered()).toBeNull(); // nothing finished yet
    finishOne(router);
    const first = router.lifecycleDelivered();
    finishOne(router);
    expect(first).not.toBeNull();
    expect(router.lifecycleDelivered()).toBe(first);
    await first; // settles long before the 60 s bound: the server answered
    expect(sync.stats().finishUnacked).toBe(0);
    expect(router.lifecycleDelivered()).toBeNull();
    sync.close();
  });

  it("is off with finishAckTimeoutMs 0", async () => {
    const { router, sync } = routerWithSync(0);
    finishOne(router);
    expect(router.lifecycleDelivered()).toBeNull();
    sync.close();
  });

  it("never holds a response past its bound while NATS is away, and counts it unacknowledged", async () => {
    const { router, sync } = routerWithSync(50);
    await sync.ready();
    await nats.stop("SIGKILL");
    finishOne(router);
    const wait = router.lifecycleDelivered();
    expect(wait).not.toBeNull();
    await wait;
    expect(sync.stats().finishUnacked).toBe(1);
    sync.close();
  });
});
