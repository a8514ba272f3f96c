"""Write golden KV-event frames for one vLLM release, produced by vLLM's own code.

Run through scripts/golden/make-kv-events.sh (which downloads the wheel and builds the venv):

    python scripts/golden/make_kv_events.py --version 0.33.0 \
        --src /tmp/kvroute-golden/src/0.33.0 --out fixtures/golden/kv_events/0.33.0.json

`--src` is a directory holding vLLM's `vllm/distributed/kv_events.py` (and, from 0.10.2 on,
`vllm/v1/core/kv_cache_utils.py`) exactly as shipped in that release's wheel. This script
imports that kv_events.py with its heavy imports replaced by stubs: `zmq` becomes an in-memory
fake that records every multipart frame, `vllm.logger`/`vllm.config` become tiny shims. The
event structs, the publisher class, its thread, its msgspec encoder, its seq numbering, its
data-parallel annotation and endpoint offsetting, and its replay handler are all vLLM's own.
`maybe_convert_block_hash` (bytes -> int form of a block hash) is taken from the release's own
kv_cache_utils.py.

Output (JSON): the struct layouts as msgspec sees them, a list of cases (each the exact frames
[topic, seq, payload] as the publisher sent them, plus the expected decoded events in a neutral
form), the replay exchange, and endpoint offsets per DP rank.

Neutral form of a block hash: an int as a decimal string ("-42", "18446744073709551615"),
bytes as "0x" + hex. `block_keys_u64` gives the 64-bit key our decoder must derive from each
hash (ints: value mod 2**64; bytes: vLLM's own maybe_convert_block_hash, i.e. the last 8 bytes
big-endian).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import logging
import struct
import sys
import threading
import time
import types
from collections import deque
from pathlib import Path

import msgspec

MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# Stubs for kv_events.py's imports
# --------------------------------------------------------------------------------------------


class FakeSocket:
    """Records what vLLM's publisher sends; feeds it what a client would send."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sent: list[list[bytes]] = []
        self.inbox: deque[list[bytes]] = deque()
        self.bound: list[str] = []
        self.connected: list[str] = []
        self.options: dict = {}
        self.lock = threading.Lock()

    def set_hwm(self, value):
        self.options["hwm"] = value

    def setsockopt(self, opt, value):
        self.options[opt] = value

    def bind(self, endpoint):
        self.bound.append(endpoint)

    def connect(self, endpoint):
        self.connected.append(endpoint)

    def getsockopt_string(self, opt):
        return self.bound[-1] if self.bound else ""

    def poll(self, timeout=0, flags=None):
        return 1 if self.inbox else 0

    def recv_multipart(self, *args, **kwargs):
        return self.inbox.popleft()

    def send_multipart(self, frames, *args, **kwargs):
        with self.lock:
            self.sent.append([bytes(f) for f in frames])

    def close(self, linger=None):
        pass


class FakeContext:
    sockets: list[FakeSocket] = []

    @classmethod
    def instance(cls):
        return cls()

    def socket(self, kind):
        s = FakeSocket(kind)
        FakeContext.sockets.append(s)
        return s


