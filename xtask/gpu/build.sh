#!/usr/bin/env bash
# On a CPU machine: builds what a GPU session runs into .gpu/ (git-ignored), for the device tool's
# `run` with carry [".gpu"]: the CUDA lomo and xtask (stripped, xz-compressed: ~8 MB each instead
# of ~340 MB) and the LOMO authors' package (pure Python) for the peer. No CUDA toolkit is needed;
# CUDARC_CUDA_VERSION names the driver's CUDA version (13000 for the H200 in
# ../shared/design/gpu.md). Then run xtask/gpu/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
cargo build --release --locked -p lomo-cli -p xtask --features lomo-cli/cuda,xtask/cuda
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
for bin in lomo xtask; do
    strip -o ".gpu/$bin" "target/release/$bin"
    xz -T2 -6 -f ".gpu/$bin"
done
python3 -m pip download -q --no-deps -d .gpu lomo-optim==0.1.1
ls -l .gpu
