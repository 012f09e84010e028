#!/usr/bin/env bash
# One call on a GPU machine checks everything that needs the GPU: builds safemax with its CUDA
# kernels against the torch there, times an Unlearner fit on a Stable-Diffusion-sized UNet (step
# time and peak memory), measures the same at SDXL, SD3-medium and Flux.1-dev size (full
# fine-tuning and LoRA, bf16, checkpointing), runs the CUDA tests, the selfcheck, the kernel
# benchmarks and then the whole test suite. Each part runs even if an earlier one failed; the
# exit status says whether all passed. The whole call keeps within BUDGET seconds (default 570):
# a part gets the time that is left, and the parts that no longer fit are listed as not run.
# Usage, from the repository root:
#     bash benchmarks/gpu_check.sh            # OUT=dir also keeps the logs there
#     SAFEMAX_COMMIT=<sha> bash benchmarks/gpu_check.sh   # where the tree came without .git: the
#         commit the figures are measured on ($OUT/commit.txt records it; so does every results file)
#     PARTS="build large-memory" bash benchmarks/gpu_check.sh   # only these parts
#     PARTS="build fashion-mnist" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         the Fashion-MNIST benchmark (benchmarks/classes.py: 10 classes + 3×2 seeded runs) on the
#         GPU; not in the default parts. The GPU machine has no Fashion-MNIST: copy the four files
#         into data/fashion-mnist (git-ignored, ~30 MB) and carry that folder there.
#     PARTS="build fashion-mnist-lr1e-4" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         the same at lr 1e-4 for 200 steps (the setting that holds the bar on Fashion-MNIST), 10 classes
#     PARTS="build tune" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         the tuned baselines on Fashion-MNIST (benchmarks/tune_baselines.py: the sweep, then the
#         head to head on three classes, every relearning attack: the methods x attacks table with
#         intervals); resumable, so a run cut by the budget continues next time. It reuses the
#         finished runs committed in the results folder; to bring its results back through the
#         device's $OUT, start from a copy there:
#         cp -r benchmarks/results/tuned-fashion-mnist "$OUT/tuned" && TUNE_OUT="$OUT/tuned" PARTS="build tune" ...
#     PARTS="build confirm" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         confirms the tuned-baselines head-to-head's held steps with the heavy measurement
#         (benchmarks/confirm_held.py: each run replayed to its held step; every run, the
#         cheapest first — the late ones, 300-500 steps, are hours on the CPU); resumable. Its
#         answers are written beside the comparisons (head-to-head/class*/confirm/): start from a
#         copy under $OUT to bring them back, as for tune (CONFIRM_OUT=the copy).
#     PARTS="build retrain" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         the Fashion-MNIST model trained without the T-shirt, and the relearning attacks on it and
#         on SAFEMax: docs/results/robust.md's reference on the second benchmark
#     PARTS="build sd-pipeline" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         issue 42's Stable Diffusion pipeline on captioned Fashion-MNIST trained on the GPU
#         (python -m safemax.zoo.sd_pipeline: CLIP, VAE, UNet; ~5.6 h on the 2 CPU cores by
#         estimate). Its work folder and the finished pipeline are written under $OUT (SD_WORK,
#         SD_OUT), so they come back; it stops itself a minute before the budget ends (--minutes)
#         and a call that carries the work folder back resumes it.
#     PARTS="build sd3-pipeline" FASHION_MNIST_DIR=data/fashion-mnist bash benchmarks/gpu_check.sh
#         issue 44's SD3-type pipeline trained on the GPU (python -m safemax.zoo.sd3_pipeline: a
#         second CLIP and the MMDiT on the zoo SD pipeline's text encoder and VAE; hours on the CPU
#         beside other jobs), then its sample-quality bar at SD3's guidance 7.0 and 28 steps; work
#         folder and pipeline under $OUT (SD3_WORK, SD3_OUT), resumed by a call that carries them back;
#         SD3_MORE=N trains the finished transformer N steps further first (--transformer-more-steps:
#         carry the work folder of the zoo's, ~/.cache/safemax/fashion-mnist-sd3, 26 MB, as SD3_WORK)
#     PARTS="build erase" bash benchmarks/gpu_check.sh
#         issues 42 and 44: one `safemax erase` of each zoo pipeline on the GPU (the sneaker, the
#         default settings, evaluated before and after), each manifest's time and peak memory
#         printed; needs the trained Stable Diffusion pipeline in safemax/zoo/fashion_mnist_sd
#         (the part fails without it); the SD3 one when safemax/zoo/fashion_mnist_sd3 is trained
#     PARTS="build fsdp" bash benchmarks/gpu_check.sh
#         sharded full fine-tuning (tests/test_fsdp.py, ~2 min): one GPU process of Accelerate's own
#         FSDP2 (benchmarks/accelerate-configs/fsdp.yaml: NCCL, the model, Adam and the teacher as
#         CUDA shards, a checkpoint gathered and resumed) against the plain fit on the same GPU, and
#         the 2-process tests on CPU processes (gloo). One GPU holds all of every shard: it proves
#         the CUDA path, not the split across GPUs, which the CPU processes prove
# Estimated on an H200 (the first runs were not timed part by part): build 1-2 min, memory ~1.5,
# large-memory ~5-6 (7 runs of ~25-75 s: a fresh process, the model built on the GPU, the
# Unlearner's SHA-256 of the original weights on the host — ~1 s per GiB, 22 GiB for Flux — a
# warm-up and 2 measured steps; the full fine-tuning of Flux is skipped, computed not to fit),
# cuda-tests ~1, selfcheck < 0.5, benchmarks ~1.5, tests 3-4: about 14 min in all, so within the
# default budget the last parts (the whole test suite, maybe the kernel benchmarks) may not run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
out=${OUT:-$(mktemp -d)}
BUDGET=${BUDGET:-570}
PARTS=${PARTS:-build memory large-memory cuda-tests selfcheck benchmarks tests}
failed=()
not_run=()
part() {  # part NAME COMMAND...: run within the time left, log to $out/NAME.log, remember a failure
  local name=$1; shift
  [[ " $PARTS " == *" $name "* ]] || return 0
  local left=$((BUDGET - SECONDS))
  if ((left < ${MIN_LEFT:-30})); then not_run+=("$name"); echo "=== $name: not run (${left} s of the budget left)"; return 0; fi
  local start=$SECONDS
  echo "=== $name (${left} s left)"
  timeout --kill-after=10 "$left" "$@" 2>&1 | tee "$out/$name.log" | tail -"${TAIL:-12}" || failed+=("$name")
  echo "    ($name: $((SECONDS - start)) s)"
}
# the commit these figures are measured on: the checkout's, or SAFEMAX_COMMIT given by the caller
# (a GPU machine gets a copy of the tree without .git: SAFEMAX_COMMIT=$(git rev-parse HEAD) there)
commit=$(git rev-parse HEAD 2>/dev/null || echo "${SAFEMAX_COMMIT:-unknown}")
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | head -c1)
export SAFEMAX_COMMIT=$commit   # every results file the parts write records it (safemax.evaluation.provenance)
echo "commit $commit${dirty:+ (with uncommitted changes)}" | tee "$out/commit.txt"
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
# SDXL, SD3-medium, Flux.1-dev (published configs, random weights) at 1024 px (128x128 latents),
# 1 forget + 1 retain row: full fine-tuning (float32 weights, bf16 autocast, checkpointing; a
# run whose computed weight side alone exceeds the GPU's memory is skipped and says so) and LoRA
# rank 16 on bf16 weights, with and without checkpointing. Each configuration in a fresh process.
gpu_gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
gpu_gib=$(( ${gpu_gib:-0} / 1024 ))
large=("$PY" benchmarks/memory.py --device cuda --models sdxl sd3-medium flux-dev --latent 128
       --latent-batch 1 --measure-steps 2 --timeout 150 --skip-over "$gpu_gib" --out "$out/memory-large")
