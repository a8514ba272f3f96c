/**
 * Our ZMTP sockets against REAL libzmq (Debian's python3-zmq driving __test__/helpers/zmq-peer.py),
 * in both directions, for every socket type kvroute uses, with ZMTP 3.0 and 3.1 negotiated.
 */
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DealerSocket, PubSocket, RouterSocket, SubSocket, type ZmtpSocket } from "../ts/events/index.js";
import { waitUntil, ZmqPeer } from "./helpers/zmq-peer.js";

const sockets: ZmtpSocket[] = [];
const peers: ZmqPeer[] = [];
function track<T extends ZmtpSocket>(s: T): T {
  sockets.push(s);
  return s;
}
async function peer(...args: Parameters<typeof ZmqPeer.start>): Promise<ZmqPeer> {
  const p = await ZmqPeer.start(...args);
  peers.push(p);
  return p;
}
afterEach(async () => {
  await Promise.all([...sockets.splice(0).map((s) => s.close()), ...peers.splice(0).map((p) => p.kill())]);
});

const hex = (frames: Buffer[] | null | undefined) => frames?.map((f) => f.toString("hex"));
const big = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

/** Waits until `sub` receives the probe libzmq repeats, i.e. our subscription is in effect. */
async function warmUp(pub: ZmqPeer, sub: SubSocket, probe: string): Promise<void> {
  await pub.command({ cmd: "repeat", frames: [Buffer.from(probe).toString("hex")], ms: 10 });
  for (;;) {
    const m = await sub.receive({ timeoutMs: 5000 });
    if (m === null) throw new Error("no probe from libzmq");
    if (m[0]?.toString() === probe) break;
  }
  await pub.command({ cmd: "stop" });
  // Drain probes already in flight.
  while ((await sub.receive({ timeoutMs: 50 })) !== null);
}

