"""Peak memory and time of one SAFEMax training step, with and without bf16 mixed precision and
gradient checkpointing, on the embedded model and on a Stable-Diffusion-sized UNet.

    python benchmarks/memory.py --out benchmarks/results/memory            # CPU: ~20 min, 2 cores
    python benchmarks/memory.py --device cuda --models sd --sd-latent 64 --out memory-gpu  # GPU

Each configuration runs in a fresh process (so one's memory cannot hide another's). It builds the
Unlearner (model, frozen teacher copy, Adam), takes one warm-up step (Adam's state now exists),
then measures the next ``--measure-steps`` steps (their mean time; the peak over them).
CPU: resident memory — "resident" is RSS before the step (weights, teacher, optimizer state; a
fit frees its gradients), "step peak" the rise of the peak RSS during it (gradients, activations,
autocast's low-precision weight copies), read from /proc with the peak reset (clear_refs) after
returning freed heap to the OS (malloc_trim). CUDA: torch.cuda.max_memory_allocated the same way.
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

CONFIGS = [("fp32", None, False), ("fp32 + checkpointing", None, True),
           ("bf16", "bf16", False), ("bf16 + checkpointing", "bf16", True),
           ("fp16", "fp16", False), ("fp16 + checkpointing", "fp16", True)]  # fp16: GPU only
# Stable Diffusion 1.x's UNet (860 M parameters), randomly initialised: memory and time depend on
# the architecture, not the weights. Latent size is an argument (64 = 512-pixel images).
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
               attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _build(model: str, latent: int, batch: int, device: str):
    """``(unet, scheduler, forget, retain, forget_data)`` for one model."""
    import torch
    from torch.utils.data import TensorDataset

    if model == "embedded":
        from safemax.data import digits_dataset, split_by_class
        from safemax.zoo import default_scheduler, load_default_unet

        unet = load_default_unet()
        forget, retain = split_by_class(digits_dataset(unet.config.sample_size), [3])
        return unet, default_scheduler(), [3], retain, forget
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise 860 M weights where they will live (fast on a GPU)
        unet = UNet2DConditionModel(**{**SD_UNET, "sample_size": latent})
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(4, 77, 768, generator=g)
    data = lambda n: TensorDataset(torch.randn(n, 4, latent, latent, generator=g), emb[torch.arange(n) % 3 + 1])
    return unet, scheduler, {"concept": emb[:1]}, data(2 * batch), data(2 * batch)


def measure(model: str, mixed_precision, checkpointing: bool, device: str, latent: int, batch: int,
            steps: int = 1) -> dict:
    import torch

    from safemax import Unlearner

    unet, scheduler, forget, retain, forget_data = _build(model, latent, batch, device)
    unet.to(device)
    params = sum(p.numel() for p in unet.parameters())
    u = Unlearner(unet, scheduler, forget=forget, lr=1e-5, mixed_precision=mixed_precision,
                  gradient_checkpointing=checkpointing)
    u.fit(retain, forget_data, steps=1, batch_size=batch, progress=False)  # warm-up: Adam state
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
        resident = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    u.fit(retain, forget_data, steps=1 + steps, batch_size=batch, progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kib("VmHWM") * 1024
    seconds = (time.perf_counter() - start) / steps
    return dict(model=model, params=params, device=device, latent=latent if model == "sd" else None,
                batch=batch, rows=2 * batch, resident_gib=resident / 2**30,
                step_peak_gib=(peak - resident) / 2**30, peak_gib=peak / 2**30, step_seconds=seconds,
                loss=u.history[-1]["loss"])


def table(rows) -> list:
    lines = ["| model | config | rows × size | resident GiB | step peak GiB | total peak GiB | step s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | {r['latent'] or ''} | | | | {r['error']} |")
            continue
        size = f"{r['rows']} × {r['latent']}²" if r["latent"] else f"{r['rows']}"
        lines.append(f"| {r['model']} ({r['params'] / 1e6:.1f} M) | {r['config']} | {size} | "
                     f"{r['resident_gib']:.2f} | {r['step_peak_gib']:.2f} | {r['peak_gib']:.2f} | "
                     f"{r['step_seconds']:.1f} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["embedded", "sd"], choices=["embedded", "sd"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--sd-latent", type=int, nargs="+", default=[32, 64],
                   help="SD latent sizes (32 = 256-px images, 64 = 512 px; default both)")
    p.add_argument("--sd-batch", type=int, default=1, help="SD forget rows per step (= retain rows)")
    p.add_argument("--batch", type=int, default=64, help="embedded model's forget rows per step")
    p.add_argument("--measure-steps", type=int, default=1, help="steps measured after the warm-up (default 1)")
    p.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS[:4]],
                   choices=[c[0] for c in CONFIGS])
    p.add_argument("--out", default="memory")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = p.parse_args()
    if args.one:
        model, name = args.one.split(":", 1)
        _, mp, ckpt = next(c for c in CONFIGS if c[0] == name)
        latent, batch = (args.sd_latent[0], args.sd_batch) if model == "sd" else (None, args.batch)
        print("RESULT " + json.dumps(dict(config=name, **measure(model, mp, ckpt, args.device, latent, batch,
                                                                 args.measure_steps))))
        return
    os.makedirs(args.out, exist_ok=True)
    rows = []
    runs = [(m, latent) for m in args.models for latent in (args.sd_latent if m == "sd" else [None])]
    for model, latent in runs:
        for name in args.configs:
            cmd = [sys.executable, __file__, "--one", f"{model}:{name}", "--device", args.device,
                   "--sd-latent", str(latent or 0), "--sd-batch", str(args.sd_batch),
                   "--batch", str(args.batch), "--measure-steps", str(args.measure_steps)]
            print(f"{model} {latent or ''} / {name} ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:  # e.g. killed for memory: say so in the table instead of stopping
                tail = (done.stderr.strip().splitlines() or ["?"])[-1][:120]
                rows.append(dict(model=model, latent=latent, config=name,
                                 error=f"failed (rc {done.returncode}): {tail}"))
            else:
                rows.append(json.loads(line[len("RESULT "):]))
            print("\n".join(table(rows[-1:])[2:]), flush=True)
            with open(os.path.join(args.out, "memory.json"), "w") as f:
                json.dump(rows, f, indent=2)
    md = table(rows)
    with open(os.path.join(args.out, "memory.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