TAIL=16 part large-memory bash -c '"$@" --lora-rank 0 --configs "bf16 + checkpointing"; a=$?
  "$@" --append --lora-rank 16 --weights bf16 --configs fp32 "fp32 + checkpointing"; exit $((a | $?))' \
  _ "${large[@]}"
TAIL=5 part cuda-tests "$PY" -m pytest tests -q -p no:cacheprovider -m cuda
part selfcheck "$PY" -m safemax selfcheck
TAIL=20 part benchmarks "$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider -k "cuda" \
  --benchmark-json="$out/benchmarks.json"
TAIL=5 part tests "$PY" -m pytest tests -q -p no:cacheprovider
TAIL=40 part fashion-mnist "$PY" benchmarks/classes.py --model fashion-mnist --device cuda \
  --out "${FASHION_MNIST_OUT:-benchmarks/results/classes-fashion-mnist}"
TAIL=40 part fashion-mnist-lr1e-4 "$PY" benchmarks/classes.py --model fashion-mnist --device cuda --seeds \
  --steps 200 --lr 1e-4 --curve-every 20 --out "${FASHION_MNIST_LR_OUT:-benchmarks/results/classes-fashion-mnist-lr1e-4}"
TAIL=40 part tune "$PY" benchmarks/tune_baselines.py --model fashion-mnist --device cuda \
  --attacks weak strong long lora inversion --out "${TUNE_OUT:-benchmarks/results/tuned-fashion-mnist}"
