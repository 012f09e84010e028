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
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from tqdm import tqdm

from safemax.zoo.trainer import lr_factor, state_path

__all__ = ["StageRun", "train_stage"]


@dataclass
class StageRun:
    """A stage's outcome: the trained ``model``, the ``steps`` done (in all, across resumes), the
    ``seconds`` of training (in all), every step's loss, why it ``stopped`` ("steps" or
    "minutes") and where its state is (``state_file``, or None)."""
    model: torch.nn.Module
    steps: int = 0
    seconds: float = 0.0
    losses: list = field(default_factory=list)
    stopped: str = ""
    state_file: Optional[str] = None

    def mean_loss(self, last: int = 100) -> float:
        """The mean loss of the last ``last`` steps (NaN before any step)."""
        tail = self.losses[-last:]
        return sum(tail) / len(tail) if tail else float("nan")


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
    if resume:
        _restore(run, opt, g, settings)
        print(f"resumed {name} at step {run.steps} of {steps} ({run.seconds / 60:.1f} min done)")
    if work:
        os.makedirs(work, exist_ok=True)
    first, before = run.steps, run.seconds
    start = last_save = time.time()

    def save():
        run.seconds = before + time.time() - start
        _save(run, opt, g, settings)

    interrupted = []   # Ctrl-C ends the step under way first: the state saved is a step boundary
    catch = work is not None and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum)) if catch else None
    model.train()
    bar = tqdm(range(first, steps), desc=desc or f"training {name}", initial=first, total=steps,
               disable=not progress)
    try:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, steps, warmup)
            loss = loss_fn(model, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            run.losses.append(loss.item())
            run.steps, run.seconds = step + 1, before + time.time() - start
            bar.set_postfix(loss=f"{run.losses[-1]:.4f}", refresh=False)
            if callback is not None:
                callback(run)
            if interrupted:
                save()
                bar.write(f"interrupted after step {run.steps}; the state is in {run.state_file}: resume from it")
                raise SystemExit(130)
            if work and time.time() - last_save > checkpoint_minutes * 60:
                save()
                last_save = time.time()
            if minutes is not None and run.steps < steps and time.time() - start > minutes * 60:
                run.stopped = "minutes"
                bar.write(f"time budget reached after {run.steps} steps")
                break
    finally:
        if catch:
            signal.signal(signal.SIGINT, previous)
        bar.close()
        model.eval()
    run.stopped = run.stopped or "steps"
    if work:
        save()
    return run


def _save(run: StageRun, opt, g: torch.Generator, settings: dict):
    tmp = run.state_file + ".tmp"
    torch.save(dict(model=run.model.state_dict(), opt=opt.state_dict(), generator=g.get_state(),
                    step=run.steps, seconds=run.seconds, losses=run.losses, **settings), tmp)
    os.replace(tmp, run.state_file)   # never a half-written state


def _restore(run: StageRun, opt, g: torch.Generator, settings: dict):
    if not os.path.exists(run.state_file):
        raise FileNotFoundError(f"resume: no training state at {run.state_file}; start without resume")
    device = next(run.model.parameters()).device
    state = torch.load(run.state_file, weights_only=False, map_location=device)
    made = {k: state.get(k) for k in settings}
    if made != settings:
        raise ValueError(f"resume: {run.state_file} was made with "
                         f"{', '.join(f'{k}={v}' for k, v in made.items())}; pass the same settings")
    run.model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    g.set_state(state["generator"].cpu())
    run.steps, run.seconds, run.losses = state["step"], state["seconds"], list(state["losses"])
