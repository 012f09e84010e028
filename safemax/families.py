"""Model families: how each diffusers model is called, and the conditions it takes.

The Unlearner, the methods and the sampler call a model only through ``family.call(model, x,
time, cond)`` with unpacked images or latents ``x`` ``[B, C, H, W]``; what the model predicts
(ε, v, a velocity) and its time convention are the ``Denoiser``'s business, not the family's.

A text family's condition is what the pipeline's ``encode_prompt`` returns, as a dict keyed by
the pipelines' own names (one row per image; ``safemax.pipelines.prompt_embeddings`` makes it):

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
import torch

from . import rows

FLUX_GUIDANCE = 3.5  # Flux.1-dev's guidance input when a condition gives none (diffusers' training scripts)


class Family:
    """The calling convention of one kind of model. ``keys``: the condition's required keys,
    ``optional``: keys that may be given (their per-row shapes: ``widths``). A class family has
    neither (its condition is a class id)."""

    name = "custom"
    title = "a module called like UNet2DModel"
    text = None           # None: class ids or a tensor of embeddings, decided by the condition
    keys: tuple = ()
    optional: tuple = ()
    lora_pipeline = None  # (diffusers pipeline class, its keyword) whose LoRA file this family loads

    def __init__(self, model):
        self.config = getattr(model, "config", None)

    @classmethod
    def matches(cls, model) -> bool:
        return False

    # --------------------------------------------------------------- conditions
    def widths(self) -> dict:
        """Per-row shapes of the condition's keys (``None``: any length, e.g. the prompt length
        L), from the model's config."""
        return {}

    def condition_rows(self, cond, what: str):
        """Validate one or many rows of this family's condition → a batch (float32 / int64, CPU)."""
        if not self.keys:  # a custom module: prompt embeddings [L, D] like Stable Diffusion's
            return embedding_rows(cond, cross_attention_width(self.config), what)
        if not isinstance(cond, dict):
            raise ValueError(f"{what}: {self.title} takes a dict of conditions with keys "
                             f"{self._key_list()} (safemax.pipelines.prompt_embeddings(pipe, prompts) "
                             f"makes it), got a {type(cond).__name__}")
        widths = self.widths()
        unknown = sorted(set(cond) - set(widths))
        missing = sorted(k for k in self.keys if k not in cond)
        if unknown or missing:
            raise ValueError(f"{what}: {self.title} takes a condition with keys {self._key_list()}; "
                             + (f"missing {missing}" if missing else "")
                             + ("; " if missing and unknown else "")
                             + (f"unknown {unknown}" if unknown else ""))
        out = {k: torch.as_tensor(v) for k, v in cond.items()}
        single = out["prompt_embeds"].dim() == 2  # one row without its batch dimension
        if single:
            out = {k: v.unsqueeze(0) for k, v in out.items()}
        n = len(out["prompt_embeds"])
        for k, v in out.items():
            shape = widths[k]
            ok = v.dim() == len(shape) + 1 and len(v) == n and all(
                w is None or w == s for w, s in zip(shape, v.shape[1:]))
            if not ok:
                want = ", ".join("L" if w is None else str(w) for w in shape)
                raise ValueError(f"{what}: {k!r} must be [N, {want}]".replace(", ]", "]")
                                 + f" for this {self.title} (N rows), got {list(v.shape)}"
                                 + (" — its rows must match prompt_embeds'" if len(v) != n else ""))
            if v.is_floating_point() and not torch.isfinite(v).all():
                raise ValueError(f"{what}: {k!r} contains NaN or Inf")
        if not out["prompt_embeds"].is_floating_point():
            raise ValueError(f"{what}: 'prompt_embeds' must be a float tensor, got {out['prompt_embeds'].dtype}")
        mask = out.get("prompt_attention_mask")
        if mask is not None and mask.shape[1] != out["prompt_embeds"].shape[1]:
            raise ValueError(f"{what}: prompt_attention_mask {list(mask.shape)} must have one entry "
                             f"per prompt token (prompt_embeds {list(out['prompt_embeds'].shape)})")
        return {k: v.detach().cpu() for k, v in rows.normalized(out).items()}

    def canonical(self, cond):
        """A batch of conditions in this family's one internal form (see the subclasses)."""
        return cond

    def _key_list(self) -> str:
        opt = [f"{k} (optional)" for k in self.optional]
        return ", ".join(list(self.keys) + opt)

    # --------------------------------------------------------------- calling
    def call(self, model, x: torch.Tensor, time: torch.Tensor, cond) -> torch.Tensor:
        """The model's raw output ``[B, C′, H, W]`` for ``x`` at time input ``time``."""
        if isinstance(cond, dict):
            raise ValueError("a dict of conditions needs a diffusers text model "
                             f"({supported()}); this model takes a tensor")
        key = "encoder_hidden_states" if cond.is_floating_point() else "class_labels"
        return model(x, time, **{key: cond}).sample

    def flow_input(self, timestep: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
        """A rectified-flow model's time input for the scheduler's ``timestep`` T·σ: T·σ itself
        (SD3/3.5 and most)."""
        return timestep

    @property
    def channels(self) -> int:
        """Channels of the images or latents the model denoises."""
        return self.config.in_channels

    def sample_shape(self):
        """``(C, H, W)`` of one image or latent the model denoises, from its config (None if
        the config does not say)."""
        size = getattr(self.config, "sample_size", None)
        if size is None:
            return None
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (self.channels, *size)

    def image_seq_len(self, shape) -> int:
        """Image tokens of a latent of ``shape`` (a dynamically shifted scheduler's input)."""
        patch = getattr(self.config, "patch_size", None) or 1
        return (shape[-2] // patch) * (shape[-1] // patch)


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


class StableDiffusion(Family):
    """Stable Diffusion 1.x/2.x: ``unet(x, t, encoder_hidden_states=prompt_embeds)``. Its condition
    stays a plain tensor (a ``{"prompt_embeds": …}`` dict is unwrapped to one)."""

    name, title, text = "sd", "Stable Diffusion 1.x/2.x UNet (UNet2DConditionModel)", True
    keys = ("prompt_embeds",)
    lora_pipeline = ("StableDiffusionPipeline", "unet_lora_layers")

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "UNet2DConditionModel" and \
            getattr(model.config, "addition_embed_type", None) is None

    def widths(self):
        return {"prompt_embeds": (None, cross_attention_width(self.config))}

    def condition_rows(self, cond, what):
        if isinstance(cond, dict):
            return super().condition_rows(cond, what)["prompt_embeds"]
        return embedding_rows(cond, cross_attention_width(self.config), what)

    def canonical(self, cond):
        """A plain tensor (a ``{"prompt_embeds": …}`` dict is unwrapped)."""
        return cond["prompt_embeds"] if isinstance(cond, dict) and set(cond) == {"prompt_embeds"} else cond

    def call(self, model, x, time, cond):
        return model(x, time, encoder_hidden_states=cond).sample


class SDXL(Family):
    """SDXL: the UNet takes the pooled text embedding and the six micro-conditioning "time ids"
    (original size, crop, target size) through ``added_cond_kwargs``."""

    name, title, text = "sdxl", "SDXL UNet (UNet2DConditionModel, addition_embed_type='text_time')", True
    keys = ("prompt_embeds", "pooled_prompt_embeds", "add_time_ids")
    lora_pipeline = ("StableDiffusionXLPipeline", "unet_lora_layers")

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "UNet2DConditionModel" and \
            getattr(model.config, "addition_embed_type", None) == "text_time"

    def widths(self):
        cfg = self.config
        return {"prompt_embeds": (None, cross_attention_width(cfg)), "pooled_prompt_embeds": (None,),
                "add_time_ids": (None,)}

    def condition_rows(self, cond, what):
        out = super().condition_rows(cond, what)
        cfg = self.config
        got = out["pooled_prompt_embeds"].shape[1] + out["add_time_ids"].shape[1] * cfg.addition_time_embed_dim
        if got != cfg.projection_class_embeddings_input_dim:
            raise ValueError(
                f"{what}: pooled_prompt_embeds {list(out['pooled_prompt_embeds'].shape)} and add_time_ids "
                f"{list(out['add_time_ids'].shape)} do not fit this UNet: P + n·{cfg.addition_time_embed_dim} "
                f"must be its projection_class_embeddings_input_dim {cfg.projection_class_embeddings_input_dim} "
                "(SDXL base: P = 1280, n = 6)")
        return out

    def call(self, model, x, time, cond):
        extra = {"text_embeds": cond["pooled_prompt_embeds"], "time_ids": cond["add_time_ids"]}
        return model(x, time, encoder_hidden_states=cond["prompt_embeds"], added_cond_kwargs=extra).sample


class SD3(Family):
    name, title, text = "sd3", "SD3/3.5 (SD3Transformer2DModel)", True
    keys = ("prompt_embeds", "pooled_prompt_embeds")
    lora_pipeline = ("StableDiffusion3Pipeline", "transformer_lora_layers")

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "SD3Transformer2DModel"

    def widths(self):
        return {"prompt_embeds": (None, self.config.joint_attention_dim),
                "pooled_prompt_embeds": (self.config.pooled_projection_dim,)}

    def call(self, model, x, time, cond):
        return model(hidden_states=x, timestep=time, encoder_hidden_states=cond["prompt_embeds"],
                     pooled_projections=cond["pooled_prompt_embeds"]).sample


class Flux(Family):
    """Flux.1: the transformer sees 2×2 patches of the latent as tokens ("packed" latents) with
    their positions, takes σ itself as its time and, for the guidance-distilled dev model, a
    guidance scale. ``x`` stays unpacked ``[B, C, H, W]`` everywhere else."""

    name, title, text = "flux", "Flux.1 (FluxTransformer2DModel)", True
    keys = ("prompt_embeds", "pooled_prompt_embeds")
    optional = ("guidance",)
    lora_pipeline = ("FluxPipeline", "transformer_lora_layers")

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "FluxTransformer2DModel"

    def widths(self):
        out = {"prompt_embeds": (None, self.config.joint_attention_dim),
               "pooled_prompt_embeds": (self.config.pooled_projection_dim,)}
        if self.config.guidance_embeds:
            out["guidance"] = ()
        return out

    def call(self, model, x, time, cond):
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Flux packs 2×2 latent patches: latent height and width must be even, got {h}×{w}")
        packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        img_ids = torch.zeros(h // 2, w // 2, 3, device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.arange(h // 2, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.arange(w // 2, device=x.device, dtype=x.dtype)[None, :]
        emb = cond["prompt_embeds"]
        txt_ids = torch.zeros(emb.shape[1], 3, device=x.device, dtype=x.dtype)
        guidance = None
        if self.config.guidance_embeds:
            guidance = cond.get("guidance")
            guidance = torch.full((b,), FLUX_GUIDANCE, device=x.device, dtype=torch.float32) \
                if guidance is None else guidance.float()
        out = model(hidden_states=packed, timestep=time, guidance=guidance,
                    pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=emb,
                    txt_ids=txt_ids, img_ids=img_ids.reshape(-1, 3)).sample
        c_out = out.shape[-1] // 4
        return out.view(b, h // 2, w // 2, c_out, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c_out, h, w)

    def flow_input(self, timestep, num_train_timesteps):
        return timestep / num_train_timesteps  # σ, as FluxPipeline passes timestep / 1000

    @property
    def channels(self):
        return self.config.in_channels // 4  # it takes 2×2 patches of the latent

    def sample_shape(self):
        return None  # the transformer is resolution-free: the shape comes from the data

    def image_seq_len(self, shape):
        return (shape[-2] // 2) * (shape[-1] // 2)


class _MaskedPrompt(Family):
    """PixArt and Sana: a prompt embedding and (optionally) its attention mask."""

    def canonical(self, cond):
        """A dict (a bare float tensor is the prompt embedding without a mask)."""
        return {"prompt_embeds": cond} if torch.is_tensor(cond) and cond.is_floating_point() else cond


class PixArt(_MaskedPrompt):
    """PixArt-α/Σ: ε-prediction with a learned variance (2·C output channels), the T5 prompt's
    attention mask, and for PixArt-α at 1024 px the resolution and aspect ratio."""

    name, title, text = "pixart", "PixArt-α/Σ (PixArtTransformer2DModel)", True
    keys = ("prompt_embeds",)
    optional = ("prompt_attention_mask", "resolution", "aspect_ratio")

    @classmethod
    def matches(cls, model):
        return type(model).__name__ == "PixArtTransformer2DModel"

    def widths(self):
        return {"prompt_embeds": (None, self.config.caption_channels), "prompt_attention_mask": (None,),
                "resolution": (2,), "aspect_ratio": (1,)}

    def condition_rows(self, cond, what):
        out = super().condition_rows(cond, what)
        if self._needs_additional() and \
                not {"resolution", "aspect_ratio"} <= set(out):
            raise ValueError(f"{what}: this PixArt-α transformer uses additional conditions: give "
                             "'resolution' [N, 2] and 'aspect_ratio' [N, 1] (the pipeline's height, "
                             "width and height/width)")
        return out

    def _needs_additional(self) -> bool:
        flag = getattr(self.config, "use_additional_conditions", None)
        return self.config.sample_size == 128 if flag is None else bool(flag)

    def call(self, model, x, time, cond):
        extra = {"resolution": cond.get("resolution"), "aspect_ratio": cond.get("aspect_ratio")}
        return model(x, encoder_hidden_states=cond["prompt_embeds"], timestep=time,
                     encoder_attention_mask=cond.get("prompt_attention_mask"),
                     added_cond_kwargs=extra).sample


class Sana(_MaskedPrompt):
    name, title, text = "sana", "Sana (SanaTransformer2DModel)", True
    keys = ("prompt_embeds",)
    optional = ("prompt_attention_mask",)
    lora_pipeline = ("SanaPipeline", "transformer_lora_layers")

    @classmethod
    def matches(cls, model):  # SANA-Sprint (guidance embedding, SCM scheduler) is another family
        return type(model).__name__ == "SanaTransformer2DModel" and \
            not getattr(model.config, "guidance_embeds", False)

    def widths(self):
        return {"prompt_embeds": (None, self.config.caption_channels), "prompt_attention_mask": (None,)}

    def call(self, model, x, time, cond):
        return model(x, encoder_hidden_states=cond["prompt_embeds"], timestep=time,
                     encoder_attention_mask=cond.get("prompt_attention_mask")).sample

    def flow_input(self, timestep, num_train_timesteps):
        return timestep * float(getattr(self.config, "timestep_scale", 1.0))  # as SanaPipeline does


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


def _is_diffusers_model(model) -> bool:
    return any(c.__module__.startswith("diffusers.") and c.__name__ == "ModelMixin"
               for c in type(model).__mro__)


def embedding_rows(emb, width, what: str) -> torch.Tensor:
    """Prompt embeddings ``[L, D]`` or ``[N, L, D]`` checked against the width D → ``[N, L, D]``."""
    emb = torch.as_tensor(emb)
    if not emb.is_floating_point() or emb.dim() not in (2, 3) or emb.shape[-1] != width:
        raise ValueError(f"{what}: prompt embeddings must be a float tensor [L, {width}] or "
                         f"[N, L, {width}] (the UNet's cross_attention_dim), got "
                         f"{tuple(emb.shape)} {emb.dtype}; build them with "
                         "safemax.pipelines.prompt_embeddings(pipe, prompts)")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{what}: prompt embeddings contain NaN or Inf")
    return (emb if emb.dim() == 3 else emb.unsqueeze(0)).detach().float().cpu()


def cross_attention_width(config):
    """The prompt-embedding width D a UNet2DConditionModel takes (None if it takes none)."""
    width = getattr(config, "cross_attention_dim", None)
    if isinstance(width, (list, tuple)):
        if len(set(width)) != 1:
            raise ValueError(f"cross_attention_dim differs per block ({width}): not supported")
        width = width[0]
    return width
