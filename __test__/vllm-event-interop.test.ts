/**
 * The vLLM KV-event protocol against REAL libzmq (python3-zmq, __test__/helpers/zmq-peer.py):
 * - our VllmEventSource <- a libzmq publisher running vLLM's publish/replay logic;
 * - our VllmEventPublisher -> libzmq SUB and DEALER, byte for byte against the golden frames
 *   recorded from vLLM's own ZmqEventPublisher (fixtures/golden/kv_events/).
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { VllmEventPublisher, VllmEventSource, type KvEventSink, type ReplayLayout } from "../ts/events/index.js";
import { freePorts, waitUntil, ZmqPeer } from "./helpers/zmq-peer.js";

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
});

async function peer(...args: Parameters<typeof ZmqPeer.start>): Promise<ZmqPeer> {
  const p = await ZmqPeer.start(...args);
  closers.push(() => p.kill());
  return p;
}

class RecordingSink implements KvEventSink {
  readonly ops: string[] = [];
  applyBatch(_w: string, dpRank: number, seq: bigint, payload: Buffer): void {
    this.ops.push(`${dpRank}:${seq}:${payload.toString()}`);
  }
  clear(_w: string, dpRank: number): void {
    this.ops.push(`${dpRank}:clear`);
  }
}

const hex = (s: string) => Buffer.from(s).toString("hex");

/** A libzmq publisher behaving as vLLM's ZmqEventPublisher; an XPUB so we know when we are subscribed. */
async function vllmPeer(endpoint: string, replayEndpoint: string, layout: "new" | "old"): Promise<ZmqPeer> {
  const args = ["--xpub", "--replay-endpoint", replayEndpoint, "--replay-layout", layout, "--topic", "kv@w1"];
  return peer("vllm", "bind", endpoint, args);
}

async function publish(p: ZmqPeer, payload: string, drop = false): Promise<void> {
  await p.command({ cmd: "publish", payload: hex(payload), drop });
}

describe.each(["new", "old"] as const)("VllmEventSource <- libzmq vLLM publisher (replay layout %s)", (layout) => {
  it("delivers in order, replays a gap, and detects the publisher process restarting", async () => {
    const port = await freePorts(2);
    const endpoint = `tcp://127.0.0.1:${port}`;
    const replayEndpoint = `tcp://127.0.0.1:${port + 1}`;
    let pub = await vllmPeer(endpoint, replayEndpoint, layout);
    const sink = new RecordingSink();
    const src = new VllmEventSource({
      workerId: "w1",
      endpoint,
      replayEndpoint,
      topic: "kv@w1",
      sink,
      socket: { reconnectIvlMs: 20, reconnectIvlMaxMs: 200 },
    }).start();
    closers.push(() => src.close());
    await pub.messagesUntil(1); // XPUB: our subscription arrived

    for (let i = 0; i < 4; i++) await publish(pub, `a${i}`);
    await publish(pub, "a4", true); // lost live, kept in the ring
    await publish(pub, "a5", true);
    for (let i = 6; i < 9; i++) await publish(pub, `a${i}`);
    await waitUntil(() => sink.ops.length === 9, "9 batches").catch((e) => { console.log("DEBUG", sink.ops, src.stats()); throw e; });
    expect(sink.ops).toEqual(Array.from({ length: 9 }, (_, i) => `0:${i}:a${i}`));
    expect(src.stats()).toMatchObject({ gaps: 1, replays: { ok: 1, failed: 0 }, stale: 0 });

    // The worker process dies and a new one starts on the same ports, counting from 0 again.
    await pub.kill();
    await waitUntil(() => !src.stats().connected, "the disconnect");
    pub = await vllmPeer(endpoint, replayEndpoint, layout);
    await pub.messagesUntil(1);
    await publish(pub, "b0");
    await publish(pub, "b1");
    await waitUntil(() => sink.ops.length === 12, "the new run");
    expect(sink.ops.slice(9)).toEqual(["0:clear", "0:0:b0", "0:1:b1"]);
    expect(src.stats()).toMatchObject({ restarts: 1, stale: 0 });
  });
});

interface GoldenCase {
  name: string;
  via: string;
  seq?: number;
  topic_hex?: string;
  seq_hex?: string;
  payload_hex: string;
}
interface GoldenFile {
  topic: string;
  cases: GoldenCase[];
  replay: { start_seq: number; request_frames_at_router_hex: string[]; reply_frames_at_router_hex: string[][] };
}

function golden(version: string): GoldenFile {
  const path = fileURLToPath(new URL(`../fixtures/golden/kv_events/${version}.json`, import.meta.url));
  return JSON.parse(readFileSync(path, "utf8")) as GoldenFile;
}

describe.each([
  ["0.33.0", "v0.26"],
  ["0.24.0", "v0.9"],
] as [string, ReplayLayout][])("VllmEventPublisher -> libzmq, byte for byte as vLLM %s", (version, layout) => {
  it("PUB frames and the replay exchange equal the golden frames from vLLM's own publisher", async () => {
    const g = golden(version);
    // The rank-0 publisher's batches, seq 0..16, as vLLM published them.
    const cases = g.cases.filter((c) => c.via === "publisher" && c.name !== "dp_rank_3").sort((a, b) => a.seq! - b.seq!);
    expect(cases.map((c) => c.seq)).toEqual(Array.from({ length: cases.length }, (_, i) => i));

    const pub = await VllmEventPublisher.start({
      endpoint: "tcp://127.0.0.1:0",
      replayEndpoint: "tcp://127.0.0.1:0",
      bind: true,
      topic: g.topic,
      replayLayout: layout,
    });
    closers.push(() => pub.close());
    const sub = await peer("sub", "connect", pub.endpoint, ["--subscribe", hex(g.topic)]);
    await waitUntil(() => pub.stats().pub.subscriptions === 1, "libzmq's subscription");
    for (const c of cases) pub.publish(Buffer.from(c.payload_hex, "hex"));

    const live = await sub.messagesUntil(cases.length);
    const frames = cases.map((c) => [c.topic_hex, c.seq_hex, c.payload_hex]);
    expect(live.map((m) => m.map((f) => f.toString("hex")))).toEqual(frames);

    // A libzmq DEALER asks for a replay exactly as the golden request (minus the routing id).
    const dealer = await peer("dealer", "connect", pub.replayEndpoint!);
    const request = g.replay.request_frames_at_router_hex.slice(1);
    await dealer.command({ cmd: "send", frames: request });
    const reply = await dealer.messagesUntil(g.replay.reply_frames_at_router_hex.length);
    const expected = g.replay.reply_frames_at_router_hex.map((m) => m.slice(1)); // minus the routing id
    expect(reply.map((m) => m.map((f) => f.toString("hex")))).toEqual(expected);
  });
});
