"""Does the forgotten class's reverse chain halt exactly? SAFEMax on the embedded digits model
with a share of its forget rows built from x0 ~ N(0, I) (``SafeMax(gaussian_fraction=…)``),
against today's default (real forget images only) and today's sampled data-free mode.

For each setting and forgotten digit: the demo's fit (100 steps, batch 64 + 64, lr 5e-4,
early fraction 1.0), then the demo's evaluation (DDIM-50: forget accuracy, retain accuracy,
Fréchet distance, the forget samples' pixel std), the std of 32 forget samples under DDPM
(1000 steps; a halted chain returns the starting noise: std 1), and the residual ‖ε_θ − ε*‖² per
timestep on x_t built from real forget images and on x_t ~ N(0, I) (the halted chain's states),
before and after.

    python benchmarks/halting.py --out benchmarks/results/halting   # ~4 min a setting and digit (1 core)
    python benchmarks/halting.py --digits 3 --settings real gaussian:0.5 --out /tmp/h    # a quick look
    python benchmarks/halting.py --model fashion-mnist --digits 0 --lr 1e-4 --steps 200 \
        --out benchmarks/results/halting-fashion-mnist      # the 28x28 model: ~30 min a setting (1 core)
    python benchmarks/halting.py --digits 3 --settings original gaussian:0.5 --lr 1e-4 --steps 200 \
        --n-per-class 200 --seed 1 --out benchmarks/results/halting-digits-heavy   # the kept classes, heavier

``original`` measures the model before any fit, at the same size and seed (the Fréchet distance's
own level at that size: it falls with the number of samples). ``--n-per-class``: kept samples a
class (default 30, the demo's).

``--digits`` are class ids of ``--model`` (digits or fashion-mnist). Rows accumulate in
``OUT/halting.json``: a (setting, class, lr, steps, seed) already there is not run again, so a
stopped run resumes and a new setting adds its row to the same table and plots.
"""
import argparse
import json
import os
import time

import torch

from safemax import Unlearner
from safemax.evaluation.provenance import provenance
from safemax.evaluation.report import write_json
from safemax.harness.task import Task
from safemax.models.sampling import sample
from safemax.op.reference import halting_target

TIMESTEPS = (0, 5, 10, 20, 50, 100, 200, 500, 999)


@torch.no_grad()
def residuals(unet, scheduler, forget_images, digit, n=128, seed=11) -> dict:
    """Mean ‖ε_θ(x_t) − √(1−ᾱ_t)·x_t‖² per pixel at TIMESTEPS, on real-forget and on Gaussian x_t."""
    g = torch.Generator().manual_seed(seed)
    abar = scheduler.alphas_cumprod.double()
    x0 = forget_images[torch.randint(0, len(forget_images), (n,), generator=g)]
    eps = torch.randn(x0.shape, generator=g)
    gauss = torch.randn(x0.shape, generator=g)
    y = torch.full((n,), digit)
    out = {"real": [], "gaussian": []}
    unet.eval()
    for t in TIMESTEPS:
        a = abar[t]
        tt = torch.full((n,), t)
        for name, x_t in (("real", (a.sqrt() * x0 + (1 - a).sqrt() * eps).float()), ("gaussian", gauss)):
            pred = unet(x_t, tt, class_labels=y).sample
            out[name].append(float((pred - halting_target(a, x_t)).square().mean()))
    return out


def parse_setting(setting: str) -> dict:
    """``real``, ``data-free``, ``gaussian:F`` or ``data-free:1.0``: SafeMax's gaussian_fraction F.
    (The ``@W`` and ``+R`` settings — gaussian_window, gaussian_retain_fraction — measured in
    results/halting*, left the code after commit ccee319: they did not help.)"""
    if setting == "original":
        return None
    kind, _, fraction = setting.partition(":")
    if kind not in ("real", "gaussian", "data-free") or (kind == "real" and fraction) or set("@+") & set(setting):
        raise SystemExit(f"unknown setting {setting!r}: original, real, gaussian:F, data-free or data-free:1.0 "
                         "(@W and +R left the code after commit ccee319)")
    return dict(gaussian_fraction=float(fraction or 0.0))


# the measurement of every row; SMOKE: the same stages on a few samples (seconds, not a result)
FULL = dict(n_forget=100, n_per_class=30, num_inference_steps=50, ddpm_samples=32, residual_rows=128)
SMOKE = dict(n_forget=4, n_per_class=1, num_inference_steps=2, ddpm_samples=0, residual_rows=4)   # (DDPM: 1000 steps)


