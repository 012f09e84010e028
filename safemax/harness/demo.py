"""``safemax demo``: forget one class of an embedded model (the digits, or Fashion-MNIST's garments)
and show what changed.

Embedded model → measure → unlearn → measure → before/after sample grids, a forget/retain
accuracy curve, ``report.md`` and ``report.json``, and a summary table on the console.
"""
import os
import time

import torch

from safemax.evaluation.metrics import evaluate
from safemax.evaluation.report import (
    console_table,
    metrics_table,
    save_curves,
    save_grid,
    write_json,
)
from safemax.harness.defaults import DEFAULT_EARLY_FRACTION, defaults
from safemax.harness.task import Task
from safemax.training.unlearner import Unlearner


def _curve_point(step: int, measured: dict) -> dict:
    return dict(step=step, **{k: measured[k] for k in ("fa", "fa_digits", "retain_acc")})


def run(forget: int = 3, steps: int = None, out: str = "safemax-demo", batch_size: int = 64,
        early_fraction: float = DEFAULT_EARLY_FRACTION, lr: float = None, seed: int = 0,
        eval_every: int = 25, n_forget: int = 100, n_per_class: int = 30,
        num_inference_steps: int = 50, progress: bool = True, dataset: str = "digits",
        gaussian_fraction: float = None, flow_halt: str = None) -> dict:
    """Forget class ``forget`` of the embedded model ``dataset`` ("digits", "fashion-mnist" or
    "flow-digits"); ``steps``, ``lr``, ``gaussian_fraction`` and ``flow_halt`` (a flow model's)
    left None take the model's defaults (``DEFAULTS``)."""
    task = Task(dataset, forget, seed)   # (an unknown model or class is refused here)
    own = defaults(dataset)
    steps = own["steps"] if steps is None else steps
    lr = own["lr"] if lr is None else lr
    gaussian_fraction = own["gaussian_fraction"] if gaussian_fraction is None else gaussian_fraction
    flow_halt = own["flow_halt"] if flow_halt is None else flow_halt
    if steps < 0 or batch_size < 1:   # before minutes of measuring the original model
        raise ValueError(f"--steps must be >= 0 and --batch-size >= 1, got {steps}, {batch_size}")
    os.makedirs(out, exist_ok=True)
    start = time.time()
    unet, scheduler = task.load()
    forget_data, retain_data, retain_classes, what = task.forget_data, task.retain_data, task.retain_classes, task.what
    measure = dict(unet=unet, **task.measure_kwargs(scheduler))

    gaussian = f", Gaussian fraction {gaussian_fraction:g}" if gaussian_fraction else ""   # (said where set)
    if task.info.flow:
        gaussian += f", flow halt {flow_halt}"
    sampler = "Euler" if task.info.flow else "DDIM"
    print(f"safemax demo: forgetting {what} of the embedded {dataset} model "
          f"({steps} steps, batch {batch_size}+{batch_size}, early fraction {early_fraction}, lr {lr}{gaussian})")
    # built first: a bad early fraction or lr fails now, not after the measurement (its own
    # generator and a frozen teacher: the original model's samples are the same)
    u = Unlearner(unet, scheduler, forget=[forget], early_fraction=early_fraction, lr=lr, seed=seed,
                  gaussian_fraction=gaussian_fraction, flow_halt=flow_halt)
    before = evaluate(**measure, n_forget=n_forget, n_per_class=n_per_class,
                      num_inference_steps=num_inference_steps, return_samples=True, progress=progress)
    curve = [_curve_point(0, before)]

    def track(u, record):  # a lighter measurement every eval_every steps, for the curve
        if eval_every and record["step"] % eval_every == 0 and record["step"] < steps:
            m = evaluate(**measure, n_forget=50, n_per_class=10, num_inference_steps=25)
            curve.append(_curve_point(record["step"], m))

    history = u.fit(retain_data, forget_data, steps=steps, batch_size=batch_size, progress=progress,
                    callback=track)
    unlearn_seconds = history[-1]["seconds"] if history else 0.0
    after = evaluate(**measure, n_forget=n_forget, n_per_class=n_per_class,
                     num_inference_steps=num_inference_steps, return_samples=True, progress=progress)
    curve.append(_curve_point(steps, after))

    # Pictures: one row per class, forgotten class first.
    for name, res in (("before", before), ("after", after)):
        s = res.pop("samples")
        rows = [s["forget"][:10]] + [s["retain"][s["retain_labels"] == c][:10] for c in retain_classes]
        save_grid(torch.cat(rows), rows=len(rows), path=os.path.join(out, f"{name}.png"))
    save_curves(curve, os.path.join(out, "curve.png"), f"forgetting {what}")
    u.save_pretrained(os.path.join(out, "unet"))

    seconds = time.time() - start
    report = dict(model=dataset, forget=forget, steps=steps, batch_size=batch_size, early_fraction=early_fraction,
                  t_min=u.method.t_min, lr=lr, gaussian_fraction=gaussian_fraction, flow_halt=flow_halt, seed=seed,
                  n_forget=n_forget, n_per_class=n_per_class, num_inference_steps=num_inference_steps,
                  eval_every=eval_every, seconds=round(seconds, 1),
                  unlearn_seconds=round(unlearn_seconds, 1), before=before, after=after,
                  curve=curve, final_loss=history[-1]["loss"] if history else None)
    write_json(os.path.join(out, "report.json"), report)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(f"# safemax demo: forgetting {what}\n\n"
                f"Embedded {dataset} model, {steps} SAFEMax steps at batch {batch_size}+{batch_size}, "
                f"early fraction {early_fraction} (t_min {u.method.t_min}), lr {lr}{gaussian}. Unlearning took "
                f"{unlearn_seconds:.1f} s; the whole demo {seconds:.1f} s. Samples: {sampler} "
                f"{num_inference_steps} steps, {n_forget} of {what}, {n_per_class} of "
                "each other class, same seed before and after.\n\n"
                + metrics_table(before, after) +
                "\n\n| before | after |\n| --- | --- |\n| ![before](before.png) | ![after](after.png) |\n\n"
                "First row: the forgotten class; other rows: the kept classes.\n\n![curve](curve.png)\n")
    print(console_table(before, after))
    print(f"unlearning {unlearn_seconds:.1f} s, whole demo {seconds:.1f} s; pictures and report in {out}/")
    return report
