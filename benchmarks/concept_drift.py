"""Why an erase costs the kept classes at guidance 7.5: how far the erased denoiser's predictions
for kept prompts move, against the class signal guidance amplifies.

Along the original pipeline's own guided DDIM trajectories of a kept prompt (its first erasing
prompt, ``--n`` seeds, guidance ``--guidance``), at every step: the RMS of the erased model's
change of the conditional prediction δ_c = ε'_c − ε_c, of the unconditional (empty prompt's)
δ_u = ε'_u − ε_u, of the guided prediction's change δ_u + w(δ_c − δ_u), and of the signal that
guidance scales, ε_c − ε_u. Where the changes are many times the signal, the kept class's guided
direction is mostly the erase's drift.

    python benchmarks/concept_drift.py --erased benchmarks/results/concepts-sd-tune/safemax/coat-seed0 \
        --classes 0 2 8 --out benchmarks/results/concepts-sd-tune/drift
    python benchmarks/concept_drift.py --pipeline DIR --erased DIR --classes 0 --n 1 --steps 2 --out /tmp/d  # seconds

``--erased``: an erase's folder (its ``unet/``) or an erased UNet's folder. Writes
``OUT/<name>.json`` (every step) and prints a table of every third step.
"""
import argparse
import os

import torch

from safemax.concepts.loading import load_base
from safemax.data import captions
from safemax.evaluation.report import write_json


def rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


@torch.no_grad()
def drift(pipe, erased, class_id: int, n: int, steps: int, guidance: float, seed: int = 0) -> list:
    """Per DDIM step of the original's guided trajectories of ``class_id``'s first erasing prompt:
    ``{t, delta_c, delta_u, delta_guided, signal}`` (RMS over the ``n`` samples)."""
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    original = pipe.unet
    encode = lambda prompts: pipe.encode_prompt(prompts, original.device, 1, False)[0]   # noqa: E731
    cond = encode([captions.prompts(class_id, "erase")[0]]).expand(n, -1, -1)
    uncond = encode([""]).expand(n, -1, -1)
    size = original.config.sample_size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, original.config.in_channels, size, size, generator=g) * scheduler.init_noise_sigma
    rows = []
    for t in scheduler.timesteps:
        e_c, e_u = original(x, t, cond).sample, original(x, t, uncond).sample
        f_c, f_u = erased(x, t, cond).sample, erased(x, t, uncond).sample
        d_c, d_u = f_c - e_c, f_u - e_u
        rows.append(dict(t=int(t), delta_c=rms(d_c), delta_u=rms(d_u), delta_guided=rms(d_u + guidance * (d_c - d_u)),
                         signal=rms(e_c - e_u)))
        x = scheduler.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="fashion-mnist-sd")
    p.add_argument("--erased", required=True, help="an erase's folder (with unet/) or an erased UNet's folder")
    p.add_argument("--classes", type=int, nargs="+", required=True, help="kept classes whose prompts to follow")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    from diffusers import UNet2DConditionModel
    pipe, base = load_base(args.pipeline)
    folder = os.path.join(args.erased, "unet") if os.path.isdir(os.path.join(args.erased, "unet")) else args.erased
    erased = UNet2DConditionModel.from_pretrained(folder).eval()
    pipe.unet.eval()
    result = dict(pipeline=base, erased=folder, n=args.n, steps=args.steps, guidance=args.guidance,
                  classes={captions.SYNONYMS[c][0]: drift(pipe, erased, c, args.n, args.steps, args.guidance)
                           for c in args.classes})
    run = os.path.normpath(args.erased)
    run = os.path.dirname(run) if os.path.basename(run) == "unet" else run
    name = f"{os.path.basename(os.path.dirname(run))}-{os.path.basename(run)}"   # <method>-<concept>-seed<s>
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, f"{name}.json"), result)
    print("| kept prompt | t | δ_c | δ_u | guided change | signal ε_c − ε_u | guided change / (w × signal) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for word, rows in result["classes"].items():
        for r in rows[::3] + ([rows[-1]] if (len(rows) - 1) % 3 else []):
            print(f"| {word} | {r['t']} | {r['delta_c']:.4f} | {r['delta_u']:.4f} | {r['delta_guided']:.4f} | "
                  f"{r['signal']:.4f} | {r['delta_guided'] / max(args.guidance * r['signal'], 1e-12):.1f} |")


if __name__ == "__main__":
    main()
