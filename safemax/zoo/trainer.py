"""One trainer for every diffusion model the project trains from scratch: the embedded
class-conditional DDPMs (``python -m safemax.zoo.train``), the rectified-flow UNet of
``benchmarks/flow_digits.py`` and the text-conditional UNet of ``benchmarks/concept_digits.py``.

``train_denoiser(unet, scheduler, data, steps=..., batch_size=..., lr=...)`` trains ``unet`` in
place and keeps an exponential moving average of its weights (what the project ships). What the
model learns comes from the scheduler's kind, through ``safemax.models.schedule``:

| scheduler | noisy input | target | model's time input |
| --- | --- | --- | --- |
| DDPM-style (``alphas_cumprod``), ``prediction_type="epsilon"`` | √ᾱ_t·x0 + √(1−ᾱ_t)·ε | ε | t |
| the same, ``prediction_type="v_prediction"`` | the same | v (``scheduler.get_velocity``) | t |
| rectified flow (``FlowMatchEulerDiscreteScheduler``) | (1−σ_t)·x0 + σ_t·ε | ε − x0 | T·σ_t (Flux: σ_t) |

The DDPM forward process is formed in the precision of the scheduler's own ᾱ table (float32 for
diffusers' schedulers, as ``scheduler.add_noise`` forms it); the flow one from the float64 σ table
(``schedule.flow_sigmas``), as the Unlearner's ``FlowDenoiser`` does.

The condition is a hook, ``condition(labels, generator) -> batch of conditions``, called on each
batch's labels (the data's second tensor): ``ClassLabels()`` (the default) passes class ids to a
``UNet2DModel`` or DiT; ``Prompts(encode, empty, drop)`` maps the labels to prompt embeddings for a
``UNet2DConditionModel`` (or any text family's dict of conditions) and replaces a share ``drop`` of
the rows by the empty prompt's condition, so that classifier-free guidance works.

Each step draws, from one generator seeded with ``seed`` and in this order: the batch's rows,
the augmentation's draws, the condition's draws (the dropped rows), the timesteps and the noise;
so a run is the same on any device (its floats are not bit for bit). The learning rate warms up
linearly over ``warmup`` steps, then follows a cosine to 0 over ``steps`` (or, with
``anneal_minutes``, over whichever of the steps and those minutes of training ends first).

Nothing is lost on interruption when ``work`` (a folder) is given: the whole training state
(weights, EMA, optimiser, random generator, losses) is written there every
``checkpoint_minutes``, at the end, and on Ctrl-C after the step under way (then ``SystemExit(130)``);
``resume=True`` continues from it bit for bit.
"""
import copy
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from safemax.data import rows
from safemax.models import schedule
from safemax.models.families import class_count, family_of
from safemax.models.sampling import epsilon_part
from safemax.zoo.loop_state import LoopRun, TrainingLoop

__all__ = ["train_denoiser", "Run", "ClassLabels", "Prompts", "Objective", "lr_factor", "state_path"]


# ---------------------------------------------------------------- conditions
class ClassLabels:
    """The condition of a class-conditional model (``UNet2DModel``, DiT): the batch's class ids."""

    text = False

    def __call__(self, labels: torch.Tensor, generator: torch.Generator):
        return labels


class Prompts:
    """The condition of a text-conditional model: ``encode(labels)`` gives the batch's prompt
    embeddings ``[B, L, D]`` (or a text family's dict of them, e.g. SDXL's), and each row is
    replaced with probability ``drop`` by ``empty``, the empty prompt's condition (one row:
    ``[L, D]``, or a dict of rows), so that the model also learns the unconditional prediction
    that classifier-free guidance needs. ``encode`` may be a stand-in table (``table.__getitem__``)
    or a text encoder behind a tokenizer."""

    text = True

    def __init__(self, encode: Callable, empty, drop: float = 0.1):
        if not callable(encode):
            raise TypeError(f"Prompts: encode must be a callable labels -> prompt embeddings, got {type(encode).__name__}")
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"Prompts: drop must be in [0, 1), got {drop}")
        self.encode, self.empty, self.drop = encode, empty, drop

    def __call__(self, labels: torch.Tensor, generator: torch.Generator):
        cond = self.encode(labels)
        if self.drop > 0:
            dropped = torch.rand(len(labels), generator=generator) < self.drop
            cond = _with_rows(cond, dropped, self.empty)
        return cond


