"""Generate fixtures/golden/block_hashes.json with vLLM's own block-hashing code.

Run through make-block-hashes.sh (it builds the venv and unpacks the pinned wheel):

    scripts/golden/make-block-hashes.sh

or by hand, with cbor2 and xxhash installed and a wheel unpacked in SRC:

    python scripts/golden/make_block_hashes.py --vllm-src SRC --out fixtures/golden/block_hashes.json

Only pure-Python modules of the wheel are imported: the real `vllm.utils.hashing`,
`vllm.v1.core.kv_cache_utils` and `vllm.envs`, and the one helper
`get_mm_features_in_window` from `vllm.multimodal.utils` (compiled from the wheel's source on its
own, since that module imports numpy and PIL). Everything else that kv_cache_utils imports (config,
logger, request and KV-cache-spec classes, torch helpers) is replaced by inert stubs: none of it is
reached by the hashing functions called here (`init_none_hash`, `get_request_block_hasher`,
`generate_block_hash_extra_keys`, `hash_block_tokens`, `maybe_convert_block_hash`).

The output is deterministic: the same wheel and the same library versions give the same file.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import importlib
import importlib.metadata
import json
import os
import pickle
import platform
import random
import sys
import types
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------------------------
# Loading vLLM's modules without the rest of vLLM
# --------------------------------------------------------------------------------------------


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vllm_stubs import StubModule as _StubModule  # noqa: E402,F401
from vllm_stubs import package as _package  # noqa: E402
from vllm_stubs import stub as _stub  # noqa: E402
from vllm_stubs import vllm_version  # noqa: E402,F401


def _function_from_source(path: str, func_name: str, namespace: dict[str, Any]) -> Any:
    """Compile one top-level function of a vLLM source file, unchanged, in `namespace`."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func_name:
            module = ast.Module(body=[node], type_ignores=[])
            exec(compile(module, path, "exec"), namespace)  # noqa: S102 - vLLM's own code
            return namespace[func_name]
    raise SystemExit(f"{func_name} not found in {path}")


def load_vllm(src: str) -> tuple[types.ModuleType, types.ModuleType]:
    vllm_dir = os.path.join(src, "vllm")
    _package("vllm", vllm_dir)
    _package("vllm.utils", os.path.join(vllm_dir, "utils"))
    _package("vllm.v1", os.path.join(vllm_dir, "v1"))
    _package("vllm.v1.core", os.path.join(vllm_dir, "v1", "core"))
    _package("vllm.multimodal", None)

    import logging

    _stub("vllm.logger", init_logger=logging.getLogger)
    _stub("vllm.config")
    _stub("vllm.v1.kv_cache_interface")
    _stub("vllm.v1.kv_cache_spec_registry")
    _stub("vllm.v1.request")
    _stub("vllm.v1.utils")

    ns: dict[str, Any] = {"bisect": bisect, "MultiModalFeatureSpec": object, "Any": Any}
    window = _function_from_source(
        os.path.join(vllm_dir, "multimodal", "utils.py"), "get_mm_features_in_window", ns
    )
    _stub("vllm.multimodal.utils", get_mm_features_in_window=window)

    hashing = importlib.import_module("vllm.utils.hashing")
    kv_cache_utils = importlib.import_module("vllm.v1.core.kv_cache_utils")
    return hashing, kv_cache_utils


def hash_algorithms(src: str) -> list[str]:
    """The values of `--prefix-caching-hash-algo`, read from vllm/config/cache.py."""
    path = os.path.join(src, "vllm", "config", "cache.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "PrefixCachingHashAlgo" for t in node.targets)
            and isinstance(node.value, ast.Subscript)
        ):
            elts = node.value.slice.elts  # Literal["sha256", ...]
            return [e.value for e in elts]
    raise SystemExit("PrefixCachingHashAlgo not found in vllm/config/cache.py")


# --------------------------------------------------------------------------------------------
# The request-shaped object vLLM's hasher reads
# --------------------------------------------------------------------------------------------


