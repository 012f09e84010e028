"""safemax: SAFEMax machine unlearning for diffusion models (arXiv 2508.20773).

A forbidden class is taught to generate Gaussian noise, the maximum-entropy image
distribution, by halting its denoising, optionally only in the early (high-noise) steps.
"""
__version__ = "0.1.0"

from ._extension import backends, compiled_backends  # noqa: E402
from .ops import safemax_loss  # noqa: E402
from .reference import safemax_loss_reference  # noqa: E402

__all__ = ["Unlearner", "safemax_loss", "safemax_loss_reference", "backends", "compiled_backends",
           "__version__"]


def __getattr__(name):
    # The op needs only torch; the Unlearner (diffusers, tqdm, ...) loads on first use.
    if name == "Unlearner":
        from .unlearner import Unlearner
        return Unlearner
    raise AttributeError(f"module 'safemax' has no attribute {name!r}")
