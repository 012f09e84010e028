"""Gradient ascent: the forget rows' denoising loss pushed up, the retain rows' kept down."""
from safemax.methods.base import Method, denoising_batch, mse


class GradientAscent(Method):
    """Gradient ascent on the forget data's denoising loss, with the retain data's denoising
    loss to keep the rest: loss = −ℓ(forget) + ℓ(retain). Unbounded below, so it eventually
    destroys the model; its forgetting point is what the comparison measures."""

    name = "ga"
    max_grad_norm = 1.0  # the published configs clip the gradient norm at 1

    def loss(self, u, retain, forget, batch_size):
        x_t, eps, t, cond, _ = batch = denoising_batch(u, forget, retain, batch_size)
        pred = u.denoiser.predict(x_t, t, cond)
        f, r = batch.forget_rows, batch.retain_rows
        forget_loss = mse(pred[f], eps[f])
        retain_loss = mse(pred[r], eps[r])
        return retain_loss - forget_loss, dict(forget_loss=forget_loss.item(),
                                               retain_loss=retain_loss.item())
