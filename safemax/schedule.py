"""Stateless noise-schedule helpers (in the manner of diffusers' ``training_utils``): the forward
process, the conversion of a model's output to its ε prediction, and SAFEMax's early window.

Everything is computed from ``alphas_cumprod`` (ᾱ_t, t = 0 … T−1, t = T−1 the noisiest) in
float64, and cast to the model's dtype at the end. The derivations are in the docs' method page.
"""
import math
from typing import NamedTuple

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def alphas_cumprod(scheduler) -> torch.Tensor:
    """The scheduler's ᾱ ``[T]``, checked: a DDPM/DDIM-style diffusers scheduler has one."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if not torch.is_tensor(abar) or abar.dim() != 1:
        raise TypeError(f"scheduler {type(scheduler).__name__} has no alphas_cumprod tensor; "
                        "use a diffusers DDPM/DDIM-style scheduler")
    return abar


def prediction_type(scheduler) -> str:
    """What the model predicts, from the scheduler's config: ``"epsilon"`` or ``"v_prediction"``."""
    kind = getattr(scheduler.config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {kind!r} is not supported: the model must predict the "
                         "noise (epsilon) or v (v_prediction)")
    return kind


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def add_noise(abar: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              dtype: torch.dtype):
    """``(x_t, eps)`` in ``dtype``: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, formed in ``abar``'s precision."""
    s = _per_row(abar[t], x0)
    return (s.sqrt() * x0 + (1 - s).sqrt() * eps).to(dtype), eps.to(dtype)


def epsilon_from(output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, abar: torch.Tensor,
                 prediction_type: str = "epsilon") -> torch.Tensor:
    """The ε prediction from a model's output, in x_t's dtype. v-prediction: ε = √(1−ᾱ_t)·x_t +
    √ᾱ_t·v, so the max-entropy target ε* = √(1−ᾱ_t)·x_t means v* = 0."""
    out = output.to(x_t.dtype)
    if prediction_type == "v_prediction":
        s = _per_row(abar[t], x_t)
        out = (1 - s).sqrt().to(x_t.dtype) * x_t + s.sqrt().to(x_t.dtype) * out
    return out


class Window(NamedTuple):
    """SAFEMax's early window: forget rows are trained on t ∈ [t_min, T)."""
    t_min: int
    early_fraction: float  # (T − t_min) / T when the window was given by max_snr
    snr_at_t_min: float


def early_window(abar: torch.Tensor, early_fraction: float = 1.0, max_snr: float = None) -> Window:
    """The window of the noisiest ``early_fraction``·T steps (t_min = ⌊(1 − τ)·T⌋), or, with
    ``max_snr``, of the steps whose signal-to-noise ratio ᾱ_t/(1−ᾱ_t) is at most ``max_snr``."""
    T = abar.shape[0]
    snr = abar.double() / (1 - abar.double())
    if max_snr is not None:
        if not max_snr > snr[-1]:
            raise ValueError(f"max_snr must exceed the SNR of the noisiest step ({snr[-1].item():.3g})")
        t_min = int(torch.nonzero(snr <= max_snr)[0])  # SNR falls with t
        early_fraction = (T - t_min) / T
    else:
        t_min = int(math.floor((1 - early_fraction) * T))
    return Window(t_min, early_fraction, float(snr[t_min]))
