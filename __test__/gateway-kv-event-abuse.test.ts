/**
 * A real `kvroute serve` process fed by hostile or broken KV-event publishers (issue 11, points 3
 * and 5): every kind of malformed message, batch and event shows in /metrics by reason, and an
 * endless message of empty frames on the event SUB and on the replay DEALER leaves the gateway's
 * RSS within 50 MB of its start.
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { encodeKvEventBatch, type KvEventBatch } from "../ts/events/codec.js";
import { encodeSeq } from "../ts/events/vllm-event-publisher.js";
import { PubSocket } from "../ts/events/zmtp/pub-socket.js";
import { encodeMessage } from "../ts/events/zmtp/wire.js";
import { kvroute, stopCliProcesses } from "./helpers/cli-process.js";
import { get, metricValue } from "./helpers/gateway-fleet.js";
import { treeRssBytes } from "./helpers/proc.js";
import { floodServer } from "./helpers/hostile-zmtp.js";
import { waitUntil } from "./helpers/zmq-peer.js";

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  stopCliProcesses();
  await Promise.all(cleanup.splice(0).map((c) => c()));
});

/** `kvroute serve` with one worker "w" of model "toy" whose events come from `kvEvents`. */
async function serve(kvEvents: string, replay?: string): Promise<{ url: string; pid: number }> {
  const dir = mkdtempSync(join(tmpdir(), "kvroute-abuse-"));
  const file = join(dir, "gateway.yaml");
  const lines = ["host: 127.0.0.1", "metricsScrapeIntervalMs: 0", "models:", "  - name: toy", "    blockSize: 16", "    workers:", "      - id: w", "        url: http://127.0.0.1:9", `        kvEvents: ${kvEvents}`];
  if (replay) lines.push(`        kvEventsReplay: ${replay}`);
  writeFileSync(file, lines.join("\n"));
  const p = kvroute(["serve", "--config", file, "--port", "0"]);
  const ready = await p.readyPromise;
  return { url: ready.url, pid: p.child.pid! };
}

const tokens = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);
const batch = (events: KvEventBatch["events"], extra: Partial<KvEventBatch> = {}) => encodeKvEventBatch({ ts: 1, events, ...extra });

async function metrics(url: string): Promise<string> {
  return (await get(url, "/metrics")).text;
}

