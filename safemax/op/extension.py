"""Loads the compiled kernels (safemax._C), which register ``torch.ops.safemax``.

There is no pure-Python fallback for the fused op: if the extension is missing, importing
safemax fails here, loudly, with the command that builds it.
"""
import torch

try:
    from safemax import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        f"safemax: the compiled extension safemax._C could not be loaded ({exc}).\n"
        "Build it against your installed torch from the repository root:\n"
        "    pip install --no-build-isolation .\n"
        "(torch must be installed first; see README.md, 'Set-up')."
    ) from exc

_OP_NAME = "safemax::safemax_loss"


def backends() -> tuple:
    """Device types with a registered safemax_loss kernel, e.g. ``("cpu",)`` or ``("cpu", "cuda")``.

    Read from the dispatcher, so it reports what is really registered, not what was intended.
    """
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return tuple(
        name for name, key in keys.items()
        if torch._C._dispatch_has_kernel_for_dispatch_key(_OP_NAME, key)
    )


def compiled_backends() -> tuple:
    """Backends the extension was compiled with (``_C.BACKENDS``)."""
    return tuple(_C.BACKENDS.split(","))


def with_openmp() -> bool:
    return bool(_C.WITH_OPENMP)
