"""Model families: how each diffusers model is called, and the conditions it takes.

The Unlearner, the methods and the sampler call a model only through ``family.call(model, x,
time, cond)`` with unpacked images or latents ``x`` ``[B, C, H, W]``; what the model predicts
(ε, v, a velocity) and its time convention are the ``Denoiser``'s business, not the family's.

A text family's condition is what the pipeline's ``encode_prompt`` returns, as a dict keyed by
the pipelines' own names (one row per image; ``safemax.models.pipelines.prompt_embeddings`` makes it):

| family | condition of one row |
| --- | --- |
| `sd` | a tensor `[L, D]` (or `{"prompt_embeds": [L, D]}`) — Stable Diffusion 1.x/2.x |
| `sdxl` | `prompt_embeds [L, D]`, `pooled_prompt_embeds [P]`, `add_time_ids [6]` |
| `sd3` | `prompt_embeds [L, D]`, `pooled_prompt_embeds [P]` |
| `flux` | `prompt_embeds [L, D]`, `pooled_prompt_embeds [P]`, Flux.1-dev also `guidance []` |
| `pixart` | `prompt_embeds [L, D]`, `prompt_attention_mask [L]` (PixArt-α at 1024 px also `resolution [2]`, `aspect_ratio [1]`) |
| `sana` | `prompt_embeds [L, D]`, `prompt_attention_mask [L]` |

Class-conditional families (``UNet2DModel``, DiT) take class ids. A module that is not a diffusers
model is called like ``UNet2DModel``: ``model(x, t, class_labels=y)`` or, for floating conditions,
``model(x, t, encoder_hidden_states=e)``. A diffusers model of no supported family is refused by
``family_of`` with one ``ValueError`` that names the families that work.
"""
from safemax.models.family import (
    Family,
    _is_diffusers_model,
    class_count,
    cross_attention_width,
    embedding_rows,
)
from safemax.models.text_families import (
    FLUX_GUIDANCE,
    SD3,
    SDXL,
    Flux,
    PixArt,
    Sana,
    StableDiffusion,
)

__all__ = ["Family", "ClassUNet", "DiT", "StableDiffusion", "SDXL", "SD3", "Flux", "PixArt", "Sana", "FAMILIES",
           "FLUX_GUIDANCE", "supported", "family_of", "class_count", "cross_attention_width", "embedding_rows"]


class ClassUNet(Family):
    name, title, text = "unet", "class-conditional UNet2DModel", False

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "UNet2DModel"


class DiT(Family):
    name, title, text = "dit", "DiT (DiTTransformer2DModel)", False

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "DiTTransformer2DModel"


FAMILIES = (ClassUNet, DiT, StableDiffusion, SDXL, SD3, Flux, PixArt, Sana)


def supported() -> str:
    return "; ".join(f.title for f in FAMILIES)


def family_of(model) -> Family:
    """The family of ``model`` (a diffusers model, or any module called like ``UNet2DModel``)."""
    for family in FAMILIES:
        if family.matches(model):
            return family(model)
    if _is_diffusers_model(model):
        extra = getattr(getattr(model, "config", None), "addition_embed_type", None)
        what = type(model).__name__ + (f" with addition_embed_type={extra!r}" if extra else "")
        raise ValueError(f"safemax does not know how to call a {what}. The model families that "
                         f"work: {supported()}")
    return Family(model)
