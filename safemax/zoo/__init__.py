"""The embedded default: a small class-conditional DDPM and an evaluation classifier, trained by
this project (``python -m safemax.zoo.train``) on scikit-learn's bundled digits and shipped as
safetensors, so that the demo and the tests run anywhere, offline."""
import os

import torch

from .classifier import NOT_A_DIGIT, NUM_CLASSES, DigitClassifier, noise_images

HERE = os.path.dirname(os.path.abspath(__file__))
UNET_DIR = os.path.join(HERE, "digits_unet")
CLASSIFIER_FILE = os.path.join(HERE, "digits_classifier.safetensors")

IMAGE_SIZE = 16
NUM_TRAIN_TIMESTEPS = 1000

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE, in_channels=1, out_channels=1, layers_per_block=1,
    block_out_channels=(32, 64, 64), norm_num_groups=8, num_class_embeds=10,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)
SCHEDULER_CONFIG = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                        beta_start=1e-4, beta_end=0.02, clip_sample=False)


def default_scheduler():
    """The DDPM scheduler (linear β, T = 1000) the embedded model was trained with."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(**SCHEDULER_CONFIG)


def load_default_unet(device="cpu", dtype=torch.float32):
    """The embedded class-conditional digits UNet (diffusers ``UNet2DModel``), float32 by default."""
    from diffusers import UNet2DModel
    if not os.path.exists(os.path.join(UNET_DIR, "config.json")):
        raise FileNotFoundError(
            f"the embedded digits UNet is missing from {UNET_DIR}; reinstall safemax, or train it "
            "with: python -m safemax.zoo.train")
    unet = UNet2DModel.from_pretrained(UNET_DIR, use_safetensors=True, torch_dtype=dtype)
    return unet.to(device).eval()


def load_default_classifier(device="cpu") -> DigitClassifier:
    """The embedded evaluation classifier (10 digits + "not a digit")."""
    from safetensors.torch import load_file
    if not os.path.exists(CLASSIFIER_FILE):
        raise FileNotFoundError(
            f"the embedded classifier is missing ({CLASSIFIER_FILE}); train it with: "
            "python -m safemax.zoo.train")
    model = DigitClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(CLASSIFIER_FILE).items()})
    return model.to(device).eval()


__all__ = ["DigitClassifier", "NOT_A_DIGIT", "NUM_CLASSES", "noise_images", "default_scheduler",
           "load_default_unet", "load_default_classifier", "UNET_CONFIG", "SCHEDULER_CONFIG"]
