#!/usr/bin/env python3
"""A real libzmq peer (Debian's python3-zmq) for kvroute's ZMTP interop tests.

    zmq-peer.py ROLE bind|connect ENDPOINT [options]

ROLE is a libzmq socket type (pub, xpub, sub, dealer, router) or `vllm`: a PUB (with --xpub an
XPUB, which reports subscriptions) plus a ROUTER replay socket that behave as vLLM's
ZmqEventPublisher (vllm/distributed/kv_events.py): frames [topic, seq (8 bytes BE), payload], seq
from 0, a ring of the last --buffer-steps batches, and the replay reply of --replay-layout new
(0.26.0+, with a topic frame) or old (0.9.0 - 0.25.1).

Talks JSON lines. Commands on stdin (frames and payloads in hex):
    {"cmd": "send", "frames": [...]}                 send one multipart message
    {"cmd": "repeat", "frames": [...], "ms": 20}      send it every ms until "stop"
    {"cmd": "stop"}
    {"cmd": "subscribe"|"unsubscribe", "topic": hex}  (sub)
    {"cmd": "publish", "payload": hex, "drop": false} (vllm; drop: into the ring only, as if PUB's
                                                       HWM had dropped it)
    {"cmd": "exit"}
Every command is acknowledged with {"event": "ok", "cmd": ...} once done. Events on stdout:
    {"event": "ready", "endpoint": ..., "replay_endpoint": ..., "zmq": version}
    {"event": "message", "frames": [...]}            every message received (unless --no-recv)
The process exits when stdin closes.
"""

import argparse
import json
import os
import sys
from collections import deque

import zmq

TYPES = {"pub": zmq.PUB, "xpub": zmq.XPUB, "sub": zmq.SUB, "dealer": zmq.DEALER, "router": zmq.ROUTER}
END_SEQ = (-1).to_bytes(8, "big", signed=True)


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hexes(frames):
    return [bytes(f).hex() for f in frames]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=[*TYPES, "vllm"])
    ap.add_argument("mode", choices=["bind", "connect"])
    ap.add_argument("endpoint")
    ap.add_argument("--identity", help="hex")
    ap.add_argument("--subscribe", action="append", default=[], help="hex prefix (sub)")
    ap.add_argument("--sndhwm", type=int)
    ap.add_argument("--rcvhwm", type=int)
    ap.add_argument("--rcvbuf", type=int, help="SO_RCVBUF bytes")
    ap.add_argument("--no-recv", action="store_true", help="never read (a slow subscriber)")
    ap.add_argument("--echo", action="store_true", help="send every message received straight back")
    ap.add_argument("--topic", default="", help="vllm: topic")
    ap.add_argument("--replay-endpoint", help="vllm: ROUTER endpoint (always bound)")
    ap.add_argument("--buffer-steps", type=int, default=10000)
    ap.add_argument("--replay-layout", choices=["new", "old"], default="new")
    ap.add_argument("--xpub", action="store_true", help="vllm: an XPUB, reporting subscriptions as messages")
    args = ap.parse_args()

    ctx = zmq.Context.instance()
    if args.role == "vllm":
        sock = ctx.socket(zmq.XPUB if args.xpub else zmq.PUB)
    else:
        sock = ctx.socket(TYPES[args.role])
    sock.setsockopt(zmq.LINGER, 0)
    if args.identity:
        sock.setsockopt(zmq.IDENTITY, bytes.fromhex(args.identity))
    if args.sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, args.sndhwm)
    if args.rcvhwm is not None:
        sock.setsockopt(zmq.RCVHWM, args.rcvhwm)
    if args.rcvbuf is not None:
        sock.setsockopt(zmq.RCVBUF, args.rcvbuf)
    for topic in args.subscribe:
        sock.setsockopt(zmq.SUBSCRIBE, bytes.fromhex(topic))
    if args.mode == "bind":
        sock.bind(args.endpoint)
    else:
        sock.connect(args.endpoint)

    replay = None
    ring = deque(maxlen=args.buffer_steps)
    seq_gen = iter(range(1 << 64))
    topic = args.topic.encode("utf-8")
    if args.role == "vllm" and args.replay_endpoint:
        replay = ctx.socket(zmq.ROUTER)
        replay.setsockopt(zmq.LINGER, 0)
        replay.setsockopt(zmq.SNDHWM, 2 * (args.buffer_steps + 1))
        replay.bind(args.replay_endpoint)

    out({
        "event": "ready",
        "endpoint": sock.getsockopt_string(zmq.LAST_ENDPOINT),
        "replay_endpoint": replay.getsockopt_string(zmq.LAST_ENDPOINT) if replay else None,
        "zmq": zmq.zmq_version(),
    })

    poller = zmq.Poller()
    stdin = sys.stdin.fileno()
    poller.register(stdin, zmq.POLLIN)
    if (args.role not in ("pub", "vllm") or args.xpub) and not args.no_recv:
        poller.register(sock, zmq.POLLIN)
    if replay is not None:
        poller.register(replay, zmq.POLLIN)

    pending = b""
    repeat = None
    while True:
        events = dict(poller.poll(repeat[1] if repeat else None))
        if repeat:
            sock.send_multipart(repeat[0])
        if events.get(sock):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                out({"event": "message", "frames": hexes(frames)})
                if args.echo:
                    sock.send_multipart(frames)
        if replay is not None and events.get(replay):
            # vLLM's ZmqEventPublisher._service_replay, layout per release.
            frame = replay.recv_multipart()
            if len(frame) == 3:
                client_id, _, start_seq_bytes = frame
                start_seq = int.from_bytes(start_seq_bytes, "big")
                for seq, buf in ring:
                    if seq >= start_seq:
                        body = [seq.to_bytes(8, "big"), buf]
                        if args.replay_layout == "new":
                            body.insert(0, topic)
                        replay.send_multipart([client_id, b"", *body])
                marker = [END_SEQ, b""] if args.replay_layout == "old" else [b"", END_SEQ, b""]
                replay.send_multipart([client_id, b"", *marker])
        if events.get(stdin):
            chunk = os.read(stdin, 1 << 20)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if not line.strip():
                    continue
                cmd = json.loads(line)
                name = cmd["cmd"]
                if name == "send":
                    sock.send_multipart([bytes.fromhex(f) for f in cmd["frames"]])
                elif name == "repeat":
                    repeat = ([bytes.fromhex(f) for f in cmd["frames"]], cmd.get("ms", 20))
                elif name == "stop":
                    repeat = None
                elif name == "subscribe":
                    sock.setsockopt(zmq.SUBSCRIBE, bytes.fromhex(cmd["topic"]))
                elif name == "unsubscribe":
                    sock.setsockopt(zmq.UNSUBSCRIBE, bytes.fromhex(cmd["topic"]))
                elif name == "publish":
                    seq = next(seq_gen)
                    payload = bytes.fromhex(cmd["payload"])
                    if not cmd.get("drop"):
                        sock.send_multipart([topic, seq.to_bytes(8, "big"), payload])
                    ring.append((seq, payload))
                elif name == "exit":
                    out({"event": "ok", "cmd": name})
                    return
                out({"event": "ok", "cmd": name})


if __name__ == "__main__":
    main()
