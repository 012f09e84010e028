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
                        "use the model's diffusers DDPM/DDIM-style scheduler, or its "
                        "FlowMatchEulerDiscreteScheduler for a rectified-flow model")
    return abar


def prediction_type(scheduler) -> str:
    """What the model predicts, from the scheduler's config: ``"epsilon"`` or ``"v_prediction"``."""
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
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


def is_flow(scheduler) -> bool:
    """Whether a diffusers scheduler is a rectified-flow one: a ``FlowMatchEulerDiscreteScheduler``
    (a ``shift`` in its config and no ``alphas_cumprod``) or a solver set up for flow
    (``prediction_type="flow_prediction"``, as Sana's DPM-Solver++ is)."""
    config = getattr(scheduler, "config", None)
    if getattr(config, "prediction_type", None) == "flow_prediction":
        return True
    return not hasattr(scheduler, "alphas_cumprod") and getattr(config, "shift", None) is not None


def snr_of_alphas_cumprod(abar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t/(1−ᾱ_t) per step (float64), falling with t."""
    abar = abar.double()
    return abar / (1 - abar)


def snr_of_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio (1−σ_t)²/σ_t² of x_σ = (1−σ)·x0 + σ·ε per step (float64)."""
    s = sigmas.double()
    return ((1 - s) / s).square()


class Window(NamedTuple):
    """SAFEMax's early window: forget rows are trained on t ∈ [t_min, T)."""
    t_min: int
    early_fraction: float  # (T − t_min) / T when the window was given by max_snr
    snr_at_t_min: float


def early_window(snr: torch.Tensor, early_fraction: float = 1.0, max_snr: float = None) -> Window:
    """The window of the noisiest ``early_fraction``·T steps (t_min = ⌊(1 − τ)·T⌋), or, with
    ``max_snr``, of the steps whose signal-to-noise ratio (``snr``, per step, falling with t:
    ᾱ_t/(1−ᾱ_t), or (1−σ_t)²/σ_t² for rectified flow) is at most ``max_snr``."""
    T = snr.shape[0]
    if max_snr is not None:
        if not max_snr > snr[-1]:
            raise ValueError(f"max_snr must exceed the SNR of the noisiest step ({snr[-1].item():.3g})")
        t_min = int(torch.nonzero(snr <= max_snr)[0])  # SNR falls with t
        early_fraction = (T - t_min) / T
    else:
        t_min = int(math.floor((1 - early_fraction) * T))
    return Window(t_min, early_fraction, float(snr[t_min]))


# ------------------------------------------------------------------ rectified flow (SD3, Flux)
# x_σ = (1 − σ)·x0 + σ·ε, σ ∈ [0, 1] (1 = pure noise); the model predicts the velocity, trained
# on v = ε − x0. The σ table is indexed like ᾱ: t = 0 … T−1, σ increasing with t (t = T−1 the
# noisiest), so the same int64 timesteps, t_min and safemax_loss(..., parametrization="flow")
# serve both parametrizations.

def flow_sigmas(scheduler) -> torch.Tensor:
    """The σ table ``[T]`` (float64, ascending in t) of a diffusers ``FlowMatchEulerDiscreteScheduler``.

    These are the σ diffusers' SD3/Flux training scripts draw a training timestep from: the
    scheduler's training sigmas ``scheduler.sigmas`` as set at construction (before any
    ``set_timesteps``), i.e. σ = i/T for i = 1 … T shifted by the config's ``shift``,
    σ ← shift·σ / (1 + (shift − 1)·σ), unless ``use_dynamic_shifting`` (Flux) leaves the training
    sigmas unshifted — in reversed order, so that index t = T−1 is σ = 1. Recomputed here from
    the config in float64, so a scheduler already used for sampling gives the same table.

    A model's time input for index t: SD3/3.5 take ``1000·σ_t`` (= ``scheduler.timesteps``
    reversed, T = 1000), Flux takes ``σ_t`` itself (its pipeline divides by 1000).
    """
    config = getattr(scheduler, "config", None)
    shift = getattr(config, "shift", None)
    if shift is None and getattr(config, "prediction_type", None) == "flow_prediction":
        shift = getattr(config, "flow_shift", None)  # a flow solver (Sana's DPM-Solver++)
    if shift is None or getattr(config, "num_train_timesteps", None) is None:
        raise TypeError(f"scheduler {type(scheduler).__name__} is not a flow-matching scheduler "
                        "(no config.shift); use diffusers' FlowMatchEulerDiscreteScheduler")
    T = int(config.num_train_timesteps)
    sigmas = torch.arange(1, T + 1, dtype=torch.float64) / T
    if not getattr(config, "use_dynamic_shifting", False):
        shift = float(shift)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas


def flow_window(sigmas: torch.Tensor, sigma_min: float) -> int:
    """``t_min`` of the early window σ ≥ ``sigma_min``: the first index t with σ_t ≥ sigma_min
    (σ ascending in t), so that forget rows train on t ∈ [t_min, T), the noisiest part."""
    s = sigmas.double()
    if not sigma_min <= s[-1]:
        raise ValueError(f"sigma_min must be at most the largest sigma ({s[-1].item():.4g}); "
                         "the window would be empty")
    return int(torch.nonzero(s >= sigma_min)[0])


def add_flow_noise(sigmas: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   dtype: torch.dtype):
    """``(x_σ, v)`` in ``dtype``: x_σ = (1 − σ_t)·x0 + σ_t·ε and the velocity target v = ε − x0,
    formed in ``sigmas``' precision (float64 for :func:`flow_sigmas`)."""
    s = _per_row(sigmas[t], x0)
    x0, eps = x0.to(s.dtype), eps.to(s.dtype)
    return ((1 - s) * x0 + s * eps).to(dtype), (eps - x0).to(dtype)
