"""Trains an embedded model from scratch, deterministically from a seed (run once; the results are
committed under safemax/zoo/):

    python -m safemax.zoo.train                              # digits: classifier, then UNet (~40 CPU min)
    python -m safemax.zoo.train --dataset fashion-mnist      # Fashion-MNIST (hours on 2 CPU cores)
    python -m safemax.zoo.train --dataset fashion-mnist --only classifier
    python -m safemax.zoo.train --only unet --exclude-class 3 --out D   # "retrain": never sees a 3

Each UNet is a class-conditional diffusers UNet2DModel trained with the plain ε-prediction loss
by ``safemax.zoo.trainer.train_denoiser`` (the one trainer of every model the project trains);
its exponential moving average is what is shipped, in float16 to keep the repository small. Each
classifier also learns class 10, "not a digit" / "not a garment", from noise images.

Long runs lose nothing when interrupted: the UNet's whole training state (weights, EMA, optimiser,
random generator, losses) is written to ``--work`` every ``--checkpoint-minutes`` and on Ctrl-C
(after the step under way), and ``--resume`` continues from it bit for bit.
"""
import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from safemax.evaluation.provenance import provenance
from safemax.evaluation.report import write_json
from safemax.zoo import (
    NOT_A_CLASS,
    ImageClassifier,
    model_info,
    noise_images,
    scheduler_for,
)
from safemax.zoo.trainer import state_path, train_denoiser


