#!/usr/bin/env bash
# One call on a GPU machine checks everything that needs the GPU: builds safemax with its CUDA
# kernels against the torch there, times an Unlearner fit on a Stable-Diffusion-sized UNet (step
# time and peak memory), runs the CUDA tests, the selfcheck, the kernel benchmarks and then the
# whole test suite. Each part runs even if an earlier one failed; the exit status says whether
# all passed. Usage, from the repository root:
#     bash benchmarks/gpu_check.sh            # OUT=dir also keeps the logs there
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
failed=()
part() {  # part NAME COMMAND...: run, log to $out/NAME.log, remember a failure
  local name=$1; shift
  echo "=== $name"
  "$@" 2>&1 | tee "$out/$name.log" | tail -"${TAIL:-12}" || failed+=("$name")
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())'

arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
TAIL=3 part build env SAFEMAX_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-8} \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c 'import safemax; b = safemax.backends(); print("registered kernels:", b); assert "cuda" in b' \
  || { echo "the CUDA kernels are not registered: stopping"; exit 1; }

# an Unlearner fit on Stable Diffusion 1.x's UNet (860 M, random weights), 64x64 latents (512 px)
TAIL=8 part memory "$PY" benchmarks/memory.py --device cuda --models sd --sd-latent 64 --sd-batch 2 \
  --measure-steps 5 --configs fp32 "fp32 + checkpointing" bf16 fp16 "fp16 + checkpointing" --out "$out/memory"
TAIL=5 part cuda-tests "$PY" -m pytest tests -q -p no:cacheprovider -m cuda
part selfcheck "$PY" -m safemax selfcheck
TAIL=20 part benchmarks "$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider -k "cuda" \
  --benchmark-json="$out/benchmarks.json"
TAIL=5 part tests "$PY" -m pytest tests -q -p no:cacheprovider
[ ${#failed[@]} -eq 0 ] && echo "GPU check passed" || { echo "GPU check failed: ${failed[*]}"; exit 1; }
