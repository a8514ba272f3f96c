"""Stage 1 of fixtures/golden/prompt_embeds.json: the parts that need torch.

For each case a tensor is written with `torch.save` (the bytes a client base64-encodes into
`prompt_embeds`), then read back with vLLM's own `safe_load_prompt_embeds`
(vllm/renderers/embed_utils.py, unchanged) under a model config of the given dtype, and each full
block's extra hash key is computed with vLLM's own `_gen_prompt_embeds_extra_hash_keys`
(vllm/v1/core/kv_cache_utils.py) over vLLM's `tensor_data` (vllm/v1/utils.py), both compiled from
the wheel's source. Malformed payloads record vLLM's error text.

Needs torch (any CPU build) and the vllm wheel's .py files unpacked in SRC; nothing else of vLLM.

    python scripts/golden/make_prompt_embeds_torch.py --vllm-src SRC --out stage1.json

make-prompt-embeds.sh runs it (on a machine with torch) and then make_prompt_embeds.py (stage 2:
block hashes and events, no torch needed).
"""

from __future__ import annotations

import argparse
import ast
import base64
import binascii
import hashlib
import io
import json
import os
import sys
import types
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vllm_stubs import package, stub, vllm_version  # noqa: E402


def function_from_source(path: str, name: str, ns: dict[str, Any]) -> Any:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            exec(compile(ast.Module(body=[node], type_ignores=[]), path, "exec"), ns)  # noqa: S102 - vLLM's code
            return ns[name]
    raise SystemExit(f"{name} not found in {path}")


