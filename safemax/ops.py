"""``safemax_loss``: the fused SAFEMax loss (per-pixel relative entropy, early-timestep mask and
loss reduction in one pass), with its fake kernel and autograd formula registered here.

The kernels are C++/CUDA (``csrc/``); ``safemax.reference`` is the pure-PyTorch spec.
"""
import torch

from . import _extension  # noqa: F401  (loads the kernels: torch.ops.safemax)

_forward = torch.ops.safemax.safemax_loss.default
_backward = torch.ops.safemax.safemax_loss_backward.default


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("safemax::safemax_loss")
def _forward_fake(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                  forget_weight=1.0, weighting="simple"):
    torch._check(eps_pred.dim() >= 1, lambda: "safemax_loss: eps_pred must be batched, shape [B, ...]")
    acc = _acc_dtype(eps_pred.dtype)
    return eps_pred.new_empty((), dtype=acc), eps_pred.new_empty((eps_pred.shape[0],), dtype=acc)


@torch.library.register_fake("safemax::safemax_loss_backward")
def _backward_fake(grad_loss, grad_nats, eps_pred, eps, x_t, timesteps, alphas_cumprod, forget,
                   t_min, forget_weight, weighting, output_mask):
    return tuple(
        torch.empty_like(t) if wanted else eps_pred.new_empty((0,))
        for t, wanted in zip((eps_pred, eps, x_t), output_mask)
    )


def _setup_context(ctx, inputs, output):
    eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight, weighting = inputs
    ctx.save_for_backward(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget)
    ctx.scalars = (t_min, forget_weight, weighting)


def _autograd_backward(ctx, grad_loss, grad_nats):
    eps_pred, eps, x_t, timesteps, alphas_cumprod, forget = ctx.saved_tensors
    wanted = [bool(w) for w in ctx.needs_input_grad[:3]]
    if grad_nats is None:
        grad_nats = torch.zeros_like(timesteps, dtype=_acc_dtype(eps_pred.dtype))
    grads = _backward(grad_loss, grad_nats, eps_pred, eps, x_t, timesteps, alphas_cumprod,
                      forget, *ctx.scalars, wanted)
    return tuple(g if w else None for g, w in zip(grads, wanted)) + (None,) * 6


torch.library.register_autograd("safemax::safemax_loss", _autograd_backward,
                                setup_context=_setup_context)


def safemax_loss(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                 forget_weight=1.0, weighting="simple"):
    """The SAFEMax loss of a mixed forget/retain batch, fused (DESIGN.md §1-2).

    Args:
        eps_pred: model noise prediction ε_θ(x_t, t, c), ``[B, ...]``, float32/64/16 or bfloat16.
        eps: the noise that made x_t, same shape/dtype/device (target of retain rows).
        x_t: the noised input, same shape (forget rows' target is √(1−ᾱ_t)·x_t).
        timesteps: int64 ``[B]`` in ``[0, T)``.
        alphas_cumprod: ``[T]`` cumulative ᾱ of the scheduler, on the same device.
        forget: bool ``[B]``, True for rows conditioned on a class to forget.
        t_min: forget rows with ``t < t_min`` are masked out (the early-timestep window).
        forget_weight: weight of forget rows in the loss.
        weighting: ``"simple"`` (mean squared error) or ``"vlb"`` (nats, the KL term).

    Returns:
        ``(loss, nats)``: the 0-dim batch loss and the ``[B]`` per-sample mean relative entropy
        in nats per pixel (0 on masked rows); float32 (float64 for float64 inputs).
        Differentiable in eps_pred, eps and x_t.
    """
    return _forward(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                    forget_weight, weighting)
