"""``safemax_loss``: the fused SAFEMax loss (per-pixel relative entropy, early-timestep mask and
loss reduction in one pass), for noise-prediction (DDPM-style) and rectified-flow (velocity)
models, with its fake kernel and autograd formula registered here.

The kernels are C++/CUDA (``csrc/``); ``safemax.op.reference`` is the pure-PyTorch spec.
"""
import math
import warnings

import torch

from safemax.op import extension as _extension  # noqa: F401  (loads the kernels: torch.ops.safemax)

_forward = torch.ops.safemax.safemax_loss.default
_backward = torch.ops.safemax.safemax_loss_backward.default


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# The fake (meta) kernels repeat, in the same order and with the same error types and
# messages, every check of the C++ `prepare` (csrc/safemax_op.cpp) that needs no data, so a bad
# call fails the same way under torch.compile, FakeTensorMode or on meta tensors as in eager.
# Only the timestep range needs the data: the CPU kernel checks it, the CUDA kernel gives NaN.

# c10's name of each dtype (what the C++ messages print: Float, Long, Bool, BFloat16, ...),
# as torch itself spells it in Tensor.type(), e.g. "torch.LongTensor"; computed once.
_C10_NAMES = {}
with warnings.catch_warnings():  # allocating complex32 or quantized dtypes warns
    warnings.simplefilter("ignore")
    for _dtype in {v for v in vars(torch).values() if isinstance(v, torch.dtype)}:
        try:
            _C10_NAMES[_dtype] = torch.empty(0, dtype=_dtype).type().rsplit(".", 1)[1][:-len("Tensor")]
        except (RuntimeError, TypeError):  # dtypes that cannot be allocated keep str(dtype)
            pass
del _dtype
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
PARAMETRIZATIONS = ("epsilon", "flow")
FORGET_TARGETS = ("max-entropy", "given")


def _name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype))


def _shape(t) -> str:
    return str(list(t.shape))


def _check_like(t, name, eps_pred):
    torch._check_type(t.dtype == eps_pred.dtype, lambda: (
        f"safemax_loss: {name} must have the dtype of eps_pred ({_name(eps_pred.dtype)}), "
        f"got {_name(t.dtype)}"))
    torch._check_value(t.device == eps_pred.device, lambda: (
        f"safemax_loss: {name} must be on the device of eps_pred ({eps_pred.device}), got {t.device}"))
    torch._check_value(t.shape == eps_pred.shape, lambda: (
        f"safemax_loss: {name} must have the shape of eps_pred {_shape(eps_pred)}, got {_shape(t)}"))


def _check_per_sample(t, name, dtype, fix, eps_pred):
    B = eps_pred.shape[0]
    torch._check_type(t.dtype == dtype, lambda: (
        f"safemax_loss: {name} must be {_name(dtype)}, got {_name(t.dtype)} ({fix})"))
    torch._check_value(t.dim() == 1 and t.shape[0] == B, lambda: (
        f"safemax_loss: {name} must have shape [B] = [{B}] (one per sample of eps_pred), "
        f"got {_shape(t)}"))
    torch._check_value(t.device == eps_pred.device, lambda: (
        f"safemax_loss: {name} must be on the device of eps_pred ({eps_pred.device}), got {t.device}"))