def load(src: str):
    vdir = os.path.join(src, "vllm")
    package("vllm", vdir)
    package("vllm.utils", os.path.join(vdir, "utils"))
    package("vllm.renderers", os.path.join(vdir, "renderers"))

    def b64decode(s: Any, validate: bool = False) -> bytes:
        return base64.b64decode(s, validate=validate)

    stub("pybase64", b64decode=b64decode)
    stub("vllm.utils.async_utils", make_async=lambda f, **_: f)
    import importlib

    embed_utils = importlib.import_module("vllm.renderers.embed_utils")
    ns: dict[str, Any] = {"torch": torch, "hashlib": hashlib, "Request": object}
    tensor_data = function_from_source(os.path.join(vdir, "v1", "utils.py"), "tensor_data", ns)
    ns["tensor_data"] = tensor_data
    gen = function_from_source(os.path.join(vdir, "v1", "core", "kv_cache_utils.py"), "_gen_prompt_embeds_extra_hash_keys", ns)
    return embed_utils.safe_load_prompt_embeds, gen


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def saved(t: Any) -> str:
    buf = io.BytesIO()
    torch.save(t, buf)
    return base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm-src", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    load_embeds, gen_keys = load(args.vllm_src)
    g = torch.Generator().manual_seed(20261203)
    H = 64
    BS = 16

    def rnd(n: int, h: int = H, dtype: Any = torch.float32) -> Any:
        return (torch.randn(n, h, generator=g) * 3).to(dtype)

    shared = rnd(48)
    other = shared.clone()
    other[32:] = rnd(16)
    big = rnd(70)
    tensors: list[tuple[str, Any, str]] = [
        ("f32-40-as-bf16", rnd(40), "bfloat16"),
        ("f32-40-as-f32", rnd(40), "float32"),
        ("f32-33-as-f16", rnd(33), "float16"),
        ("bf16-37-as-bf16", rnd(37, dtype=torch.bfloat16), "bfloat16"),
        ("f16-3d-1x33-as-f16", rnd(33, dtype=torch.float16).unsqueeze(0), "float16"),
        ("bf16-as-f32", rnd(20, dtype=torch.bfloat16), "float32"),
        ("f16-as-bf16", rnd(20, dtype=torch.float16), "bfloat16"),
        ("f64-as-bf16", rnd(18, dtype=torch.float64), "bfloat16"),
        ("f32-transposed-as-f32", rnd(H, 32).t(), "float32"),
        ("f32-slice-as-bf16", big[5:55], "bfloat16"),
        ("f32-edge-values-as-bf16", torch.tensor([[0.0, -0.0, 1e-40, -1e-40, 3.4e38, -3.4e38, float("inf"), float("-inf")] * 8] * 17), "bfloat16"),
        ("f32-edge-values-as-f16", torch.tensor([[0.0, -0.0, 1e-7, 6e-8, 65504.0, 65520.0, 1e6, -2.9e-8] * 8] * 17), "float16"),
        ("shared-a", shared, "bfloat16"),
        ("shared-b", other, "bfloat16"),
        ("short-15", rnd(15), "bfloat16"),
    ]

    def config(dtype: str, enabled: bool = True) -> Any:
        return types.SimpleNamespace(
            enable_prompt_embeds=enabled,
            dtype=DTYPES[dtype],
            hf_text_config=types.SimpleNamespace(),
            get_hidden_size=lambda: H,
        )

    cases = []
    for name, t, model_dtype in tensors:
        b64 = saved(t)
        loaded = load_embeds(config(model_dtype), b64.encode())
        req = types.SimpleNamespace(prompt_embeds=loaded, _prompt_embeds_per_block_hashes={})
        digests = []
        for start in range(0, loaded.shape[0] - BS + 1, BS):
            (key,) = gen_keys(req, start, start + BS)
            assert key[0] == "prompt_embeds"
            digests.append(key[1].hex())
        cases.append({
            "name": name,
            "prompt_embeds": b64,
            "sent_dtype": str(t.dtype).removeprefix("torch."),
            "sent_shape": list(t.shape),
            "model_dtype": model_dtype,
            "block_size": BS,
            "hidden_size": H,
            "loaded_shape": list(loaded.shape),
            "loaded_sha256": hashlib.sha256(bytes(ns_tensor_data(loaded))).hexdigest(),
            "block_digests": digests,
        })

    def err(name: str, payload: bytes | str, model_dtype: str = "bfloat16", enabled: bool = True) -> dict[str, Any]:
        b64 = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
        try:
            load_embeds(config(model_dtype, enabled), b64.encode())
        except binascii.Error as e:
            return {"name": name, "prompt_embeds": b64, "model_dtype": model_dtype, "enabled": enabled, "kind": "base64", "message": str(e)}
        except Exception as e:  # noqa: BLE001 - recording vLLM's answer
            return {"name": name, "prompt_embeds": b64, "model_dtype": model_dtype, "enabled": enabled,
                    "kind": type(e).__name__, "message": e.args[0] if e.args else str(e), "str": str(e)}
        raise SystemExit(f"{name}: no error")

    def raw(t: Any) -> bytes:
        buf = io.BytesIO()
        torch.save(t, buf)
        return buf.getvalue()

    good = raw(rnd(20))
    errors = [
        err("not-enabled", good, enabled=False),
        err("int64", raw(torch.arange(64 * 20).reshape(20, 64))),
        err("bool", raw(torch.zeros(20, 64, dtype=torch.bool))),
        err("one-dim", raw(torch.randn(64, generator=g))),
        err("four-dim", raw(torch.randn(1, 1, 4, 64, generator=g))),
        err("wrong-hidden", raw(torch.randn(20, 32, generator=g))),
        err("not-a-tensor", raw({"a": torch.randn(4, 64, generator=g)})),
        err("garbage", b"this is not a torch file at all"),
        err("truncated", good[: len(good) // 2]),
        err("empty", b""),
        err("bad-base64", "!!!not base64!!!"),
    ]

    out = {
        "vllm_version": vllm_version(args.vllm_src),
        "torch_version": torch.__version__,
        "hidden_size": H,
        "cases": cases,
        "errors": errors,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases, {len(errors)} errors -> {args.out}")


def ns_tensor_data(t: Any) -> memoryview:
    return t.flatten().cpu().contiguous().view(torch.uint8).numpy().data


if __name__ == "__main__":
    main()
