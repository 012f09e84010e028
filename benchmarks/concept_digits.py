"""Concept forgetting through cross-attention, measured: a text-conditional UNet2DConditionModel
trained here on the bundled digits, each digit "named" by a fixed prompt embedding (a stand-in for
a text encoder), then SAFEMax forgets the concept of one digit — the Stable Diffusion code path,
at a size that trains and evaluates on a CPU, with the embedded digits classifier as the judge.

    python benchmarks/concept_digits.py --out benchmarks/results/concept-digits   # ~25 min, 2 cores

Steps: (1) train the UNet with safemax.zoo.trainer (ε-prediction, 10% of rows with the empty
"prompt" so that classifier-free guidance works; EMA weights; --minutes budget; resumable: its
state stays in OUT/model until the model is saved) or reuse OUT/model; (2) measure forget
accuracy (FA: share of the concept's samples the classifier calls that digit) and retain accuracy
at guidance w = 1 (plain conditional sampling) and w = 3; (3) SAFEMax forgets the concept
(retain rows: the other digits' embeddings and the empty prompt); (4) measure again. Writes
results.json, results.md and samples.png (rows: the concept at w = 1 and 3, before and after).
"""
import argparse
import json
import os
import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch.utils.data import TensorDataset

from safemax import Unlearner
from safemax.data import digits_dataset, split_by_class
from safemax.evaluation.metrics import classify
from safemax.evaluation.report import save_grid, write_json
from safemax.models.sampling import sample
from safemax.zoo import NOT_A_DIGIT, load_default_classifier
from safemax.zoo.trainer import Prompts, state_path, train_denoiser

L, D = 4, 32  # prompt length and width of the stand-in text encoder
CONFIG = dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
              block_out_channels=(32, 64, 64), norm_num_groups=8, attention_head_dim=8,
              cross_attention_dim=D,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def prompts() -> torch.Tensor:
    """``[11, L, D]``: a fixed embedding per digit (0-9) and the empty prompt (index 10, zeros)."""
    g = torch.Generator().manual_seed(1234)
    return torch.cat([torch.randn(10, L, D, generator=g), torch.zeros(1, L, D)])


def train(out: str, minutes: float, steps: int, batch: int = 128, lr: float = 1e-3, seed: int = 0):
    """ε-prediction training from scratch (``safemax.zoo.trainer.train_denoiser``), 10% of rows
    with the empty prompt; the EMA weights and the scheduler go to OUT/model. The training state
    is kept in OUT/model meanwhile: run the same command again after an interruption to go on."""
    torch.manual_seed(seed)
    emb, sched = prompts(), DDPMScheduler()
    unet = UNet2DConditionModel(**CONFIG)
    model_dir = os.path.join(out, "model")
    condition = Prompts(emb.__getitem__, emb[10], drop=0.1)   # the empty prompt, for guidance
    run = train_denoiser(unet, sched, digits_dataset(16), steps=steps, batch_size=batch, lr=lr, seed=seed,
                         condition=condition, weight_decay=1e-2, max_grad_norm=None, minutes=minutes,
                         work=model_dir, name="concept-unet",
                         resume=os.path.exists(state_path(model_dir, "concept-unet")),
                         desc="training the concept UNet")
    run.ema.save_pretrained(model_dir)
    sched.save_pretrained(model_dir)
    os.remove(run.state_file)   # (saved: nothing left to resume)
    info = dict(train_steps=run.steps, train_minutes=round(run.seconds / 60, 1))
    write_json(os.path.join(model_dir, "training.json"), info)
    return info