describe.each([1, 0] as const)("interop with libzmq, our side announcing ZMTP 3.%i", (minor) => {
  it("our SUB <- libzmq PUB: multipart, empty and long frames, topic prefix filter", async () => {
    const pub = await peer("pub", "bind", "tcp://127.0.0.1:*");
    expect(pub.zmqVersion).toMatch(/^4\./);
    const sub = track(new SubSocket({ zmtpMinor: minor }));
    const connected = new Promise<{ zmtpMinor: number; socketType: string }>((r) => sub.once("connected", r));
    sub.subscribe("kv@a");
    sub.connect(pub.endpoint);
    expect(await connected).toMatchObject({ zmtpMinor: minor, socketType: "PUB" });
    await warmUp(pub, sub, "kv@a-probe");

    const long = big(70_000, minor);
    await pub.send([Buffer.from("kv@b"), Buffer.from("filtered out")]);
    await pub.send([Buffer.from("kv@a"), Buffer.alloc(8, 1), Buffer.alloc(0), long]);
    await pub.send([Buffer.from("kv@a/2"), big(255, 1), big(256, 2)]);
    const first = [Buffer.from("kv@a"), Buffer.alloc(8, 1), Buffer.alloc(0), long];
    expect(hex(await sub.receive({ timeoutMs: 5000 }))).toEqual(hex(first));
    expect(hex(await sub.receive({ timeoutMs: 5000 }))).toEqual(hex([Buffer.from("kv@a/2"), big(255, 1), big(256, 2)]));
    expect(await sub.receive({ timeoutMs: 100 })).toBeNull();
  });

  it("libzmq SUB <- our PUB: subscriptions (3.0 message / 3.1 command) filter on our side", async () => {
    const pub = track(new PubSocket({ zmtpMinor: minor }));
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    const sub = await peer("sub", "connect", endpoint, ["--subscribe", Buffer.from("kv@a").toString("hex")]);
    await waitUntil(() => pub.stats().subscriptions === 1, "libzmq's subscription");
    const long = big(300_000, 3);
    expect(pub.send([Buffer.from("kv@b"), Buffer.from("x")])).toBe(0);
    expect(pub.send([Buffer.from("kv@a"), Buffer.alloc(8, 2), long])).toBe(1);
    expect(pub.send([Buffer.from("kv@a!"), Buffer.alloc(0)])).toBe(1);
    const got = await sub.messagesUntil(2);
    expect(hex(got[0])).toEqual(hex([Buffer.from("kv@a"), Buffer.alloc(8, 2), long]));
    expect(hex(got[1])).toEqual(hex([Buffer.from("kv@a!"), Buffer.alloc(0)]));

    await sub.command({ cmd: "unsubscribe", topic: Buffer.from("kv@a").toString("hex") });
    await waitUntil(() => pub.stats().subscriptions === 0, "libzmq's unsubscription");
  });

  it("our DEALER <-> libzmq ROUTER (identity seen by libzmq, replies routed back)", async () => {
    const router = await peer("router", "bind", "tcp://127.0.0.1:*", ["--echo"]);
    const dealer = track(new DealerSocket({ identity: "kvroute-1", zmtpMinor: minor }));
    dealer.connect(router.endpoint);
    const frames = [Buffer.alloc(0), Buffer.alloc(8, 9), big(1000, 4)];
    dealer.send(frames);
    expect(hex(await dealer.receive({ timeoutMs: 5000 }))).toEqual(hex(frames));
    const [seen] = await router.messagesUntil(1);
    expect(hex(seen)).toEqual(hex([Buffer.from("kvroute-1"), ...frames]));
  });

  it("libzmq DEALER <-> our ROUTER, with and without an identity", async () => {
    const router = track(new RouterSocket({ zmtpMinor: minor }));
    const endpoint = await router.bind("tcp://127.0.0.1:0");
    const named = await peer("dealer", "connect", endpoint, ["--identity", Buffer.from("vllm-client").toString("hex")]);
    const anon = await peer("dealer", "connect", endpoint);
    await named.send(["", Buffer.alloc(8, 1)]);
    const fromNamed = await router.receive({ timeoutMs: 5000 });
    expect(hex(fromNamed)).toEqual(hex([Buffer.from("vllm-client"), Buffer.alloc(0), Buffer.alloc(8, 1)]));
    await anon.send(["only"]);
    const fromAnon = (await router.receive({ timeoutMs: 5000 }))!;
    expect(fromAnon[0]?.length).toBe(5);
    expect(fromAnon[1]?.toString()).toBe("only");

    const long = big(100_000, 5);
    router.send([Buffer.from("vllm-client"), Buffer.alloc(0), Buffer.from("reply"), long]);
    router.send([fromAnon[0]!, Buffer.from("to anon")]);
    expect(hex((await named.messagesUntil(1))[0])).toEqual(hex([Buffer.alloc(0), Buffer.from("reply"), long]));
    expect((await anon.messagesUntil(1))[0]?.map(String)).toEqual(["to anon"]);
  });
});

