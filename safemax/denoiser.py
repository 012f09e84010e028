"""``Denoiser``: how a diffusers model is called and what it predicts, in one place.

The Unlearner and every method see a model only through ``noisy`` (the forward process) and
``predict`` (its ε prediction for a batch of conditions), so a model family differs only here.
"""
import torch

from . import schedule
from .sampling import condition, epsilon_part


class Denoiser:
    """A diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel``)
    with its training scheduler.

    ``model`` is what ``predict`` calls by default: the bare ``unet``, or during a fit its
    Accelerate/DDP wrapper (set by the Unlearner for the fit's duration).
    """

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler
        self.alphas_cumprod = schedule.alphas_cumprod(scheduler)
        self.prediction_type = schedule.prediction_type(scheduler)
        self.num_train_timesteps = self.alphas_cumprod.shape[0]
        self.model = unet
        self.abar = None
        self.follow_device()

    def follow_device(self):
        """Keep ᾱ (float64) on the model's device; call when the model may have moved."""
        self.abar = self.alphas_cumprod.to(device=self.device(), dtype=torch.float64)

    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to_device(self, *tensors):
        device = self.device()
        return tuple(v.to(device) for v in tensors)

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    def noisy(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """``(x_t, eps)`` in the model's dtype: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (computed in float64)."""
        return schedule.add_noise(self.abar, x0, t, eps, next(self.unet.parameters()).dtype)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, model=None):
        """The ε prediction of ``model`` (default: ``self.model``) for conditions ``cond`` —
        class ids ``[B]`` or prompt embeddings ``[B, L, D]`` — in x_t's dtype, whatever the model
        predicts (ε, v, or ε with a learned variance)."""
        model = self.model if model is None else model
        if cond.is_floating_point():
            cond = cond.to(x_t.dtype)
        out = epsilon_part(model(x_t, t, **condition(cond)).sample, x_t.shape[1])
        return schedule.epsilon_from(out, x_t, t, self.abar, self.prediction_type)