def install_stubs(src: Path) -> types.SimpleNamespace:
    """Put stub modules in sys.modules; return helpers taken from vLLM's kv_cache_utils.py."""
    zmq = types.ModuleType("zmq")
    zmq.PUB = "PUB"
    zmq.SUB = "SUB"
    zmq.ROUTER = "ROUTER"
    zmq.SNDHWM = "SNDHWM"
    zmq.RCVHWM = "RCVHWM"
    zmq.IPV6 = "IPV6"
    zmq.LAST_ENDPOINT = "LAST_ENDPOINT"
    zmq.Context = FakeContext
    zmq.Socket = FakeSocket
    sys.modules["zmq"] = zmq

    @dataclasses.dataclass
    class KVEventsConfig:  # shim: the publisher only reads/builds it, it is not on the wire
        enable_kv_cache_events: bool = False
        publisher: str | None = None
        endpoint: str = "tcp://*:5557"
        replay_endpoint: str | None = None
        buffer_steps: int = 10_000
        hwm: int = 100_000
        max_queue_size: int = 100_000
        topic: str = ""

    def pkg(name: str) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__path__ = []  # mark as package
        sys.modules[name] = m
        return m

    pkg("vllm")
    cfg = pkg("vllm.config")
    cfg.KVEventsConfig = KVEventsConfig
    cfg_kv = types.ModuleType("vllm.config.kv_events")
    cfg_kv.KVEventsConfig = KVEventsConfig
    sys.modules["vllm.config.kv_events"] = cfg_kv
    logger_mod = types.ModuleType("vllm.logger")
    logger_mod.init_logger = logging.getLogger
    sys.modules["vllm.logger"] = logger_mod
    pkg("vllm.utils")
    net = types.ModuleType("vllm.utils.network_utils")
    net.get_ip = lambda: "127.0.0.1"
    net.get_tcp_uri = lambda ip, port: f"tcp://{ip}:{port}"
    net.is_valid_ipv6_address = lambda ip: ":" in ip
    net.split_zmq_path = lambda p: tuple(p.rsplit(":", 2)) if p.count(":") >= 2 else (p, "", "")
    sys.modules["vllm.utils.network_utils"] = net
    pkg("vllm.distributed")
    pkg("vllm.v1")
    pkg("vllm.v1.core")
    kcu = types.ModuleType("vllm.v1.core.kv_cache_utils")
    sys.modules["vllm.v1.core.kv_cache_utils"] = kcu

    helpers = types.SimpleNamespace(convert=None, external_block_hash_src=None)
    kcu_path = src / "vllm/v1/core/kv_cache_utils.py"
    kcu.ExternalBlockHash = int  # releases before 0.10.2 have no ExternalBlockHash
    if kcu_path.exists():
        tree = ast.parse(kcu_path.read_text())
        wanted = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "maybe_convert_block_hash":
                wanted.append(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == "ExternalBlockHash" for t in targets):
                    wanted.append(node)
                    helpers.external_block_hash_src = ast.unparse(node)
        if wanted:
            envs = types.SimpleNamespace(VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=True)
            import typing

            ns = {
                "envs": envs,
                "Union": typing.Union,
                "TypeAlias": typing.TypeAlias,
                "BlockHash": bytes,
                "ExternalBlockHash": bytes | int,
            }
            mod = ast.Module(body=wanted, type_ignores=[])
            exec(compile(mod, str(kcu_path), "exec"), ns)  # noqa: S102 - vLLM's own helper
            kcu.ExternalBlockHash = ns["ExternalBlockHash"]
            if "maybe_convert_block_hash" in ns:
                fn = ns["maybe_convert_block_hash"]

                def convert(h: bytes, use_int: bool) -> bytes | int:
                    envs.VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES = use_int
                    return fn(h)

                helpers.convert = convert
    return helpers


