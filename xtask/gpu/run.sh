#!/usr/bin/env bash
# On the GPU machine (the device tool's `run`, carry [".gpu"] made by xtask/gpu/build.sh): every
# GPU figure the GPU issues ask for, in one go, under $OUT — both peers beside lomo on the same
# checkpoint and batch, the phase breakdown with device-synced timers, each option's cost, the
# first step without and with the kernel cache, device memory (cubecl's pool and nvidia-smi),
# host memory while loading (peak RSS), and the opt-in paths (CubeCL attention, cuBLAS linear).
# Each case is bounded by its own timeout, so one failure does not cost the others.
# `bash xtask/gpu/run.sh 134m` runs the 134M cases, `7b` the LLaMA-7B ones (one device call may
# run 600 s at most: run the two groups as two calls).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-target/gpu}"
mkdir -p "$OUT"
for bin in lomo xtask kernels-cuda-test; do
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/$bin.xz'), open('.gpu/$bin', 'wb'))"
    chmod +x ".gpu/$bin"
done
python3 -m pip install -q --no-deps .gpu/lomo_optim-*.whl > "$OUT/pip.log" 2>&1
# The H200 machine of ../shared/design/gpu.md: torch's CUDA 13 libraries and the toolkit's NVRTC
# (never a .../stubs directory: its libcuda would be found first).
export LD_LIBRARY_PATH="/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LOMO_KERNEL_CACHE="$PWD/.gpu/kernel-cache"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

bench() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" .gpu/xtask bench --backend cuda --name "$name" "$@" > "$OUT/$name.log" 2>&1
    echo "$name: exit $?, $((SECONDS - start)) s" >> "$OUT/summary.txt"
    cp target/bench/"$name".* "$OUT/" 2>/dev/null
}

group="${1:-all}"
if [ "$group" != 7b ]; then
# The CUDA-only kernels against cubecl's (cuBLAS's linear layers): correctness before speed.
timeout 300 .gpu/kernels-cuda-test --nocapture > "$OUT/kernels-cuda-test.log" 2>&1
echo "kernels-cuda-test: exit $?" >> "$OUT/summary.txt"
# 134M (the bench's default model), bf16 8 x 256: the first run compiles and autotunes into an
# empty cache, the second finds it (the first step's time, cold and warm).
rm -rf "$LOMO_KERNEL_CACHE"
bench b134-bf16-cold 300 --dtype bf16 --batch-size 8 --steps 2
bench b134-bf16 300 --peer --python python3 --dtype bf16 --batch-size 8
bench b134-bf16-options 300 --dtype bf16 --batch-size 8 --case lomo --case lomo-clip --case adalomo
bench b134-f16 200 --dtype f16 --batch-size 8
bench b134-bf16-kernels 200 --dtype bf16 --batch-size 8 --steps 1 --kernel-profile --case lomo --case adalomo
bench b134-f32 300 --peer --python python3 --batch-size 2
# lomo's CubeCL attention (no tokens x tokens scores; unmeasured on a GPU) against burn's ops.
LOMO_ATTENTION=cube bench b134-bf16-cube-attention 200 --dtype bf16 --batch-size 8
# The linear layers on cuBLAS instead of cubecl's matmul (LOMO_LINEAR=cublas).
LOMO_LINEAR=cublas bench b134-bf16-cublas 200 --dtype bf16 --batch-size 8
fi
[ "$group" = 134m ] && exit 0

# LLaMA-7B bf16 4 x 512 (random weights, the same checkpoint for the peers).
bench llama7b 600 --peer --python python3 --preset llama-7b --dtype bf16 --batch-size 4 --tokens 512 --steps 3
LOMO_LINEAR=cublas bench llama7b-cublas 300 --preset llama-7b --dtype bf16 --batch-size 4 --tokens 512 --steps 2
bench llama7b-phases 400 --preset llama-7b --dtype bf16 --batch-size 4 --tokens 512 --steps 2 --synced-timings
# The per-kernel breakdown of one 7B step (each kernel timed on the device; slower steps).
bench llama7b-kernels 300 --preset llama-7b --dtype bf16 --batch-size 4 --tokens 512 --steps 1 --kernel-profile
LOMO_ATTENTION=cube bench llama7b-cube-attention 300 --preset llama-7b --dtype bf16 --batch-size 4 --tokens 512 --steps 2