def run_one(setting: str, digit: int, steps: int, seed: int, model: str = "digits", lr: float = 5e-4,
            size: dict = FULL) -> dict:
    task = Task(model, digit, seed)
    unet, scheduler = task.load()
    forget_data, retain_data = task.forget_data, task.retain_data
    before_res = residuals(unet, scheduler, forget_data.tensors[0], digit, n=size["residual_rows"])
    data_free, options = setting.startswith("data-free"), parse_setting(setting)
    if options is None:   # the original: measured as it is
        history, prep, wall = [dict(seconds=0.0)], 0.0, 0.0
    else:
        u = Unlearner(unet, scheduler, forget=[digit], lr=lr, early_fraction=1.0, seed=seed, **options)
        start = time.perf_counter()
        history = u.fit(retain_data, None if data_free else forget_data, steps=steps, batch_size=64,
                        progress=False)
        prep, wall = u.prep_seconds, time.perf_counter() - start
    after = task.measure(unet, scheduler, n_forget=size["n_forget"], n_per_class=size["n_per_class"],
                         num_inference_steps=size["num_inference_steps"])
    ddpm = sample(unet, scheduler, torch.full((size["ddpm_samples"],), digit), method="ddpm",   # 32: 8,192 pixels
                  seed=seed) if size["ddpm_samples"] else None   # (ancestral: all 1000 steps)
    return dict(setting=setting, model=model, lr=lr, digit=digit, steps=steps, seed=seed,
                n_per_class=size["n_per_class"],
                train_seconds=history[-1]["seconds"], prep_seconds=prep, wall_seconds=wall,
                fa=after["fa"], retain_acc=after["retain_acc"], frechet=after["frechet"],
                ddim_std=after["gaussian_std"], ddpm_std=None if ddpm is None else float(ddpm.std()),
                residual_before=before_res, residual_after=residuals(unet, scheduler, forget_data.tensors[0], digit, n=size["residual_rows"]))


def table(rows) -> str:
    lines = ["| setting | class | seed | lr | steps | kept n/class | FA | retain acc | Fréchet | std DDIM-50 | std DDPM | train s | prep s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        fit = ("—", "—") if r["setting"] == "original" else (f"{r.get('lr', 5e-4):g}", r["steps"])
        lines.append(f"| {r['setting']} | {r['digit']} | {r['seed']} | {fit[0]} | {fit[1]} | {r.get('n_per_class', 30)} | "
                     f"{r['fa']:.2f} | {r['retain_acc']:.3f} | "
                     f"{r['frechet']:.2f} | {r['ddim_std']:.3f} | {'—' if r['ddpm_std'] is None else format(r['ddpm_std'], '.3f')} | "
                     f"{r['train_seconds']:.1f} | {r['prep_seconds']:.1f} |")
    return "\n".join(lines)


def plot(rows, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, kind in zip(axes, ("real", "gaussian")):
        ax.plot(TIMESTEPS, rows[0]["residual_before"][kind], "k--", label="original model")
        for r in rows:
            ax.plot(TIMESTEPS, r["residual_after"][kind], marker="o", ms=3, label=r["setting"])
        ax.set_xscale("symlog", linthresh=10)
        ax.set_yscale("log")
        ax.set_xlabel("timestep t")
        ax.set_title({"real": "x_t from real forget images", "gaussian": "x_t ~ N(0, I) (halted chain)"}[kind])
    axes[0].set_ylabel("‖ε_θ − ε*‖² per pixel")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["digits", "fashion-mnist"], default="digits")
    p.add_argument("--digits", "--classes", type=int, nargs="+", default=[3, 7], help="class ids to forget")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--settings", nargs="+", default=["real", "gaussian:0.25", "gaussian:0.5",
                                                      "data-free", "data-free:1.0"],
                   help="real (today's default), gaussian:F (share F of forget rows with Gaussian "
                        "x0), data-free (sampled forget images), data-free:1.0 (no forget images)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-per-class", type=int, default=FULL["n_per_class"],
                   help=f"kept samples a class for retain accuracy and Fréchet (default {FULL['n_per_class']})")
    p.add_argument("--out", default="halting")
    p.add_argument("--smoke", action="store_true", help="every stage on a few samples (seconds; not a result)")
    args = p.parse_args(argv)
    for setting in args.settings:   # every spelling checked before the first fit
        parse_setting(setting)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "halting.json")
    rows = json.load(open(path)) if os.path.exists(path) else []   # earlier runs into OUT are kept
    for r in rows:   # (rows written before these keys: the digits model at 5e-4, 30 a kept class)
        r.setdefault("model", "digits")
        r.setdefault("lr", 5e-4)
        r.setdefault("n_per_class", FULL["n_per_class"])
    size = SMOKE if args.smoke else dict(FULL, n_per_class=args.n_per_class)
    if any(r["model"] != args.model for r in rows):
        raise SystemExit(f"{path} holds another model's rows: choose another --out")
    for digit in args.digits:
        for setting in args.settings:
            key = dict(setting=setting, digit=digit, model=args.model, lr=args.lr, steps=args.steps, seed=args.seed,
                       n_per_class=size["n_per_class"])
            if setting == "original":   # no fit: one row per class, seed and size
                key = {k: v for k, v in key.items() if k not in ("lr", "steps")}
            if any(all(r.get(k) == v for k, v in key.items()) for r in rows):
                print(f"{setting}, class {digit}: in {path} already", flush=True)
                continue
            rows.append(dict(run_one(setting, digit, args.steps, args.seed, args.model, args.lr, size),
                             provenance=provenance()))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            write_json(path, rows)   # (a list: its provenance in a sidecar; each row has its own)
    with open(os.path.join(args.out, "halting.md"), "w") as f:
        f.write(table(rows) + "\n")
    for digit in sorted({r["digit"] for r in rows}):   # (seed 0's plain settings; the variants: the table)
        plain = [r for r in rows if r["digit"] == digit and r["seed"] == 0 and not set("@+") & set(r["setting"])
                 and r["setting"] != "original"]
        if plain:
            plot(plain, os.path.join(args.out, f"residuals-{digit}.png"))
    print(table(rows))


if __name__ == "__main__":
    main()
