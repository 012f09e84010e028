"""Moved: these helpers now live in :mod:`safemax.pipelines`, which serves every supported
diffusers family (Stable Diffusion 1.x/2.x, SDXL, SD3/3.5, Flux.1, PixArt-α/Σ, Sana).

This module re-exports them so that ``from safemax.stable_diffusion import ...`` keeps working;
new code should import from ``safemax.pipelines``.
"""
from .pipelines import decode_latents, encode_images, pipeline_data, prompt_embeddings  # noqa: F401

__all__ = ["prompt_embeddings", "encode_images", "decode_latents", "pipeline_data"]
