"""safemax: SAFEMax machine unlearning for diffusion models (arXiv 2508.20773).

A forbidden class is taught to generate Gaussian noise, the maximum-entropy image
distribution, by halting its denoising, optionally only in the early (high-noise) steps.

The layers, each importing only from those before it:
``op`` (the fused op) → ``data`` → ``models`` (diffusers families, schedules, sampling,
pipelines, LoRA) → ``methods`` (SAFEMax and the baselines) → ``evaluation`` (metrics, attacks,
probes, reports) → ``training`` (``Unlearner``) → ``zoo`` (the embedded models) → ``concepts`` (erasing
concepts from text-to-image pipelines: ``safemax erase``) → ``harness``
(experiments) → ``cli`` (the ``safemax`` command) → ``integrations`` (safemax inside other tools'
harnesses: eval-unlearn). ``errors`` is beneath them all.
"""
__version__ = "0.1.0"

from safemax import _moved  # noqa: E402
from safemax.op import backends, compiled_backends, safemax_loss, safemax_loss_reference  # noqa: E402

_moved.install()   # the flat layout's module names, for one release

__all__ = ["Unlearner", "safemax_loss", "safemax_loss_reference", "backends", "compiled_backends",
           "__version__"]


def __getattr__(name):
    # The op needs only torch; the Unlearner (diffusers, tqdm, ...) loads on first use.
    if name == "Unlearner":
        from safemax.training.unlearner import Unlearner
        return Unlearner
    raise AttributeError(f"module 'safemax' has no attribute {name!r}")
