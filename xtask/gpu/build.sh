#!/usr/bin/env bash
# On a CPU machine: builds what a GPU session runs into .gpu/ (git-ignored), for the device tool's
# `run` with carry [".gpu"]: the CUDA lomo and xtask (stripped, xz-compressed: ~8 MB each instead
# of ~340 MB), the CUDA-only kernel tests (lomo-kernels' tests/cuda.rs) and the LOMO authors'
# package (pure Python) for the peer. No CUDA toolkit is needed;
# CUDARC_CUDA_VERSION names the driver's CUDA version (13000 for the H200 in
# ../shared/design/gpu.md). Then run xtask/gpu/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
cargo build --release --locked -p lomo-cli -p xtask --features lomo-cli/cuda,xtask/cuda
# The CUDA-only kernel tests (cuBLAS against cubecl's matmul), as a test binary.
kernels_test=$(cargo test --locked -p lomo-kernels --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
for bin in lomo xtask; do
    strip -o ".gpu/$bin" "target/release/$bin"
    xz -T2 -6 -f ".gpu/$bin"
done
strip -o .gpu/kernels-cuda-test "$kernels_test"
xz -T2 -6 -f .gpu/kernels-cuda-test
python3 -m pip download -q --no-deps -d .gpu lomo-optim==0.1.1
ls -l .gpu