def fresh(s: str) -> str:
    """A new str object equal to `s`. vLLM's requests arrive through msgspec, so equal strings
    are distinct objects (except CPython's one-character and empty singletons); pickle's memo
    works by identity, so the fixtures must not share objects the engine would not share."""
    return s.encode("utf-8").decode("utf-8")


@dataclass
class Position:
    offset: int
    length: int


@dataclass
class Feature:
    identifier: str
    mm_position: Position


@dataclass
class Lora:
    lora_name: str
    lora_path: str


@dataclass
class FakeRequest:
    all_token_ids: list[int]
    lora_request: Lora | None = None
    cache_salt: str | None = None
    mm_features: list[Feature] = field(default_factory=list)
    prompt_embeds: Any = None
    block_hashes: list[bytes] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)


def make_request(inp: dict[str, Any], tokens: list[int] | None = None) -> FakeRequest:
    lora = None
    if inp.get("lora_name") is not None:
        lora = Lora(fresh(inp["lora_name"]), fresh(inp["lora_path"]))
    salt = fresh(inp["cache_salt"]) if inp.get("cache_salt") is not None else None
    mm = [
        Feature(fresh(f["identifier"]), Position(f["offset"], f["length"]))
        for f in inp.get("mm", [])
    ]
    return FakeRequest(
        all_token_ids=list(inp["tokens"] if tokens is None else tokens),
        lora_request=lora,
        cache_salt=salt,
        mm_features=mm,
    )


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

EDGE_TOKENS = [0, 1, 255, 256, 65535, 65536, 199_999, 200_000, 2**31 - 1, 2**31, 2**32 - 1]


def build_inputs(rng: random.Random) -> list[dict[str, Any]]:
    def toks(n: int, hi: int = 200_000) -> list[int]:
        return [rng.randint(0, hi) for _ in range(n)]

    inputs: list[dict[str, Any]] = []

    def add(name: str, tokens: list[int], **extra: Any) -> None:
        inp = {"id": name, "tokens": tokens, "lora_name": None, "lora_path": None,
               "cache_salt": None, "mm": []}
        inp.update(extra)
        inputs.append(inp)

    add("empty", [])
    add("short-15", toks(15))
    add("one-block-16", toks(16))
    add("one-block-plus-1", toks(17))
    add("two-blocks-32", toks(32))
    add("random-40x32-plus-7", toks(40 * 32 + 7))
    add("random-40x16-plus-3", toks(40 * 16 + 3))
    add("small-ids", toks(200, 255))
    add("boundary-ids", [rng.choice([0, 1, 255, 256, 257, 65535, 65536, 65537]) for _ in range(96)])
    add("edge-ids", (EDGE_TOKENS * 12)[:128])
    add("prefix-a", toks(64) + [1] * 64)
    add("prefix-b", inputs[-1]["tokens"][:64] + [2] * 64)
    base = toks(160)
    add("lora", base, lora_name="sql-adapter", lora_path="/adapters/sql-lora")
    add("salt", base, cache_salt="tenant-7f3a")
    add("lora-salt", base, lora_name="sql-adapter", lora_path="/adapters/sql-lora",
        cache_salt="tenant-7f3a")
    add("salt-empty", base, cache_salt="")  # falsy: vLLM adds no key
    add("lora-empty-name", base[:64], lora_name="", lora_path="/p")
    add("unicode-extras", base[:96], lora_name="adaptér-ü", lora_path="/ädapters/ü",
        cache_salt="sël-日本語-🙂")
    add("one-char-extras", base[:96], lora_name="a", lora_path="a", cache_salt="a",
        mm=[{"identifier": "a", "offset": 3, "length": 5}, {"identifier": "a", "offset": 9, "length": 2}])
    add("long-strings", base[:64], lora_name="n" * 300, lora_path="p" * 70_000,
        cache_salt="s" * 256)
    # Multimodal: placeholders inside one block, spanning blocks, ending on a boundary, several
    # in one block, back to back, and the same identifier twice.
    mm_tokens = toks(32 * 12 + 5)
    add("mm-mixed", mm_tokens, mm=[
        {"identifier": "img-0a1b2c", "offset": 3, "length": 4},
        {"identifier": "img-3d4e5f", "offset": 9, "length": 2},
        {"identifier": "img-spans", "offset": 14, "length": 40},
        {"identifier": "aud-xyz", "offset": 64, "length": 32},
        {"identifier": "img-0a1b2c", "offset": 96, "length": 1},
        {"identifier": "img-0a1b2c", "offset": 97, "length": 1},
        {"identifier": "vid-long", "offset": 120, "length": 200},
        {"identifier": "tail", "offset": 380, "length": 8},
    ])
    add("mm-lora-salt", mm_tokens, lora_name="vision-lora", lora_path="/l/v",
        cache_salt="s1", mm=[
            {"identifier": "h" * 64, "offset": 0, "length": 16},
            {"identifier": "g" * 64, "offset": 16, "length": 100},
            {"identifier": "z", "offset": 200, "length": 0},
        ])
    return inputs


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def compact(value: Any) -> Any:
    """Long runs of one character as {"repeat": c, "count": n}; token ranges as {"range": [a, b]}
    (a..b exclusive). Keeps the JSON small; the Rust test expands both forms."""
    if isinstance(value, str) and len(value) > 1000 and len(set(value)) == 1:
        return {"repeat": value[0], "count": len(value)}
    if isinstance(value, list) and len(value) > 1000 and value == list(range(value[0], value[0] + len(value))):
        return {"range": [value[0], value[0] + len(value)]}
    if isinstance(value, (list, tuple)):
        return [compact(v) for v in value]
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    return value


