"""Generate fixtures/golden/prompt_embeds.json: prompt-embedding requests as vLLM reads, hashes and
publishes them.

Stage 1 (make_prompt_embeds_torch.py, needs torch) wrote, per case, the `torch.save` bytes a client
sends, the shape vLLM's `safe_load_prompt_embeds` gives them, each full block's prompt-embeds
digest (vLLM's `_gen_prompt_embeds_extra_hash_keys`), and vLLM's error text for malformed payloads.
This stage (no torch) adds vLLM's block hashes of those requests for every
`--prefix-caching-hash-algo` (seed "0"), through the real `get_request_block_hasher` and
`generate_block_hash_extra_keys` (the request's per-block digest cache pre-filled from stage 1, as
vLLM fills it), and the per-block extra keys KV events carry (`to_event_extra_keys`).

    python scripts/golden/make_prompt_embeds.py --vllm-src SRC --stage1 stage1.json --out fixtures/golden/prompt_embeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_block_hashes as mbh  # noqa: E402


class EmbedsRequest(mbh.FakeRequest):
    pass


def request(case: dict[str, Any], salt: str | None) -> Any:
    n = case["loaded_shape"][0]
    bs = case["block_size"]
    # vLLM's Request: no prompt token ids, so all_token_ids is [0] * num_prompt_tokens.
    req = EmbedsRequest(all_token_ids=[0] * n, cache_salt=mbh.fresh(salt) if salt else None)
    req.prompt_embeds = object()  # never read: the digests are cached below
    req._prompt_embeds_per_block_hashes = {
        (i * bs, (i + 1) * bs): bytes.fromhex(d) for i, d in enumerate(case["block_digests"])
    }
    return req


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm-src", required=True)
    ap.add_argument("--stage1", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    hashing, kcu = mbh.load_vllm(args.vllm_src)
    algorithms = mbh.hash_algorithms(args.vllm_src)
    with open(args.stage1, encoding="utf-8") as f:
        stage1 = json.load(f)
    assert stage1["vllm_version"] == mbh.vllm_version(args.vllm_src)
    os.environ["PYTHONHASHSEED"] = "0"
    cases = []
    for case in stage1["cases"]:
        bs = case["block_size"]
        out = dict(case)
        out["hashes"] = {}
        salts = [None, "tenant-a"] if case["name"] in ("shared-a", "f32-40-as-bf16") else [None]
        for salt in salts:
            for algo in algorithms:
                fn = hashing.get_hash_fn_by_name(algo)
                kcu.init_none_hash(fn)
                req = request(case, salt)
                digests = kcu.get_request_block_hasher(bs, fn)(req)
                assert len(digests) == len(case["block_digests"])
                key = algo if salt is None else f"{algo}+salt"
                out["hashes"][key] = [str(kcu.maybe_convert_block_hash(d)) for d in digests]
            req = request(case, salt)
            per_block = [kcu.generate_block_hash_extra_keys(req, i * bs, (i + 1) * bs, 0)[0] for i in range(len(case["block_digests"]))]
            events = kcu.to_event_extra_keys(per_block) or []
            name = "event_extra_keys" if salt is None else "event_extra_keys+salt"
            out[name] = [[k.hex() if isinstance(k, bytes) else k for k in keys] if keys else None for keys in events]
        out["cache_salt"] = "tenant-a" if len(salts) > 1 else None
        cases.append(out)
    result = {
        "vllm_version": stage1["vllm_version"],
        "torch_version": stage1["torch_version"],
        "seed": "0",
        "hidden_size": stage1["hidden_size"],
        "cases": cases,
        "errors": stage1["errors"],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases x {len(algorithms)} algorithms -> {args.out}")


if __name__ == "__main__":
    main()
