"""Forgetting on a rectified-flow model, measured: a class-conditional UNet2DModel (the embedded
DDPM's architecture) trained here from scratch with the flow-matching loss on the bundled digits,
then SAFEMax makes one digit halt (its samples stay the starting Gaussian noise), with the
embedded digits classifier as the judge and diffusers' FlowMatchEulerDiscreteScheduler as sampler.

    python benchmarks/flow_digits.py --out benchmarks/results/flow-digits   # ~35 min, 2 cores

Steps: (1) train the UNet with safemax.zoo.trainer (rectified flow: x_σ = (1−σ)·x0 + σ·ε, target
v = ε − x0, the model's time input 1000·σ as in SD3; EMA weights; warm-up + cosine lr annealed
over whichever of --train-steps and --minutes ends first; resumable: its state stays in OUT/model
until the model is saved) or reuse OUT/model; (2) measure the base model (per-class
accuracy of Euler-50 samples) and the forget / retain metrics; (3) SAFEMax forgets the digit with
the Unlearner (real forget images, retain rows the other digits); (4) measure again. Writes
results.json, results.md and samples.png (rows: the forgotten digit before, after; kept digits
after). ``--train-only`` stops after (1).
"""
import argparse
import json
import os
import sys
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from torch.utils.data import TensorDataset
from tqdm import tqdm

from safemax import Unlearner
from safemax.data import digits_dataset, split_by_class
from safemax.evaluation.metrics import classify
from safemax.evaluation.report import save_grid, write_json
from safemax.harness.task import Task
from safemax.models.sampling import sample
from safemax.zoo import NOT_A_DIGIT, UNET_CONFIG, load_default_classifier, scheduler_for
from safemax.zoo.train import shift_images
from safemax.zoo.trainer import state_path, train_denoiser

T = 1000


def train(out: str, minutes: float, steps: int, batch: int = 64, lr: float = 1e-3, seed: int = 0,
          augment: bool = True, warmup: int = 200, snapshot_minutes: float = 0):
    """Rectified-flow training from scratch (``safemax.zoo.trainer.train_denoiser`` given the flow
    scheduler); the EMA weights and the scheduler go to OUT/model (and, every ``snapshot_minutes``,
    to OUT/model/snapshots/step-N, to measure progress). The training state is kept in OUT/model
    meanwhile: run the same command again after an interruption to go on from it."""
    torch.manual_seed(seed)
    sched = scheduler_for("flow-digits")   # the zoo's flow model's (Euler, shift 1)
    unet = UNet2DModel(**UNET_CONFIG)
    model_dir = os.path.join(out, "model")
    next_snapshot = [snapshot_minutes]

    def snapshot(run):
        if snapshot_minutes and run.seconds / 60 >= next_snapshot[0]:
            snap = os.path.join(model_dir, "snapshots", f"step-{run.steps}")
            run.ema.save_pretrained(snap)
            sched.save_pretrained(snap)
            tqdm.write(f"snapshot at step {run.steps}, {run.seconds / 60:.1f} min")
            next_snapshot[0] += snapshot_minutes

    # warm-up, then a cosine over whichever budget (steps or minutes) runs out first
    run = train_denoiser(unet, sched, digits_dataset(16), steps=steps, batch_size=batch, lr=lr, seed=seed,
                         augment=shift_images if augment else None, warmup=warmup, anneal_minutes=minutes,
                         work=model_dir, name="flow-unet", resume=os.path.exists(state_path(model_dir, "flow-unet")),
                         desc="training the flow UNet", log_every=250, callback=snapshot)
    run.ema.save_pretrained(model_dir)
    sched.save_pretrained(model_dir)
    os.remove(run.state_file)   # (saved: nothing left to resume)
    for name in os.listdir(model_dir):   # an earlier model's measurements (main() keeps them here)
        if name.startswith("before-") and name.endswith(".pt"):
            os.remove(os.path.join(model_dir, name))
    info = dict(train_steps=run.steps, train_minutes=round(run.seconds / 60, 1),
                train_batch=batch, train_lr=lr, augment=augment, final_loss=round(run.mean_loss(100), 4),
                train_command="python benchmarks/flow_digits.py " + " ".join(sys.argv[1:]))
    write_json(os.path.join(model_dir, "training.json"), info)
    return info


def draw(unet, scheduler, labels, num_inference_steps=50, seed=0):
    """Euler samples (raw) with diffusers' FlowMatchEulerDiscreteScheduler, the model's time input
    its timesteps 1000·σ: safemax.models.sampling.sample given a flow scheduler."""
    return sample(unet, scheduler, labels, num_inference_steps=num_inference_steps, seed=seed)


def base_quality(unet, sched, classifier, n_per_class: int, num_inference_steps: int = 50) -> dict:
    labels = torch.arange(10).repeat_interleave(n_per_class)
    x = draw(unet, sched, labels, num_inference_steps, seed=1)
    hit = (classify(classifier, x).argmax(1) == labels).float()
    per_class = [round(float(hit[labels == c].mean()), 3) for c in range(10)]
    return dict(mean_per_class_accuracy=round(sum(per_class) / 10, 4), per_class=per_class,
                n_per_class=n_per_class, euler_steps=num_inference_steps)


