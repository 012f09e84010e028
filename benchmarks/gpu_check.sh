#!/usr/bin/env bash
# One call on a GPU machine checks everything that needs the GPU: builds safemax with its CUDA
# kernels against the torch there, runs the tests (CUDA ones included), the selfcheck and the
# kernel benchmarks, and prints their summary. Usage, from the repository root:
#     bash benchmarks/gpu_check.sh            # OUT=dir also keeps the logs there
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())'

arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
echo "=== build (sm_${arch/./})"
SAFEMAX_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-8} \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tee "$out/build.log" | tail -5
"$PY" -c 'import safemax; b = safemax.backends(); print("registered kernels:", b); assert "cuda" in b'

echo "=== tests"
"$PY" -m pytest tests -q -x -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -5

echo "=== selfcheck"
"$PY" -m safemax selfcheck | tee "$out/selfcheck.log"

echo "=== kernel benchmarks"
"$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider -k "cuda" \
  --benchmark-json="$out/benchmarks.json" 2>&1 | tee "$out/benchmarks.log" | sed -n '/kernel summary/,/^$/p'

echo "=== Unlearner fit on a Stable-Diffusion-sized random UNet (860 M, 64x64 latents = 512 px)"
"$PY" benchmarks/memory.py --device cuda --models sd --sd-latent 64 --sd-batch 2 \
  --configs fp32 "fp32 + checkpointing" bf16 fp16 "fp16 + checkpointing" --out "$out/memory" 2>&1 \
  | tee "$out/memory.log" | tail -8
