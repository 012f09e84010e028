"""The embedded models: small class-conditional DDPMs, each with an evaluation classifier, trained
by this project (``python -m safemax.zoo.train --dataset NAME``) and shipped as safetensors, so that
the demo, the benchmarks and the tests run anywhere, offline.

| name | data | UNet | classifier |
| --- | --- | --- | --- |
| `"digits"` | scikit-learn's 1,797 8×8 digits, at 16×16 | 1.2 M parameters | + "not a digit" |
| `"fashion-mnist"` | Fashion-MNIST's 60,000 training images, 28×28 (not shipped: see `safemax.data.fashion_mnist_files`) | 2.7 M parameters | + "not a garment" |
| `"flow-digits"` | the digits, at 16×16 | the digits' UNet, trained as a rectified flow (sampled by `FlowMatchEulerDiscreteScheduler`) | the digits' |

``load_unet(name)`` gives ``(unet, scheduler)``, ``load_classifier(name)`` the classifier; the
text-to-image pipelines trained here on captioned Fashion-MNIST come from
``load_pipeline("fashion-mnist-sd")`` (Stable Diffusion; ``python -m safemax.zoo.sd_pipeline``
trains it) and ``load_pipeline("fashion-mnist-sd3")`` (SD3; ``python -m safemax.zoo.sd3_pipeline``). The
older ``load_default_unet`` / ``load_default_classifier`` / ``default_scheduler`` serve "digits".
"""
import os
from dataclasses import dataclass, field

import torch

from safemax.zoo.classifier import (
    NOT_A_CLASS,
    NOT_A_DIGIT,
    NOT_A_GARMENT,
    NUM_CLASSES,
    DigitClassifier,
    ImageClassifier,
    noise_images,
)

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_TRAIN_TIMESTEPS = 1000
SCHEDULER_CONFIG = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                        beta_start=1e-4, beta_end=0.02, clip_sample=False)


@dataclass(frozen=True)
class ZooModel:
    """What the zoo knows of one embedded model: where its files are, how it was built, its data."""
    name: str
    image_size: int
    unet_config: dict
    classifier_config: dict
    class_names: tuple
    not_a_class: str                # the name of classifier class 10
    unet_dir: str
    classifier_file: str
    train: dict = field(default_factory=dict)   # the UNet's training recipe (see zoo.train)
    scheduler_config: dict = field(default_factory=lambda: dict(SCHEDULER_CONFIG))
    data: str = ""                  # whose data and classifier: "digits" or "fashion-mnist" (default: name)
    scheduler_class: str = "DDPMScheduler"   # diffusers' class: "FlowMatchEulerDiscreteScheduler" for a flow
    trained_by: str = ""            # the command that trains the UNet (default: python -m safemax.zoo.train)

    def __post_init__(self):
        object.__setattr__(self, "data", self.data or self.name)
        object.__setattr__(self, "trained_by", self.trained_by or f"python -m safemax.zoo.train --dataset {self.name}")

    @property
    def flow(self) -> bool:
        """A rectified-flow model (velocity target, Euler sampling) rather than a DDPM."""
        return self.scheduler_class == "FlowMatchEulerDiscreteScheduler"

    def dataset(self, split: str = "train"):
        """The model's data as a ``TensorDataset`` of ``(image [1, S, S] in [-1, 1], label)``;
        the digits have one split (all 1,797), Fashion-MNIST ``"train"`` and ``"test"``."""
        from safemax import data
        if self.data == "digits":
            return data.digits_dataset(self.image_size)
        return data.fashion_mnist(split, size=self.image_size)

    def reference_images(self) -> torch.Tensor:
        """The real images the Fréchet distance compares samples with: all 1,797 digits;
        Fashion-MNIST's 10,000 test images (the model never saw them)."""
        return self.dataset("train" if self.data == "digits" else "test").tensors

    def kept_reference(self, classifier, forget: int):
        """The Fréchet distance's real side when ``forget`` is forgotten: the reference images of
        every other class, through ``classifier`` once (``metrics.FrechetReference``)."""
        from safemax.evaluation.metrics import FrechetReference
        images, labels = self.reference_images()
        return FrechetReference(classifier, images[labels != forget])

    def class_name(self, c: int) -> str:
        return self.class_names[c] if self.data == "digits" else f"{c} ({self.class_names[c]})"


