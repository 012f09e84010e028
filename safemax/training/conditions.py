"""What is forgotten: class ids of a class-conditional model or text concepts (prompt
embeddings) of a text-conditional one — their validation, the checks of the data a fit is
given, and the data-free forget set the original model generates."""
import torch

from safemax.data import Batches, ConditionedImages, balanced_labels, rows
from safemax.models.families import (
    class_count,
    cross_attention_width,
    family_of,
    supported,
)
from safemax.models.sampling import sample


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


def concepts(forget: dict, family) -> dict:
    """Validate text concepts ``{name: condition}`` for the model's family → ``{name: rows}``
    (one or N rows each: a prompt embedding ``[L, D]`` / ``[N, L, D]``, or a text family's dict)."""
    if family.text is False or (family.text is None and cross_attention_width(family.config) is None):
        raise ValueError("forget was given as prompt embeddings, but the model is class-conditional "
                         f"({family.title}): forget classes by id instead, or give a text model "
                         f"({supported()})")
    if not forget:
        raise ValueError("forget is empty: name at least one concept")
    out = {}
    for name, cond in forget.items():
        if not isinstance(name, str):
            raise ValueError(f"concept names must be strings, got {name!r}")
        out[name] = family.condition_rows(cond, f"concept {name!r}")
    forms = {_form(c) for c in out.values()}
    if len(forms) != 1:
        raise ValueError("all concepts need conditions of the same form and prompt length L "
                         "(pad or truncate prompts to the same length, as the pipelines do), got "
                         + "; ".join(f"{n}: {rows.describe(c)}" for n, c in out.items()))
    return out


def _form(cond):
    """What must agree for rows to be batched together: keys and per-row shapes."""
    if isinstance(cond, dict):
        return tuple(sorted((k, tuple(v.shape[1:])) for k, v in cond.items()))
    return tuple(cond.shape[1:])


class ForgetTargets:
    """The classes or concepts to forget, validated against the model.

    ``ids``: sorted class ids, or the concept names; ``concepts``: ``{name: rows}`` (prompt
    embeddings ``[N, L, D]`` or a text family's dict with N rows) or None; ``num_classes``: the
    model's class count (None for a text-conditional model); ``family``: how the model is called.
    """

    def __init__(self, forget, unet):
        self.family = family_of(unet)
        if isinstance(forget, dict):  # text concepts
            self.concepts, self.num_classes = concepts(forget, self.family), None
            self.ids = list(self.concepts)
        else:
            self.concepts, self.num_classes = None, class_count(unet)
            self.ids = class_ids(forget, self.num_classes)

    @property
    def kept_classes(self) -> list:
        """The class ids not forgotten (empty for concepts)."""
        return [] if self.num_classes is None else \
            [c for c in range(self.num_classes) if c not in self.ids]

    def conditions(self, n: int):
        """``n`` conditions spread evenly over the forget classes or concepts' rows."""
        if self.concepts is not None:
            prompts = rows.cat(list(self.concepts.values()))
            return rows.take(prompts, torch.arange(n) % rows.count(prompts))
        return balanced_labels(self.ids, n)

    def generate(self, unet, scheduler, n: int, seed: int, num_inference_steps: int = 50,
                 shape=None, images: bool = True):
        """Data-free forgetting: ``n`` images (or latents, of ``shape`` ``(C, H, W)``; by default
        the model's sample size) ``unet`` (the original model) draws for the forget classes or
        concepts (plain conditional sampling), as ``(image, condition)`` items. ``images=False``:
        the conditions only, with zero images of that shape (for forget rows that replace their
        image by Gaussian noise)."""
        conds = self.conditions(n)
        if not images:
            shape = tuple(shape) if shape is not None else self.family.sample_shape()
            return ConditionedImages(torch.zeros(n, *shape), conds)
        drawn = sample(unet, scheduler, conds, num_inference_steps=num_inference_steps, seed=seed,
                       shape=shape)
        return ConditionedImages(drawn, conds)

    def form(self, cond):
        """A batch of conditions in the model family's one form (``Batches`` apply it)."""
        return self.family.canonical(cond)

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
                             "safemax.models.pipelines.encode_images)" if self.concepts else ""))

    def _check_class_data(self, retain: Batches, forget: Batches):
        for batches in (retain, forget):
            if batches is None:
                continue
            _, cond = batches.peek()
            if not rows.is_class_ids(cond):
                raise ValueError(f"{batches.name} data yield text conditions ({rows.describe(cond)}), "
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
        want = _form(next(iter(self.concepts.values())))
        example = rows.describe(rows.take(next(iter(self.concepts.values())), slice(0, 1)))
        for batches in (retain, forget):
            if batches is None:
                continue
            _, cond = batches.peek()
            if rows.is_class_ids(cond):
                raise ValueError(f"{batches.name} data must yield (latent, condition) items like the "
                                 f"concepts' {example} for this text-conditional model, got class ids")
            checked = self.family.condition_rows(cond, f"{batches.name} data")
            if _form(checked) != want:
                raise ValueError(
                    f"{batches.name} data must yield (latent, condition) items of the concepts' form "
                    f"{example} (per row), got {rows.describe(cond)}")
