"""Peak memory and time of one SAFEMax training step, with and without bf16 mixed precision and
gradient checkpointing, full fine-tuning or a LoRA adapter: on the embedded model, on a Stable
Diffusion 1.x-sized UNet and at SDXL, SD3-medium and Flux.1-dev size.

    python benchmarks/memory.py --out benchmarks/results/memory            # CPU: ~20 min, 2 cores
    python benchmarks/memory.py --device cuda --models sd --sd-latent 64 --out memory-gpu  # GPU
    python benchmarks/memory.py --device cuda --models sdxl sd3-medium flux-dev --latent 128 \\
        --lora-rank 0 16 --weights fp32 bf16 --configs "bf16 + checkpointing" --out memory-large

Models (random weights: memory and time depend on the architecture, not the weights): ``sd``
(SD 1.x's UNet, 77×768 prompt embeddings), ``sdxl``, ``sd3-medium``, ``flux-dev`` (their
published configs, see ``memory_accounting.py``; conditions of the pipelines' shapes: SDXL
77×2048 + pooled 1280 + time ids, SD3 333×4096 + pooled 2048, Flux 512×4096 + pooled 768 +
guidance), a depth-reduced variant ``NAME/DEPTH`` (``sd3-medium/4``: 4 of 24 blocks), and
``embedded`` (the package's own model). ``--latent`` is the latent size (128 = 1024-pixel
images for SDXL/SD3/Flux, 64 = 512 px for SD), ``--latent-batch`` the forget rows per step
(as many retain rows).

Options, each a list (every valid combination runs): ``--configs`` (fp32/bf16/fp16 autocast,
± gradient checkpointing; fp16: GPU only); ``--lora-rank`` (0 = full fine-tuning, else
``Unlearner(lora_rank=r)``: the adapter trains, the teacher is the model with it switched off);
``--weights`` (the dtype the model is stored in: fp32, or bf16/fp16 with LoRA only — the adapter
is then cast to float32, as diffusers' LoRA scripts do, so that Adam updates float32 weights);
``--retain-target`` (distill: SAFEMax's frozen teacher copy; noise: no teacher).

Each configuration runs in a fresh process (so one's memory cannot hide another's); one that
fails (out of memory, or killed) is a row of the table, not the end of the run, and one whose
computed weight-side memory alone exceeds ``--skip-over`` GiB is skipped and says so. It builds
the Unlearner (model, teacher, Adam), takes one warm-up step (Adam's state now exists), then
measures the next ``--measure-steps`` steps (their mean time; the peak over them).
CPU: resident memory — "resident" is RSS before the step (weights, teacher, optimizer state; a
fit frees its gradients), "step peak" the rise of the peak RSS during it (gradients, activations,
autocast's low-precision weight copies), read from /proc with the peak reset (clear_refs) after
returning freed heap to the OS (malloc_trim; ``--mmap-threshold`` makes the peak follow the live
tensors more closely); "base" is the RSS of the process before the model
was built (Python, torch, diffusers). CUDA: torch.cuda.max_memory_allocated the same way (base 0).
Every row also carries the computed weight side (``memory_accounting.weight_side``) and the
seconds to build the model, to make the Unlearner (the original's SHA-256 digest, the teacher
copy, the adapter) and to take the warm-up step.
"""
import argparse
import ctypes
import itertools
import json
import os
import subprocess
import sys
import time

import memory_accounting as accounting

from safemax.evaluation.memory import peak_bytes, proc_status_kib, reset_peak
from safemax.evaluation.provenance import provenance
from safemax.evaluation.report import write_json

CONFIGS = [("fp32", None, False), ("fp32 + checkpointing", None, True),
           ("bf16", "bf16", False), ("bf16 + checkpointing", "bf16", True),
           ("fp16", "fp16", False), ("fp16 + checkpointing", "fp16", True)]  # fp16: GPU only