DIGITS = ZooModel(
    name="digits", image_size=16,
    unet_config=dict(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8, num_class_embeds=10,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    classifier_config=dict(size=16),
    class_names=tuple(str(d) for d in range(10)), not_a_class="not a digit",
    unet_dir=os.path.join(HERE, "digits_unet"),
    classifier_file=os.path.join(HERE, "digits_classifier.safetensors"),
    train=dict(steps=4000, lr=1e-3, classifier_epochs=40, classifier_lr=2e-3, max_shift=1))

# 28×28 native, not padded to 32×32: a training step of this UNet at batch 128 took 2.80 s on one
# core here against 3.75 s at 32×32, and the classifier sees the images as stored. Attention only at
# 7×7, where it is cheap: 2.7 M parameters at the digits UNet's cost (2.91 s at 28×28, 1.2 M).
FASHION_MNIST = ZooModel(
    name="fashion-mnist", image_size=28,
    unet_config=dict(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 128), norm_num_groups=8, num_class_embeds=10,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")),
    classifier_config=dict(size=28, widths=(32, 64, 128), feature_dim=256, dropout=0.3),
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    not_a_class="not a garment",
    unet_dir=os.path.join(HERE, "fashion_mnist_unet"),
    classifier_file=os.path.join(HERE, "fashion_mnist_classifier.safetensors"),
    train=dict(steps=3000, lr=1.5e-3, classifier_epochs=12, classifier_lr=2e-3, max_shift=2))

# The digits' UNet and data as a rectified flow (x_σ = (1−σ)·x0 + σ·ε, target ε − x0, time input
# 1000·σ as in SD3), trained from scratch by benchmarks/flow_digits.py: the zoo's flow model, on
# which flow halting is measured (docs/results/flow-matching.md). Shipped in float32, the weights
# every figure there was measured on; judged by the digits' classifier.
FLOW_DIGITS = ZooModel(
    name="flow-digits", image_size=16, unet_config=DIGITS.unet_config, classifier_config=DIGITS.classifier_config,
    class_names=DIGITS.class_names, not_a_class=DIGITS.not_a_class,
    unet_dir=os.path.join(HERE, "flow_digits_unet"), classifier_file=DIGITS.classifier_file,
    train=dict(steps=2800, lr=1e-3, batch_size=64, warmup=200, augment="shift 1"),
    scheduler_config=dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0),
    data="digits", scheduler_class="FlowMatchEulerDiscreteScheduler",
    trained_by="python benchmarks/flow_digits.py --out OUT --train-only --train-steps 2800 --minutes 300 "
               "(then copy OUT/model's config, weights and scheduler here)")

MODELS = {m.name: m for m in (DIGITS, FASHION_MNIST, FLOW_DIGITS)}


def model_info(name: str) -> ZooModel:
    """The zoo's entry for ``name`` ("digits", "fashion-mnist" or "flow-digits")."""
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}; the zoo has: {', '.join(MODELS)}")
    return MODELS[name]


def scheduler_for(name: str = "digits"):
    """A fresh scheduler as the model ``name`` was trained with: a DDPM (linear β, T = 1000), or
    for "flow-digits" the flow-matching Euler scheduler (shift 1)."""
    import diffusers
    info = model_info(name)
    return getattr(diffusers, info.scheduler_class)(**info.scheduler_config)


def load_unet(name: str = "digits", device="cpu", dtype=torch.float32):
    """The embedded class-conditional UNet ``name`` (diffusers ``UNet2DModel``, float32 by
    default, in eval mode) and its scheduler: ``(unet, scheduler)``."""
    from diffusers import UNet2DModel
    info = model_info(name)
    if not os.path.exists(os.path.join(info.unet_dir, "config.json")):
        raise FileNotFoundError(
            f"the embedded {name} UNet is missing from {info.unet_dir}; reinstall safemax, or train "
            f"it with: {info.trained_by}")
    unet = UNet2DModel.from_pretrained(info.unet_dir, use_safetensors=True, torch_dtype=dtype)
    return unet.to(device).eval(), scheduler_for(name)


