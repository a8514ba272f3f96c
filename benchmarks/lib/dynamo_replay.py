"""Dynamo's virtual-time replay (dynamo.replay.run_trace_replay: its mocker engines and its router in
one process) on a Mooncake trace, for `npm run bench:vs-dynamo`. Reads one JSON object of settings
on argv[1]; prints one JSON line: hit rate, TTFT/E2E percentiles, requests, CPU seconds."""
import json
import os
import sys
import time

os.environ.setdefault("DYN_LOG", "warn")
from dynamo.replay import run_trace_replay  # noqa: E402

s = json.loads(sys.argv[1])
engine = {
    "block_size": s["block_size"],
    "num_gpu_blocks": s["num_gpu_blocks"],
    "max_num_seqs": s["max_num_seqs"],
    "max_num_batched_tokens": s["max_num_batched_tokens"],
}
kwargs = {}
if s["router_mode"] == "kv_router" and s.get("kv_event_lag_ms"):
    kwargs["kv_event_lag_ms"] = s["kv_event_lag_ms"]  # Dynamo refuses a lag in round-robin mode
t0 = time.process_time()
r = run_trace_replay(
    [s["trace"]],
    extra_engine_args={"engine": engine},
    num_workers=s["workers"],
    router_mode=s["router_mode"],
    trace_block_size=512,
    **kwargs,
)
cpu = time.process_time() - t0
m = r.summary
print(json.dumps({
    "hitRate": m["prefix_cache_reused_ratio"],
    "ttftP50": m["median_ttft_ms"], "ttftP90": m["p90_ttft_ms"], "ttftP99": m["p99_ttft_ms"],
    "e2eP50": m["median_e2e_latency_ms"],
    "requests": m["num_ttft_samples"],
    "cpuSeconds": cpu,
}))