# Stable Diffusion 1.x's UNet (860 M parameters), randomly initialised: memory and time depend on
# the architecture, not the weights. Latent size is an argument (64 = 512-pixel images).
SD_UNET = accounting.SD_UNET
# per model: latent channels, and the conditions' shapes as the pipelines make them
TEXT = {"sd": 77, "sdxl": 77, "sd3-medium": 77 + 256, "flux-dev": 512}  # prompt tokens
CHANNELS = {"sd": 4, "sdxl": 4, "sd3-medium": 16, "flux-dev": 16}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _conditions(name: str, n: int, latent: int, g):
    """``n`` rows of random conditions shaped as ``name``'s pipeline makes them."""
    import torch

    L = TEXT[name]
    if name == "sd":
        return torch.randn(n, L, 768, generator=g)
    if name == "sdxl":
        px = 8 * latent  # original size, crop (0, 0), target size
        return {"prompt_embeds": torch.randn(n, L, 2048, generator=g),
                "pooled_prompt_embeds": torch.randn(n, 1280, generator=g),
                "add_time_ids": torch.tensor([px, px, 0, 0, px, px], dtype=torch.float32).repeat(n, 1)}
    if name == "sd3-medium":
        return {"prompt_embeds": torch.randn(n, L, 4096, generator=g),
                "pooled_prompt_embeds": torch.randn(n, 2048, generator=g)}
    return {"prompt_embeds": torch.randn(n, L, 4096, generator=g),  # flux-dev
            "pooled_prompt_embeds": torch.randn(n, 768, generator=g),
            "guidance": torch.full((n,), 3.5)}


def _build(model: str, latent: int, batch: int, device: str, weights: str = "fp32"):
    """``(unet, scheduler, forget, retain, forget_data)`` for one model."""
    import torch
    from torch.utils.data import TensorDataset

    if model == "embedded":
        from safemax.data import digits_dataset, split_by_class
        from safemax.zoo import default_scheduler, load_default_unet

        unet = load_default_unet()
        forget, retain = split_by_class(digits_dataset(unet.config.sample_size), [3])
        return unet, default_scheduler(), [3], retain, forget
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    name, _ = accounting.parse(model)
    dtype = getattr(torch, DTYPES[weights])
    torch.manual_seed(0)
    # weights initialised where they will live (fast on a GPU), created in their dtype
    unet = accounting.build(model, device=device, dtype=dtype, sample_size=latent).to(dtype)
    if name in ("sd", "sdxl"):
        scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    else:  # rectified flow, the pipelines' training scheduler
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    g = torch.Generator().manual_seed(0)
    cond = _conditions(name, 4, latent, g)
    c = CHANNELS[name]
    if name == "sd":  # a tensor of prompt embeddings, as before
        data = lambda n: TensorDataset(torch.randn(n, c, latent, latent, generator=g), cond[torch.arange(n) % 3 + 1])
        return unet, scheduler, {"concept": cond[:1]}, data(2 * batch), data(2 * batch)

    def data(n):  # (latent, {key: row}) pairs
        return [(torch.randn(c, latent, latent, generator=g), {k: v[i % 3 + 1] for k, v in cond.items()})
                for i in range(n)]
    forget = {"concept": {k: v[:1] for k, v in cond.items()}}
    return unet, scheduler, forget, data(2 * batch), data(2 * batch)


def measure(model: str, mixed_precision, checkpointing: bool, device: str, latent: int, batch: int,
            steps: int = 1, lora_rank: int = 0, weights: str = "fp32",
            retain_target: str = "distill") -> dict:
    import diffusers  # noqa: F401  (imported before "base" is read: it is part of the process)
    import torch

    from safemax import Unlearner
    if lora_rank:
        import peft  # noqa: F401

    if device == "cuda":
        base = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = proc_status_kib("VmRSS") * 1024
    start = time.perf_counter()
    unet, scheduler, forget, retain, forget_data = _build(model, latent, batch, device, weights)
    unet.to(device)
    build_seconds = time.perf_counter() - start
    params = sum(p.numel() for p in unet.parameters())
    extra = dict(lora_rank=lora_rank) if lora_rank else {}
    if retain_target != "distill":
        extra["retain_target"] = retain_target
    start = time.perf_counter()  # the Unlearner: the original's digest, the teacher, the adapter
    u = Unlearner(unet, scheduler, forget=forget, lr=1e-5, mixed_precision=mixed_precision,
                  gradient_checkpointing=checkpointing, **extra)
    unlearner_seconds = time.perf_counter() - start
    start = time.perf_counter()
    u.fit(retain, forget_data, steps=1, batch_size=batch, progress=False)  # warm-up: Adam state
    warmup_seconds = time.perf_counter() - start
    if device != "cuda":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak(device)  # (CPU: the peak RSS, VmHWM, back to the current RSS)
    resident = torch.cuda.memory_allocated() if device == "cuda" else proc_status_kib("VmRSS") * 1024
    start = time.perf_counter()
    u.fit(retain, forget_data, steps=1 + steps, batch_size=batch, progress=False)
    peak = peak_bytes(device)
    seconds = (time.perf_counter() - start) / steps
    return dict(model=model, params=params, device=device, latent=latent if model != "embedded" else None,
                batch=batch, rows=2 * batch, resident_gib=resident / 2**30,
                step_peak_gib=(peak - resident) / 2**30, peak_gib=peak / 2**30, step_seconds=seconds,
                loss=u.history[-1]["loss"], base_gib=base / 2**30,
                trainable=sum(p.numel() for _, p in u.trainable()), build_seconds=build_seconds,
                unlearner_seconds=unlearner_seconds, warmup_seconds=warmup_seconds)


