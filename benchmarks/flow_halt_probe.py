"""Where does a forgotten flow model's halt fall short? After SAFEMax (as in flow_digits.py), the
model's velocity for the forgotten digit is compared with its halting target at a few σ, on two
kinds of input: x_σ made from real images of the digit (what the forget rows train on), and the
points of the halted trajectory (what the sampler visits once halted). With ``--flow-halt ode``
the target is v* = k(σ)·x and the halted path c(σ)·z (c = √((1−σ)² + σ²), z ~ N(0, 1)); with
``still`` the target is 0 and the path is z itself at every σ. k_eff = ⟨v, x⟩/⟨x, x⟩ on the
halted path should equal the target's k(σ) (0 when still): an Euler sampler's output is the
starting noise times Π(1 + Δσ·k_eff), so a k_eff left on the path is the std it loses or gains.

    python benchmarks/flow_halt_probe.py --model benchmarks/results/flow-digits/model \\
        --out benchmarks/results/flow-digits/halt-probe.md [--noise-forget 0.5]
    python benchmarks/flow_halt_probe.py --model ... --flow-halt still --gaussian-fraction 0.5 --out ...
"""
import argparse
import sys

import torch
from diffusers import UNet2DModel
from flow_digits import unlearn

from safemax.data import digits_dataset, split_by_class
from safemax.evaluation.provenance import commit
from safemax.zoo import scheduler_for


@torch.no_grad()
def probe(unet, forget: int, n: int = 64, seed: int = 5, flow_halt: str = "ode") -> list:
    z = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    x0 = split_by_class(digits_dataset(16), [forget])[0].tensors[0][:n]
    y = torch.full((n,), forget)
    unet.eval()
    rows = []
    for s in (0.02, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0):
        k = (2 * s - 1) / ((1 - s) ** 2 + s ** 2) if flow_halt == "ode" else 0.0
        t = torch.full((n,), 1000 * s)
        xp = ((1 - s) ** 2 + s ** 2) ** 0.5 * z if flow_halt == "ode" else z
        vp = unet(xp, t, class_labels=y).sample
        xd = (1 - s) * x0 + s * z[:len(x0)]
        vd = unet(xd, t, class_labels=y[:len(x0)]).sample
        rows.append(dict(sigma=s, k=k, k_eff_path=float((vp * xp).sum() / (xp * xp).sum()),
                         mse_path=float((vp - k * xp).square().mean()),
                         mse_data=float((vd - k * xd).square().mean())))
    return rows


def _measured_at() -> str:
    """The probe's commit (a results file records where it came from; an --unlearned model's fit
    is recorded in its own results.json)."""
    c = commit()
    dirty = "unknown" if c["dirty"] is None else ("yes" if c["dirty"] else "no")
    return f"Probed at commit {c['commit']} (uncommitted changes: {dirty})."


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the trained flow model to unlearn (or --unlearned)")
    p.add_argument("--out", required=True, help="a markdown file for the table")
    p.add_argument("--forget", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--noise-forget", type=float, default=0.0)
    p.add_argument("--flow-halt", choices=["ode", "still"], default="ode")
    p.add_argument("--gaussian-fraction", type=float, default=0.0)
    p.add_argument("--unlearned", help="probe this model, unlearned already (flow_digits.py's OUT/unlearned), "
                                       "instead of fitting one: the fit's settings are then only the table's label")
    args = p.parse_args()
    if not (args.model or args.unlearned):
        p.error("give --model (a trained flow model to unlearn) or --unlearned (a model unlearned already)")
    if args.unlearned:
        unet = UNet2DModel.from_pretrained(args.unlearned)
    else:
        unet = UNet2DModel.from_pretrained(args.model)
        unet, _ = unlearn(unet, scheduler_for("flow-digits"), args.forget, args.steps, args.lr, 1.0, args.noise_forget,
                          args.flow_halt, args.gaussian_fraction)
    target = "k·x" if args.flow_halt == "ode" else "0"
    lines = [f"SAFEMax on digit {args.forget}, {args.steps} steps, lr {args.lr:g}, noise share of the "
             f"forget data {args.noise_forget:g}, flow_halt {args.flow_halt}, gaussian_fraction "
             f"{args.gaussian_fraction:g}. `python benchmarks/flow_halt_probe.py " + " ".join(sys.argv[1:]) + "`",
             "", _measured_at(), "",
             f"| σ | target k(σ) | k_eff on the halted path | MSE(v, {target}) on the halted path | "
             f"MSE(v, {target}) on x_σ from real digits |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in probe(unet, args.forget, flow_halt=args.flow_halt):
        lines.append(f"| {r['sigma']:.2f} | {r['k']:+.3f} | {r['k_eff_path']:+.3f} | "
                     f"{r['mse_path']:.4f} | {r['mse_data']:.4f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