def measure(unet, sched, classifier, forget: int, n: int, guidance: float) -> tuple:
    f_labels = torch.full((n,), forget)
    r_labels = torch.tensor([c for c in range(10) if c != forget]).repeat_interleave(n // 5)
    x = sample(unet, sched, prompts()[torch.cat([f_labels, r_labels])], num_inference_steps=25,
               guidance_scale=guidance, uncond=prompts()[10])
    pred = classify(classifier, x).argmax(1)
    fa = (pred[:n] == forget).float().mean().item()
    retain = (pred[n:] == r_labels).float().mean().item()
    not_digit = (pred[:n] == NOT_A_DIGIT).float().mean().item()
    return dict(fa=fa, retain_acc=retain, forget_not_a_digit=not_digit,
                forget_pixel_std=x[:n].std().item()), x[:n]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="concept-digits")
    p.add_argument("--forget", type=int, default=3)
    p.add_argument("--minutes", type=float, default=18, help="training time limit (default 18)")
    p.add_argument("--train-steps", type=int, default=1400, help="training steps (default 1400, ~15 min)")
    p.add_argument("--steps", type=int, default=100, help="unlearning steps (default 100)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--model", help="a model trained by an earlier run (default: OUT/model, trained if absent)")
    p.add_argument("--early-fraction", type=float, default=1.0)
    p.add_argument("--n", type=int, default=50, help="forget samples per measurement (and 10 per kept digit)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model_dir = args.model or os.path.join(args.out, "model")
    if not os.path.exists(os.path.join(model_dir, "config.json")):   # (trained, not only begun)
        train(args.out, args.minutes, args.train_steps)
    info = {}
    if os.path.exists(os.path.join(model_dir, "training.json")):
        with open(os.path.join(model_dir, "training.json")) as f:
            info = json.load(f)
        if "provenance" in info:   # the training's: this result records its own
            info["training_provenance"] = info.pop("provenance")
    unet = UNet2DConditionModel.from_pretrained(model_dir)
    sched = DDPMScheduler.from_pretrained(model_dir)
    classifier = load_default_classifier()
    result = dict(forget=args.forget, steps=args.steps, lr=args.lr, early_fraction=args.early_fraction,
                  **info)
    grids = []
    for w in (1.0, 3.0):
        result[f"before_w{w:g}"], x = measure(unet, sched, classifier, args.forget, args.n, w)
        grids.append(x[:10])
        print(f"before, guidance {w:g}:", result[f"before_w{w:g}"])

    emb = prompts()
    forget_data, retain_data = split_by_class(digits_dataset(16), [args.forget])
    xr, yr = retain_data.tensors
    null_rows = torch.randperm(len(xr), generator=torch.Generator().manual_seed(0))[:len(xr) // 9]
    retain = TensorDataset(torch.cat([xr, xr[null_rows]]),
                           torch.cat([emb[yr], emb[10].expand(len(null_rows), L, D)]))
    forget = TensorDataset(forget_data.tensors[0], emb[args.forget].expand(len(forget_data), L, D).contiguous())
    u = Unlearner(unet, sched, forget={f"digit {args.forget}": emb[args.forget]}, lr=args.lr,
                  early_fraction=args.early_fraction)
    start = time.perf_counter()
    u.fit(retain=retain, forget=forget, steps=args.steps, batch_size=64)
    result["unlearn_seconds"] = round(time.perf_counter() - start, 1)
    for w in (1.0, 3.0):
        result[f"after_w{w:g}"], x = measure(u.unet, sched, classifier, args.forget, args.n, w)
        grids.append(x[:10])
        print(f"after, guidance {w:g}:", result[f"after_w{w:g}"])
    save_grid(torch.cat(grids), rows=4, path=os.path.join(args.out, "samples.png"))
    write_json(os.path.join(args.out, "results.json"), result)
    lines = ["| guidance w | when | FA | forget → not a digit | forget pixel std | retain acc |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for w in ("1", "3"):
        for when in ("before", "after"):
            r = result[f"{when}_w{w}"]
            lines.append(f"| {w} | {when} | {r['fa']:.2f} | {r['forget_not_a_digit']:.2f} | "
                         f"{r['forget_pixel_std']:.2f} | {r['retain_acc']:.2f} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
