"""The retain dip: what shortens the kept classes' recovery at the start of a SAFEMax fit?

Forgetting itself is done in ~10 steps (FA 0 at the first measurement of every run in
docs/results/classes.md); the time to the bar is set by the kept classes, whose accuracy dips in
the first 10-20 steps and oscillates below the 2-point bar until step 30-80. Each variant here is
the same fit (digits, 60 steps, batch 64 + 64, seed 0) with one thing changed, measured every 5
steps (100 forget samples, 20 per kept class, DDIM-25) on the classes where the dip was deepest:

- ``warmup0``: today's default (lr 5e-4); ``warmup20``: the lr raised linearly over 20 steps;
- ``lr1e-4``: the baselines' learning rate (`safemax compare` saw SAFEMax hold the bar sooner there);
- ``forget-weight0.25``: the forget rows weighted 0.25 (the retain/forget balance);
- ``gaussian0.5``: half the forget rows built from x0 ~ N(0, I) (the exact-halting fix);
- ``kept-contrast2`` / ``4`` / ``8``: SafeMax(kept_contrast=λ) — the forget x_t under kept labels
  pushed off the halting target, anchored to the original at λ (benchmarks/first_steps.py found
  the collapse behind the dip is the forget gradient's shared part); ``kept-contrast4-rows0.25``:
  λ = 4 on a quarter of the forget rows (a quarter of the term's cost).

    python benchmarks/retain_dip.py --out benchmarks/results/retain-dip

Each variant's runs are `benchmarks/classes.py` runs in ``OUT/<variant>/runs`` (kept and reused);
the table compares first and held step, the lowest retain accuracy and the final quality.
"""
import argparse
import glob
import json
import os

import classes  # benchmarks/classes.py: each variant's runs

from safemax.harness.bar import run_held_step

VARIANTS = {
    "warmup0": [],
    "warmup20": ["--warmup-steps", "20"],
    "lr1e-4": ["--lr", "1e-4"],
    "forget-weight0.25": ["--forget-weight", "0.25"],
    "gaussian0.5": ["--gaussian-fraction", "0.5"],
    "kept-contrast2": ["--kept-contrast", "2"],
    "kept-contrast4": ["--kept-contrast", "4"],
    "kept-contrast8": ["--kept-contrast", "8"],
}
SETTINGS = ["--steps", "60", "--curve-every", "5", "--n-forget", "100", "--n-per-class", "30", "--seeds"]
SMOKE = ["--steps", "2", "--curve-every", "1", "--n-forget", "4", "--n-per-class", "1", "--ddim-steps", "2",
         "--curve-forget", "2", "--curve-per-class", "1", "--seeds"]


def _step(step) -> str:
    return "—" if step is None else str(step)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[5, 0, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--summarise", action="store_true", help="only the table, from the runs there are")
    p.add_argument("--smoke", action="store_true", help="tiny settings: tests the plumbing, not a result")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not args.summarise:
        for c in args.classes:
            for v in args.variants:
                classes.main(["--model", "digits", "--classes", str(c), *(SMOKE if args.smoke else SETTINGS), *VARIANTS[v],
                              "--out", os.path.join(args.out, v)])
    lines = ["| variant | class | first / held step | lowest retain (step) | final FA | retain acc | Fréchet | "
             "forget std | train s |", "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    held_by_variant = {}
    for v in args.variants:
        for f in sorted(glob.glob(os.path.join(args.out, v, "runs", "*.json"))):
            r = json.load(open(f))
            first, held = run_held_step(r)
            low = min(r["curve"], key=lambda c: c["retain_acc"])
            a = r["after"]
            held_by_variant.setdefault(v, []).append(held)
            lines.append(f"| {v} | {r['forget']} | {_step(first)} / {_step(held)} | "
                         f"{low['retain_acc']:.3f} ({low['step']}) | {a['fa']:.2f} | {a['retain_acc']:.3f} | "
                         f"{a['frechet']:.2f} | {a['gaussian_std']:.2f} | {r['train_seconds']:.0f} |")
    lines += ["", "| variant | runs | held step: mean (classes that held) |", "| --- | ---: | ---: |"]
    for v, helds in held_by_variant.items():
        done = [h for h in helds if h is not None]
        mean = f"{sum(done) / len(done):.1f}" if done else "—"
        lines.append(f"| {v} | {len(helds)} | {mean} ({len(done)} of {len(helds)}) |")
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "retain-dip.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
