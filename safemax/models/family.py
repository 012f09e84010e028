"""The base of every model family (how a model is called and the conditions it takes) and the
checks of conditions and configs the families share; ``safemax.models.families`` lists them."""
import torch

from safemax.data import rows


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
                             f"{self._key_list()} (safemax.models.pipelines.prompt_embeddings(pipe, prompts) "
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
            raise ValueError("a dict of conditions needs a diffusers text-to-image model "
                             "(safemax.models.families.supported() lists them); this model takes a tensor")
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
                         "safemax.models.pipelines.prompt_embeddings(pipe, prompts)")
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


def class_count(model):
    """How many class labels a class-conditional diffusers model takes: ``num_class_embeds``
    (UNet2DModel) or, for DiT (``DiTTransformer2DModel``, adaptive-norm-zero class
    conditioning), ``num_embeds_ada_norm``; None for an unconditional model."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "num_class_embeds", None) is not None:
        return cfg.num_class_embeds
    if getattr(cfg, "norm_type", None) == "ada_norm_zero":
        return getattr(cfg, "num_embeds_ada_norm", None)
    return None
