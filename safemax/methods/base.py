"""What every method shares: the ``Method`` interface the ``Unlearner`` drives, the batch of
forget and retain rows (``Batch``, ``denoising_batch``: one batch builder, so the methods differ
only in the forget rows' timesteps and sources) and the plain denoising loss (``mse``).

What a method sees of the Unlearner ``u``: ``u.denoiser`` (``noisy``, ``predict``, the schedule),
``u.targets`` (what is forgotten), ``u.generator``, ``u.local`` (this process's rows),
``u.trainable()`` and ``u.seed``.
"""
import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch

from safemax.data import rows
from safemax.settings import Settings


@dataclass(frozen=True)
class NoSettings(Settings):
    """A method without settings (gradient ascent)."""


def frozen_original(u):
    """The original model, called like the one being trained, never trained itself: with a LoRA
    adapter the model with its adapter off (no copy), otherwise a frozen copy — taken when the
    method binds, before any step changes the model."""
    if u.lora is not None:
        from safemax.models.lora import AdaptersOff
        return AdaptersOff(u.denoiser.unet)
    return copy.deepcopy(u.denoiser.unet).requires_grad_(False).eval()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).square().mean()


class Batch(NamedTuple):
    """A step's rows on the model's device: this process's forget rows, then as many retain rows."""
    x_t: torch.Tensor
    eps: torch.Tensor
    t: torch.Tensor
    cond: object  # class ids, prompt embeddings or a dict of them (safemax.data.rows)
    is_forget: torch.Tensor

    @property
    def forget_rows(self) -> slice:
        return slice(0, len(self.t) // 2)

    @property
    def retain_rows(self) -> slice:
        return slice(len(self.t) // 2, None)


def denoising_batch(u, forget, retain, batch_size: int, forget_t_min: int = 0,
                    retain_first: bool = False, gaussian_forget: int = 0) -> Batch:
    """``batch_size`` forget rows (t ~ U[forget_t_min, T)) then ``batch_size`` retain rows
    (t ~ U[0, T)), noised — this process's share of them (``u.local``). Everything is drawn from
    the Unlearner's generator: first the two sources' items (``retain_first``: the retain source
    first), then the timesteps, then the noise, so each method's random stream is fixed.
    ``gaussian_forget``: the first that many forget rows take x0 ~ N(0, I) instead of their
    image (drawn last, so that without them the stream is unchanged)."""
    g, B, T = u.generator, batch_size, u.denoiser.num_train_timesteps
    if retain_first:
        xr, yr = retain.draw(B, g, u.local)
        xf, yf = forget.draw(B, g, u.local)
    else:
        xf, yf = forget.draw(B, g, u.local)
        xr, yr = retain.draw(B, g, u.local)
    tf = torch.randint(forget_t_min, T, (B,), generator=g)
    tr = torch.randint(0, T, (B,), generator=g)
    t = u.local(torch.cat([tf, tr]), parts=2)
    x0 = torch.cat([xf, xr])
    eps = u.local(torch.randn((2 * B, *x0.shape[1:]), generator=g), parts=2)
    if gaussian_forget:  # the max-entropy class itself: the states a halted chain visits
        z = u.local(torch.randn((B, *x0.shape[1:]), generator=g))
        use = u.local(torch.arange(B) < gaussian_forget).view(-1, *[1] * (x0.dim() - 1))
        x0 = torch.cat([torch.where(use, z, xf), xr])
    b = len(xf)
    is_forget = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)])
    x0, eps, t, cond, is_forget = u.denoiser.to_device(x0, eps, t, rows.cat([yf, yr]), is_forget)
    x_t, eps = u.denoiser.noisy(x0, t, eps)
    return Batch(x_t, eps, t, cond, is_forget)


class Method:
    """Base class. ``prepare`` runs once before the first step (timed as preparation),
    ``loss`` gives one step's loss and a dict of numbers for the history, ``edit_grads`` may
    change the gradients before the optimizer step; ``state``/``load_state`` carry prepared
    tensors through checkpoints so that a resumed fit does not prepare again.

    A method's settings are one frozen dataclass, ``settings_class`` (``safemax.settings``):
    ``SalUn(mask_fraction=0.3)`` and ``SalUn(SalUnSettings(mask_fraction=0.3))`` are the same
    method, its settings read as attributes (``method.mask_fraction``), and ``config()`` records
    every one of them."""

    name = ""
    settings_class = NoSettings
    default_lr = 1e-4
    max_grad_norm = None  # gradient-norm clipping of the published recipe (None: none)
    uses_forget_data = True  # real (or generated) forget-class images
    needs_forget_images = True  # False: only the forget rows' conditions are used (no sampling)
    uses_retain_data = True  # real images of the kept classes
    # why the method cannot train a model sharded over processes (FSDP), or None: a method that
    # reads whole weights or whole gradients (a per-weight mask, a Fisher) sees only its shard
    unsharded_because = None

    def __init__(self, settings=None, **options):
        if settings is not None and options:
            raise ValueError(f"{type(self).__name__}: give its settings object or options, not both")
        if settings is None:
            settings = self.settings_class.from_options(options, f"method {self.name!r}")
        elif not isinstance(settings, self.settings_class):
            raise ValueError(f"{type(self).__name__} takes {self.settings_class.__name__}, "
                             f"got {type(settings).__name__}")
        self.settings = settings

    def __getattr__(self, name):
        settings = self.__dict__.get("settings")
        if settings is not None and name in settings.names():
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def config(self) -> dict:
        """Every setting of the method (and what it derived from them): a checkpoint resumes only
        a fit whose config is the same."""
        return self.settings.record()

    def check(self, denoiser, targets) -> None:
        """Raise, before any work, if the method cannot run on this model (``denoiser``) or
        forget these targets (``conditions.ForgetTargets``)."""

    def bind(self, u) -> None:
        """Called when the Unlearner is built, while its model is still the original."""

    def prepare(self, u, retain, forget, batch_size: int) -> None:
        pass

    def loss(self, u, retain, forget, batch_size: int):
        raise NotImplementedError

    def edit_grads(self, u) -> None:
        pass

    def state(self) -> dict:
        return {}

    def load_state(self, tensors: dict, u) -> None:
        pass