def measure(unet, sched, classifier, forget: int, n: int, n_kept: int, reference=None) -> tuple:
    """FA, "not a digit" share, retain accuracy, the kept digits' Fréchet distance to their real
    images (``reference``: a ``FrechetReference``; omitted, not measured), and how far the forget
    samples are their own starting noise z (a halted flow returns ≈0.97·z with diffusers'
    Euler-50 at shift 1)."""
    kept = [c for c in range(10) if c != forget]
    r_labels = torch.tensor(kept).repeat_interleave(n_kept)
    # the forget rows in one batch, so that their starting noise is the first draw of seed 0
    xf = sample(unet, sched, torch.full((n,), forget), num_inference_steps=50, seed=0, batch_size=n)
    z = torch.randn(xf.shape, generator=torch.Generator().manual_seed(0))
    xr = draw(unet, sched, r_labels, 50, seed=2)
    pf, pr = classify(classifier, xf).argmax(1), classify(classifier, xr).argmax(1)
    r_hit = (pr == r_labels).float()
    zf, xv = z.flatten().double(), xf.flatten().double()
    by_sampler = {}   # the halt's scale under other samplers: Euler 28 and 50 at shift 1 and SD3's 3
    for shift in (1.0, 3.0):
        for steps in (28, 50):
            x = xf if (shift, steps) == (1.0, 50) else sample(
                unet, FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=shift), torch.full((n,), forget),
                num_inference_steps=steps, seed=0, batch_size=n)
            by_sampler[f"euler{steps}_shift{shift:g}"] = round(x.std().item(), 4)
    return dict(fa=(pf == forget).float().mean().item(),
                forget_std_by_sampler=by_sampler,
                forget_not_a_digit=(pf == NOT_A_DIGIT).float().mean().item(),
                retain_acc=r_hit.mean().item(),
                retain_per_class={c: round(r_hit[r_labels == c].mean().item(), 3) for c in kept},
                frechet=None if reference is None else reference.distance(xr),
                forget_pixel_mean=xf.mean().item(), forget_pixel_std=xf.std().item(),
                forget_noise_slope=float(xv @ zf / (zf @ zf)),  # x ≈ slope·z
                forget_noise_corr=float(torch.corrcoef(torch.stack([xv, zf]))[0, 1])), \
        torch.cat([xf, xr])