def _with_rows(cond, mask: torch.Tensor, row):
    """``cond`` with the rows of ``mask`` replaced by ``row`` (a tensor, or a dict like cond)."""
    def put(v, r):
        r = torch.as_tensor(r).to(device=v.device, dtype=v.dtype)
        return torch.where(mask.to(v.device).view(-1, *([1] * (v.dim() - 1))), r, v)
    if isinstance(cond, dict):
        if not isinstance(row, dict) or set(row) != set(cond):
            raise ValueError(f"Prompts: the empty condition must have the keys {sorted(cond)} of encode's")
        return {k: put(v, row[k]) for k, v in cond.items()}
    return put(cond, row)


def _check_condition(unet, family, condition, labels):
    wants_text = getattr(condition, "text", None)
    if family.text and wants_text is False:
        raise ValueError(f"a {family.title} takes prompt embeddings, not class ids: pass "
                         "condition=Prompts(encode, empty) (safemax.zoo.trainer.Prompts)")
    if family.text is False and wants_text:
        raise ValueError(f"a {family.title} takes class ids, not prompt embeddings: leave condition "
                         "as ClassLabels()")
    classes = class_count(unet) if isinstance(condition, ClassLabels) else None
    if classes is not None and (labels.is_floating_point() or labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"data: class labels must be integers in 0..{classes - 1} (the model's "
                         f"num_class_embeds), got {labels.dtype} from {labels.min().item()} to {labels.max().item()}")


