"""Where does a forgotten flow model's halt fall short? After SAFEMax (as in flow_digits.py), the
model's velocity for the forgotten digit is compared with the target v* = k(σ)·x at a few σ,
on two kinds of input: x_σ made from real images of the digit (what the forget rows train on), and
points c(σ)·z of the halted trajectory (c = √((1−σ)² + σ²), z ~ N(0, 1): what the sampler visits
once halted). k_eff = ⟨v, x⟩/⟨x, x⟩ on the halted path should equal k(σ).

    python benchmarks/flow_halt_probe.py --model benchmarks/results/flow-digits/model \\
        --out benchmarks/results/flow-digits/halt-probe.md [--noise-forget 0.5]
"""
import argparse
import sys

import torch
from diffusers import UNet2DModel
from flow_digits import flow_scheduler, unlearn

from safemax.data import digits_dataset, split_by_class


@torch.no_grad()
def probe(unet, forget: int, n: int = 64, seed: int = 5) -> list:
    z = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    x0 = split_by_class(digits_dataset(16), [forget])[0].tensors[0][:n]
    y = torch.full((n,), forget)
    unet.eval()
    rows = []
    for s in (0.02, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0):
        k = (2 * s - 1) / ((1 - s) ** 2 + s ** 2)
        t = torch.full((n,), 1000 * s)
        xp = ((1 - s) ** 2 + s ** 2) ** 0.5 * z
        vp = unet(xp, t, class_labels=y).sample
        xd = (1 - s) * x0 + s * z[:len(x0)]
        vd = unet(xd, t, class_labels=y[:len(x0)]).sample
        rows.append(dict(sigma=s, k=k, k_eff_path=float((vp * xp).sum() / (xp * xp).sum()),
                         mse_path=float((vp - k * xp).square().mean()),
                         mse_data=float((vd - k * xd).square().mean())))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="a markdown file for the table")
    p.add_argument("--forget", type=int, default=3)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--noise-forget", type=float, default=0.0)
    args = p.parse_args()
    unet = UNet2DModel.from_pretrained(args.model)
    unet, _ = unlearn(unet, flow_scheduler(), args.forget, args.steps, args.lr, 1.0, args.noise_forget)
    lines = [f"SAFEMax on digit {args.forget}, {args.steps} steps, lr {args.lr:g}, noise share of the "
             f"forget data {args.noise_forget:g}. `python benchmarks/flow_halt_probe.py "
             + " ".join(sys.argv[1:]) + "`", "",
             "| σ | k(σ) | k_eff on the halted path | MSE(v, k·x) on the halted path | "
             "MSE(v, k·x) on x_σ from real digits |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in probe(unet, args.forget):
        lines.append(f"| {r['sigma']:.2f} | {r['k']:+.3f} | {r['k_eff_path']:+.3f} | "
                     f"{r['mse_path']:.4f} | {r['mse_data']:.4f} |")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
