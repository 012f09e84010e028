"""A tiny, randomly initialised Stable Diffusion pipeline for tests.

Tests must never download weights, so this module assembles a complete diffusers
``StableDiffusionPipeline`` offline: a tiny UNet, VAE and CLIP text encoder with random
weights, plus a CLIP tokenizer built from a hand-written byte-level BPE vocabulary.
Images are 16x16 and latents 4x8x8; the text embeddings are ``[batch, 16, 16]``.
"""

import json
import os
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

MAX_LENGTH = 16   # tokenizer.model_max_length: prompt embeddings are [batch, MAX_LENGTH, HIDDEN]
HIDDEN = 16       # text-encoder width == UNet cross_attention_dim
IMAGE_SIZE = 16   # pixels; the VAE downsamples by 2, so latents are 8x8

# A few merges so that BPE actually merges something ("the", "of", "photo", ...).
_MERGES = [("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("o", "t"), ("p", "h"), ("ph", "ot"),
           ("a", "n"), ("i", "n"), ("e", "r</w>"), ("c", "h")]


def tiny_clip_tokenizer(model_max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """Byte-level CLIP tokenizer: all 256 byte symbols (alone and with "</w>") and a few merges.

    Like the real CLIP vocabulary it covers every byte, so any prompt tokenises without <unk>.
    """
    # The 256 symbols of GPT-2/CLIP's bytes_to_unicode table (printable bytes map to themselves).
    chars = [chr(c) for c in (*range(33, 127), *range(161, 173), *range(174, 324))]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    with tempfile.TemporaryDirectory() as d:
        vocab_file, merges_file = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES))
        # Positional on purpose: transformers 5 silently ignores vocab_file=/merges_file= keywords.
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A float32 CPU StableDiffusionPipeline with random weights, reproducible for a given seed."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
        cross_attention_dim=HIDDEN,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        sample_size=IMAGE_SIZE, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe  # built on the CPU in float32 (torch defaults)
