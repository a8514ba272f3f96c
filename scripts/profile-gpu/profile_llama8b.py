"""Time a Llama-3.1-8B-shaped transformer forward pass on one GPU (bf16, random weights).

What this is: our own PyTorch implementation of the Llama-3.1-8B layer shapes (32 layers, hidden
4096, 32 query heads / 8 KV heads of 128, MLP 14336, vocab 128256), timed with CUDA events. No
weights are downloaded (random values time the same as trained ones). It is NOT vLLM: no paged KV
cache, no continuous batching, no fused rotary/norm kernels, no mixed prefill+decode steps.

- Prefill: one prompt of ISL tokens, chunked as vLLM's default 8,192-token budget; each chunk
  attends to itself (causal) and to the chunks before it (fused SDPA, lower-right causal).
- Decode: one step of B sequences each with C tokens of context, captured in a CUDA graph (so the
  step is not launch-bound as eager PyTorch is), attention over a dense per-layer KV cache.
- max_kv_tokens: the KV tokens that fit in 90% of the GPU memory after weights and a working set.

Writes one JSON file (argv[1], default profile-llama-3.1-8b.json).
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

HIDDEN = 4096
LAYERS = 32
HEADS = 32
KV_HEADS = 8
HEAD_DIM = 128
MLP = 14336
VOCAB = 128256
CHUNK = 8192
DT = torch.bfloat16
dev = torch.device("cuda")
torch.manual_seed(0)


def rand(*shape):
    return (torch.randn(*shape, device=dev, dtype=DT) * 0.02)


class Weights:
    def __init__(self):
        self.layers = []
        for _ in range(LAYERS):
            self.layers.append(
                dict(
                    ln1=torch.ones(HIDDEN, device=dev, dtype=DT),
                    qkv=rand((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN),
                    o=rand(HIDDEN, HEADS * HEAD_DIM),
                    ln2=torch.ones(HIDDEN, device=dev, dtype=DT),
                    gate_up=rand(2 * MLP, HIDDEN),
                    down=rand(HIDDEN, MLP),
                )
            )
        self.embed = rand(VOCAB, HIDDEN)
        self.norm = torch.ones(HIDDEN, device=dev, dtype=DT)
        self.lm_head = rand(VOCAB, HIDDEN)


def rms(x, w):
    v = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(v + 1e-5)).to(DT) * w


def rope(x, pos):
    # x: [..., T, D]; pos: [T] or [B, 1]
    half = HEAD_DIM // 2
    inv = 1.0 / (500000.0 ** (torch.arange(0, half, device=dev, dtype=torch.float32) / half))
    ang = pos.float()[..., None] * inv
    cos, sin = ang.cos().to(DT), ang.sin().to(DT)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def mlp(h, L):
    gu = h @ L["gate_up"].t()
    g, u = gu.chunk(2, dim=-1)
    return (F.silu(g) * u) @ L["down"].t()


_LOWER_RIGHT_OK = [True]


def chunk_attention(q, k, v, first, t, end):
    """Causal attention of a chunk's queries over all keys so far (lower-right aligned)."""
    if first:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if _LOWER_RIGHT_OK[0]:
        try:
            from torch.nn.attention.bias import causal_lower_right

            return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, end))
        except Exception as e:  # older torch or no fused kernel: dense boolean mask
            print(f"causal_lower_right unavailable ({e}); dense mask", flush=True)
            _LOWER_RIGHT_OK[0] = False
    mask = torch.ones(t, end, device=dev, dtype=torch.bool).tril(end - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def prefill(W, isl):
    """One prompt of isl tokens in chunks of CHUNK; returns per-chunk ms."""
    ids = torch.randint(0, VOCAB, (isl,), device=dev)
    k_cache = [torch.empty(1, KV_HEADS, isl, HEAD_DIM, device=dev, dtype=DT) for _ in range(LAYERS)]
    v_cache = [torch.empty(1, KV_HEADS, isl, HEAD_DIM, device=dev, dtype=DT) for _ in range(LAYERS)]
    times = []
    for start in range(0, isl, CHUNK):
        end = min(isl, start + CHUNK)
        t = end - start
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        pos = torch.arange(start, end, device=dev)
        x = W.embed[ids[start:end]]
        for li, L in enumerate(W.layers):
            h = rms(x, L["ln1"])
            qkv = h @ L["qkv"].t()
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            q = rope(q.view(t, HEADS, HEAD_DIM).transpose(0, 1), pos).unsqueeze(0)
            k = rope(k.view(t, KV_HEADS, HEAD_DIM).transpose(0, 1), pos).unsqueeze(0)
            v = v.view(t, KV_HEADS, HEAD_DIM).transpose(0, 1).unsqueeze(0)
            k_cache[li][:, :, start:end] = k
            v_cache[li][:, :, start:end] = v
            kk = k_cache[li][:, :, :end].repeat_interleave(HEADS // KV_HEADS, dim=1)
            vv = v_cache[li][:, :, :end].repeat_interleave(HEADS // KV_HEADS, dim=1)
            a = chunk_attention(q, kk, vv, start == 0, t, end)
            x = x + a[0].transpose(0, 1).reshape(t, HEADS * HEAD_DIM) @ L["o"].t()
            x = x + mlp(rms(x, L["ln2"]), L)
        if end == isl:
            _ = rms(x[-1:], W.norm) @ W.lm_head.t()
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1))
    del k_cache, v_cache
    return times


def decode_step_fn(W, B, C, k_cache, v_cache, ids, pos):
    def step():
        x = W.embed[ids]  # [B, H]
        for li, L in enumerate(W.layers):
            h = rms(x, L["ln1"])
            qkv = h @ L["qkv"].t()
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            q = rope(q.view(B, HEADS, 1, HEAD_DIM), pos)
            k = rope(k.view(B, KV_HEADS, 1, HEAD_DIM), pos)
            k_cache[li][:, :, C - 1 : C] = k
            v_cache[li][:, :, C - 1 : C] = v.view(B, KV_HEADS, 1, HEAD_DIM)
            a = F.scaled_dot_product_attention(q, k_cache[li], v_cache[li], enable_gqa=True)
            x = x + a.reshape(B, HEADS * HEAD_DIM) @ L["o"].t()
            x = x + mlp(rms(x, L["ln2"]), L)
        return rms(x, W.norm) @ W.lm_head.t()

    return step


def decode(W, B, C, reps=20):
    k_cache = [torch.zeros(B, KV_HEADS, C, HEAD_DIM, device=dev, dtype=DT) for _ in range(LAYERS)]
    v_cache = [torch.zeros(B, KV_HEADS, C, HEAD_DIM, device=dev, dtype=DT) for _ in range(LAYERS)]
    ids = torch.randint(0, VOCAB, (B,), device=dev)
    pos = torch.full((B, 1, 1), C - 1, device=dev)
    step = decode_step_fn(W, B, C, k_cache, v_cache, ids, pos)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(reps):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    ms = e0.elapsed_time(e1) / reps
    # one eager step, for the launch-overhead comparison
    torch.cuda.synchronize()
    e0.record()
    step()
    e1.record()
    torch.cuda.synchronize()
    eager = e0.elapsed_time(e1)
    del g, k_cache, v_cache
    torch.cuda.empty_cache()
    return ms, eager


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "profile-llama-3.1-8b.json"
    t0 = time.time()
    W = Weights()
    params = sum(p.numel() for L in W.layers for p in L.values()) + W.embed.numel() + W.lm_head.numel() + W.norm.numel()
    torch.cuda.synchronize()
    weights_bytes = torch.cuda.memory_allocated()
    result = dict(
        what="PyTorch forward pass with Llama-3.1-8B shapes, bf16, random weights; prefill chunked at 8192 tokens; decode steps in CUDA graphs; NOT vLLM",
        device=torch.cuda.get_device_name(0),
        torch=torch.__version__,
        params=params,
        weights_gib=weights_bytes / 2**30,
        chunk_tokens=CHUNK,
        prefill=[],
        decode=[],
    )
    print(f"weights {params/1e9:.2f}B params {weights_bytes/2**30:.1f} GiB", flush=True)
    for isl in [1024, 2048, 4096, 8192, 12288, 16384, 24576, 32768]:
        try:
            prefill(W, isl)  # warm-up (kernels, allocator)
            runs = [prefill(W, isl) for _ in range(3)]
        except Exception as e:
            print(f"prefill isl={isl} failed: {e}", flush=True)
            result["prefill"].append(dict(isl=isl, error=str(e)[:200]))
            torch.cuda.empty_cache()
            continue
        totals = sorted(sum(r) for r in runs)
        best = min(runs, key=sum)
        ms = totals[len(totals) // 2]
        result["prefill"].append(dict(isl=isl, ms=ms, chunks_ms=best, tokens_per_s=isl / ms * 1000))
        print(f"prefill isl={isl} {ms:.1f} ms ({isl/ms*1000:.0f} tok/s) chunks={[round(c,1) for c in best]}", flush=True)
        torch.cuda.empty_cache()
    budget_tokens = 640 * 1024
    for C in [1024, 2048, 4096, 8192, 16384, 32768]:
        for B in [1, 4, 16, 32, 64, 128, 256]:
            if B * C > budget_tokens:
                continue
            try:
                ms, eager = decode(W, B, C)
            except Exception as e:  # OOM or a capture failure: record it, go on
                print(f"decode B={B} C={C} failed: {e}", flush=True)
                result["decode"].append(dict(batch=B, context=C, error=str(e)[:200]))
                torch.cuda.empty_cache()
                continue
            result["decode"].append(dict(batch=B, context=C, ms=ms, eager_ms=eager, tokens_per_s=B / ms * 1000))
            print(f"decode B={B} C={C} graph {ms:.2f} ms eager {eager:.2f} ms", flush=True)
            with open(out_path, "w") as f:
                json.dump(result, f, indent=1)
        if time.time() - t0 > 380:
            print("time budget reached; stopping the decode sweep", flush=True)
            break
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    kv_bytes_per_token = LAYERS * 2 * KV_HEADS * HEAD_DIM * 2
    # vLLM-like: 90% of the card, less weights, less ~6 GiB of activations/graphs
    usable = total * 0.9 - weights_bytes - 6 * 2**30
    result["kv_bytes_per_token"] = kv_bytes_per_token
    result["gpu_total_gib"] = total / 2**30
    result["max_kv_tokens"] = int(usable // kv_bytes_per_token)
    result["elapsed_s"] = time.time() - t0
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k not in ("prefill", "decode")}), flush=True)


if __name__ == "__main__":
    main()
