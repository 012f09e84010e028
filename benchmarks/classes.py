"""Numbers with error bars: SAFEMax forgets each class of an embedded model in turn (one seed), and
three classes with three seeds, with the demo's settings; before and after, each run measures
forget accuracy (FA), retain accuracy, the retain Fréchet distance (classifier features), the
classifier's entropy on forget samples and the forget samples' Gaussianity, and reports the mean
± 95% t-interval over the classes and over the seeds.

Every run also keeps what a stopping rule needs: its training history (the label-free signals,
step by step) and a light classifier measurement every ``--curve-every`` steps (FA and retain
accuracy on fewer samples), from which the first and the *held* step to the bar (FA ≤ 1% with
retain accuracy within 2 points of the original) are read.

    python benchmarks/classes.py --model digits --out benchmarks/results/classes-digits
    python benchmarks/classes.py --model fashion-mnist --out benchmarks/results/classes-fashion-mnist
    python benchmarks/classes.py --model digits --classes 3 --seeded --steps 4 --ddim-steps 4 --n-forget 8 \\
        --n-per-class 2 --curve-every 2 --out /tmp/c        # a smoke run (seconds), not a result

Finished runs are kept in ``OUT/runs/`` and skipped when the script is run again (nothing is lost
on interruption); ``--summarise`` only rebuilds the tables from them.

Sample counts: FA is a share of ``--n-forget`` samples. With 300, a run with no forget sample
left has a 95% Wilson upper bound of 1.3% — the bar's 1% is resolved to about that; retain
accuracy is a share of 9 × ``--n-per-class`` samples (900 → ±1.5 points at 0.9). The intervals in
the tables are over classes and seeds, which include this sampling noise.
"""
import argparse
import glob
import json
import os
import time

import torch

from safemax import Unlearner
from safemax.evaluation.metrics import evaluate
from safemax.evaluation.report import write_json
from safemax.evaluation.stats import cell, t_interval, wilson  # noqa: F401 (t_interval: the scripts' intervals)
from safemax.harness.bar import RETAIN_SLACK, held_step, run_held_step  # noqa: F401 (the scripts' bar)
from safemax.harness.task import Task
from safemax.zoo import model_info

METRICS = ("fa", "retain_acc", "frechet", "entropy", "gaussian_mean", "gaussian_std", "gaussian_kurtosis")
LABELS = dict(fa="FA", retain_acc="retain acc", frechet="Fréchet", entropy="entropy (nats)",
              gaussian_mean="forget mean", gaussian_std="forget std", gaussian_kurtosis="kurtosis")
SEEDED = {"digits": (1, 5, 8), "fashion-mnist": (2, 6, 9)}   # pullover, shirt, ankle boot


