"""The fused op: ``safemax_loss`` (C++/CUDA kernels registered as ``torch.ops.safemax``), its
pure-PyTorch reference — the executable spec — the loader of the compiled extension, and the
self-check that compares the two. Needs only torch."""
from safemax.op.extension import backends, compiled_backends
from safemax.op.ops import safemax_loss
from safemax.op.reference import safemax_loss_reference

__all__ = ["safemax_loss", "safemax_loss_reference", "backends", "compiled_backends"]
