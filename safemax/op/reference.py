"""Pure-PyTorch reference of the SAFEMax loss: the executable spec of ``safemax_loss``.

Written for clarity, not speed: it materialises the target and the residual. The fused op
must agree with it (values and gradients); see docs/method.md (the method and its derivation),
docs/op.md (the op's contract) and tests/test_op.py.
"""
import torch


def row_coefficients(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor):
    """Per-sample ``(√(1−ᾱ_t), c_t)`` in float64, with ``c_t = β_t / (2 α_t (1 − ᾱ_t))``.

    ``β_t = 1 − ᾱ_t/ᾱ_{t−1}`` (with ``ᾱ_{−1} = 1``) is formed in float64 because it cancels
    badly in float32.
    """
    abar = alphas_cumprod.to(torch.float64)
    abar_t = abar[timesteps]
    abar_prev = torch.where(timesteps > 0, abar[(timesteps - 1).clamp(min=0)], 1.0)
    alpha = abar_t / abar_prev
    beta = 1.0 - alpha
    return (1.0 - abar_t).sqrt(), beta / (2.0 * alpha * (1.0 - abar_t))


def halting_target(abar_t, x_t: torch.Tensor) -> torch.Tensor:
    """ε* = √(1−ᾱ_t)·x_t: the ε-prediction at which a DDPM chain at x_t halts (its posterior mean
    is x_t itself up to scale) — SAFEMax's forget target, by which the probes and benchmarks
    measure how far a model is from halting. ``abar_t``: ᾱ_t, a number or one per row of ``x_t``
    (its own dtype; the coefficient is cast to ``x_t``'s)."""
    s = (1 - torch.as_tensor(abar_t)).sqrt().to(device=x_t.device, dtype=x_t.dtype)
    return s.reshape(-1, *[1] * (x_t.dim() - 1)) * x_t if s.dim() else s * x_t


def flow_coefficients(sigmas: torch.Tensor, timesteps: torch.Tensor):
    """Per-sample ``(k(σ_t), 1)`` in float64 for rectified flow, k(σ) = (2σ−1)/((1−σ)² + σ²).

    With x_σ = (1−σ)·x_0 + σ·ε and x_0, ε ~ N(0, I), E[ε − x_0 | x_σ] = k(σ)·x_σ: the forget
    rows' velocity target. The second coefficient (the "nats" one) is 1: flow matching has no
    per-step KL weight, so a row's second output is its mean squared residual.
    """
    sigma = sigmas.to(torch.float64)[timesteps]
    return (2 * sigma - 1) / ((1 - sigma).square() + sigma.square()), torch.ones_like(sigma)


def safemax_loss_reference(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                           forget_weight=1.0, weighting="simple", parametrization="epsilon",
                           forget_target="max-entropy"):
    """Reference ``(loss, nats)``; same arguments and contract as :func:`safemax.op.ops.safemax_loss`
    (``alphas_cumprod`` is the schedule table: ᾱ_t for ``"epsilon"``, σ_t for ``"flow"``;
    ``forget_target="given"``: ``x_t`` is the forget rows' target itself)."""
    if weighting not in ("simple", "vlb"):
        raise ValueError(f'weighting must be "simple" or "vlb", got {weighting!r}')
    if parametrization not in ("epsilon", "flow"):
        raise ValueError(f'parametrization must be "epsilon" or "flow", got {parametrization!r}')
    if forget_target not in ("max-entropy", "given"):
        raise ValueError(f'forget_target must be "max-entropy" or "given", got {forget_target!r}')
    if parametrization == "flow" and weighting == "vlb":
        raise ValueError('weighting "vlb" is not defined for parametrization "flow"')
    acc = torch.float64 if eps_pred.dtype == torch.float64 else torch.float32
    B = eps_pred.shape[0]
    P = eps_pred[0].numel() if B > 0 else 0
    coefficients = flow_coefficients if parametrization == "flow" else row_coefficients
    scale, c = coefficients(alphas_cumprod, timesteps)
    scale, c = scale.to(acc), c.to(acc)
    if forget_target == "given":   # x_t is the target itself; c (the nats coefficient) stays
        scale = torch.ones_like(scale)
    row = (B,) + (1,) * (eps_pred.dim() - 1)

    pred, e, x = eps_pred.to(acc), eps.to(acc), x_t.to(acc)
    # Forget rows: the max-entropy target, ε* = √(1−ᾱ_t)·x_t (epsilon) or v* = k(σ_t)·x_σ (flow).
    # Retain rows: the true noise ε (epsilon) or velocity ε − x_0 (flow), passed as `eps`.
    target = torch.where(forget.view(row), scale.view(row) * x, e)
    mse = (pred - target).square().reshape(B, P).mean(dim=1)

    active = ~forget | (timesteps >= t_min)
    weight = torch.where(forget, torch.tensor(forget_weight, dtype=acc), torch.tensor(1.0, dtype=acc))
    nats = torch.where(active, c * mse, 0.0)
    per_row = mse if weighting == "simple" else c * mse
    # where(), not multiplication by 0, so that masked rows cannot leak NaN into the loss.
    loss = torch.where(active, weight * per_row, 0.0).sum() / max(B, 1)
    return loss, nats