def run_one(name: str, forget: int, seed: int, args) -> dict:
    task = Task(name, forget, seed, args.device)
    unet, scheduler = task.load()
    forget_data, retain_data = task.forget_data, task.retain_data
    measure = dict(unet=unet, **task.measure_kwargs(scheduler))
    full = dict(n_forget=args.n_forget, n_per_class=args.n_per_class, num_inference_steps=args.ddim_steps)
    light = dict(n_forget=args.curve_forget, n_per_class=args.curve_per_class,
                 num_inference_steps=max(1, args.ddim_steps // 2),
                 seed=seed + 1000)   # its own noise: the curve does not reuse the final measurement's
    before = evaluate(**measure, **full)
    curve = [dict(step=0, **{k: v for k, v in evaluate(**dict(measure, **light)).items()
                             if k in ("fa", "retain_acc")})]

    def track(u, record):
        if record["step"] % args.curve_every == 0:
            m = evaluate(**dict(measure, **light))
            curve.append(dict(step=record["step"], fa=m["fa"], retain_acc=m["retain_acc"]))

    u = Unlearner(unet, scheduler, forget=[forget], lr=args.lr, early_fraction=1.0, seed=seed,
                  warmup_steps=args.warmup_steps, forget_weight=args.forget_weight,
                  gaussian_fraction=args.gaussian_fraction, kept_contrast=args.kept_contrast)
    start = time.perf_counter()
    history = u.fit(retain_data, forget_data, steps=args.steps, batch_size=args.batch_size,
                    progress=False, callback=track)
    wall = time.perf_counter() - start
    after = evaluate(**measure, **full)
    return dict(model=name, forget=forget, seed=seed, steps=args.steps, batch_size=args.batch_size,
                lr=args.lr, warmup_steps=args.warmup_steps, forget_weight=args.forget_weight,
                gaussian_fraction=args.gaussian_fraction, n_forget=args.n_forget, n_per_class=args.n_per_class,
                ddim_steps=args.ddim_steps, curve_forget=args.curve_forget, curve_per_class=args.curve_per_class,
                train_seconds=history[-1]["seconds"], wall_seconds=wall, threads=torch.get_num_threads(),
                device=str(next(unet.parameters()).device),
                **({"kept_contrast": args.kept_contrast} if args.kept_contrast else {}),
                before=before, after=after, curve=curve,
                history=[{k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in h.items()} for h in history])


def _step(step) -> str:
    return "—" if step is None else str(step)


def summarise(runs: list, name: str) -> str:
    """The markdown tables: per class (seed 0), the mean over classes, and the seeded classes."""
    info = model_info(name)
    seed0 = sorted((r for r in runs if r["seed"] == 0), key=lambda r: r["forget"])
    out = []
    if seed0:
        r0 = seed0[0]
        warm = (f", {r0['warmup_steps']} warm-up steps" if r0.get("warmup_steps") else "") + (
            f", forget weight {r0['forget_weight']:g}" if r0.get("forget_weight", 1) != 1 else "") + (
            f", Gaussian fraction {r0['gaussian_fraction']:g}" if r0.get("gaussian_fraction") else "") + (
            f", kept contrast {r0['kept_contrast']:g}" if r0.get("kept_contrast") else "")
        out += [f"## Each class forgotten in turn ({name}, seed 0)\n",
                f"{r0['steps']} SAFEMax steps at batch {r0['batch_size']} + {r0['batch_size']}, lr "
                f"{r0['lr']:g}{warm}, early fraction 1.0. Measured with DDIM-{r0['ddim_steps']} on "
                f"{r0['n_forget']} forget samples and {r0['n_per_class']} per kept class; "
                "in brackets, the 95% Wilson interval of FA from its sample count. *held*: the first "
                "light measurement from which FA ≤ 1% with retain accuracy within 2 points of the "
                "original holds to the end (light measurements every "
                f"{r0['curve'][1]['step'] - r0['curve'][0]['step'] if len(r0['curve']) > 1 else '—'} steps: "
                f"{r0.get('curve_forget', 100)} forget samples, {r0.get('curve_per_class', 20)} per kept class). "
                "*lowest retain*: the light measurement's lowest retain accuracy (the kept classes' dip).\n",
                "| class | FA before → after | retain acc before → after | Fréchet before → after | "
                "entropy after | forget std after | first / held step | lowest retain (step) | train s |",
                "| --- | --- | --- | --- | ---: | ---: | --- | --- | ---: |"]
        for r in seed0:
            b, a = r["before"], r["after"]
            lo, hi = wilson(a["fa"] * r["n_forget"], r["n_forget"])
            first, held = run_held_step(r)
            low = min(r["curve"], key=lambda c: c["retain_acc"])   # the kept classes' dip
            out.append(f"| {info.class_name(r['forget'])} | {b['fa']:.3f} → **{a['fa']:.3f}** "
                       f"[{lo:.3f}, {hi:.3f}] | {b['retain_acc']:.3f} → {a['retain_acc']:.3f} | "
                       f"{b['frechet']:.2f} → {a['frechet']:.2f} | {a['entropy']:.2f} | "
                       f"{a['gaussian_std']:.2f} | {_step(first)} / {_step(held)} | {low['retain_acc']:.3f} "
                       f"({low['step']}) | {r['train_seconds']:.0f} |")
        out += ["", f"Mean ± 95% t-interval over the {len(seed0)} classes:\n",
                "| metric | before | after |", "| --- | ---: | ---: |"]
        for k in METRICS:
            out.append(f"| {LABELS[k]} | {cell([r['before'][k] for r in seed0])} | "
                       f"{cell([r['after'][k] for r in seed0])} |")
        helds = [run_held_step(r)[1] for r in seed0]
        done = [h for h in helds if h is not None]
        out.append(f"| held step to the bar | | {cell(done, '.1f')} "
                   f"({len(done)} of {len(helds)} classes held it) |")
        loose = [h for h in (run_held_step(r, within_one=True)[1] for r in seed0) if h is not None]
        out.append(f"| held step, ±1 retain sample (a later light measurement may miss the floor by one) | | "
                   f"{cell(loose, '.1f')} ({len(loose)} of {len(helds)}) |")
    seeded = sorted({r["forget"] for r in runs if r["seed"] != 0})
    if seeded:
        counts = sorted({sum(r["forget"] == c for r in runs) for c in seeded})   # runs so far, per class
        out += ["", f"## Seeds ({name}): {' to '.join(map(str, counts))} seeds of the classes "
                    f"{', '.join(info.class_name(c) for c in seeded)}\n",
                "Mean ± 95% t-interval over the seeds (fit and measurement both reseeded).\n",
                "| class | seeds | " + " | ".join(LABELS[k] + " after" for k in METRICS[:3])
                + " | forget std after | held step, by seed |",
                "| --- | ---: | " + " | ".join("---:" for _ in range(4)) + " | --- |"]
        for c in seeded:
            rs = sorted((r for r in runs if r["forget"] == c), key=lambda r: r["seed"])
            helds = [run_held_step(r)[1] for r in rs]
            out.append(f"| {info.class_name(c)} | {len(rs)} | " + " | ".join(
                cell([r["after"][k] for r in rs]) for k in ("fa", "retain_acc", "frechet", "gaussian_std"))
                + " | " + ", ".join(_step(h) for h in helds) + " |")
        rs = [r for r in runs if r["forget"] in seeded]
        change = [100 * (r["after"]["retain_acc"] - r["before"]["retain_acc"]) for r in rs]
        helds = [h for h in (run_held_step(r)[1] for r in rs) if h is not None]
        loose = [h for h in (run_held_step(r, within_one=True)[1] for r in rs) if h is not None]
        out += ["", f"Over these {len(rs)} runs: retain accuracy {cell(change, '.1f')} points from its start; "
                    f"the bar held in {len(helds)} of {len(rs)}, from step {cell(helds, '.1f')} "
                    f"(±1 retain sample: in {len(loose)}, from step {cell(loose, '.1f')})."]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["digits", "fashion-mnist"], default="digits")
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)), help="seed-0 runs (default all)")
    p.add_argument("--seeded", type=int, nargs="*", default=None,
                   help="classes also run with seeds 1 and 2 (default: three fixed per model; "
                        "--seeded alone: the first of --classes)")
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2], help="the seeded runs' seeds (none: no seeded runs)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (Unlearner's)")
    p.add_argument("--forget-weight", type=float, default=1.0, help="SAFEMax's weight of the forget rows")
    p.add_argument("--gaussian-fraction", type=float, default=0.0,
                   help="SAFEMax's share of forget rows built from x0 ~ N(0, I) (exact halting)")
    p.add_argument("--kept-contrast", type=float, default=0.0,
                   help="SAFEMax's kept_contrast λ (> 1; 0: off): the retain dip's counter-term")
    p.add_argument("--n-forget", type=int, default=300)
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps of the measurement (the curve's: half)")
    p.add_argument("--curve-every", type=int, default=10)
    p.add_argument("--curve-forget", type=int, default=100)
    p.add_argument("--curve-per-class", type=int, default=20,
                   help="the curve's samples per kept class (a 2-point retain bar needs ~20: 9 x 5 "
                        "samples made one miss 2.2 points)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check runs it there)")
    p.add_argument("--out", required=True)
    p.add_argument("--summarise", action="store_true", help="only rebuild the tables from OUT/runs")
    args = p.parse_args(argv)
    seeded = SEEDED[args.model] if args.seeded is None else (args.seeded or args.classes[:1])
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    plan = [(c, 0) for c in args.classes] + [(c, s) for c in seeded for s in args.seeds]
    for forget, seed in ([] if args.summarise else plan):
        path = os.path.join(args.out, "runs", f"class{forget}-seed{seed}.json")
        if os.path.exists(path):
            continue
        r = run_one(args.model, forget, seed, args)
        write_json(path, r, indent=None)
        print(f"class {forget} seed {seed}: FA {r['before']['fa']:.3f} -> {r['after']['fa']:.3f}, retain "
              f"{r['before']['retain_acc']:.3f} -> {r['after']['retain_acc']:.3f}, Fréchet "
              f"{r['before']['frechet']:.2f} -> {r['after']['frechet']:.2f}, {r['wall_seconds']:.0f} s", flush=True)
    runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.out, "runs", "*.json")))]
    runs = [r for r in runs if r["model"] == args.model]
    text = summarise(runs, args.model)
    with open(os.path.join(args.out, "classes.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