def shift_images(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
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


def _classifier_splits(info):
    """(train images, labels, test images, labels): Fashion-MNIST's own split; for the digits a
    fixed 20% held out."""
    if info.data != "digits":
        return (*info.dataset("train").tensors, *info.dataset("test").tensors)
    images, labels = info.dataset().tensors
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(1234))
    test, train = perm[: images.shape[0] // 5], perm[images.shape[0] // 5:]
    return images[train], labels[train], images[test], labels[test]


def classifier_accuracy(model, info, test_images, test_labels, seed: int = 0) -> dict:
    """Held-out accuracy (overall and per class) and the share of noise called class 10."""
    from safemax.evaluation.metrics import classify
    size = info.image_size
    pred = classify(model, test_images).argmax(1)
    per_class = [round(float((pred[test_labels == c] == c).float().mean()), 4) for c in range(10)]
    noise = noise_images(1000, size, generator=torch.Generator().manual_seed(seed + 1))
    gauss = torch.randn(1000, 1, size, size, generator=torch.Generator().manual_seed(seed + 2)).clamp(-1, 1)
    return dict(test_accuracy=round(float((pred == test_labels).float().mean()), 4),
                test_per_class=per_class, test_images=int(test_labels.numel()),
                noise_to_class_10=round(float((classify(model, noise).argmax(1) == NOT_A_CLASS).float().mean()), 4),
                gaussian_to_class_10=round(float((classify(model, gauss).argmax(1) == NOT_A_CLASS).float().mean()), 4))


def train_classifier(name: str = "digits", seed: int = 0, batch_size: int = 128):
    info = model_info(name)
    epochs, lr, max_shift = (info.train[k] for k in ("classifier_epochs", "classifier_lr", "max_shift"))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels, test_images, test_labels = _classifier_splits(info)
    n = images.shape[0]
    model = ImageClassifier(**info.classifier_config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    bar = tqdm(range(steps), desc=f"{name} classifier")
    for _ in bar:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x = shift_images(images[idx], g, max_shift)
        x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        noise = noise_images(batch_size // 4, info.image_size, generator=g)
        x = torch.cat([x, noise])
        y = torch.cat([labels[idx], torch.full((noise.shape[0],), NOT_A_CLASS)])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        result = classifier_accuracy(model, info, test_images, test_labels, seed)
    print(f"{name} classifier: held-out accuracy {result['test_accuracy']:.4f} {result['test_per_class']}, "
          f"noise -> {info.not_a_class} {result['noise_to_class_10']:.4f}, clipped N(0,1) -> "
          f"{info.not_a_class} {result['gaussian_to_class_10']:.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, info.classifier_file)
    write_json(info.classifier_file.replace(".safetensors", ".json"),
               dict(seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, **result))
    return model


def train_unet(name: str = "digits", seed: int = 0, steps: int = None, batch_size: int = 128,
               lr: float = None, ema_decay: float = 0.999, minutes: float = None, work: str = None,
               resume: bool = False, checkpoint_minutes: float = 10.0, out: str = None,
               exclude: tuple = (), device: str = "cpu"):
    """Trains the UNet of ``name`` with ``safemax.zoo.trainer.train_denoiser``; returns its EMA,
    saved (float16) to ``out`` (default: the zoo's folder of ``name``). ``work`` (default
    ``~/.cache/safemax``) holds the resumable training state; ``minutes`` stops this session
    after that long (``resume`` goes on from there).

    ``exclude``: classes whose images the model never sees — the field's "retrain" reference for
    unlearning them (their embedding rows stay as initialised). Needs ``out``: the zoo's model
    is the one trained on every class. ``device``: where to train (the random draws stay on the
    CPU generator, so a run's batches are the same anywhere; its floats are not bit for bit)."""
    from diffusers import UNet2DModel

    info = model_info(name)
    exclude = tuple(sorted({int(c) for c in exclude}))
    bad = [c for c in exclude if not 0 <= c < len(info.class_names)]
    if bad:
        raise ValueError(f"exclude: class ids {bad} out of range for {name} (0..{len(info.class_names) - 1})")
    if exclude and out is None:
        raise ValueError("exclude: give out= (a folder) — the zoo's model of this name is trained on every class")
    steps = steps or info.train["steps"]
    lr = lr or info.train["lr"]
    work = work or os.path.expanduser("~/.cache/safemax")
    tag = name + "".join(f"-without-{c}" for c in exclude) + "-unet"   # the state: {tag}-training.pt
    if resume and not os.path.exists(state_path(work, tag)):
        raise FileNotFoundError(f"--resume: no training state at {state_path(work, tag)}; start without --resume")
    torch.manual_seed(seed)
    images, labels = info.dataset("train").tensors
    if exclude:
        keep = ~torch.isin(labels, torch.tensor(exclude))
        images, labels = images[keep], labels[keep]
    unet = UNet2DModel(**info.unet_config).to(device)
    run = train_denoiser(unet, scheduler_for(name), (images, labels), steps=steps, batch_size=batch_size,
                         lr=lr, seed=seed, ema_decay=ema_decay, minutes=minutes, work=work, name=tag,
                         resume=resume, checkpoint_minutes=checkpoint_minutes, desc=f"{name} unet")
    out = out or info.unet_dir
    ema = run.ema
    ema.to("cpu", torch.float16).save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "scheduler_config.json"), "w") as f:
        json.dump(dict(_class_name="DDPMScheduler", **info.scheduler_config), f, indent=2)
    write_json(os.path.join(out, "training.json"),
               dict(seed=seed, steps=run.steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                    seconds=round(run.seconds),
                    **(dict(exclude=list(exclude), images=images.shape[0]) if exclude else {})))
    return ema


def retrained_record(folder: str, forget: int) -> dict:
    """The ``training.json`` of a UNet trained by ``train_unet(exclude=[forget])`` — the retrain
    reference of forgetting ``forget``; a clear error for a folder trained otherwise."""
    with open(os.path.join(folder, "training.json")) as f:
        record = json.load(f)
    if record.get("exclude") != [forget]:
        raise ValueError(f"{folder} was trained without {record.get('exclude', 'no class')}, not [{forget}]: "
                         f"train it with --exclude-class {forget}")
    return record


def measure_unet(name: str = "digits", n_per_class: int = 50, num_inference_steps: int = 50,
                 seed: int = 0) -> dict:
    """Mean per-class accuracy of the shipped UNet's DDIM samples, by the shipped classifier."""
    from safemax.evaluation.metrics import classify
    from safemax.models.sampling import sample
    from safemax.zoo import load_classifier, load_unet

    labels = torch.arange(10).repeat_interleave(n_per_class)
    images = sample(*load_unet(name), labels, num_inference_steps=num_inference_steps, seed=seed,
                    progress=True)
    hit = (classify(load_classifier(name), images).argmax(1) == labels).float()
    per_class = [round(float(hit[labels == c].mean()), 3) for c in range(10)]
    return dict(mean_per_class_accuracy=round(sum(per_class) / 10, 4), per_class=per_class,
                n_per_class=n_per_class, ddim_steps=num_inference_steps)


def main(argv=None):
    from safemax.zoo import MODELS
    p = argparse.ArgumentParser(prog="python -m safemax.zoo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # (the flow model is trained by benchmarks/flow_digits.py: its entry's trained_by says how)
    p.add_argument("--dataset", choices=[m.name for m in MODELS.values() if not m.flow], default="digits",
                   help="which embedded model")
    p.add_argument("--only", choices=["classifier", "unet", "measure"],
                   help="train just one of the two, or only measure the shipped UNet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="UNet optimisation steps (digits 4000, "
                   "fashion-mnist 3000)")
    p.add_argument("--minutes", type=float, default=None, help="stop the UNet early after this long")
    p.add_argument("--work", default=None, help="folder for the resumable training state "
                   "(default ~/.cache/safemax)")
    p.add_argument("--resume", action="store_true", help="continue the UNet from --work's state")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--samples-per-class", type=int, default=50, help="DDIM-50 samples per class to measure")
    p.add_argument("--exclude-class", type=int, nargs="+", default=[], metavar="N",
                   help="train the UNet without these classes' images (the retrained reference of "
                   "unlearning them); needs --only unet and --out")
    p.add_argument("--out", default=None, help="folder for the UNet (default: the zoo's)")
    p.add_argument("--device", default="cpu", help="where the UNet trains: cpu or cuda")
    args = p.parse_args(argv)
    if args.exclude_class and (args.only != "unet" or args.out is None):
        p.error("--exclude-class trains a reference model, not the zoo's: pass --only unet and --out DIR")
    name = args.dataset
    if args.only in (None, "classifier"):
        train_classifier(name, seed=args.seed)
    if args.only in (None, "unet"):
        train_unet(name, seed=args.seed, steps=args.steps, minutes=args.minutes, work=args.work,
                   resume=args.resume, checkpoint_minutes=args.checkpoint_minutes, out=args.out,
                   exclude=args.exclude_class, device=args.device)
    if args.out is not None:   # measure_unet measures the zoo's model
        return
    if args.only in (None, "unet", "measure"):
        result = measure_unet(name, n_per_class=args.samples_per_class)
        print(f"{name} UNet DDIM-50 samples: mean per-class accuracy "
              f"{result['mean_per_class_accuracy']:.3f} {result['per_class']}")
        info_path = os.path.join(model_info(name).unet_dir, "training.json")
        info = json.load(open(info_path)) if os.path.exists(info_path) else {}
        info["samples"] = dict(result, provenance=provenance())   # (the file's own: the training's)
        write_json(info_path, info)


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "python -m safemax.zoo.train"))
