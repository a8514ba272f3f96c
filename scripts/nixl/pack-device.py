#!/usr/bin/env python3
"""Packs what the H200 run needs from an unpacked nixl wheel (scripts/nixl/fetch.sh nixl-cu13 1.5.1):
libnixl_capi.so, the UCX plugin, UCX's cma and CUDA transports and the libraries they need
(their NEEDED closure inside the wheel), as a .tar.xz small enough to carry to the device.
Usage: pack-device.py WHEEL_DIR OUT.tar.xz"""
import os, shutil, subprocess, sys, tarfile, tempfile

src, out = sys.argv[1], sys.argv[2]
meson = next(d for d in os.listdir(src) if d.endswith(".mesonpy.libs"))
libs = next(d for d in os.listdir(src) if d.endswith(".libs") and not d.startswith("."))
roots = [f"{meson}/libnixl_capi.so", f"{meson}/plugins/libplugin_UCX.so"] + [
    f"{libs}/ucx/{m}.so.0.0.0" for m in ("libuct_cma", "libuct_cuda", "libucm_cuda")]
index = {}
for d in (meson, libs):
    for f in os.listdir(os.path.join(src, d)):
        if os.path.isfile(os.path.join(src, d, f)):
            index.setdefault(f, f"{d}/{f}")
seen, todo = set(), list(roots)
while todo:
    rel = todo.pop()
    if rel in seen:
        continue
    seen.add(rel)
    dyn = subprocess.run(["readelf", "-d", os.path.join(src, rel)], capture_output=True, text=True).stdout
    todo += [index[n] for n in (l.split("[")[1].split("]")[0] for l in dyn.splitlines() if "NEEDED" in l) if n in index]
with tempfile.TemporaryDirectory() as tmp:
    root = os.path.join(tmp, "nixl")
    for rel in sorted(seen):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        shutil.copy(os.path.join(src, rel), os.path.join(root, rel))
    for m in ("libuct_cma", "libuct_cuda", "libucm_cuda"):  # UCX module metadata beside them
        la = f"{libs}/ucx/{m}.la"
        if os.path.isfile(os.path.join(src, la)):
            shutil.copy(os.path.join(src, la), os.path.join(root, la))
    with tarfile.open(out, "w:xz") as t:
        t.add(root, arcname="nixl")
print(f"{out}: {len(seen)} libraries")
