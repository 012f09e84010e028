"""safemax: SAFEMax machine unlearning for diffusion models (arXiv 2508.20773).

A forbidden class is taught to generate Gaussian noise, the maximum-entropy image
distribution, by halting its denoising, optionally only in the early (high-noise) steps.
"""
from ._extension import backends, compiled_backends
from .ops import safemax_loss
from .reference import safemax_loss_reference

__version__ = "0.1.0"
__all__ = ["safemax_loss", "safemax_loss_reference", "backends", "compiled_backends", "__version__"]