def _check_inputs(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight,
                  weighting, parametrization, forget_target="max-entropy"):
    """The C++ ``prepare``'s checks, minus the timestep range (data)."""
    flow = parametrization == "flow"
    torch._check_value(eps_pred.layout == torch.strided,
                       lambda: "safemax_loss: eps_pred must be a dense (strided) tensor")
    torch._check_value(eps_pred.dim() >= 1, lambda: (
        "safemax_loss: eps_pred must be batched, shape [B, ...], got a 0-dim tensor"))
    torch._check_type(eps_pred.dtype in _KERNEL_DTYPES, lambda: (
        "safemax_loss: eps_pred must be float32, float64, float16 or bfloat16, got "
        f"{_name(eps_pred.dtype)}"))
    _check_like(eps, "eps", eps_pred)
    _check_like(x_t, "x_t", eps_pred)
    _check_per_sample(timesteps, "timesteps", torch.int64, "use timesteps.long()", eps_pred)
    _check_per_sample(forget, "forget", torch.bool, "use a bool mask, e.g. labels == forget_class",
                      eps_pred)
    torch._check_type(alphas_cumprod.dtype.is_floating_point, lambda: (
        f"safemax_loss: alphas_cumprod must be a floating tensor, got {_name(alphas_cumprod.dtype)}"))
    torch._check_value(alphas_cumprod.dim() == 1 and alphas_cumprod.numel() >= 1, lambda: (
        f"safemax_loss: alphas_cumprod must have shape [T] with T >= 1, got {_shape(alphas_cumprod)}"))
    torch._check_value(alphas_cumprod.device == eps_pred.device, lambda: (
        f"safemax_loss: alphas_cumprod must be on the device of eps_pred ({eps_pred.device}), "
        f"got {alphas_cumprod.device}; " + ("move the sigma table once with sigmas.to(device)" if flow
                                            else "move it once with scheduler.alphas_cumprod.to(device)")))
    T = alphas_cumprod.shape[0]
    torch._check_value(0 <= t_min <= T,
                       lambda: f"safemax_loss: t_min must be in [0, T] = [0, {T}], got {t_min}")
    torch._check_value(math.isfinite(forget_weight),
                       lambda: f"safemax_loss: forget_weight must be finite, got {forget_weight}")
    torch._check_value(weighting in ("simple", "vlb"), lambda: (
        f'safemax_loss: weighting must be "simple" or "vlb", got "{weighting}"'))
    torch._check_value(parametrization in PARAMETRIZATIONS, lambda: (
        f'safemax_loss: parametrization must be "epsilon" or "flow", got "{parametrization}"'))
    torch._check_value(forget_target in FORGET_TARGETS, lambda: (
        'safemax_loss: forget_target must be "max-entropy" (the parametrization\'s halting target) or '
        f'"given" (x_t holds the forget rows\' target), got "{forget_target}"'))
    torch._check_value(not (flow and weighting == "vlb"), lambda: (
        'safemax_loss: weighting "vlb" is not defined for parametrization "flow" (its KL '
        'coefficient has no flow-matching derivation); use weighting="simple"'))
    torch._check_value(eps_pred.shape[0] == 0 or eps_pred.numel() > 0, lambda: (
        f"safemax_loss: eps_pred has no elements per sample, shape {_shape(eps_pred)}"))


@torch.library.register_fake("safemax::safemax_loss")
def _forward_fake(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                  forget_weight=1.0, weighting="simple", parametrization="epsilon", forget_target="max-entropy"):
    _check_inputs(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight,
                  weighting, parametrization, forget_target)
    acc = _acc_dtype(eps_pred.dtype)
    return eps_pred.new_empty((), dtype=acc), eps_pred.new_empty((eps_pred.shape[0],), dtype=acc)


@torch.library.register_fake("safemax::safemax_loss_backward")
def _backward_fake(grad_loss, grad_nats, eps_pred, eps, x_t, timesteps, alphas_cumprod, forget,
                   t_min, forget_weight, weighting, output_mask, parametrization="epsilon",
                   forget_target="max-entropy"):
    _check_inputs(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight,
                  weighting, parametrization, forget_target)
    torch._check_value(grad_loss.numel() == 1,
                       lambda: "safemax_loss_backward: grad_loss must be a scalar")
    torch._check_value(grad_nats.dim() == 1 and grad_nats.shape[0] == eps_pred.shape[0],
                       lambda: "safemax_loss_backward: grad_nats must have shape [B]")
    return tuple(
        torch.empty_like(t) if wanted else eps_pred.new_empty((0,))
        for t, wanted in zip((eps_pred, eps, x_t), output_mask)
    )


def _setup_context(ctx, inputs, output):
    (eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min, forget_weight, weighting,
     parametrization, forget_target) = inputs
    ctx.save_for_backward(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget)
    ctx.scalars = (t_min, forget_weight, weighting)
    ctx.parametrization, ctx.forget_target = parametrization, forget_target


