"""A resumable training loop for the parts of a pipeline that are not denoisers — the small CLIP
and the VAE of ``safemax.zoo.sd_pipeline``. Denoisers train through ``safemax.zoo.trainer``
(``train_denoiser``); this is its counterpart for a plain loss, with the same guarantees:

- ``loss_fn(model, generator) -> loss``: draws its batch (and any noise) from ``generator``, the
  stage's one random stream, seeded with ``seed``; so a run is reproducible and a resumed run
  continues the very same stream.
- AdamW, gradients clipped to ``max_grad_norm``, the learning rate warmed up linearly and then
  on a cosine to 0 (``safemax.zoo.trainer.lr_factor``).
- Nothing lost on interruption when ``work`` is given: the whole state (weights, optimiser,
  generator, losses) is written atomically to ``{work}/{name}-training.pt`` every
  ``checkpoint_minutes``, at the end, and on Ctrl-C after the step under way (then
  ``SystemExit(130)``); ``resume=True`` continues from it bit for bit.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from safemax.zoo.loop_state import LoopRun, TrainingLoop
from safemax.zoo.trainer import lr_factor, state_path

__all__ = ["StageRun", "train_stage"]


@dataclass
class StageRun(LoopRun):
    """A stage's outcome: the trained ``model``, the ``steps`` done (in all, across resumes), the
    ``seconds`` of training (in all), every step's loss, why it ``stopped`` ("steps" or
    "minutes") and where its state is (``state_file``, or None)."""
    model: torch.nn.Module


def train_stage(model: torch.nn.Module, loss_fn: Callable, *, steps: int, lr: float, seed: int = 0,
                warmup: int = 100, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                minutes: float = None, work: str = None, name: str = "stage", resume: bool = False,
                checkpoint_minutes: float = 10.0, progress: bool = True, desc: str = None,
                callback: Callable = None, fixed: dict = None) -> StageRun:
    """Trains ``model`` in place to minimise ``loss_fn(model, generator)``; returns a :class:`StageRun`.

    ``minutes`` stops this session after that long (the state is kept: ``resume`` goes on);
    ``resume`` needs ``work`` and the same ``steps``, ``lr``, ``seed`` and ``fixed`` (other
    settings the state must agree on, e.g. ``{"batch_size": 64}``), else ``ValueError``;
    ``callback(run)`` is called after every step.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if resume and work is None:
        raise ValueError("resume needs work= (the folder of the training state)")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    run = StageRun(model, state_file=state_path(work, name) if work else None)
    settings = dict(steps=steps, lr=lr, seed=seed, **(fixed or {}))
    loop = TrainingLoop(run, {"model": model}, opt, g, settings, steps=steps, work=work, name=name,
                        resume=resume, checkpoint_minutes=checkpoint_minutes, progress=progress, desc=desc)
    model.train()
    try:
        with loop:
            for step in loop:
                for group in opt.param_groups:
                    group["lr"] = lr * lr_factor(step, steps, warmup)
                loss = loss_fn(model, g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                opt.step()
                loop.record(step, loss.item())
                if callback is not None:
                    callback(run)
                loop.checkpoint()
                if minutes is not None and run.steps < steps and loop.session_seconds() > minutes * 60:
                    loop.stop("minutes")
                    break
    finally:
        model.eval()
    return loop.finish()
