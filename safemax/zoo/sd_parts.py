"""The parts of the Fashion-MNIST Stable Diffusion pipeline (``safemax.zoo.sd_pipeline``): their
sizes, how each is built, the text side (tokenizing, encoding, the per-step caption condition)
and the losses of the two parts that are not denoisers.

Images are Fashion-MNIST padded from 28×28 to 32×32 with its background (−1):
``StableDiffusionPipeline`` wants sides divisible by 8, and 32 halves cleanly. The VAE halves the
side once (two blocks), so latents are 4×16×16; the UNet's cross-attention reads the text
encoder's 16 token states. ``fashion_frame`` crops a decoded 32×32 image back to the 28×28 frame
the Fashion-MNIST classifier (``safemax.zoo.load_classifier("fashion-mnist")``) takes.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from safemax.data import captions
from safemax.zoo.trainer import Prompts

IMAGE_SIZE = 32
LATENT_SIZE = 16
PAD = (IMAGE_SIZE - 28) // 2

__all__ = ["IMAGE_SIZE", "LATENT_SIZE", "SDSize", "FULL", "TINY", "SIZES", "size_of", "make_clip",
           "text_encoder_of", "text_encoder_with_projection", "make_vae", "make_unet", "make_scheduler", "tokenize", "encode_texts",
           "caption_table", "CaptionPrompts", "clip_loss", "vae_loss", "fashion_frame", "parameters"]


@dataclass(frozen=True)
class SDSize:
    """One size of the pipeline: each part's config (diffusers / transformers keyword arguments;
    the text encoder's vocabulary and special tokens come from the tokenizer, the UNet's
    ``cross_attention_dim`` from the text width) and each stage's recipe (``steps``,
    ``batch_size``, ``lr``; the VAE's ``kl_weight``)."""
    name: str
    text: dict
    vision: dict
    projection_dim: int
    vae: dict
    unet: dict
    clip_train: dict
    vae_train: dict
    unet_train: dict


def _vae(channels, groups):
    return dict(sample_size=IMAGE_SIZE, in_channels=1, out_channels=1, latent_channels=4,
                block_out_channels=channels, layers_per_block=1, norm_num_groups=groups,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def _unet(channels, groups, heads):
    levels = len(channels)   # cross-attention below the top level, where it is cheap
    return dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=channels, norm_num_groups=groups, attention_head_dim=heads,
                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
                up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",))


FULL = SDSize(
    name="full",
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
    vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                image_size=IMAGE_SIZE, patch_size=4, num_channels=1),
    projection_dim=64,
    vae=_vae((32, 64), 16),
    unet=_unet((32, 64, 128), 8, 8),
    # the steps fit the whole run into one session of this project's 2-core machine (69 min, sd_pipeline)
    clip_train=dict(steps=1000, batch_size=256, lr=1e-3),
    vae_train=dict(steps=1000, batch_size=64, lr=1e-3, kl_weight=1e-4),
    unet_train=dict(steps=3500, batch_size=128, lr=1e-3))

TINY = SDSize(   # for tests: seconds, not quality
    name="tiny",
    text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
    vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                image_size=IMAGE_SIZE, patch_size=8, num_channels=1),
    projection_dim=16,
    vae=_vae((8, 16), 4),
    unet=_unet((16, 32), 4, 2),
    clip_train=dict(steps=4, batch_size=8, lr=1e-3),
    vae_train=dict(steps=4, batch_size=8, lr=1e-3, kl_weight=1e-4),
    unet_train=dict(steps=4, batch_size=8, lr=1e-3))

SIZES = {s.name: s for s in (FULL, TINY)}


def size_of(size) -> SDSize:
    """``size`` itself, or the ``SDSize`` of that name ("full", "tiny")."""
    if isinstance(size, SDSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; the sizes are {', '.join(SIZES)}")
    return SIZES[size]


# ---------------------------------------------------------------- the parts
def make_clip(size, tokenizer):
    """A fresh ``transformers.CLIPModel``: the text tower the pipeline's text encoder comes from,
    a ViT on 1×32×32 images in [−1, 1] (fed directly, no image processor) for the CLIP score."""
    from transformers import CLIPConfig, CLIPModel
    size = size_of(size)
    text = dict(size.text, vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=size.vision, projection_dim=size.projection_dim))


def text_encoder_of(clip):
    """The ``CLIPTextModel`` of a ``CLIPModel`` (its text tower's weights, copied)."""
    from transformers import CLIPTextModel
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())   # (transformers 5: the tower is a CLIPTextModel)
    return encoder.to(clip.device).eval()