describe("interop with libzmq: connection life", () => {
  it("our SUB reconnects when the libzmq publisher process dies and comes back on the same port", async () => {
    let pub = await peer("pub", "bind", "tcp://127.0.0.1:*");
    const endpoint = pub.endpoint;
    const sub = track(new SubSocket({ reconnectIvlMs: 20, reconnectIvlMaxMs: 200 }));
    const events: string[] = [];
    sub.on("connected", () => events.push("connected"));
    sub.on("disconnected", () => events.push("disconnected"));
    sub.subscribe("");
    sub.connect(endpoint);
    await warmUp(pub, sub, "first");
    await pub.kill();
    await waitUntil(() => events.includes("disconnected"), "the disconnect");
    await new Promise((r) => setTimeout(r, 250));
    pub = await peer("pub", "bind", endpoint);
    await warmUp(pub, sub, "second");
    await pub.send(["after restart"]);
    expect((await sub.receive({ timeoutMs: 5000 }))?.map(String)).toEqual(["after restart"]);
    expect(events).toEqual(["connected", "disconnected", "connected"]);
  });

  it("our DEALER reconnects to a libzmq ROUTER that restarts", async () => {
    let router = await peer("router", "bind", "tcp://127.0.0.1:*", ["--echo"]);
    const endpoint = router.endpoint;
    const dealer = track(new DealerSocket({ reconnectIvlMs: 20 }));
    dealer.connect(endpoint);
    dealer.send([Buffer.from("one")]);
    expect((await dealer.receive({ timeoutMs: 5000 }))?.map(String)).toEqual(["one"]);
    await router.kill();
    await waitUntil(() => dealer.peerCount === 0, "the disconnect");
    router = await peer("router", "bind", endpoint, ["--echo"]);
    await waitUntil(() => dealer.peerCount === 1, "the reconnect");
    dealer.send([Buffer.from("two")]);
    expect((await dealer.receive({ timeoutMs: 5000 }))?.map(String)).toEqual(["two"]);
  });

  it("our PUB drops for a libzmq SUB that stops reading, memory bounded by the HWM", async () => {
    const hwm = 10;
    const pub = track(new PubSocket({ sndHwm: hwm }));
    const endpoint = await pub.bind("tcp://127.0.0.1:0");
    await peer("sub", "connect", endpoint, ["--subscribe", "", "--no-recv", "--rcvhwm", "5", "--rcvbuf", "65536"]);
    await waitUntil(() => pub.stats().subscriptions === 1, "the subscription");
    const payload = Buffer.alloc(256 * 1024, 1);
    let maxQueued = 0;
    for (let i = 0; i < 400; i++) {
      pub.send([Buffer.from("t"), payload]);
      maxQueued = Math.max(maxQueued, pub.stats().queued);
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 1));
    }
    const stats = pub.stats();
    expect(stats.dropped).toBeGreaterThan(100);
    expect(maxQueued).toBeLessThanOrEqual(hwm);
    expect(stats.bufferedBytes).toBeLessThanOrEqual(hwm * (payload.length + 64));
  });

  it.each([1, 0] as const)("heartbeats (ZMTP 3.%i): libzmq answers our PINGs, an idle publisher stays connected", async (minor) => {
    const pub = await peer("pub", "bind", "tcp://127.0.0.1:*");
    const sub = track(new SubSocket({ heartbeatIvlMs: 50, heartbeatTimeoutMs: 200, zmtpMinor: minor }));
    let drops = 0;
    sub.on("disconnected", () => drops++);
    sub.subscribe("");
    sub.connect(pub.endpoint);
    await waitUntil(() => sub.peerCount === 1, "the connection");
    await new Promise((r) => setTimeout(r, 700));
    expect(drops).toBe(0);
    expect(sub.peerCount).toBe(1);
  });

  it("ipc:// both ways: our SUB <- libzmq PUB, libzmq SUB <- our PUB", async () => {
    const a = join(tmpdir(), `kvroute-ipc-a-${process.pid}-${Date.now()}`);
    const pub = await peer("pub", "bind", `ipc://${a}`);
    const sub = track(new SubSocket());
    sub.subscribe("");
    sub.connect(`ipc://${a}`);
    await warmUp(pub, sub, "ipc-probe");

    const b = join(tmpdir(), `kvroute-ipc-b-${process.pid}-${Date.now()}`);
    const ours = track(new PubSocket());
    await ours.bind(`ipc://${b}`);
    const theirs = await peer("sub", "connect", `ipc://${b}`, ["--subscribe", ""]);
    await waitUntil(() => ours.stats().subscriptions === 1, "the subscription");
    ours.send([Buffer.from("over ipc")]);
    expect((await theirs.messagesUntil(1))[0]?.map(String)).toEqual(["over ipc"]);
  });
});
