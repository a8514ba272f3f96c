"""Writes Dynamo-profiler-shaped raw_data.npz files with NumPy's own writer, for the planner's
.npz reader tests (ts/planner/npz.ts). Field names and layout are those Dynamo's profiler saves
(np.savez of prefill_isl / prefill_ttft / prefill_thpt_per_gpu, and of x_kv_usage /
y_context_length / z_itl / z_thpt_per_gpu / max_kv_tokens as a one-element array). The prefill
file is compressed (np.savez_compressed), the decode file stored (np.savez), so both zip methods
are covered; a third file holds the awkward dtypes (float32, int32, big-endian, Fortran order).
Also writes expected.json: the same values as plain JSON lists.

Run: bash scripts/golden/make-dynamo-npz.sh
"""
import json
import os
import sys

import numpy as np

out = sys.argv[1]
os.makedirs(f"{out}/selected_prefill_interpolation", exist_ok=True)
os.makedirs(f"{out}/selected_decode_interpolation", exist_ok=True)

prefill = dict(
    prefill_isl=np.array([1024.0, 2048.0, 4096.0, 8192.0]),
    prefill_ttft=np.array([60.2, 66.0, 127.9, 267.9]),
    prefill_thpt_per_gpu=np.array([17016.0, 31040.0, 32021.0, 30578.0]),
)
x, y, z_itl, z_thpt = [], [], [], []
for ctx, base in [(1024, 7.8), (4096, 8.0), (16384, 8.4)]:
    for kv in [0.05, 0.25, 0.5, 0.8]:
        x.append(kv)
        y.append(float(ctx))
        z_itl.append(base * (1 + 2 * kv))
        z_thpt.append(kv * 40000.0 / (1 + 2 * kv))
decode = dict(
    x_kv_usage=np.array(x),
    y_context_length=np.array(y),
    z_itl=np.array(z_itl),
    z_thpt_per_gpu=np.array(z_thpt),
    max_kv_tokens=np.array([859038]),
)
np.savez_compressed(f"{out}/selected_prefill_interpolation/raw_data.npz", **prefill)
np.savez(f"{out}/selected_decode_interpolation/raw_data.npz", **decode)
np.savez(
    f"{out}/dtypes.npz",
    f32=np.array([1.5, -2.25], dtype="<f4"),
    i32=np.array([7, -8], dtype="<i4"),
    be64=np.array([3.0, 4.0], dtype=">f8"),
    fortran=np.asfortranarray(np.arange(6, dtype="<f8").reshape(2, 3)),
)
expected = {k: v.tolist() for k, v in {**prefill, **decode}.items()}
expected["dtypes"] = {"f32": [1.5, -2.25], "i32": [7, -8], "be64": [3.0, 4.0], "fortran": [0, 1, 2, 3, 4, 5]}
expected["numpy"] = np.__version__
with open(f"{out}/expected.json", "w") as f:
    json.dump(expected, f, indent=1)
print("wrote", out)