# ---------------------------------------------------------------- what the model learns
class Objective:
    """The forward process and the training target of a scheduler's kind (the module's table):
    ``objective(x0, t, eps) -> (noisy input, the model's time input, target)`` in ``dtype``.
    A scheduler of no known kind raises: ``TypeError`` (neither ᾱ nor a flow σ table),
    ``ValueError`` (a prediction type other than ε, v or a velocity)."""

    def __init__(self, scheduler, family, device=None, dtype: torch.dtype = torch.float32):
        self.scheduler, self.family, self.dtype = scheduler, family, dtype
        if schedule.is_flow(scheduler):
            self.kind = "flow"
            self.table = schedule.flow_sigmas(scheduler).to(device)
            self.T = int(scheduler.config.num_train_timesteps)
            return
        table = schedule.alphas_cumprod(scheduler)
        self.kind = schedule.prediction_type(scheduler)
        if self.kind == "v_prediction" and not callable(getattr(scheduler, "get_velocity", None)):
            raise TypeError(f"scheduler {type(scheduler).__name__} predicts v but has no get_velocity "
                            "(the v target); train with a DDPMScheduler or DDIMScheduler of the same config")
        self.table, self.T = table.to(device), table.shape[0]

    @property
    def num_train_timesteps(self) -> int:
        return self.T

    def __call__(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        if self.kind == "flow":
            x_t, target = schedule.add_flow_noise(self.table, x0, t, eps, self.dtype)
            time_input = self.family.flow_input((self.table[t] * self.T).to(torch.float32), self.T)
            return x_t, time_input, target
        x_t, target = schedule.add_noise(self.table, x0, t, eps, self.dtype)
        if self.kind == "v_prediction":
            target = self.scheduler.get_velocity(x0, eps, t).to(self.dtype)
        return x_t, t, target


def lr_factor(step: int, steps: int, warmup: int = 200, progress: float = None) -> float:
    """The learning rate of ``step`` (0-based) over the peak: a linear warm-up over ``warmup``
    steps times a cosine from 1 to 0 over ``steps`` (or over ``progress`` ∈ [0, 1] when given)."""
    angle = math.pi * step / steps if progress is None else math.pi * progress
    return (min(1.0, (step + 1) / warmup) if warmup else 1.0) * 0.5 * (1 + math.cos(angle))


# ---------------------------------------------------------------- the run
@dataclass
class Run(LoopRun):
    """A training's outcome: the trained ``unet``, its ``ema``, the ``steps`` done (in all, across
    resumes), the ``seconds`` of training (in all), every step's loss, why it ``stopped``
    ("steps", "minutes" or "anneal_minutes") and where its state is (``state_file``, or None)."""
    unet: torch.nn.Module
    ema: torch.nn.Module


def state_path(work: str, name: str) -> str:
    """Where ``train_denoiser(work=work, name=name)`` keeps its training state."""
    return os.path.join(work, f"{name}-training.pt")


def _tensors(data):
    images, labels = data.tensors if hasattr(data, "tensors") else data
    if not (torch.is_tensor(images) and images.is_floating_point() and images.dim() == 4):
        raise ValueError(f"data: images must be a float tensor [N, C, H, W], got "
                         f"{tuple(getattr(images, 'shape', ()))} {getattr(images, 'dtype', type(images).__name__)}")
    if not torch.is_tensor(labels) or len(labels) != len(images) or len(images) == 0:
        raise ValueError(f"data: need one label per image and at least one image, got {len(images)} "
                         f"images and {len(labels) if torch.is_tensor(labels) else labels!r} labels")
    return images, labels


def train_denoiser(unet, scheduler, data, *, steps: int, batch_size: int, lr: float, seed: int = 0,
                   condition: Callable = None, augment: Callable = None, warmup: int = 200,
                   anneal_minutes: float = None, weight_decay: float = 0.0, max_grad_norm: float = 1.0,
                   ema_decay: float = 0.999, minutes: float = None, work: str = None, name: str = "model",
                   resume: bool = False, checkpoint_minutes: float = 10.0, progress: bool = True,
                   desc: str = None, log_every: int = 0, callback: Callable = None) -> Run:
    """Trains ``unet`` (in place, on its device) with ``scheduler``'s objective on ``data`` (a
    ``TensorDataset`` or a pair ``(images [N, C, H, W], labels [N])``); returns a :class:`Run`.

    - ``condition(labels, generator)``: the batch's conditions (default ``ClassLabels()``;
      ``Prompts(encode, empty, drop)`` for a text-conditional model).
    - ``augment(x0, generator)``: images → augmented images (e.g. ``safemax.zoo.train.shift_images``).
    - AdamW (``lr``, ``weight_decay``), gradients clipped to ``max_grad_norm`` (None: not
      clipped), warm-up + cosine (``warmup``, ``anneal_minutes``: see the module), EMA with decay
      min(``ema_decay``, (1 + s)/(10 + s)) at step s.
    - ``minutes``: stop this session after that long (the state is kept: resume goes on);
      ``anneal_minutes``: the whole training's time budget, the cosine ends with it.
    - ``work``: folder of the resumable state ``{name}-training.pt``; ``resume``: continue from it
      (the same ``steps``, ``lr``, ``seed`` and ``batch_size``, or a ``ValueError``).
    - ``progress``: a tqdm bar (``desc``); ``log_every``: also write the mean loss every that many
      steps; ``callback(run)``: called after every step (``run.steps`` done so far).
    """
    for what, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    for what, value in (("minutes", minutes), ("anneal_minutes", anneal_minutes)):
        if value is not None and not value > 0:
            raise ValueError(f"{what} must be positive (or None: no time limit), got {value!r}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    if resume and work is None:
        raise ValueError("resume needs work= (the folder of the training state)")
    images, labels = _tensors(data)
    family = family_of(unet)
    condition = ClassLabels() if condition is None else condition
    _check_condition(unet, family, condition, labels)
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    objective = Objective(scheduler, family, device, dtype)
    images, labels = images.to(device), labels.to(device)
    n, T = images.shape[0], objective.num_train_timesteps

    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    run = Run(unet, ema, state_file=state_path(work, name) if work else None)
    settings = dict(steps=steps, lr=lr, seed=seed, batch_size=batch_size)
    loop = TrainingLoop(run, {"unet": unet, "ema": ema}, opt, g, settings, steps=steps, work=work,
                        name=name, resume=resume, missing_ok=True,   # (states of older versions lack batch_size)
                        checkpoint_minutes=checkpoint_minutes, progress=progress, desc=desc)
    with loop:
        for step in loop:
            elapsed = loop.seconds()
            share = None if anneal_minutes is None else min(1.0, max(step / steps, elapsed / 60 / anneal_minutes))
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, steps, warmup, share)
            idx = torch.randint(0, n, (batch_size,), generator=g).to(device)
            x0 = images[idx]
            if augment is not None:
                x0 = augment(x0, g)
            cond = rows.to(condition(labels[idx], g), device, dtype)
            t = torch.randint(0, T, (batch_size,), generator=g).to(device)
            eps = torch.randn(x0.shape, generator=g).to(device)
            x_t, time_input, target = objective(x0, t, eps)
            pred = epsilon_part(family.call(unet, x_t, time_input, cond), x_t.shape[1])
            loss = F.mse_loss(pred, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), max_grad_norm)
            opt.step()
            with torch.no_grad():
                d = min(ema_decay, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - d)
            loop.record(step, loss.item())
            if log_every and run.steps % log_every == 0:
                loop.write(f"step {run.steps}: mean loss of the last {log_every} {run.mean_loss(log_every):.4f}, "
                           f"{run.seconds / 60:.1f} min")
            if callback is not None:
                callback(run)
            loop.checkpoint()
            if minutes is not None and loop.session_seconds() > minutes * 60:
                loop.stop("minutes")
                break
            if share is not None and run.seconds >= anneal_minutes * 60:
                loop.stop("anneal_minutes")
                break
    return loop.finish()
