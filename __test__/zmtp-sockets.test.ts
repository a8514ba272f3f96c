/**
 * Our ZMTP sockets against each other and against hand-made misbehaving peers (real TCP, no mocks).
 * Interop with libzmq is in zmtp-interop.test.ts.
 */
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DealerSocket, PubSocket, RouterSocket, SubSocket, ZmtpError, type ZmtpSocket } from "../ts/events/index.js";
import { encodeCommand, encodeGreeting, encodeProperties } from "../ts/events/zmtp/wire.js";
import { waitUntil } from "./helpers/zmq-peer.js";

const open: (ZmtpSocket | { close(): Promise<void> | void })[] = [];
function track<T extends ZmtpSocket>(s: T): T {
  open.push(s);
  return s;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

const str = (frames: Buffer[] | null) => frames?.map((f) => f.toString());

async function subscribed(pub: PubSocket, n = 1): Promise<void> {
  await waitUntil(() => pub.stats().subscriptions >= n, "subscriptions to reach the publisher");
}

describe("PUB / SUB", () => {
  it("fans out to every subscriber, filtered by topic prefix on the publisher", async () => {
    const pub = track(new PubSocket());
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const all = track(new SubSocket());
    all.subscribe("");
    all.connect(endpoint);
    const onlyA = track(new SubSocket());
    onlyA.subscribe("kv@a");
    onlyA.connect(endpoint);
    await subscribed(pub, 2);

    expect(pub.send([Buffer.from("kv@b"), Buffer.from("1")])).toBe(1);
    expect(pub.send([Buffer.from("kv@a/x"), Buffer.from("2"), Buffer.from("3")])).toBe(2);
    expect(str(await all.receive({ timeoutMs: 5000 }))).toEqual(["kv@b", "1"]);
    expect(str(await all.receive({ timeoutMs: 5000 }))).toEqual(["kv@a/x", "2", "3"]);
    expect(str(await onlyA.receive({ timeoutMs: 5000 }))).toEqual(["kv@a/x", "2", "3"]);
    expect(await onlyA.receive({ timeoutMs: 100 })).toBeNull();

    onlyA.unsubscribe("kv@a");
    await waitUntil(() => pub.stats().subscriptions === 1, "the CANCEL to reach the publisher");
    expect(pub.send([Buffer.from("kv@a/y")])).toBe(1);
  });

  it("drops for a subscriber that does not read instead of buffering (bounded by sndHwm)", async () => {
    const hwm = 20;
    const pub = track(new PubSocket({ sndHwm: hwm }));
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const slow = track(new SubSocket({ rcvHwm: 4 }));
    slow.subscribe("");
    slow.connect(endpoint);
    const fast = track(new SubSocket({ rcvHwm: 100_000 }));
    fast.subscribe("");
    fast.connect(endpoint);
    await subscribed(pub, 2);

    const payload = Buffer.alloc(64 * 1024, 7);
    let maxQueued = 0;
    let maxBytes = 0;
    const total = 600;
    let fastGot = 0;
    const reading = (async () => {
      for await (const _ of fast) if (++fastGot === total) return;
    })();
    for (let i = 0; i < total; i++) {
      pub.send([Buffer.from("t"), payload]);
      const s = pub.stats();
      maxQueued = Math.max(maxQueued, s.queued);
      maxBytes = Math.max(maxBytes, s.bufferedBytes);
      // Let the event loop flush between sends, as a real publisher does between engine steps.
      if (i % 10 === 9) await new Promise((r) => setImmediate(r));
    }
    const stats = pub.stats();
    expect(stats.dropped).toBeGreaterThan(0);
    expect(maxQueued).toBeLessThanOrEqual(2 * hwm);
    expect(maxBytes).toBeLessThanOrEqual(2 * hwm * (payload.length + 64));
    // The fast subscriber is not held back by the slow one: it may lose some to its own HWM
    // during bursts, but keeps receiving.
    await waitUntil(() => fastGot > total / 2, "the fast subscriber to keep up");
    void reading;
  });

  it("works over ipc:// (Unix sockets)", async () => {
    const path = join(tmpdir(), `kvroute-zmtp-${process.pid}-${Date.now()}.sock`);
    const pub = track(new PubSocket());
    await pub.bind(`ipc://${path}`);
    const sub = track(new SubSocket());
    sub.subscribe("");
    sub.connect(`ipc://${path}`);
    await subscribed(pub);
    pub.send([Buffer.from("over"), Buffer.from("ipc")]);
    expect(str(await sub.receive({ timeoutMs: 5000 }))).toEqual(["over", "ipc"]);
  });

  it("reconnects with backoff when the publisher goes away and comes back on the same port", async () => {
    let pub = new PubSocket();
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const sub = track(new SubSocket({ reconnectIvlMs: 20, reconnectIvlMaxMs: 200 }));
    const events: string[] = [];
    sub.on("connected", () => events.push("connected"));
    sub.on("disconnected", () => events.push("disconnected"));
    sub.subscribe("");
    sub.connect(endpoint);
    await subscribed(pub);
    await pub.close();
    await waitUntil(() => events.includes("disconnected"), "disconnect");
    await new Promise((r) => setTimeout(r, 300)); // a few failed redials
    pub = track(new PubSocket());
    await pub.bind(endpoint);
    await subscribed(pub);
    pub.send([Buffer.from("back")]);
    expect(str(await sub.receive({ timeoutMs: 5000 }))).toEqual(["back"]);
    expect(events).toEqual(["connected", "disconnected", "connected"]);
  });
});

describe("DEALER / ROUTER", () => {
  it("routes replies by identity, announced or generated", async () => {
    const router = track(new RouterSocket());
    const endpoint = await router.bind("tcp://127.0.0.1:0");
    const named = track(new DealerSocket({ identity: "client-1" }));
    const anon = track(new DealerSocket());
    // Sent before the connection exists: queued, then delivered on connect.
    named.connect(endpoint);
    expect(named.send([Buffer.alloc(0), Buffer.from("hello")])).toBe(true);
    anon.connect(endpoint);
    anon.send([Buffer.from("x".repeat(1000))]);

    const got = [await router.receive({ timeoutMs: 5000 }), await router.receive({ timeoutMs: 5000 })];
    const fromNamed = got.find((m) => m?.[0]?.toString() === "client-1")!;
    const fromAnon = got.find((m) => m !== fromNamed)!;
    expect(str(fromNamed)).toEqual(["client-1", "", "hello"]);
    expect(fromAnon[0]?.length).toBe(5);
    expect(fromAnon[0]?.[0]).toBe(0);

    expect(router.send([fromNamed[0]!, Buffer.alloc(0), Buffer.from("to named")])).toBe(true);
    expect(router.send([fromAnon[0]!, Buffer.from("to anon")])).toBe(true);
    expect(router.send([Buffer.from("nobody"), Buffer.from("lost")])).toBe(false);
    expect(str(await named.receive({ timeoutMs: 5000 }))).toEqual(["", "to named"]);
    expect(str(await anon.receive({ timeoutMs: 5000 }))).toEqual(["to anon"]);
  });

  it("refuses a second peer with an identity already in use", async () => {
    const router = track(new RouterSocket());
    const endpoint = await router.bind("tcp://127.0.0.1:0");
    const a = track(new DealerSocket({ identity: "same" }));
    a.connect(endpoint);
    await new Promise((r) => a.once("connected", r));
    const b = track(new DealerSocket({ identity: "same", reconnectIvlMs: 1000 }));
    b.connect(endpoint);
    await waitUntil(() => router.peerCount === 1, "one peer");
    // The second one completes its handshake and is refused (counted as a protocol error).
    await waitUntil(() => (router.peerErrorCounts()["protocol"] ?? 0) >= 1, "the second peer refused");
    expect(router.peerCount).toBe(1);
  });
});

describe("misbehaving peers", () => {
  /** A raw TCP server that runs `script` on each connection. */
  async function rawServer(script: (sock: net.Socket) => void): Promise<string> {
    const server = net.createServer(script);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const sockets = new Set<net.Socket>();
    server.on("connection", (s) => sockets.add(s));
    open.push({
      close: () =>
        new Promise<void>((r) => {
          for (const s of sockets) s.destroy();
          server.close(() => r());
        }),
    });
    return `tcp://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  }

  it("drops a peer that sends garbage and a peer of an incompatible type, and keeps redialling", async () => {
    const garbage = await rawServer((s) => s.end(Buffer.from("GET / HTTP/1.1\r\n\r\n".padEnd(80, "x"))));
    const sub = track(new SubSocket({ reconnectIvlMs: 10 }));
    const errors: (Error | undefined)[] = [];
    sub.on("disconnected", (d) => errors.push(d.error));
    sub.connect(garbage);
    await waitUntil(() => (sub.peerErrorCounts()["protocol"] ?? 0) >= 2, "the garbage refused, twice (redialled)");
    expect(sub.peerCount).toBe(0);

    const otherSub = track(new SubSocket());
    const endpoint = await otherSub.bind("tcp://127.0.0.1:0");
    const sub2 = track(new SubSocket({ reconnectIvlMs: 10 }));
    sub2.connect(endpoint);
    await waitUntil(() => (sub2.peerErrorCounts()["incompatible"] ?? 0) >= 1, "SUB to SUB refused");
    expect(sub2.peerCount).toBe(0);
    expect(otherSub.peerCount).toBe(0);
  });

  it("gives up a handshake that never completes and a peer that falls silent (heartbeats)", async () => {
    // Never answers: the handshake times out.
    const silent = await rawServer(() => {});
    // Completes the handshake as a PUB, then never sends anything again (nor PONGs).
    const mute = await rawServer((s) => {
      s.write(encodeGreeting(1));
      s.write(encodeCommand("READY", encodeProperties({ "Socket-Type": "PUB" })));
    });
    const a = track(new SubSocket({ handshakeTimeoutMs: 150, reconnectIvlMs: 5000 }));
    let attempts = 0;
    a.connect(silent);
    await waitUntil(() => (a.peerErrorCounts()["timeout"] ?? 0) >= 1, "the handshake timed out");
    expect(a.peerCount).toBe(0);

    const b = track(new SubSocket({ heartbeatIvlMs: 50, heartbeatTimeoutMs: 200, reconnectIvlMs: 5000 }));
    const gone = new Promise<Error | undefined>((r) => b.once("disconnected", (d) => r(d.error)));
    b.on("connected", () => attempts++);
    b.connect(mute);
    const err = await gone;
    expect(attempts).toBe(1);
    expect(err).toBeInstanceOf(ZmtpError);
    expect((err as ZmtpError).reason).toBe("timeout");
  });
});