/** /metrics once `cond` holds of it (polled every 20 ms: a poll interval, not a wait for time to pass). */
async function metricsWhen(url: string, cond: (text: string) => boolean): Promise<string> {
  for (;;) {
    const text = await metrics(url);
    if (cond(text)) return text;
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("KV-event garbage on /metrics", () => {
  it("counts every kind of malformed message, batch and event per worker, by reason", async () => {
    const pub = new PubSocket();
    cleanup.push(() => pub.close());
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const gw = await serve(endpoint);
    await waitUntil(() => pub.stats().subscriptions > 0, "the gateway to subscribe");
    const topic = Buffer.alloc(0);
    let seq = 0n;
    const send = (payload: Buffer) => pub.send([topic, encodeSeq(seq++), payload]);
    const stored = (hash: bigint, parent: bigint | null, blockSize = 16) => ({ type: "BlockStored" as const, blockHashes: [hash], parentBlockHash: parent, tokenIds: tokens(blockSize), blockSize });
    const unknownEvent = Buffer.concat([Buffer.from([0x93, 0xcb]), Buffer.alloc(8), Buffer.from([0x91, 0x91, 0xa3, 0x46, 0x6f, 0x6f, 0xc0])]);

    send(batch([stored(1n, null)])); // applied: 1 block
    pub.send([topic, encodeSeq(seq)]); // 2 frames
    pub.send([topic, Buffer.alloc(4), Buffer.alloc(1)]); // a 4-byte seq
    send(Buffer.alloc(0)); // truncated
    send(Buffer.from([0xa1, 0x41])); // a string, not a batch
    send(Buffer.from([0x80])); // a map without ts
    send(batch([], { dataParallelRank: 2 ** 40 })); // rank out of range
    send(unknownEvent); // an event of unknown type
    send(batch([stored(2n, 99n)])); // unknown parent
    send(batch([stored(3n, null, 32)])); // another block size
    send(batch([stored(4n, null, 8)])); // a partial block
    send(batch([{ type: "BlockRemoved", blockHashes: [12345n] }])); // unknown hash
    send(batch([{ type: "BlockRemoved", blockHashes: [1n] }])); // applied: removes block 1
    // The parity flag holds until the view is dropped (below).
    let text = await metricsWhen(gw.url, (t) => metricValue(t, "kvroute_kv_event_blocks_removed_total", { worker: "w" }) >= 1);
    expect(metricValue(text, "kvroute_kv_event_block_size_mismatch", { worker: "w", dp_rank: "0" })).toBe(1);
    expect(metricValue(text, "kvroute_kv_event_hash_mismatch", { worker: "w", dp_rank: "0" })).toBe(0);
    seq += 3n;
    send(batch([])); // a gap of 3: no replay endpoint, so the view is rebuilt (stale)
    seq = 0n;
    send(batch([])); // seq went back: a restart

    const want: [Record<string, string>, number][] = [
      [{ unit: "message", reason: "bad_frames" }, 2],
      [{ unit: "batch", reason: "truncated" }, 1],
      [{ unit: "batch", reason: "batch must be an array or a map" }, 1],
      [{ unit: "batch", reason: "batch map has no ts" }, 1],
      [{ unit: "batch", reason: "data_parallel_rank out of range" }, 1],
      [{ unit: "event", reason: "unknown event type" }, 1],
      [{ unit: "event", reason: "unresolved_parent" }, 1],
      [{ unit: "event", reason: "block_size_mismatch" }, 1],
      [{ unit: "event", reason: "partial_block" }, 1],
      [{ unit: "event", reason: "unknown_block_hashes" }, 1],
    ];
    text = await metricsWhen(gw.url, (t) => metricValue(t, "kvroute_kv_event_resyncs_total", { worker: "w", cause: "restart" }) >= 1);
    for (const [labels, n] of want) {
      expect(metricValue(text, "kvroute_kv_event_dropped_total", { worker: "w", ...labels }), JSON.stringify(labels)).toBe(n);
    }
    expect(metricValue(text, "kvroute_kv_event_messages_received_total", { worker: "w" })).toBe(15);
    expect(metricValue(text, "kvroute_kv_event_blocks_stored_total", { worker: "w" })).toBe(1);
    expect(metricValue(text, "kvroute_kv_event_blocks_removed_total", { worker: "w" })).toBe(1);
    expect(metricValue(text, "kvroute_kv_event_sequence_gaps_total", { worker: "w" })).toBe(1);
    expect(metricValue(text, "kvroute_kv_event_resyncs_total", { worker: "w", cause: "stale" })).toBe(1);
    expect(metricValue(text, "kvroute_kv_event_connected", { worker: "w" })).toBe(1);
  });
});

describe("an endless message of empty frames", () => {
  it("from the publisher and the replay socket leaves the gateway's RSS within 50 MB of its start", async () => {
    // The publisher first sends one good batch at seq 3, so that the gateway asks for a replay too.
    const good = () => encodeMessage([Buffer.alloc(0), encodeSeq(3n), batch([])]);
    const pub = await floodServer("PUB", good);
    const router = await floodServer("ROUTER");
    cleanup.push(pub.close, router.close);
    const gw = await serve(pub.endpoint, router.endpoint);
    const rss = () => treeRssBytes(gw.pid);
    const start = rss();
    const cut = (text: string) => metricValue(text, "kvroute_kv_event_zmtp_peer_errors_total", { worker: "w", reason: "too-many-frames" });
    let peak = start;
    let text = "";
    // 32 MB of empty frames on the wire (16 M frames, each once a 100-byte object), on both sockets.
    while (pub.stats.bytes + router.stats.bytes < 32e6 || pub.stats.connections < 3 || router.stats.connections < 3) {
      text = await metrics(gw.url);
      peak = Math.max(peak, rss());
      await new Promise((r) => setTimeout(r, 20)); // poll interval
    }
    text = await metrics(gw.url);
    peak = Math.max(peak, rss());
    expect(cut(text)).toBeGreaterThanOrEqual(4);
    expect(metricValue(text, "kvroute_kv_event_zmtp_disconnects_total", { worker: "w" })).toBeGreaterThanOrEqual(1);
    console.log(`flood: ${((pub.stats.bytes + router.stats.bytes) / 1e6).toFixed(0)} MB sent, ${cut(text)} cut off, RSS ${(start / 1e6).toFixed(0)} -> peak ${(peak / 1e6).toFixed(0)} MB`);
    expect(peak - start).toBeLessThan(50 * 1024 * 1024);
  });
});