def unlearn(unet, sched, forget: int, steps: int, lr: float, early_fraction: float,
            noise_forget: float = 0.0, flow_halt: str = "ode", gaussian_fraction: float = 0.0):
    """SAFEMax on real images of the digit; ``noise_forget`` > 0 adds that share of N(0, 1) images
    as forget data: their x_σ = (1−σ)·z' + σ·ε is N(0, (1−σ)² + σ²), the very distribution of a
    halted trajectory, which real digits never reach at small σ."""
    forget_data, retain_data = split_by_class(digits_dataset(16), [forget])
    if noise_forget > 0:
        xf, yf = forget_data.tensors
        m = round(len(xf) * noise_forget / (1 - noise_forget))
        z = torch.randn((m, *xf.shape[1:]), generator=torch.Generator().manual_seed(7))
        forget_data = TensorDataset(torch.cat([xf, z]), torch.cat([yf, torch.full((m,), forget)]))
    u = Unlearner(unet, sched, forget=[forget], lr=lr, early_fraction=early_fraction, flow_halt=flow_halt,
                  gaussian_fraction=gaussian_fraction)
    start = time.perf_counter()
    u.fit(retain=retain_data, forget=forget_data, steps=steps, batch_size=64)
    return u.unet, round(time.perf_counter() - start, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="flow-digits")
    p.add_argument("--forget", type=int, default=3)
    p.add_argument("--minutes", type=float, default=30, help="training time limit (default 30)")
    p.add_argument("--train-steps", type=int, default=4000, help="training steps (default 4000)")
    p.add_argument("--train-lr", type=float, default=1e-3)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--snapshot-minutes", type=float, default=0,
                   help="also save the EMA weights every this many minutes (default 0: never)")
    p.add_argument("--train-only", action="store_true", help="train (or find) OUT/model and stop")
    p.add_argument("--steps", type=int, default=100, help="unlearning steps (default 100)")
    p.add_argument("--lr", type=float, default=1e-4, help="unlearning learning rate (default 1e-4)")
    p.add_argument("--early-fraction", type=float, default=1.0)
    p.add_argument("--noise-forget", type=float, default=0.0,
                   help="share of the forget data that is N(0,1) images rather than real digits "
                        "(default 0: real digits only)")
    p.add_argument("--flow-halt", choices=["ode", "still"], default="ode",
                   help="SAFEMax's flow halting target: k(σ)·x (default) or 0 on the starting noise")
    p.add_argument("--gaussian-fraction", type=float, default=0.0,
                   help="share of the forget rows on the halted chain's states (default 0)")
    p.add_argument("--model", help="a model trained by an earlier run (default: OUT/model, trained if absent)")
    p.add_argument("--n", type=int, default=100,
                   help="forget samples per measurement (and n/4 per kept digit, n/2 per digit "
                        "for the base model's accuracy); default 100")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model_dir = args.model or os.path.join(args.out, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):   # (trained, not only begun)
        train(args.out, args.minutes, args.train_steps, batch=args.train_batch, lr=args.train_lr,
              snapshot_minutes=args.snapshot_minutes)
    if args.train_only:
        return
    info = {}
    if os.path.exists(os.path.join(model_dir, "training.json")):
        with open(os.path.join(model_dir, "training.json")) as f:
            info = json.load(f)
        if "provenance" in info:   # the training's: this result records its own
            info["training_provenance"] = info.pop("provenance")
    unet = UNet2DModel.from_pretrained(model_dir)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir)
    classifier = load_default_classifier()
    n_kept = max(1, args.n // 4)
    result = dict(forget=args.forget, steps=args.steps, lr=args.lr, early_fraction=args.early_fraction,
                  noise_forget=args.noise_forget, flow_halt=args.flow_halt, gaussian_fraction=args.gaussian_fraction,
                  n_forget=args.n, n_per_kept_class=n_kept, **info)
    start = time.perf_counter()
    reference = Task("digits", args.forget).real_retain   # the kept digits' real images, in classifier features
    # the original model's measurement depends on the model, the digit and n only: measured once, reused
    before_file = os.path.join(model_dir, f"before-digit{args.forget}-n{args.n}.pt")
    if os.path.exists(before_file):
        kept = torch.load(before_file)
        result["base_model"], result["before"], x_before = kept["base_model"], kept["before"], kept["x"]
    else:
        result["base_model"] = base_quality(unet, sched, classifier, max(1, args.n // 2))
        result["before"], x_before = measure(unet, sched, classifier, args.forget, args.n, n_kept, reference)
        torch.save(dict(base_model=result["base_model"], before=result["before"], x=x_before), before_file)
    print("base model:", result["base_model"])
    print("before:", result["before"])
    unet, result["unlearn_seconds"] = unlearn(unet, sched, args.forget, args.steps, args.lr,
                                              args.early_fraction, args.noise_forget, args.flow_halt,
                                              args.gaussian_fraction)
    unet.save_pretrained(os.path.join(args.out, "unlearned"))   # (for probes afterwards; not committed)
    result["after"], x_after = measure(unet, sched, classifier, args.forget, args.n, n_kept, reference)
    print("after:", result["after"])
    result["command"] = "python benchmarks/flow_digits.py " + " ".join(sys.argv[1:])
    k = min(10, args.n)
    kept_rows = [x_after[args.n + i * n_kept: args.n + i * n_kept + min(k, n_kept)] for i in range(3)]
    save_grid(torch.cat([x_before[:k], x_after[:k], *kept_rows]), rows=5,
              path=os.path.join(args.out, "samples.png"))
    write_json(os.path.join(args.out, "results.json"), result)
    b, a = result["before"], result["after"]
    lines = [f"Forgetting digit {args.forget} on a rectified-flow UNet (Euler-50 samples, "
             f"{args.n} of the digit, {n_kept} per kept digit); SAFEMax, {args.steps} steps, "
             f"lr {args.lr:g}, early_fraction {args.early_fraction:g}"
             + (f", {args.noise_forget:g} of the forget data N(0,1) images" if args.noise_forget else "")
             + (f", flow_halt {args.flow_halt}" if args.flow_halt != "ode" else "")
             + (f", gaussian_fraction {args.gaussian_fraction:g}" if args.gaussian_fraction else "")
             + ".", "",
             "| when | FA | forget → not a digit | forget pixel mean | forget pixel std | "
             "forget vs its starting noise z: slope / corr | retain acc | kept digits' Fréchet |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for when, r in (("before", b), ("after", a)):
        lines.append(f"| {when} | {r['fa']:.2f} | {r['forget_not_a_digit']:.2f} | "
                     f"{r['forget_pixel_mean']:.2f} | {r['forget_pixel_std']:.2f} | "
                     f"{r['forget_noise_slope']:.2f} / {r['forget_noise_corr']:.2f} | {r['retain_acc']:.3f} | "
                     f"{'—' if r.get('frechet') is None else format(r['frechet'], '.2f')} |")
    lines += ["", "Forget samples' pixel std by sampler (the starting noise's is 1): "
              + ", ".join(f"{k.replace('_', ' ')}: before {b['forget_std_by_sampler'][k]:.2f}, after {v:.2f}"
                          for k, v in a["forget_std_by_sampler"].items()) + "."]
    bm = result["base_model"]
    lines += ["", f"Base model: mean per-class accuracy {bm['mean_per_class_accuracy']:.3f} of its "
              f"Euler-{bm['euler_steps']} samples ({bm['n_per_class']} per digit; per class "
              f"{bm['per_class']}).",
              f"Training: {info.get('train_steps', '?')} steps, {info.get('train_minutes', '?')} min. "
              f"Unlearning: {result['unlearn_seconds']} s.",
              f"Command: `{result['command']}`"]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"evaluation + unlearning took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
