/**
 * Every socket type against a hostile peer that sends one endless multipart message of empty
 * frames (issue 11, point 3): the message is dropped once it passes maxFramesPerMessage (or
 * maxMessageSize, which charges 64 bytes a frame), the peer is disconnected, and the socket
 * counts it by reason. Real TCP; the hostile peer is a raw socket.
 */
import { afterEach, describe, expect, it } from "vitest";
import { DealerSocket, PubSocket, RouterSocket, SubSocket, type ZmtpSocket } from "../ts/events/index.js";
import { floodClient, floodServer, type FloodStats } from "./helpers/hostile-zmtp.js";
import { waitUntil } from "./helpers/zmq-peer.js";

const open: { close(): Promise<void> }[] = [];
function track<T extends { close(): Promise<void> }>(s: T): T {
  open.push(s);
  return s;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

const LIMITS = { maxFramesPerMessage: 1024, reconnectIvlMs: 10, reconnectIvlMaxMs: 50 };

async function connectingSocketSurvives(socket: ZmtpSocket, peerType: string): Promise<void> {
  const server = track(await floodServer(peerType));
  socket.connect(server.endpoint);
  // Three rounds: disconnected each time, redialled, disconnected again.
  await waitUntil(() => (socket.peerErrorCounts()["too-many-frames"] ?? 0) >= 3, "three floods cut off");
  // Each round is cut off after at most 1024 frames: 2 KiB of a message, plus one socket read.
  expect(server.stats.connections).toBeGreaterThanOrEqual(3);
}

async function bindingSocketSurvives(socket: ZmtpSocket, peerType: string): Promise<void> {
  const endpoint = await socket.bind("tcp://127.0.0.1:0");
  const stats: FloodStats = { connections: 0, bytes: 0 };
  for (let i = 0; i < 3; i++) await floodClient(endpoint, peerType, stats);
  expect(socket.peerErrorCounts()["too-many-frames"]).toBe(3);
  expect(socket.peerCount).toBe(0);
}

describe("an endless message of empty frames", () => {
  it("SUB: the publisher is dropped and redialled", async () => {
    const sub = track(new SubSocket(LIMITS));
    sub.subscribe("");
    await connectingSocketSurvives(sub, "PUB");
  });

  it("DEALER: the peer is dropped and redialled", async () => {
    await connectingSocketSurvives(track(new DealerSocket(LIMITS)), "ROUTER");
  });

  it("PUB: the subscriber is disconnected", async () => {
    await bindingSocketSurvives(track(new PubSocket(LIMITS)), "SUB");
  });

  it("ROUTER: the peer is disconnected", async () => {
    await bindingSocketSurvives(track(new RouterSocket(LIMITS)), "DEALER");
  });

  it("without a frame bound, maxMessageSize still stops it: each frame costs 64 bytes", async () => {
    const sub = track(new SubSocket({ maxFramesPerMessage: 1e9, maxMessageSize: 1 << 20, reconnectIvlMs: 10 }));
    sub.subscribe("");
    const server = track(await floodServer("PUB"));
    sub.connect(server.endpoint);
    await waitUntil(() => (sub.peerErrorCounts()["too-large"] ?? 0) >= 1, "the flood cut off by size");
    expect(sub.peerErrorCounts()["too-many-frames"]).toBeUndefined();
  });

  it("a PUB bounds each subscriber's subscriptions", async () => {
    const pub = track(new PubSocket({ maxSubscriptions: 100 }));
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const sub = track(new SubSocket({ reconnectIvlMs: 60_000 }));
    for (let i = 0; i < 101; i++) sub.subscribe(`topic-${i}`);
    sub.connect(endpoint);
    await waitUntil(() => (pub.peerErrorCounts()["too-large"] ?? 0) === 1, "the subscriber cut off");
    expect(pub.stats().subscribers).toBe(0);
  });

  it("well-formed traffic is unaffected: 3-frame messages pass", async () => {
    const pub = track(new PubSocket(LIMITS));
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const sub = track(new SubSocket(LIMITS));
    sub.subscribe("");
    sub.connect(endpoint);
    await waitUntil(() => pub.stats().subscriptions === 1, "the subscription");
    const frames = Array.from({ length: 1024 }, () => Buffer.alloc(0));
    pub.send(frames);
    expect((await sub.receive())?.length).toBe(1024);
  });
});
