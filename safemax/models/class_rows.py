"""Forgetting through the class embedding alone (``Unlearner(..., train="class-embedding")``).

A class-conditional model looks each class id up in an embedding table (``UNet2DModel``'s
``class_embedding``; in ``DiTTransformer2DModel`` one ``class_embedder.embedding_table`` per
block). Training only the forgotten classes' rows of those tables leaves every other weight — and
every other class's row — bit-for-bit the original, so nothing the model does for a kept class
can change: no dip, no collapse, no retain cost, by construction. What it cannot do is remove
what the shared weights know about the class; docs/results/class-embedding.md measures how
shallow that is: relearning the row alone from 10 images brings the class back.

The other rows are held by a gradient hook that zeroes their gradient, so Adam's update of them is
exactly zero (its moments stay zero); every weight outside the tables is frozen. SAFEMax then
skips the retain rows altogether (their distillation loss is zero and has no gradient here) and
keeps no teacher: a step is one forward over the forget rows (``SafeMax.skips_retain_rows_when_rows_alone``).
"""
import torch

from safemax.models.families import DiT, family_of

TRAIN_CHOICES = ("all", "class-embedding", "cross-attention")   # (cross-attention: models.cross_attention)

# the row-only fit's learning rate when none is given: a row moves by about lr per coordinate and
# step under Adam and must travel several units, not a fine-tuning step's 5e-4; 0.3 forgets the
# digits in 5 steps, 1 overshoots (docs/results/class-embedding.md, the learning-rate sweep)
DEFAULT_LR = 0.3


def check_train(train: str):
    """``train`` is one of ``TRAIN_CHOICES`` (the Unlearner's; the relearning attacks also take
    ``"lora"``: ``safemax.evaluation.attacks.TRAINS``)."""
    if train not in TRAIN_CHOICES:
        raise ValueError(f"train must be one of {TRAIN_CHOICES}, got {train!r}")


def class_tables(model) -> list:
    """``[(name, weight)]`` of the embedding tables ``model`` looks class ids up in; a clear
    error for a model that has none (a text-conditioned one, a UNet without class embeddings)."""
    family = family_of(model)
    if isinstance(family, DiT):
        tables = [(n, p) for n, p in model.named_parameters()
                  if n.endswith("class_embedder.embedding_table.weight")]
    else:
        emb = getattr(model, "class_embedding", None)
        tables = [("class_embedding.weight", emb.weight)] if isinstance(emb, torch.nn.Embedding) else []
    if not tables:
        how = ("it is conditioned on text: train its weights (train=\"all\") or a LoRA adapter (lora_rank=...)"
               if family.text else "it has no class-embedding table (UNet2DModel needs num_class_embeds; "
               "DiTTransformer2DModel num_embeds_ada_norm)")
        raise ValueError(f"train=\"class-embedding\" needs a class-conditional model that looks class ids up "
                         f"in an embedding table; this {family.title} has none: {how}")
    return tables


def row_mask(weight: torch.Tensor, ids) -> torch.Tensor:
    """A boolean mask of ``weight``'s rows ``ids``, shaped to broadcast over the row (on the CPU)."""
    keep = torch.zeros(weight.shape[0], *([1] * (weight.dim() - 1)), dtype=torch.bool)
    keep[list(ids)] = True
    return keep


def train_rows_only(model, ids) -> list:
    """Freeze ``model`` except the rows ``ids`` of its class tables; returns the gradient hooks'
    handles (``handle.remove()`` undoes the row mask, not the freezing)."""
    tables = class_tables(model)
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    for name, weight in tables:
        bad = [i for i in ids if not 0 <= i < weight.shape[0]]
        if bad:
            raise ValueError(f"class ids {bad} are outside {name}'s {weight.shape[0]} rows")
        keep = row_mask(weight, ids)
        weight.requires_grad_(True)
        handles.append(weight.register_hook(
            lambda g, keep=keep: torch.where(keep.to(g.device), g, torch.zeros((), dtype=g.dtype, device=g.device))))
    return handles
