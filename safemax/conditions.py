"""What is forgotten: class ids of a class-conditional model or text concepts (prompt
embeddings) of a text-conditional one — their validation, the checks of the data a fit is
given, and the data-free forget set the original model generates."""
import torch
from torch.utils.data import TensorDataset

from .data import Batches, balanced_labels
from .sampling import sample


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


def class_ids(forget, num_classes) -> list:
    """Validate the class ids to forget → sorted unique list."""
    if num_classes is None:
        raise ValueError(
            "unet is not class-conditional (its config has no num_class_embeds, and it is not "
            "a DiT with num_embeds_ada_norm): give class ids for a class-conditional model, or "
            "forget={name: prompt embeddings} for a text-conditional UNet2DConditionModel")
    forget = [forget] if isinstance(forget, int) else list(forget)
    if not forget:
        raise ValueError("forget is empty: name at least one class id to forget")
    for c in forget:
        if not isinstance(c, int) or not 0 <= c < num_classes:
            raise ValueError(f"forget class {c!r} is not a class id of this UNet "
                             f"({num_classes} classes: ids 0..{num_classes - 1})")
    if len(set(forget)) == num_classes:
        raise ValueError("forget names every class: nothing would be left to keep")
    return sorted(set(forget))


def cross_attention_width(unet):
    """The prompt-embedding width D a text-conditional UNet takes (None if it takes none)."""
    width = getattr(unet.config, "cross_attention_dim", None)
    if isinstance(width, (list, tuple)):
        if len(set(width)) != 1:
            raise ValueError(f"cross_attention_dim differs per block ({width}): not supported")
        width = width[0]
    return width


def concepts(forget: dict, unet) -> dict:
    """Validate text concepts ``{name: prompt embeddings [L, D] or [N, L, D]}`` → ``[N, L, D]``."""
    width = cross_attention_width(unet)
    if width is None:
        raise ValueError("forget was given as prompt embeddings, but the model has no "
                         "cross_attention_dim: a concept needs a text-conditional UNet "
                         "(UNet2DConditionModel); forget classes by id instead")
    if not forget:
        raise ValueError("forget is empty: name at least one concept")
    out = {}
    for name, emb in forget.items():
        if not isinstance(name, str):
            raise ValueError(f"concept names must be strings, got {name!r}")
        emb = torch.as_tensor(emb)
        if not emb.is_floating_point() or emb.dim() not in (2, 3) or emb.shape[-1] != width:
            raise ValueError(f"concept {name!r}: prompt embeddings must be a float tensor [L, {width}] "
                             f"or [N, L, {width}] (the UNet's cross_attention_dim), got "
                             f"{tuple(emb.shape)} {emb.dtype}; build them with "
                             "safemax.stable_diffusion.prompt_embeddings(pipe, prompts)")
        if not torch.isfinite(emb).all():
            raise ValueError(f"concept {name!r}: prompt embeddings contain NaN or Inf")
        out[name] = (emb if emb.dim() == 3 else emb.unsqueeze(0)).detach().float().cpu()
    lengths = {e.shape[1] for e in out.values()}
    if len(lengths) != 1:
        raise ValueError(f"all concepts' embeddings need the same length L, got {sorted(lengths)}")
    return out


class ForgetTargets:
    """The classes or concepts to forget, validated against the model.

    ``ids``: sorted class ids, or the concept names; ``concepts``: ``{name: [N, L, D]}`` or None;
    ``num_classes``: the model's class count (None for a text-conditional model).
    """

    def __init__(self, forget, unet):
        if isinstance(forget, dict):  # text concepts: prompt embeddings
            self.concepts, self.num_classes = concepts(forget, unet), None
            self.ids = list(self.concepts)
        else:
            self.concepts, self.num_classes = None, class_count(unet)
            self.ids = class_ids(forget, self.num_classes)

    @property
    def kept_classes(self) -> list:
        """The class ids not forgotten (empty for concepts)."""
        return [] if self.num_classes is None else \
            [c for c in range(self.num_classes) if c not in self.ids]

    def generate(self, unet, scheduler, n: int, seed: int, num_inference_steps: int = 50) -> TensorDataset:
        """Data-free forgetting: ``n`` images (or latents) ``unet`` (the original model) draws for
        the forget classes or concepts (plain conditional sampling), as ``(image, condition)``."""
        if self.concepts is not None:
            prompts = torch.cat(list(self.concepts.values()))
            conds = prompts[torch.arange(n) % len(prompts)]
        else:
            conds = balanced_labels(self.ids, n)
        images = sample(unet, scheduler, conds, num_inference_steps=num_inference_steps, seed=seed)
        return TensorDataset(images, conds)

    def check_data(self, retain: Batches, forget: Batches, in_channels: int):
        """Raise, before any step, if the fit's data do not fit the model and the targets."""
        if self.concepts is not None:
            self._check_text_data(retain, forget)
        elif retain is not None:
            self._check_class_data(retain, forget)
        if retain is None:  # a method that needs no real data
            return
        images, _ = retain.peek()
        if images.shape[1] != in_channels:
            raise ValueError(f"retain images have {images.shape[1]} channels, the UNet takes "
                             f"{in_channels}" + (" (latents: encode images with "
                             "safemax.stable_diffusion.encode_images)" if self.concepts else ""))

    def _check_class_data(self, retain: Batches, forget: Batches):
        for batches in (retain, forget):
            if batches is None:
                continue
            _, cond = batches.peek()
            if cond.is_floating_point():
                raise ValueError(f"{batches.name} data yield prompt embeddings {list(cond.shape[1:])}, "
                                 "but this model is class-conditional: give class ids")
        labels = retain.labels()
        if labels is not None:
            bad = sorted(set(labels.tolist()) & set(self.ids))
            if bad:
                raise ValueError(f"retain data contains forget class(es) {bad}; split it first, "
                                 "e.g. safemax.data.split_by_class(dataset, forget)")
            out = sorted(c for c in set(labels.tolist()) if not 0 <= c < self.num_classes)
            if out:
                raise ValueError(f"retain labels {out} are not class ids of this UNet "
                                 f"({self.num_classes} classes)")
        labels = forget.labels() if forget is not None else None
        if labels is not None:
            bad = sorted(set(labels.tolist()) - set(self.ids))
            if bad:
                raise ValueError(f"forget data contains classes {bad} that are not being "
                                 f"forgotten ({self.ids})")

    def _check_text_data(self, retain: Batches, forget: Batches):
        shape = next(iter(self.concepts.values())).shape[1:]
        for batches in (retain, forget):
            if batches is None:
                continue
            _, cond = batches.peek()
            if not cond.is_floating_point() or tuple(cond.shape[1:]) != tuple(shape):
                raise ValueError(
                    f"{batches.name} data must yield (latent, prompt embeddings {list(shape)}) for "
                    f"this text-conditional UNet, got conditions of shape {list(cond.shape[1:])} "
                    f"{cond.dtype}")
