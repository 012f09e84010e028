"""Forgetting through the class embedding alone (``train="class-embedding"``) against the full fit,
and the inversion attack on both.

``Unlearner(..., train="class-embedding")`` trains only the forgotten class's row of the class
embedding: every other weight and row stays the original, so the kept classes cannot dip. This
script measures what that costs in depth, on an embedded model:

1. ``sweep``: the row-only fit of one class at learning rates 0.03…1 and 5…80 steps (FA, the
   classifier's digit/garment-only argmax on the forget samples — a *ghost* of the class in them —
   and their Gaussianity; 100 forget samples, DDIM-20).
2. ``table``: per class, the full fit (the demo's 100 steps at lr 5e-4) and the row-only fit (40
   steps at its default lr) measured like benchmarks/classes.py (FA, the ghost, retain accuracy,
   Fréchet, std, kurtosis; DDIM-50) and attacked three ways on 10 forget images: the harness's
   weak and strong relearning attacks (all weights, 50 steps at lr 1e-4 / 1e-3) and an
   *inversion* attack (only the class's embedding row learns, 100 steps at lr 0.1: do the shared
   weights still know the class?). A picture shows each model's forget samples before and after
   the inversion attack.

    python benchmarks/class_embedding.py --out benchmarks/results/class-embedding     # digits, ~40 min a class on 1 core
    python benchmarks/class_embedding.py --smoke --out /tmp/ce                          # seconds: plumbing only

Finished pieces are kept in ``OUT/runs`` and skipped when run again.
"""
import argparse
import os
import time

import torch

from safemax import Unlearner
from safemax.evaluation.attacks import PRESETS, draw_images
from safemax.evaluation.metrics import classify, gaussianity
from safemax.evaluation.report import save_grid
from safemax.harness.compare import forget_accuracy, relearning_attack
from safemax.harness.store import cached  # a piece kept as JSON, reused when run again
from safemax.harness.task import Task
from safemax.models.class_rows import DEFAULT_LR
from safemax.models.sampling import sample

FITS = {"full": dict(train="all", steps=100, lr=5e-4), "rows": dict(train="class-embedding", steps=40, lr=DEFAULT_LR)}
ATTACKS = {name: PRESETS[name].resolved(steps=50, images=None) for name in ("weak", "strong", "inversion")}
MEASURED = ("fa", "fa_digits", "retain_acc", "frechet", "gaussian_std", "gaussian_kurtosis")


class Setup(Task):
    """The task (seed 0) and this script's measurement."""

    def __init__(self, name: str, forget: int, args):
        super().__init__(name, forget, seed=0)
        self.name, self.args = name, args

    def fit(self, train: str, steps: int, lr: float):
        unet, scheduler = self.load()
        u = Unlearner(unet, scheduler, forget=[self.forget], lr=lr, seed=0, train=train)
        start = time.perf_counter()
        u.fit(self.retain_data, self.forget_data, steps=steps, batch_size=self.args.batch_size, progress=False)
        return unet, scheduler, time.perf_counter() - start

    def measure(self, unet, scheduler) -> dict:
        a = self.args
        e = super().measure(unet, scheduler, n_forget=a.n_forget, n_per_class=a.n_per_class,
                            num_inference_steps=a.ddim_steps)
        return {k: e[k] for k in MEASURED}


def sweep(s: Setup, args) -> dict:
    out = {}
    for lr in args.sweep_lrs:
        unet, scheduler = s.load()
        u = Unlearner(unet, scheduler, forget=[s.forget], lr=lr, seed=0, train="class-embedding")
        for at in args.sweep_steps:
            u.fit(s.retain_data, s.forget_data, steps=at, batch_size=args.batch_size, progress=False)
            labels = torch.full((args.sweep_n,), s.forget)
            x = sample(unet, scheduler, labels, args.sweep_ddim, seed=0)
            logits = classify(s.classifier, x)
            out[f"{lr:g}@{at}"] = dict(fa=float((logits.argmax(1) == labels).float().mean()),
                                       fa_digits=float((logits[:, :10].argmax(1) == labels).float().mean()),
                                       **{k: v for k, v in gaussianity(x).items() if k != "gaussian_mean"})
            print("sweep", lr, at, out[f"{lr:g}@{at}"], flush=True)
    return out