def load_kv_events(src: Path) -> types.ModuleType:
    path = src / "vllm/distributed/kv_events.py"
    spec = importlib.util.spec_from_file_location("vllm.distributed.kv_events", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vllm.distributed.kv_events"] = mod
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# Neutral JSON form
# --------------------------------------------------------------------------------------------


def neutral_hash(h):
    if isinstance(h, (bytes, bytearray)):
        return "0x" + bytes(h).hex()
    if isinstance(h, int) and not isinstance(h, bool):
        return str(h)
    raise TypeError(f"unexpected block hash {h!r}")


def key_u64(h, helpers) -> str:
    if isinstance(h, (bytes, bytearray)):
        assert helpers.convert is not None
        return str(helpers.convert(bytes(h), True))
    return str(h & MASK64)


def neutral_value(v):
    """Generic value (extra_keys entries): tagged so bytes/str/int stay distinct."""
    if v is None:
        return None
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": v}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, (bytes, bytearray)):
        return {"bin": bytes(v).hex()}
    if isinstance(v, (list, tuple)):
        return {"array": [neutral_value(x) for x in v]}
    raise TypeError(f"unexpected value {v!r}")


def neutral_event(ev, helpers) -> dict:
    out = {"type": type(ev).__name__}
    for name in type(ev).__struct_fields__:
        val = getattr(ev, name)
        if name == "block_hashes":
            out[name] = [neutral_hash(h) for h in val]
            out["block_keys_u64"] = [key_u64(h, helpers) for h in val]
        elif name == "parent_block_hash":
            out[name] = None if val is None else neutral_hash(val)
            out["parent_key_u64"] = None if val is None else key_u64(val, helpers)
        elif name == "extra_keys":
            out[name] = None if val is None else [neutral_value(x) for x in val]
        else:
            out[name] = val
    return out


def struct_layout(cls) -> dict:
    cfg = cls.__struct_config__
    fields = list(cls.__struct_fields__)
    defaults = list(cls.__struct_defaults__)
    n_req = len(fields) - len(defaults)
    return {
        "array_like": cfg.array_like,
        "omit_defaults": cfg.omit_defaults,
        "tag": cfg.tag,
        "tag_field": cfg.tag_field,
        "fields": [
            {"name": f, "required": i < n_req, "default": None if i < n_req else repr(defaults[i - n_req])}
            for i, f in enumerate(fields)
        ],
    }


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def digest(i: int) -> bytes:
    return hashlib.sha256(b"kvroute-golden/%d" % i).digest()


class Maker:
    """Builds events with whatever fields this release's structs have."""

    def __init__(self, kv, helpers):
        self.kv = kv
        self.helpers = helpers
        self.stored_fields = set(kv.BlockStored.__struct_fields__)
        self.removed_fields = set(kv.BlockRemoved.__struct_fields__)
        self.has_bytes = helpers.convert is not None  # ExternalBlockHash = bytes | int

    def h(self, i: int, form: str):
        """A block hash as this release would put it on the wire."""
        if not self.has_bytes:
            # <= 0.10.1: BlockHashType.hash_value, an int. 'builtin' (default) is Python's hash()
            # of a tuple: signed 64-bit. sha256_cbor_64bit (0.10.0+) gives [0, 2**64).
            if form == "signed":
                return hash((i, tuple(range(i, i + 4))))
            return int.from_bytes(digest(i)[-8:], "big")
        return self.helpers.convert(digest(i), form != "bytes")

    def stored(self, hashes, parent, tokens, block_size, **extra):
        kw = dict(
            block_hashes=hashes,
            parent_block_hash=parent,
            token_ids=tokens,
            block_size=block_size,
            lora_id=extra.pop("lora_id", None),
        )
        defaults = {"medium": "GPU", "lora_name": None}
        for k, v in {**defaults, **extra}.items():
            if k in self.stored_fields:
                kw[k] = v
        return self.kv.BlockStored(**kw)

    def removed(self, hashes, **extra):
        kw = {"block_hashes": hashes}
        for k, v in {"medium": "GPU", **extra}.items():
            if k in self.removed_fields:
                kw[k] = v
        return self.kv.BlockRemoved(**kw)

    def cleared(self):
        return self.kv.AllBlocksCleared()


def build_cases(m: Maker, version: str):
    """[(name, description, events, dp_rank_or_None, via)]; via = 'publisher' or 'encoder'."""
    bs = 16
    toks = lambda start, n: [start + i for i in range(n)]  # noqa: E731
    cases = []
    f = m.stored_fields
    int_form = "signed" if not m.has_bytes else "int"

    # Root store, two blocks, plain ints (the default int form of the release).
    hs = [m.h(1, int_form), m.h(2, int_form)]
    cases.append(("stored_root", "BlockStored without parent, 2 blocks, default int hashes",
                  [m.stored(hs, None, toks(1, 2 * bs), bs)], 0, "publisher"))
    # Child store with parent.
    cases.append(("stored_child", "BlockStored with parent_block_hash",
                  [m.stored([m.h(3, int_form)], m.h(2, int_form), toks(100, bs), bs)], 0, "publisher"))
    if not m.has_bytes:
        # Unsigned 64-bit ints as sha256_cbor_64bit (0.10.0-0.10.1.1) produces.
        cases.append(("stored_u64", "BlockStored with unsigned 64-bit hashes (sha256_cbor_64bit)",
                      [m.stored([m.h(4, "u64"), m.h(5, "u64")], m.h(6, "u64"), toks(7, 2 * bs), bs)],
                      0, "publisher"))
        cases.append(("small_ints", "tiny and boundary int hashes (fixint, int8/16/32/64 widths)",
                      [m.stored([0, 1, 127, 128, -1, -32, -33, -128, -129, 65535, 65536, -32768, -32769,
                                 2**31, -(2**31) - 1, 2**63 - 1, -(2**63)], None, toks(0, 17 * 4), 4)],
                      0, "publisher"))
    else:
        cases.append(("stored_bytes", "BlockStored with bytes hashes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0)",
                      [m.stored([m.h(4, "bytes"), m.h(5, "bytes")], m.h(6, "bytes"), toks(7, 2 * bs), bs)],
                      0, "publisher"))
        cases.append(("small_ints", "tiny and boundary uint hashes (fixint, uint8/16/32/64 widths)",
                      [m.stored([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1],
                                None, toks(0, 12 * 4), 4)], 0, "publisher"))
        cases.append(("removed_bytes", "BlockRemoved with bytes hashes",
                      [m.removed([m.h(4, "bytes")])], 0, "publisher"))
    # Big vocab ids, 20 blocks (array16 for hashes), long block.
    many = [m.h(100 + i, int_form) for i in range(20)]
    cases.append(("stored_many", "20 blocks (array16), token ids past 2**16",
                  [m.stored(many, m.h(99, int_form), [151643 + (i % 300) for i in range(20 * bs)], bs)],
                  0, "publisher"))
    # LoRA.
    cases.append(("stored_lora", "BlockStored from a LoRA request",
                  [m.stored([m.h(7, int_form)], None, toks(5, bs), bs, lora_id=3,
                            lora_name="sql-adapter-with-a-rather-long-name-v2")], 0, "publisher"))
    # Medium CPU (offloading connector style placeholder: no tokens, block_size 0).
    if "medium" in f:
        cases.append(("stored_cpu", "BlockStored on medium CPU (offload placeholder)",
                      [m.stored([m.h(8, int_form)], None, [], 0, medium="CPU")], 0, "publisher"))
        cases.append(("removed_cpu", "BlockRemoved on medium CPU",
                      [m.removed([m.h(8, int_form)], medium="CPU")], 0, "publisher"))
        cases.append(("medium_none", "medium None",
                      [m.stored([m.h(9, int_form)], None, toks(9, bs), bs, medium=None),
                       m.removed([m.h(9, int_form)], medium=None)], 0, "publisher"))
    cases.append(("removed", "BlockRemoved, 3 hashes",
                  [m.removed([m.h(1, int_form), m.h(2, int_form), m.h(3, int_form)])], 0, "publisher"))
    cases.append(("cleared", "AllBlocksCleared", [m.cleared()], 0, "publisher"))
    cases.append(("multi", "several events in one batch",
                  [m.stored([m.h(10, int_form)], None, toks(1, bs), bs),
                   m.removed([m.h(1, int_form)]),
                   m.cleared(),
                   m.stored([m.h(11, int_form), m.h(12, int_form)], m.h(10, int_form), toks(17, 2 * bs), bs)],
                  0, "publisher"))
    # Data-parallel rank 3 (publisher for DP rank 3 annotates the batch).
    cases.append(("dp_rank_3", "published by the DP rank 3 publisher",
                  [m.stored([m.h(13, int_form)], None, toks(1, bs), bs)], 3, "publisher"))
    # data_parallel_rank unset: what msgspec emits for a batch nobody annotated.
    cases.append(("dp_unset", "batch encoded directly (no publisher), data_parallel_rank left None",
                  [m.stored([m.h(14, int_form)], None, toks(1, bs), bs)], None, "encoder"))

    # Optional fields by release.
    opt = {}
    if "extra_keys" in f:
        # Shapes as block_pool publishes them (see docs/vllm-kv-events.md):
        # 0.17-0.18: (lora_name?, mm_identifier..., cache_salt?, prompt_embeds_digest?)
        # 0.19+:     mm entries are (mm_identifier, offset_in_block) pairs.
        mm_hex = hashlib.sha256(b"image-0").hexdigest()
        pair_mm = version_tuple(version) >= (0, 19)
        mm = (mm_hex, 5) if pair_mm else mm_hex
        opt["extra_keys"] = [
            ("sql-adapter", mm, "tenant-salt"),
            None,
            ("sql-adapter", hashlib.sha256(b"embeds").digest()),
        ]
    if "group_idx" in f:
        opt["group_idx"] = 1
    if "kv_cache_spec_kind" in f:
        opt["kv_cache_spec_kind"] = "sliding_window"
        opt["kv_cache_spec_sliding_window"] = 4096
    if "locality" in f:
        opt["locality"] = "LOCAL"
    if "ownership" in f:
        opt["ownership"] = "kvcr"
    if "session_id" in f:
        opt["session_id"] = "session-42"
    if "lookahead_token_ids" in f:
        opt["lookahead_token_ids"] = [[900, 901], [902, 903], [904, 905]]
    if opt:
        hs3 = [m.h(20, int_form), m.h(21, int_form), m.h(22, int_form)]
        kw = dict(opt)
        cases.append(("stored_all_fields", "every optional field of this release set",
                      [m.stored(hs3, m.h(19, int_form), toks(1000, 3 * bs), bs, lora_id=2,
                                lora_name="sql-adapter", **kw)], 0, "publisher"))
        # Only the first defaulted field set (map form omits the rest; array form writes nil).
        first = next(iter(opt))
        cases.append(("stored_some_defaults", f"only {first} of the defaulted fields set",
                      [m.stored(hs3[:1], None, toks(1000, bs), bs, **{first: opt[first][:1] if first in ("extra_keys", "lookahead_token_ids") else opt[first]})],
                      0, "publisher"))
        if "group_idx" in f:
            gkw = {"group_idx": 0}
            cases.append(("stored_group0", "group_idx 0 only (default group)",
                          [m.stored(hs3[:1], None, toks(1000, bs), bs, **gkw),
                           m.removed(hs3[:1], group_idx=0)], 0, "publisher"))
            rkw = {"group_idx": 2}
            for k in ("locality", "ownership"):
                if k in m.removed_fields:
                    rkw[k] = opt[k]
            cases.append(("removed_all_fields", "BlockRemoved with every optional field",
                          [m.removed(hs3, medium="CPU", **rkw)], 0, "publisher"))
    return cases


def version_tuple(v: str):
    return tuple(int(x) for x in v.split(".")[:2])


# --------------------------------------------------------------------------------------------
# Driving vLLM's publisher
# --------------------------------------------------------------------------------------------


def wait_for(cond, what: str, timeout=10.0):
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise TimeoutError(what)
        time.sleep(0.005)


def make_publisher(kv, dp_rank: int, topic: str, replay: bool):
    FakeContext.sockets = []
    params = inspect.signature(kv.ZmqEventPublisher.__init__).parameters
    kw = dict(endpoint="tcp://*:5557", topic=topic)
    if replay:
        kw["replay_endpoint"] = "tcp://*:5558"
    if "data_parallel_rank" in params:
        kw["data_parallel_rank"] = dp_rank
    elif dp_rank:
        raise ValueError("release has no DP support")
    pub = kv.ZmqEventPublisher(**kw)
    socks = list(FakeContext.sockets)
    pub_sock = next(s for s in socks if s.kind == "PUB")
    router = next((s for s in socks if s.kind == "ROUTER"), None)
    return pub, pub_sock, router


def hexs(frames):
    return [f.hex() for f in frames]


def run(version: str, src: Path, out: Path) -> None:
    helpers = install_stubs(src)
    kv = load_kv_events(src)
    m = Maker(kv, helpers)
    topic = "kv@worker-a"
    ts0 = 1767225600.125  # 2026-01-01T00:00:00.125Z, exactly representable
    cases_out = []

    pubs = {}

    def publisher_for(dp):
        if dp not in pubs:
            pubs[dp] = make_publisher(kv, dp, topic, replay=(dp == 0))
        return pubs[dp]

    for i, (name, desc, events, dp, via) in enumerate(build_cases(m, version)):
        ts = ts0 + i * 0.25
        if via == "publisher" and (dp or 0) != 0 and "data_parallel_rank" not in kv.EventBatch.__struct_fields__:
            continue
        batch = kv.KVEventBatch(ts=ts, events=events)
        expected_events = [neutral_event(e, helpers) for e in events]
        if via == "publisher":
            pub, sock, _ = publisher_for(dp)
            n = len(sock.sent)
            pub.publish(batch)
            wait_for(lambda: len(sock.sent) > n, f"{name}: publish")
            topic_b, seq_b, payload = sock.sent[n]
        else:
            topic_b, seq_b = None, None
            payload = msgspec.msgpack.Encoder().encode(batch)
        # vLLM's own structs must read it back identically.
        back = msgspec.msgpack.Decoder(kv.KVEventBatch).decode(payload)
        assert [neutral_event(e, helpers) for e in back.events] == expected_events, name
        dpr = getattr(batch, "data_parallel_rank", None)
        case = {
            "name": name,
            "description": desc,
            "via": via,
            "payload_hex": payload.hex(),
            "expected": {
                "ts": ts,
                "ts_bits": "0x%016x" % struct.unpack(">Q", struct.pack(">d", ts))[0],
                "has_data_parallel_rank_field": "data_parallel_rank" in kv.EventBatch.__struct_fields__,
                "data_parallel_rank": dpr,
                "events": expected_events,
            },
        }
        if via == "publisher":
            # frames = [topic, seq, payload]; the payload frame is payload_hex above
            case["topic_hex"] = topic_b.hex()
            case["seq_hex"] = seq_b.hex()
            case["seq"] = int.from_bytes(seq_b, "big")
            case["topic"] = topic_b.decode()
        cases_out.append(case)

    # Replay: ask the DP-0 publisher for its last two batches.
    pub, pub_sock, router = publisher_for(0)
    assert router is not None
    start = len(pub_sock.sent) - 2
    request = [b"\x00k\x8bEg", b"", start.to_bytes(8, "big")]  # ROUTER sees [identity, b"", seq]
    router.inbox.append(request)
    end_marker = (-1).to_bytes(8, "big", signed=True)
    wait_for(lambda: any(end_marker in fr for fr in router.sent), "replay")
    replay = {
        "start_seq": start,
        "request_frames_at_router_hex": hexs(request),
        "client_sends_hex": [start.to_bytes(8, "big").hex()],
        "reply_frames_at_router_hex": [hexs(fr) for fr in router.sent],
        "published_count": len(pub_sock.sent),
    }
    # Bad request (2 frames) is ignored (logged), no reply.
    n_before = len(router.sent)
    router.inbox.append([b"\x00k\x8bEg", b"\x00" * 8])
    wait_for(lambda: not router.inbox, "bad replay consumed")
    time.sleep(0.3)
    replay["bad_request_reply_count"] = len(router.sent) - n_before

    sockets = {
        str(dp): {
            "pub_bound": p[1].bound,
            "pub_connected": p[1].connected,
            "pub_hwm": p[1].options.get("hwm"),
            "router_bound": p[2].bound if p[2] else None,
            "router_options": {str(k): v for k, v in p[2].options.items()} if p[2] else None,
        }
        for dp, p in pubs.items()
    }
    for p in pubs.values():
        p[0].shutdown()

    offsets = []
    if hasattr(kv.ZmqEventPublisher, "offset_endpoint_port"):
        for ep in ["tcp://*:5557", "tcp://10.0.0.5:5557", "tcp://[::1]:5557", "inproc://cache",
                   "ipc:///tmp/kv", "tcp://*:0"]:
            for r in (0, 1, 3):
                try:
                    res = kv.ZmqEventPublisher.offset_endpoint_port(ep, r)
                except Exception as e:  # noqa: BLE001
                    res = f"error: {type(e).__name__}: {e}"
                offsets.append({"endpoint": ep, "dp_rank": r, "result": res})

    doc = {
        "vllm_version": version,
        "generated_by": "scripts/golden/make-kv-events.sh (vLLM's own kv_events.py; zmq faked)",
        "kv_events_py_sha256": hashlib.sha256((src / "vllm/distributed/kv_events.py").read_bytes()).hexdigest(),
        "msgspec_version": msgspec.__version__,
        "external_block_hash": helpers.external_block_hash_src,
        "structs": {
            c: struct_layout(getattr(kv, c))
            for c in ("EventBatch", "KVEventBatch", "BlockStored", "BlockRemoved", "AllBlocksCleared")
        },
        "topic": topic,
        "cases": cases_out,
        "replay": replay,
        "sockets": sockets,
        "endpoint_offsets": offsets,
    }
    out.write_text(compact_json(doc))
    print(f"{version}: {len(cases_out)} cases -> {out}")


def compact_json(doc: dict) -> str:
    """Top level and each case/struct on its own line: diffable, yet small."""
    lines = ["{"]
    items = list(doc.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f" {json.dumps(k)}: [")
            for j, x in enumerate(v):
                lines.append("  " + json.dumps(x, separators=(",", ":")) + ("," if j + 1 < len(v) else ""))
            lines.append(" ]" + comma)
        elif isinstance(v, dict):
            lines.append(f" {json.dumps(k)}: {{")
            sub = list(v.items())
            for j, (k2, x) in enumerate(sub):
                lines.append(f"  {json.dumps(k2)}: " + json.dumps(x, separators=(",", ":")) + ("," if j + 1 < len(sub) else ""))
            lines.append(" }" + comma)
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", required=True)
    ap.add_argument("--src", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    run(a.version, a.src, a.out)


if __name__ == "__main__":
    main()
