"""Hugging Face `tokenizers` (Python binding) side of `npm run bench:tokenizer`.

Usage: python hf_tokenizers.py SPEC.json RESULT.json IDS.bin

SPEC: {"warmup": str, "texts": {size: [str, ...]}, "models": [{"name", "tokenizer", "order": [[size, i], ...]}],
"warm_size": size, "warm_reps": n}. Each model's tokenizer first encodes the warm-up text (untimed),
then each text of its `order` once (cold: one `encode` call per text, timed alone; the same order
the Node side uses), then the first text of `warm_size` `warm_reps` more times (warm). The ids of
the cold texts are appended to IDS (uint32, native order) in that order; RESULT holds the timings
and the ids' lengths.
"""

import array
import json
import sys
import time

import tokenizers
from tokenizers import Tokenizer


def main() -> None:
    spec_path, result_path, ids_path = sys.argv[1:4]
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    result = {"version": tokenizers.__version__, "models": []}
    with open(ids_path, "wb") as ids_out:
        for model in spec["models"]:
            tok = Tokenizer.from_file(model["tokenizer"])
            tok.encode(spec["warmup"])
            items = []
            for size, i in model["order"]:
                text = spec["texts"][size][i]
                t = time.perf_counter_ns()
                enc = tok.encode(text)
                ns = time.perf_counter_ns() - t
                ids = enc.ids
                items.append({"ns": ns, "length": len(ids)})
                array.array("I", ids).tofile(ids_out)
            warm_text = spec["texts"][spec["warm_size"]][0]
            ns = 0
            tokens = 0
            for _ in range(spec["warm_reps"]):
                t = time.perf_counter_ns()
                enc = tok.encode(warm_text)
                ns += time.perf_counter_ns() - t
                tokens += len(enc.ids)
            result["models"].append({"name": model["name"], "items": items, "warm": {"ns": ns, "tokens": tokens}})
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