def table_row(s: Setup, fit: str, args) -> dict:
    unet, scheduler, seconds = s.fit(**FITS[fit])
    row = dict(fit=fit, train_seconds=seconds, after=s.measure(unet, scheduler), attacks={})
    x, y = draw_images(s.forget_data, args.attack_images, seed=0)
    labels = torch.full((args.picture,), s.forget)
    pictures = [sample(unet, scheduler, labels, args.ddim_steps, seed=0)]
    for name, attack in ATTACKS.items():
        steps = max(1, round(attack.steps * args.attack_scale))
        attacked = relearning_attack(unet, scheduler, x, y, steps=steps, lr=attack.lr, seed=0, train=attack.train)
        row["attacks"][name] = forget_accuracy(attacked, scheduler, s.classifier, s.forget, args.n_attack,
                                               args.ddim_steps, seed=0)
        if name == "inversion":
            pictures.append(sample(attacked, scheduler, labels, args.ddim_steps, seed=0))
    row["pictures"] = torch.cat(pictures).tolist()
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits", choices=["digits", "fashion-mnist"])
    p.add_argument("--classes", type=int, nargs="+", default=[7, 5, 0])
    p.add_argument("--sweep-class", type=int, default=7)
    p.add_argument("--sweep-lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    p.add_argument("--sweep-steps", type=int, nargs="+", default=[5, 10, 20, 40, 80])
    p.add_argument("--sweep-n", type=int, default=100)
    p.add_argument("--sweep-ddim", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-forget", type=int, default=300)
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--n-attack", type=int, default=100)
    p.add_argument("--attack-images", type=int, default=10)
    p.add_argument("--attack-scale", type=float, default=1.0, help="scales the attacks' steps (smoke runs)")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--picture", type=int, default=12, help="forget samples per row of the picture")
    p.add_argument("--smoke", action="store_true", help="tiny settings: tests the plumbing, not a result")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.smoke:
        args.classes, args.sweep_lrs, args.sweep_steps, args.sweep_n, args.sweep_ddim = args.classes[:1], [0.3], [1, 2], 4, 2
        args.batch_size, args.n_forget, args.n_per_class, args.n_attack, args.ddim_steps = 4, 4, 1, 4, 2
        args.attack_images, args.attack_scale, args.picture = 2, 0.02, 2
        FITS["full"]["steps"], FITS["rows"]["steps"] = 2, 2
    runs = os.path.join(args.out, "runs")
    os.makedirs(runs, exist_ok=True)
    word = "digit" if args.model == "digits" else "garment"
    sw = cached(os.path.join(runs, f"sweep-class{args.sweep_class}.json"),
                lambda: sweep(Setup(args.model, args.sweep_class, args), args))
    lines = [f"# Forgetting through the class embedding alone ({args.model})\n",
             f"## The row-only fit's learning rate (class {args.sweep_class}; {args.sweep_n} forget samples, "
             f"DDIM-{args.sweep_ddim})\n",
             f"Each cell: FA / {word}-only argmax on the class (the ghost) / std / kurtosis.\n",
             "| lr | " + " | ".join(f"step {a}" for a in args.sweep_steps) + " |",
             "| ---: | " + " | ".join("---" for _ in args.sweep_steps) + " |"]
    for lr in args.sweep_lrs:
        cells = [sw[f"{lr:g}@{a}"] for a in args.sweep_steps]
        lines.append(f"| {lr:g} | " + " | ".join(
            f"{c['fa']:.2f} / {c['fa_digits']:.2f} / {c['gaussian_std']:.2f} / {c['gaussian_kurtosis']:.1f}" for c in cells) + " |")
    lines += ["", f"## Full fit against row-only, and three attacks ({args.n_forget} forget samples, "
              f"{args.n_per_class} per kept class, DDIM-{args.ddim_steps}; attacks: {args.attack_images} forget images, "
              f"FA on {args.n_attack} samples)\n",
              f"*ghost*: the share of forget samples whose {word}-only argmax is the forgotten class.\n",
              "| class | fit | train s | FA | ghost | retain acc | Fréchet | std | kurtosis | FA / ghost after weak | "
              "after strong | after inversion |",
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    grid = []
    for c in args.classes:
        s = Setup(args.model, c, args)   # (loads its data and classifier only if a piece must run)
        orig = cached(os.path.join(runs, f"original-class{c}.json"), lambda: s.measure(*s.load()))
        lines.append(f"| {c} | original | | {orig['fa']:.3f} | {orig['fa_digits']:.3f} | {orig['retain_acc']:.3f} | "
                     f"{orig['frechet']:.2f} | {orig['gaussian_std']:.3f} | {orig['gaussian_kurtosis']:.2f} | | | |")
        for fit in FITS:
            r = cached(os.path.join(runs, f"{fit}-class{c}.json"), lambda fit=fit, s=s: table_row(s, fit, args))
            a, at = r["after"], r["attacks"]
            lines.append(f"| {c} | {fit} | {r['train_seconds']:.0f} | {a['fa']:.3f} | {a['fa_digits']:.3f} | "
                         f"{a['retain_acc']:.3f} | {a['frechet']:.2f} | {a['gaussian_std']:.3f} | "
                         f"{a['gaussian_kurtosis']:.2f} | " + " | ".join(
                             f"{at[k]['fa']:.2f} / {at[k]['fa_digits']:.2f}" for k in ATTACKS) + " |")
            grid.append(torch.tensor(r["pictures"]))
            print(lines[-1], flush=True)
    save_grid(torch.cat(grid), len(grid), os.path.join(args.out, "forget-samples.png"))
    lines += ["", "![forget samples of each fit (rows: per class, full then row-only; each before, then after the "
              "inversion attack)](forget-samples.png)",
              "", "Picture rows, per class: the full fit, then the row-only fit; in each row the forget samples "
              "after the fit, then after the inversion attack."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "class-embedding.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
