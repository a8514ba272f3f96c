#!/usr/bin/env bash
# Device run for issue 13: VRAM<->VRAM over NIXL (nixl-cu13 1.5.1 libs) between two processes on one GPU.
# Prepared beside it: vram_pair (cargo build --release -p kvroute-nixl --example vram_pair) and
# nixl-cu13-libs.tar.xz (scripts/nixl/fetch.sh nixl-cu13 1.5.1, then scripts/nixl/pack-device.py).
cd "$(dirname "$0")"
tar xJf nixl-cu13-libs.tar.xz
export KVROUTE_NIXL_LIB_DIR=$PWD/nixl
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
uname -r
echo "== default UCX transports, 256 MiB x5"
timeout 200 ./vram_pair --mib 256 --iters 5 2>&1 | grep -v "^\s*$" | tail -20
echo "rc=$?"
echo "== default UCX transports, 64 MiB x10"
timeout 120 ./vram_pair --mib 64 --iters 8 2>&1 | tail -8
echo "== default UCX transports, 4 MiB x8"
timeout 120 ./vram_pair --mib 4 --iters 8 2>&1 | tail -8