def extra_key_json(keys: tuple | None) -> Any:
    if keys is None:
        return None
    return [compact(list(k)) for k in keys]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm-src", required=True, help="directory where the vllm wheel is unpacked")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    hashing, kcu = load_vllm(args.vllm_src)
    algorithms = hash_algorithms(args.vllm_src)
    version = vllm_version(args.vllm_src)
    rng = random.Random(20240601)
    inputs = build_inputs(rng)

    seeds: list[str | None] = ["0", "42", "4294967295", "random", "", "kvroute", None]
    block_sizes_main = [16, 32]
    block_sizes_odd = [1, 2, 3, 4, 5]

    def set_seed(seed: str | None) -> None:
        if seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = seed

    none_hashes = []
    cases = []
    for algo in algorithms:
        fn = hashing.get_hash_fn_by_name(algo)
        for seed in seeds:
            set_seed(seed)
            kcu.init_none_hash(fn)
            first = kcu.NONE_HASH
            kcu.init_none_hash(fn)
            random_none_hash = kcu.NONE_HASH != first
            none_hashes.append({
                "algorithm": algo,
                "seed": seed,
                "resolved_seed": None if random_none_hash else kcu.get_none_hash_seed(),
                "none_hash": None if random_none_hash else first.hex(),
                "random": random_none_hash,
            })
            if random_none_hash:
                continue
            main_seed = seed in ("0", "42", None)
            for inp in inputs:
                plans = list(block_sizes_main) if main_seed or inp["id"] in ("mm-mixed", "lora-salt", "edge-ids") else []
                if seed == "42" and inp["id"] in ("boundary-ids", "one-char-extras", "mm-mixed"):
                    plans += block_sizes_odd
                for bs in plans:
                    req = make_request(inp)
                    hasher = kcu.get_request_block_hasher(bs, fn)
                    digests = hasher(req)
                    assert len(digests) == len(inp["tokens"]) // bs
                    # Resuming after a split at a block boundary gives the same chain.
                    if len(digests) >= 3:
                        cut = (len(digests) // 2) * bs
                        req2 = make_request(inp, inp["tokens"][:cut])
                        req2.block_hashes.extend(hasher(req2))
                        req2.all_token_ids = list(inp["tokens"])
                        assert req2.block_hashes + hasher(req2) == digests
                    cases.append({
                        "input": inp["id"],
                        "algorithm": algo,
                        "seed": seed,
                        "block_size": bs,
                        "digests": [d.hex() for d in digests],
                        "hashes": [str(kcu.maybe_convert_block_hash(d)) for d in digests],
                    })

    # Per-block extra keys, straight from generate_block_hash_extra_keys.
    extra_keys = []
    for inp in inputs:
        if inp["lora_name"] is None and inp["cache_salt"] is None and not inp["mm"]:
            continue
        if inp["id"] == "long-strings":  # same rules as "lora-salt"; keeps the file small
            continue
        for bs in sorted(set(block_sizes_main + block_sizes_odd)):
            req = make_request(inp)
            per_block = []
            mm_idx = 0
            for start in range(0, len(inp["tokens"]) - bs + 1, bs):
                keys, mm_idx = kcu.generate_block_hash_extra_keys(req, start, start + bs, mm_idx)
                per_block.append(extra_key_json(keys))
            extra_keys.append({"input": inp["id"], "block_size": bs, "blocks": per_block})

    # Serialized bytes of tricky shapes, as vLLM's hash functions serialize them.
    encodings = []
    enc_rng = random.Random(7)
    parent32 = bytes(enc_rng.randrange(256) for _ in range(32))
    parent16 = parent32[:16]
    shapes: list[tuple[bytes, list[int], Any]] = [
        (parent32, [0], None),
        (parent32, [255, 256], None),
        (parent32, [65535, 65536, 2**31 - 1], None),
        (parent32, [2**31, 2**32 - 1, 0, 1], None),
        (parent16, EDGE_TOKENS, None),
        (parent32, list(range(16)), None),
        (parent32, list(range(199_990, 200_022)), None),
        (parent32, [7] * 24, (("lora", fresh("x"), fresh("/p")),)),
        (parent32, [7] * 25, (("mm", fresh("id"), -(2**31)), ("mm", fresh("id"), 2**31 - 1),
                              ("mm", fresh("id"), -(2**31) - 1), ("mm", fresh("id"), 2**40),
                              ("cache_salt", fresh("s")))),
        (parent32, [1, 2, 3], (("cache_salt", fresh("y" * 255)),)),
        (parent32, [1, 2, 3], (("cache_salt", fresh("y" * 256)),)),
        (parent32, [1, 2, 3], (("cache_salt", fresh("y" * 65_535)),)),
        (parent32, [1, 2, 3], (("cache_salt", fresh("y" * 65_536)),)),
        (parent32, [1, 2, 3], (("cache_salt", fresh("z" * 70_000)),)),
        (parent32, list(range(30_000)), (("mm", fresh("q" * 30), -5),)),
    ]
    for parent, tokens, extra in shapes:
        obj = (parent, tuple(tokens), extra)
        pickled = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        cbor = hashing.cbor2.dumps(obj, canonical=True)
        record = {
            "parent": parent.hex(),
            "tokens": compact(tokens),
            "extra_keys": extra_key_json(extra),
            "sha256": hashing.sha256(obj).hex(),
            "sha256_cbor": hashing.sha256_cbor(obj).hex(),
            "xxhash": hashing.xxhash(obj).hex(),
            "xxhash_cbor": hashing.xxhash_cbor(obj).hex(),
        }
        # Keep the file small: bytes only for the short shapes.
        if len(pickled) <= 4096:
            record["pickle"] = pickled.hex()
            record["cbor"] = cbor.hex()
        record["pickle_len"] = len(pickled)
        record["cbor_len"] = len(cbor)
        encodings.append(record)

    doc = {
        "about": "Block hashes computed by vLLM's own code; see scripts/golden/make_block_hashes.py",
        "vllm_version": version,
        "python_version": platform.python_version(),
        "pickle_protocol": pickle.HIGHEST_PROTOCOL,
        "cbor2_version": importlib.metadata.version("cbor2"),
        "xxhash_version": importlib.metadata.version("xxhash"),
        "algorithms": algorithms,
        "default_none_hash_seed": kcu.DEFAULT_NONE_HASH_SEED,
        "none_hashes": none_hashes,
        "inputs": compact(inputs),
        "extra_keys": extra_keys,
        "cases": cases,
        "encodings": encodings,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}: {len(cases)} cases, {len(inputs)} inputs, vllm {version}")


if __name__ == "__main__":
    main()
