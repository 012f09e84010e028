"""Trains the embedded default from scratch, deterministically from a seed (run once; the
results are committed under safemax/zoo/):

    python -m safemax.zoo.train                 # classifier, then the UNet (about 40 CPU minutes)
    python -m safemax.zoo.train --only classifier

The UNet is a class-conditional diffusers UNet2DModel trained with the plain ε-prediction loss
on the 1,797 digits (16×16); its exponential moving average is what is shipped, in float16 to
keep the repository small. The classifier also learns a "not a digit" class from noise images.
"""
import argparse
import copy
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from ..data import digits_dataset
from . import (CLASSIFIER_FILE, NOT_A_DIGIT, SCHEDULER_CONFIG, UNET_CONFIG, UNET_DIR,
               DigitClassifier, default_scheduler, noise_images)


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Random translation of each image by up to ``max_shift`` pixels (background is -1)."""
    size, span = x.shape[-1], 2 * max_shift + 1
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, span, (2, x.shape[0]), generator=g)
    out = torch.empty_like(x)
    for sy in range(span):
        for sx in range(span):
            m = (dy == sy) & (dx == sx)
            out[m] = pad[m, :, sy:sy + size, sx:sx + size]
    return out


def train_classifier(seed: int = 0, epochs: int = 40, batch_size: int = 128, lr: float = 2e-3):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = digits_dataset().tensors
    # A fixed 20% of the digits is held out to report the classifier's test accuracy.
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(1234))
    test = perm[: images.shape[0] // 5]
    test_images, test_labels = images[test], labels[test]
    images, labels = images[perm[images.shape[0] // 5:]], labels[perm[images.shape[0] // 5:]]
    n = images.shape[0]
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    bar = tqdm(range(steps), desc="classifier")
    for _ in bar:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x = _shift(images[idx], g)
        x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        noise = noise_images(batch_size // 4, generator=g)
        x = torch.cat([x, noise])
        y = torch.cat([labels[idx], torch.full((noise.shape[0],), NOT_A_DIGIT)])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        acc = (model(test_images).argmax(1) == test_labels).float().mean().item()
        noise = noise_images(1000, generator=torch.Generator().manual_seed(seed + 1))
        noise_acc = (model(noise).argmax(1) == NOT_A_DIGIT).float().mean().item()
        gauss = torch.randn(1000, 1, 16, 16, generator=torch.Generator().manual_seed(seed + 2)).clamp(-1, 1)
        gauss_acc = (model(gauss).argmax(1) == NOT_A_DIGIT).float().mean().item()
    print(f"classifier: held-out digit accuracy {acc:.4f}, noise -> not-a-digit {noise_acc:.4f}, "
          f"clipped N(0,1) -> not-a-digit {gauss_acc:.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, CLASSIFIER_FILE)
    return model


def train_unet(seed: int = 0, steps: int = 4000, batch_size: int = 128, lr: float = 1e-3,
               ema_decay: float = 0.999, minutes: float = None):
    from diffusers import UNet2DModel

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = digits_dataset().tensors
    n = images.shape[0]
    unet = UNet2DModel(**UNET_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = default_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = 200
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    start = time.time()
    bar = tqdm(range(steps), desc="unet")
    for step in bar:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x0 = images[idx]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = scheduler.add_noise(x0, eps, t)
        loss = F.mse_loss(unet(x_t, t, class_labels=labels[idx]).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if minutes is not None and time.time() - start > minutes * 60:
            print(f"time budget reached after {step + 1} steps")
            break
    ema.to(torch.float16).save_pretrained(UNET_DIR, safe_serialization=True)
    with open(os.path.join(UNET_DIR, "scheduler_config.json"), "w") as f:
        json.dump(dict(_class_name="DDPMScheduler", **SCHEDULER_CONFIG), f, indent=2)
    with open(os.path.join(UNET_DIR, "training.json"), "w") as f:
        json.dump(dict(seed=seed, steps=step + 1, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                       seconds=round(time.time() - start)), f, indent=2)
    return ema


def measure_unet(n_per_class: int = 50, num_inference_steps: int = 50, seed: int = 0) -> dict:
    """Mean per-class accuracy of the shipped UNet's DDIM samples, by the shipped classifier."""
    from ..metrics import classify
    from ..sampling import sample
    from . import load_default_classifier, load_default_unet

    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = sample(load_default_unet(), default_scheduler(), labels,
                    num_inference_steps=num_inference_steps, seed=seed, progress=True)
    hit = (classify(load_default_classifier(), images).argmax(1) == labels).float()
    per_class = [round(float(hit[labels == c].mean()), 3) for c in range(10)]
    return dict(mean_per_class_accuracy=round(sum(per_class) / 10, 4), per_class=per_class,
                n_per_class=n_per_class, ddim_steps=num_inference_steps)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m safemax.zoo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["classifier", "unet", "measure"],
                   help="train just one of the two, or only measure the shipped UNet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4000, help="UNet optimisation steps (default 4000)")
    p.add_argument("--minutes", type=float, default=None, help="stop the UNet early after this long")
    args = p.parse_args(argv)
    if args.only in (None, "classifier"):
        train_classifier(seed=args.seed)
    if args.only in (None, "unet"):
        train_unet(seed=args.seed, steps=args.steps, minutes=args.minutes)
    if args.only in (None, "unet", "measure"):
        result = measure_unet()
        print(f"UNet DDIM-50 samples: mean per-class accuracy {result['mean_per_class_accuracy']:.3f} "
              f"{result['per_class']}")
        info_path = os.path.join(UNET_DIR, "training.json")
        info = json.load(open(info_path)) if os.path.exists(info_path) else {}
        info["samples"] = result
        with open(info_path, "w") as f:
            json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
