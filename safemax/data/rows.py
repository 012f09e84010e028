"""Batches of conditions, row by row.

A batch of conditions is a tensor whose first dimension is the row — class ids ``[B]``, prompt
embeddings ``[B, L, D]`` — or a dict of such tensors keyed by the pipelines' own names, e.g.
SDXL's ``{"prompt_embeds": [B, L, D], "pooled_prompt_embeds": [B, P], "add_time_ids": [B, 6]}``.
These functions treat both alike, so the data, the batch builder, the methods and the sampler
never ask which one they hold.
"""
import torch


def apply(fn, cond):
    """``fn`` on the tensor, or on each tensor of the dict."""
    return {k: fn(v) for k, v in cond.items()} if isinstance(cond, dict) else fn(cond)


def take(cond, index):
    """The rows ``index`` (a slice, an index tensor or a boolean mask)."""
    return apply(lambda v: v[index], cond)


def cat(conds: list):
    """The rows of several batches, in order (dicts need the same keys)."""
    if isinstance(conds[0], dict):
        keys = set(conds[0])
        for c in conds[1:]:
            if not isinstance(c, dict) or set(c) != keys:
                raise ValueError(f"conditions with different keys cannot be batched together: "
                                 f"{sorted(keys)} and {sorted(c) if isinstance(c, dict) else 'a tensor'}")
        return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}
    return torch.cat(conds)


def count(cond) -> int:
    """The number of rows."""
    return len(next(iter(cond.values()))) if isinstance(cond, dict) else len(cond)


def to(cond, device, dtype: torch.dtype = None):
    """On ``device``; floating tensors also in ``dtype`` (when given), ids and masks unchanged."""
    def move(v):
        v = v.to(device)
        return v.to(dtype) if dtype is not None and v.is_floating_point() else v
    return apply(move, cond)


def normalized(cond):
    """Floating tensors as float32, the others (class ids, attention masks) as int64."""
    return apply(lambda v: v.float() if v.is_floating_point() else v.long(), cond)


def stack(items: list):
    """One condition per item → a batch: dicts of per-row tensors → a dict of batches; tensors →
    a stacked tensor; class ids (ints, numpy or 0-dim tensors) → ``[N]`` int64."""
    if isinstance(items[0], dict):
        return {k: torch.stack([torch.as_tensor(c[k]) for c in items]) for k in items[0]}
    items = [torch.as_tensor(c) for c in items]
    if items[0].dim() > 0:
        return torch.stack(items)
    return torch.tensor([int(c) for c in items])


def is_class_ids(cond) -> bool:
    """Whether the batch holds class ids (an integer tensor) rather than text conditions."""
    return not isinstance(cond, dict) and not cond.is_floating_point()


def describe(cond) -> str:
    """Shapes and dtypes of one batch, for error messages: ``[4, 77, 768] float32`` or
    ``{prompt_embeds: [4, 77, 2048] float32, …}``."""
    one = lambda v: f"{list(v.shape)} {str(v.dtype).replace('torch.', '')}"
    if isinstance(cond, dict):
        return "{" + ", ".join(f"{k}: {one(v)}" for k, v in cond.items()) + "}"
    return one(cond)
