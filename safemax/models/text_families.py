"""The text-to-image families: Stable Diffusion 1.x/2.x, SDXL, SD3/3.5, Flux.1, PixArt-α/Σ and
Sana, each called as its own diffusers pipeline calls it."""
import torch

from safemax.models.family import Family, cross_attention_width, embedding_rows

FLUX_GUIDANCE = 3.5  # Flux.1-dev's guidance input when a condition gives none (diffusers' training scripts)


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