TAIL=20 part confirm bash -c 'py=$1; o=$2; h=$o/head-to-head
  "$py" benchmarks/confirm_held.py --device cuda --comparisons "$h"/class2 "$h"/class6 "$h"/class9 \
    --prices "$h/prices.json" --reference safemax:lr=0.0001,kept_contrast=4 --out "$o/confirmed"' \
  _ "$PY" "${CONFIRM_OUT:-benchmarks/results/tuned-fashion-mnist}"
# the Fashion-MNIST retrain reference: the model trained without the T-shirt (resumable: its state
# is saved every minute), then it and every method (the table's rows: SAFEMax, robust SAFEMax and at
# half its term, SalUn, Selective Amnesia) attacked every way over three seeds (seed 0's rows are kept)
retrain_out=${RETRAIN_OUT:-benchmarks/results/retrain-fashion-mnist}
TAIL=20 part retrain bash -c 'py=$1; o=$2; set -e
  if [ ! -f "$o/unet-without-0/training.json" ]; then
    resume=(); [ -f "$o/fashion-mnist-without-0-unet-training.pt" ] && resume=(--resume)
    "$py" -m safemax.zoo.train --dataset fashion-mnist --only unet --exclude-class 0 --device cuda \
      --checkpoint-minutes 1 --work "$o" --out "$o/unet-without-0" "${resume[@]}"
  fi
  "$py" benchmarks/robust_attack.py --model fashion-mnist --forget 0 --device cuda --methods safemax safemax-robust \
    safemax-robust:robust_weight=0.5 salun:retain_weight=1 sa retrain --retrained "$o/unet-without-0" --seed 0 1 2 --attacks weak strong long lora inversion --name every-attack --out "$o"' \
  _ "$PY" "$retrain_out"
TAIL=20 part sd-pipeline "$PY" -m safemax.zoo.sd_pipeline --device cuda --resume \
  --work "${SD_WORK:-$out/sd-work}" --out "${SD_OUT:-$out/fashion_mnist_sd}" --minutes $(( (BUDGET - SECONDS - 60) / 60 ))
# (a skip, e.g. of the GPU test without the CUDA kernels, fails the part: it would prove nothing)
TAIL=12 part fsdp bash -c 'log=$("$1" -m pytest tests/test_fsdp.py -q -p no:cacheprovider -rs 2>&1); rc=$?
  echo "$log"; [[ $log != *SKIPPED* ]] || { echo "fsdp: a test was skipped"; exit 1; }; exit $rc' _ "$PY"
sd3_out=${SD3_OUT:-$out/fashion_mnist_sd3}
TAIL=20 part sd3-pipeline bash -c 'py=$1; w=$2; o=$3; m=$4; more=$5; set -e
  "$py" -m safemax.zoo.sd3_pipeline --device cuda --resume --work "$w" --out "$o" --minutes "$m" \
    ${more:+--transformer-more-steps "$more"}
  "$py" -m safemax.zoo.sd_quality --pipeline "$o" --n 4 --out "$o/quality.json"' \
  _ "$PY" "${SD3_WORK:-$out/sd3-work}" "$sd3_out" $(( (BUDGET - SECONDS - 240) / 60 )) "${SD3_MORE:-}"
TAIL=16 part erase bash -c 'py=$1; o=$2; set -e
  for pipe in fashion-mnist-sd fashion-mnist-sd3; do
    if [ "$pipe" = fashion-mnist-sd3 ] && [ ! -f safemax/zoo/fashion_mnist_sd3/model_index.json ]; then
      echo "$pipe: not trained yet (safemax/zoo/fashion_mnist_sd3): skipped"; continue
    fi
    "$py" -m safemax erase --pipeline "$pipe" --concept "a sneaker" --device cuda --out "$o/erase-$pipe"
    "$py" -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], \"erase seconds\", m[\"seconds\"], \"peak MiB\", m[\"peak_memory_mb\"], \"device\", m[\"device\"])" "$o/erase-$pipe/safemax.json" "$pipe"
  done' \
  _ "$PY" "$out"
((${#not_run[@]})) && echo "not run (out of time, BUDGET=$BUDGET s): ${not_run[*]}"
echo "total $SECONDS s"
[ ${#failed[@]} -eq 0 ] && [ ${#not_run[@]} -eq 0 ] && echo "GPU check passed" || {
  echo "GPU check failed: ${failed[*]:-none}${not_run:+; not run: ${not_run[*]}}"; exit 1; }