def options_label(r) -> str:
    """The run's options beyond the config (empty for full fine-tuning of float32 weights with a
    teacher, the setting of every earlier row)."""
    out = []
    if r.get("lora_rank"):
        out.append(f"LoRA r={r['lora_rank']}")
    if r.get("weights", "fp32") != "fp32":
        out.append(f"{r['weights']} weights")
    if r.get("retain_target", "distill") != "distill":
        out.append(f"retain_target={r['retain_target']}")
    return ", ".join(out)


def table(rows) -> list:
    lines = ["| model | config | rows × size | base GiB | resident GiB | step peak GiB | total peak GiB | step s "
             "| computed resident GiB | computed step w/o activations GiB |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        precision = r["config"]
        if r.get("weights", "fp32") != "fp32":  # the model computes in its 16-bit dtype anyway
            precision = precision.replace("fp32", "no autocast")
        config = ", ".join(x for x in (precision, options_label(r)) if x)
        computed = ""
        if r.get("computed"):
            c = r["computed"]
            computed = f" {c['resident_bytes'] / 2**30:.2f} | {c['step_without_activations_bytes'] / 2**30:.2f} |"
        else:
            computed = " | |"
        if "error" in r:
            lines.append(f"| {r['model']} | {config} | {r.get('latent') or ''} | | | | | {r['error']} |{computed}")
            continue
        size = f"{r['rows']} × {r['latent']}²" if r["latent"] else f"{r['rows']}"
        base = f"{r['base_gib']:.2f}" if "base_gib" in r else ""
        lines.append(f"| {r['model']} ({r['params'] / 1e6:.1f} M) | {config} | {size} | {base} | "
                     f"{r['resident_gib']:.2f} | {r['step_peak_gib']:.2f} | {r['peak_gib']:.2f} | "
                     f"{r['step_seconds']:.1f} |{computed}")
    return lines


def computed(model: str, lora_rank: int, weights: str, retain_target: str, mixed_precision) -> dict:
    """The exact weight side of one run (None for the embedded model)."""
    if model == "embedded":
        return None
    w = accounting.weight_side(model, lora_rank or None, weights, retain_target, mixed_precision)
    return {k: v for k, v in w.items() if k.endswith("_bytes") or k in ("params", "trainable")}


def _model_spec(s: str) -> str:
    if s != "embedded":
        accounting.parse(s)  # raises for an unknown name
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["embedded", "sd"], type=_model_spec,
                   help="embedded, sd, sdxl, sd3-medium, flux-dev, or NAME/DEPTH (default: embedded sd)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--latent", "--sd-latent", dest="latent", type=int, nargs="+", default=[32, 64],
                   help="latent sizes of the latent models (SD: 32 = 256-px images, 64 = 512 px; "
                        "SDXL/SD3/Flux: 128 = 1024 px; default 32 64)")
    p.add_argument("--latent-batch", "--sd-batch", dest="latent_batch", type=int, default=1,
                   help="latent models' forget rows per step (= retain rows; default 1)")
    p.add_argument("--batch", type=int, default=64, help="embedded model's forget rows per step")
    p.add_argument("--measure-steps", type=int, default=1, help="steps measured after the warm-up (default 1)")
    p.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS[:4]],
                   choices=[c[0] for c in CONFIGS])
    p.add_argument("--lora-rank", type=int, nargs="+", default=[0],
                   help="0 = full fine-tuning (default), r = a LoRA adapter of rank r")
    p.add_argument("--weights", nargs="+", default=["fp32"], choices=list(DTYPES),
                   help="dtype the model's weights are stored in; bf16/fp16 with LoRA only (default fp32)")
    p.add_argument("--retain-target", nargs="+", default=["distill"], choices=["distill", "noise"])
    p.add_argument("--skip-over", type=float, default=None,
                   help="skip a run whose computed weight side (resident + gradients + autocast "
                        "copies) exceeds this many GiB, e.g. the GPU's memory")
    p.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    p.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                   help="CPU: glibc's MALLOC_MMAP_THRESHOLD_ for the runs (e.g. 131072): every larger "
                        "block is its own mapping, returned when freed, so the peak RSS follows the live "
                        "tensors (by default glibc keeps freed blocks up to 32 MiB in its heap, and the "
                        "step peak can read high)")
    p.add_argument("--append", action="store_true", help="add to the rows already in OUT/memory.json")
    p.add_argument("--out", default="memory")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = p.parse_args()
    if args.one:
        run = json.loads(args.one)
        _, mp, ckpt = next(c for c in CONFIGS if c[0] == run["config"])
        print("RESULT " + json.dumps(dict(config=run["config"], **measure(
            run["model"], mp, ckpt, args.device, run["latent"], run["batch"], args.measure_steps,
            run["lora_rank"], run["weights"], run["retain_target"]))))
        return
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "memory.json")
    rows = []
    if args.append and os.path.exists(path):
        with open(path) as f:
            rows = json.load(f)
    runs = []
    for model in args.models:
        for latent, name, rank, weights, target in itertools.product(
                [None] if model == "embedded" else args.latent, args.configs, args.lora_rank,
                args.weights, args.retain_target):
            if model == "embedded" and (rank or weights != "fp32" or target != "distill"):
                continue  # the embedded model: the original comparison only
            if weights != "fp32" and not rank:
                continue  # full fine-tuning trains float32 weights
            if rank and target == "noise":
                continue  # LoRA has no teacher copy to save
            if args.device == "cpu" and (name.startswith("fp16") or weights == "fp16"):
                continue  # fp16: GPU only
            runs.append(dict(model=model, latent=latent, config=name, lora_rank=rank, weights=weights,
                             retain_target=target,
                             batch=args.batch if model == "embedded" else args.latent_batch))
    for run in runs:
        mp = next(c[1] for c in CONFIGS if c[0] == run["config"])
        info = computed(run["model"], run["lora_rank"], run["weights"], run["retain_target"], mp)
        label = f"{run['model']} {run['latent'] or ''} / {run['config']} {options_label(run)}"
        print(f"{label} ...", flush=True)
        need = info and info["step_without_activations_bytes"] / 2**30
        if args.skip_over and need and need > args.skip_over:
            row = dict(run, error=f"skipped: computed {need:.1f} GiB before activations > {args.skip_over:g} GiB")
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(run), "--device", args.device,
                   "--measure-steps", str(args.measure_steps)]
            env = dict(os.environ)
            if args.mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
                out, err, rc = done.stdout, done.stderr, done.returncode
            except subprocess.TimeoutExpired as e:
                out, err, rc = e.stdout or "", f"timed out after {args.timeout:g} s", "timeout"
                out = out.decode() if isinstance(out, bytes) else out
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if line is None:  # e.g. out of memory or killed: say so in the table instead of stopping
                tail = (err.strip().splitlines() or ["?"])[-1][:120]
                if "OutOfMemoryError" in err or "out of memory" in err:
                    tail = "out of memory: " + tail
                elif rc == -9:
                    tail = "killed (SIGKILL: out of memory?)"
                row = dict(run, error=f"failed (rc {rc}): {tail}")
            else:
                row = {**run, **json.loads(line[len("RESULT "):])}
            if args.mmap_threshold:
                row["malloc_mmap_threshold"] = args.mmap_threshold
        row["computed"] = info
        row["provenance"] = provenance()   # the commit, versions and machine of this row's measurement
        rows.append(row)
        print("\n".join(table(rows[-1:])[2:]), flush=True)
        write_json(path, rows)   # (a list: the file's provenance in a sidecar; each row has its own)
    md = table(rows)
    with open(os.path.join(args.out, "memory.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