def _autograd_backward(ctx, grad_loss, grad_nats):
    eps_pred, eps, x_t, timesteps, alphas_cumprod, forget = ctx.saved_tensors
    wanted = [bool(w) for w in ctx.needs_input_grad[:3]]
    if grad_nats is None:
        grad_nats = torch.zeros_like(timesteps, dtype=_acc_dtype(eps_pred.dtype))
    grads = _backward(grad_loss, grad_nats, eps_pred, eps, x_t, timesteps, alphas_cumprod,
                      forget, *ctx.scalars, wanted, ctx.parametrization, ctx.forget_target)
    return tuple(g if w else None for g, w in zip(grads, wanted)) + (None,) * 8


torch.library.register_autograd("safemax::safemax_loss", _autograd_backward,
                                setup_context=_setup_context)


def safemax_loss(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                 forget_weight=1.0, weighting="simple", parametrization="epsilon", forget_target="max-entropy"):
    """The SAFEMax loss of a mixed forget/retain batch, fused (docs/method.md, docs/op.md).

    One op for two parametrizations; the tensor names are those of ``"epsilon"`` and keep their
    positions in ``"flow"``, where they carry the rectified-flow quantities:

    - ``"epsilon"`` (DDPM-style): x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, the model predicts ε; forget rows'
      target ε* = √(1−ᾱ_t)·x_t.
    - ``"flow"`` (rectified flow: SD3, Flux): x_σ = (1−σ)·x_0 + σ·ε, σ ∈ [0, 1] (1 = pure noise),
      the model predicts the velocity; forget rows' target v* = k(σ)·x_σ with
      k(σ) = (2σ−1)/((1−σ)² + σ²), whose probability-flow ODE maps the starting noise to itself.

    Args:
        eps_pred: the model's prediction, ``[B, ...]``, float32/64/16 or bfloat16: the noise
            ε_θ(x_t, t, c) (epsilon) or the velocity v_θ(x_σ, σ, c) (flow).
        eps: retain rows' target, same shape/dtype/device: the noise that made x_t (epsilon), or
            v = ε − x_0 (flow); or a teacher's prediction in either.
        x_t: the noised input x_t (epsilon) or x_σ (flow), same shape.
        timesteps: int64 ``[B]`` in ``[0, T)``, indices into the schedule table.
        alphas_cumprod: the schedule table ``[T]``, on the same device: ᾱ_t for epsilon, σ_t for
            flow (ascending in t, e.g. :func:`safemax.models.schedule.flow_sigmas`).
        forget: bool ``[B]``, True for rows conditioned on a class to forget.
        t_min: forget rows with ``t < t_min`` are masked out (the early window; in flow, where σ
            increases with t, that is σ ≥ σ_{t_min}: :func:`safemax.models.schedule.flow_window`).
        forget_weight: weight of forget rows in the loss.
        weighting: ``"simple"`` (mean squared error) or ``"vlb"`` (nats, the KL term; epsilon
            only: ``"flow"`` refuses it with a ValueError, there is no derivation for it).
        parametrization: ``"epsilon"`` (default) or ``"flow"``.
        forget_target: ``"max-entropy"`` (default): the forget rows' target is the
            parametrization's multiple of ``x_t`` above; ``"given"``: ``x_t`` holds the forget rows'
            target itself (e.g. SAFEMax's guidance-aware one, ε_u + (ε* − ε_u)/w), and the
            gradient to it on those rows is minus the gradient to the prediction.

    Returns:
        ``(loss, nats)``: the 0-dim batch loss and the ``[B]`` per-sample values, 0 on masked
        rows; float32 (float64 for float64 inputs). ``nats`` is the mean relative entropy in
        nats per pixel (epsilon); in flow it is the row's mean squared velocity residual (the
        flow-matching loss per row, c := 1), *not* nats.
        Differentiable in eps_pred, eps and x_t.
    """
    return _forward(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                    forget_weight, weighting, parametrization, forget_target)