def text_encoder_with_projection(clip):
    """The ``CLIPTextModelWithProjection`` of a ``CLIPModel`` (its text tower and text projection,
    copied): what SD3's pipeline reads its pooled prompt embedding from."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    config = CLIPTextConfig(**dict(clip.config.text_config.to_dict(), projection_dim=clip.config.projection_dim))
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(clip.text_model.state_dict())
    encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return encoder.to(clip.device).eval()


def make_vae(size):
    """A fresh ``AutoencoderKL``: 1×32×32 images ↔ 4×16×16 latents."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(**size_of(size).vae)


def make_unet(size):
    """A fresh ``UNet2DConditionModel`` on 4×16×16 latents, cross-attending to the text states."""
    from diffusers import UNet2DConditionModel
    size = size_of(size)
    return UNet2DConditionModel(**size.unet, cross_attention_dim=size.text["hidden_size"])


def make_scheduler():
    """The DDPM scheduler the UNet is trained with: the embedded models' (linear β, T = 1000),
    with ``steps_offset=1``, which ``StableDiffusionPipeline`` would otherwise impose with a warning
    (it moves the inference steps by one; training does not read it)."""
    from diffusers import DDPMScheduler

    from safemax.zoo import SCHEDULER_CONFIG
    return DDPMScheduler(**SCHEDULER_CONFIG, steps_offset=1)


# ---------------------------------------------------------------- the text side
def tokenize(tokenizer, texts) -> torch.Tensor:
    """Token ids ``[N, L]`` padded to the tokenizer's length, as ``StableDiffusionPipeline``
    makes them; a text longer than the tokenizer takes is a ``ValueError`` (not cut short)."""
    texts = list(texts)
    for text in texts:
        captions.check_prompt(tokenizer, text)
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, texts, batch_size: int = 256) -> torch.Tensor:
    """Prompt embeddings ``[N, L, D]`` (float32, on the CPU): the text encoder's last hidden
    states without an attention mask, exactly what ``StableDiffusionPipeline`` computes."""
    ids = tokenize(tokenizer, texts)
    device = next(text_encoder.parameters()).device
    out = [text_encoder(chunk.to(device))[0].float().cpu() for chunk in ids.split(batch_size)]
    return torch.cat(out)


def caption_table(tokenizer, text_encoder) -> torch.Tensor:
    """The embeddings of every caption ``[len(CAPTIONS), L, D]``, row 0 the empty caption's."""
    return encode_texts(tokenizer, text_encoder, captions.CAPTIONS)


class CaptionPrompts(Prompts):
    """The UNet's condition: each row a caption of its class drawn afresh every step from the
    trainer's generator (``captions.draw``), encoded by the frozen text encoder (looked up in
    ``caption_table``: the same numbers, computed once), and a share ``drop`` of the rows the
    empty caption (``Prompts``' drop), which classifier-free guidance needs. Drawing from the
    trainer's generator keeps the run reproducible and its resume exact."""

    def __init__(self, table, drop: float = captions.EMPTY_SHARE):
        tables = table if isinstance(table, dict) else {None: table}   # a text family's dict (SD3's two)
        for name, t in tables.items():
            if t.shape[0] != len(captions.CAPTIONS):
                raise ValueError(f"table{'' if name is None else f'[{name!r}]'}: one row per caption "
                                 f"({len(captions.CAPTIONS)}), got {t.shape[0]}")
        if isinstance(table, dict):
            super().__init__(encode=lambda i: {k: v[i] for k, v in table.items()},
                             empty={k: v[0] for k, v in table.items()}, drop=drop)
        else:
            super().__init__(encode=table.__getitem__, empty=table[0], drop=drop)

    def __call__(self, labels: torch.Tensor, generator: torch.Generator):
        return super().__call__(captions.draw(labels, generator), generator)


# ---------------------------------------------------------------- the losses
def clip_loss(clip, images: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss, with every same-class pair a match: ten classes in a
    batch of hundreds make most "negatives" of the plain loss true matches, so the target of a
    row is uniform over the rows of its class. The temperature is clamped at 100, as CLIP's."""
    out = clip(input_ids=ids, pixel_values=images)
    scale = clip.logit_scale.clamp(max=math.log(100)).exp()
    logits = scale * out.text_embeds @ out.image_embeds.t()          # [texts, images]
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def vae_loss(vae, images: torch.Tensor, generator: torch.Generator, kl_weight: float) -> torch.Tensor:
    """L1 reconstruction of a posterior sample (drawn from ``generator``) plus ``kl_weight`` × the
    KL divergence to N(0, I) per latent element: a small KL, as Stable Diffusion's VAE, that keeps
    the latents near unit scale without costing detail."""
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator=generator)
    rec = vae.decode(z).sample
    return F.l1_loss(rec, images) + kl_weight * posterior.kl().mean() / z[0].numel()


def fashion_frame(images: torch.Tensor) -> torch.Tensor:
    """The 28×28 Fashion-MNIST frame of 32×32 images (the centre; the padding cut off)."""
    return images[..., PAD:PAD + 28, PAD:PAD + 28]


def parameters(model) -> int:
    """The number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
