"""Unlearning methods behind one interface: SAFEMax and the baselines the paper compares with.

A method prepares once (its cost is reported as ``prep_seconds``) and then gives the loss of one
step; the ``Unlearner`` owns the loop, the optimizer, the checkpoints and the NaN guard, so every
method runs on the same data, batch and optimizer.

| method | forget term | keeps the other classes by | preparation |
| --- | --- | --- | --- |
| `safemax` | forget rows → √(1−ᾱ_t)·x_t, the max-entropy prediction (fused op, early-step window) | retain rows distilled to the original model | a frozen copy (with LoRA: the model with its adapter off) |
| `salun` | ε(x_t, forget class) → detached ε(x_t, a random other class) (Fan et al. 2024) | retain denoising loss × 1e-3; only the salient weights move | saliency mask: the 50% of weights with the largest forget-loss gradient magnitude |
| `sa` | forget class trained to denoise uniform-noise images (Heng & Soh 2023) | EWC (diagonal Fisher, λ = 10) + replay of generated other classes | replay set and Fisher, both from the original |
| `ga` | minus the forget rows' denoising loss | plus the retain denoising loss | none |
| `esd-x`, `esd-u` | ε(x_t, concept) → ε*(x_t) − η(ε*(x_t, concept) − ε*(x_t)), x_t from partial guided sampling (Gandikota et al. 2023; text concepts only; on a flow the same on the velocity) | training only the cross-attention (x; SD3/Flux: the joint attention) or the rest (u); no retain term | a frozen copy (with LoRA: the adapter off) |

One module per method over a small base (``safemax.methods.base``: the interface, the batch
builder every method draws its rows with, the plain denoising loss).
"""
from safemax.methods.base import Batch, Method, NoSettings, denoising_batch, mse
from safemax.methods.esd import ESDSettings, ESDu, ESDx
from safemax.methods.gradient_ascent import GradientAscent
from safemax.methods.robust import (
    ATTACK_SCOPES,
    SCOPE_DEFAULTS,
    SafeMaxRobust,
    SafeMaxRobustSettings,
)
from safemax.methods.safemax import SafeMax, SafeMaxSettings
from safemax.methods.salun import SalUn, SalUnSettings
from safemax.methods.selective_amnesia import SelectiveAmnesia, SelectiveAmnesiaSettings

__all__ = ["METHODS", "make_method", "settings_of", "Method", "Batch", "denoising_batch", "mse", "SafeMax",
           "SalUn", "SelectiveAmnesia", "GradientAscent", "SafeMaxRobust", "SafeMaxSettings", "SalUnSettings",
           "SelectiveAmnesiaSettings", "SafeMaxRobustSettings", "NoSettings", "ESDx", "ESDu", "ESDSettings", "ATTACK_SCOPES", "SCOPE_DEFAULTS"]

METHODS = {cls.name: cls for cls in (SafeMax, SalUn, SelectiveAmnesia, GradientAscent, SafeMaxRobust, ESDx, ESDu)}


def make_method(method, **options) -> Method:
    """A method object from a name (``"safemax"``, ``"salun"``, ``"sa"``, ``"ga"``) and its
    settings (``make_method("salun", mask_fraction=0.3)``), or a method object itself."""
    if isinstance(method, Method):
        if options:
            raise ValueError(f"{', '.join(sorted(options))}: configure the method object itself, e.g. "
                             f"{type(method).__name__}({next(iter(sorted(options)))}=...)")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {sorted(METHODS)} "
                         "or pass a safemax.methods.Method")
    return METHODS[method](**options)   # its settings dataclass refuses a name that is none of its fields


def settings_of(method: str):
    """The settings dataclass of the method named ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {sorted(METHODS)}")
    return METHODS[method].settings_class