PIPELINES = {"fashion-mnist-sd": os.path.join(HERE, "fashion_mnist_sd"),
             "fashion-mnist-sd3": os.path.join(HERE, "fashion_mnist_sd3")}
"""The text-to-image pipelines trained here (``python -m safemax.zoo.sd_pipeline``,
``python -m safemax.zoo.sd3_pipeline``), by name."""
_TRAINED_BY = {"fashion-mnist-sd": "sd_pipeline", "fashion-mnist-sd3": "sd3_pipeline"}


def open_pipeline(folder: str, dtype=torch.float32, **kwargs):
    """``DiffusionPipeline.from_pretrained(folder)`` (safetensors only), with the components its
    ``model_index.json`` lists as absent passed as ``None`` — what diffusers asks of an SD3 saved
    without its T5 (``text_encoder_3=None, tokenizer_3=None``), as SD3 allows."""
    import json

    from diffusers import DiffusionPipeline
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    absent = {k: None for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is None}
    return DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True, **{**absent, **kwargs})


def load_pipeline(name: str = "fashion-mnist-sd", device="cpu", dtype=torch.float32):
    """The text-to-image pipeline ``name`` trained here on captioned Fashion-MNIST — a diffusers
    ``StableDiffusionPipeline`` ("fashion-mnist-sd") or ``StableDiffusion3Pipeline``
    ("fashion-mnist-sd3"), float32 by default, progress bar off; its prompts are in
    ``safemax.data.captions``, its CLIP in ``safemax.zoo.sd_pipeline.load_clip``."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; the zoo has: {', '.join(PIPELINES)}")
    folder = PIPELINES[name]
    if not os.path.exists(os.path.join(folder, "model_index.json")):
        raise FileNotFoundError(f"the {name} pipeline is not trained yet: python -m safemax.zoo.{_TRAINED_BY[name]} "
                                f"--out {folder}")
    pipe = open_pipeline(folder, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_classifier(name: str = "digits", device="cpu") -> ImageClassifier:
    """The embedded evaluation classifier of ``name`` (its 10 classes + class 10, "not a ...")."""
    from safetensors.torch import load_file
    info = model_info(name)
    if not os.path.exists(info.classifier_file):
        raise FileNotFoundError(
            f"the embedded {name} classifier is missing ({info.classifier_file}); train it with: "
            f"python -m safemax.zoo.train --dataset {info.data} --only classifier")
    model = DigitClassifier() if info.data == "digits" else ImageClassifier(**info.classifier_config)
    model.load_state_dict({k: v.float() for k, v in load_file(info.classifier_file).items()})
    return model.to(device).eval()


# The digits model's names from before the zoo served two models.
UNET_DIR, CLASSIFIER_FILE = DIGITS.unet_dir, DIGITS.classifier_file
IMAGE_SIZE, UNET_CONFIG = DIGITS.image_size, DIGITS.unet_config


def default_scheduler():
    """The DDPM scheduler (linear β, T = 1000) the embedded digits model was trained with."""
    return scheduler_for("digits")


def load_default_unet(device="cpu", dtype=torch.float32):
    """The embedded class-conditional digits UNet (diffusers ``UNet2DModel``), float32 by default."""
    return load_unet("digits", device, dtype)[0]


def load_default_classifier(device="cpu") -> DigitClassifier:
    """The embedded digits evaluation classifier (10 digits + "not a digit")."""
    return load_classifier("digits", device)


__all__ = ["MODELS", "ZooModel", "FLOW_DIGITS", "model_info", "load_unet", "load_classifier", "scheduler_for",
           "PIPELINES", "load_pipeline", "open_pipeline",
           "ImageClassifier", "DigitClassifier", "NOT_A_CLASS", "NOT_A_DIGIT", "NOT_A_GARMENT",
           "NUM_CLASSES", "noise_images", "default_scheduler", "load_default_unet",
           "load_default_classifier", "UNET_CONFIG", "SCHEDULER_CONFIG"]
