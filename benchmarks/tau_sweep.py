"""The early-fraction (τ) trade-off on the embedded model, and data-free vs data forgetting.

    python benchmarks/tau_sweep.py --forget 3 --out tau-sweep      # ~10 minutes on 2 cores

For each τ, a fresh copy of the embedded model is unlearned for --steps steps (batch 64+64) and
measured with the demo's metrics; then the default τ is run once more without forget images
(data-free). Writes sweep.json, sweep.md and sweep.png (forget accuracy and retain quality vs τ).
"""
import argparse
import copy
import json
import os
import time

from safemax.evaluation.report import write_json
from safemax.harness.defaults import DEFAULT_EARLY_FRACTION, DEFAULT_LR
from safemax.harness.task import Task
from safemax.training.unlearner import Unlearner

KEYS = ("fa", "fa_digits", "p_forget", "entropy", "retain_acc", "frechet", "gaussian_mean", "gaussian_std")


def markdown_table(rows):
    lines = ["| run | t_min | FA | FA digits | P(forget) | retain acc | Fréchet | forget mean | forget std | s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r.get('t_min', '-')} | {r['fa']:.2f} | {r['fa_digits']:.2f} | "
                     f"{r['p_forget']:.3f} | {r['retain_acc']:.3f} | {r['frechet']:.2f} | "
                     f"{r['gaussian_mean']:.3f} | {r['gaussian_std']:.3f} | {r['seconds']} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget", type=int, default=3)
    p.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.75, 0.8, 1.0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=DEFAULT_LR)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-data-free", action="store_true")
    p.add_argument("--n-forget", type=int, default=100, help="forget samples per measurement")
    p.add_argument("--n-per-class", type=int, default=30, help="samples per kept class per measurement")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps of the measurement")
    p.add_argument("--out", default="tau-sweep")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)

    task = Task("digits", args.forget, seed=0)
    (base, scheduler), forget_data, retain_data = task.load(), task.forget_data, task.retain_data

    def measure(unet):
        return task.measure(unet, scheduler, n_forget=args.n_forget, n_per_class=args.n_per_class,
                            num_inference_steps=args.ddim_steps)

    rows = [dict(tau=0.0, label="original", steps=0, seconds=0.0, **{k: v for k, v in measure(base).items() if k in KEYS})]
    runs = [(tau, False) for tau in args.taus]
    if not args.no_data_free:
        runs.append((DEFAULT_EARLY_FRACTION, True))
    for tau, data_free in runs:
        unet = copy.deepcopy(base)
        u = Unlearner(unet, scheduler, forget=[args.forget], early_fraction=tau, lr=args.lr)
        start = time.time()
        history = u.fit(retain_data, None if data_free else forget_data, steps=args.steps,
                        batch_size=args.batch_size, progress=False)
        total = time.time() - start
        m = measure(unet)
        rows.append(dict(tau=tau, label=f"τ={tau}" + (" data-free" if data_free else ""), t_min=u.method.t_min,
                         steps=args.steps, seconds=round(history[-1]["seconds"], 1),
                         seconds_with_generation=round(total, 1), **{k: m[k] for k in KEYS}))
        print(json.dumps(rows[-1]), flush=True)

    write_json(os.path.join(args.out, "sweep.json"), dict(settings=vars(args), forget=args.forget, lr=args.lr,
                                                         batch_size=args.batch_size, rows=rows))
    lines = markdown_table(rows)
    with open(os.path.join(args.out, "sweep.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = [r for r in rows[1:] if "data-free" not in r["label"]]
    base = rows[0]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    taus = [r["tau"] for r in sweep]
    ax[0].plot(taus, [r["fa"] for r in sweep], "o-", label="forget accuracy (11 classes)")
    ax[0].plot(taus, [r["fa_digits"] for r in sweep], "o--", label="forget accuracy (digits only)")
    ax[0].plot(taus, [r["retain_acc"] for r in sweep], "s-", label="retain accuracy")
    ax[0].axhline(base["retain_acc"], color="gray", lw=0.8, ls=":", label="original retain accuracy")
    ax[0].set_xlabel("early fraction τ")
    ax[0].set_ylim(-0.02, 1.02)
    ax[0].legend(fontsize=7)
    ax[0].grid(alpha=0.3)
    ax[1].plot(taus, [r["frechet"] for r in sweep], "o-", color="C3")
    ax[1].axhline(base["frechet"], color="gray", lw=0.8, ls=":", label="original")
    ax[1].set_xlabel("early fraction τ")
    ax[1].set_ylabel("retain Fréchet distance")
    ax[1].legend(fontsize=7)
    ax[1].grid(alpha=0.3)
    fig.suptitle(f"forgetting digit {args.forget}: {args.steps} steps, lr {args.lr}")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sweep.png"))


if __name__ == "__main__":
    main()
