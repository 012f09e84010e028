"""``Denoiser``: how a diffusers model is called and what it predicts, in one place.

The Unlearner and every method see a model only through ``noisy`` (the forward process and the
training target of a real sample) and ``predict`` (the model's prediction in the fused op's
parametrization), so a parametrization differs only here (how each model family is called is
``safemax.models.families``):

- DDPM-style schedulers (``alphas_cumprod``): x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, the prediction is ε
  (a v-prediction model's v is converted), the op runs with ``parametrization="epsilon"``.
- Rectified flow (``FlowMatchEulerDiscreteScheduler``): x_σ = (1−σ)·x0 + σ·ε, the prediction is
  the velocity (target ε − x0), the op runs with ``parametrization="flow"``.
"""
import torch

from safemax.data import rows
from safemax.models import schedule
from safemax.models.families import family_of
from safemax.models.sampling import epsilon_part


def make_denoiser(unet, scheduler):
    """The ``Denoiser`` for a model and its training scheduler (raises for a model family that
    safemax cannot call, naming those it can)."""
    return FlowDenoiser(unet, scheduler) if schedule.is_flow(scheduler) else Denoiser(unet, scheduler)


class Denoiser:
    """A diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel``)
    with its DDPM-style training scheduler (ε- or v-prediction).

    ``table`` is the schedule the fused op takes (here ᾱ_t, float64 on the model's device);
    ``model`` is what ``predict`` calls by default: the bare ``unet``, or during a fit its
    Accelerate/DDP wrapper (set by the Unlearner for the fit's duration).
    """

    parametrization = "epsilon"

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler
        self.family = family_of(unet)  # how the model is called (safemax.models.families)
        self.cpu_table = self._schedule(scheduler)
        self.num_train_timesteps = self.cpu_table.shape[0]
        self.model = unet
        self.table = None
        self.follow_device()

    def _schedule(self, scheduler) -> torch.Tensor:
        table = schedule.alphas_cumprod(scheduler)  # first: the clear error for a scheduler without one
        self.prediction_type = schedule.prediction_type(scheduler)
        return table

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio per training step (float64, falling with t): the early window."""
        return schedule.snr_of_alphas_cumprod(self.cpu_table)

    def follow_device(self):
        """Keep the schedule (float64) on the model's device; call when the model may have moved."""
        self.table = self.cpu_table.to(device=self.device(), dtype=torch.float64)

    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to_device(self, *tensors):
        """On the model's device (tensors or batches of conditions)."""
        device = self.device()
        return tuple(rows.to(v, device) for v in tensors)

    @property
    def in_channels(self) -> int:
        """Channels of the images or latents the model denoises."""
        return self.family.channels

    def _dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def noisy(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """``(x_t, target)`` in the model's dtype: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (computed in
        float64) and what the model should predict for it, ε."""
        return schedule.add_noise(self.table, x0, t, eps, self._dtype())

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time input the model takes for training step ``t``: the step itself."""
        return t

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, model=None):
        """The prediction of ``model`` (default: ``self.model``) for conditions ``cond`` — class
        ids ``[B]``, prompt embeddings ``[B, L, D]`` or a text family's dict — in x_t's dtype and
        the op's parametrization (ε, whatever the model predicts: ε, v, or ε with a learned
        variance; a velocity for a flow model)."""
        model = self.model if model is None else model
        cond = rows.to(cond, x_t.device, x_t.dtype)
        out = epsilon_part(self.family.call(model, x_t, self.model_time(t), cond), x_t.shape[1])
        return self._convert(out, x_t, t)

    def _convert(self, out, x_t, t):
        return schedule.epsilon_from(out, x_t, t, self.table, self.prediction_type)


class FlowDenoiser(Denoiser):
    """A diffusers model trained by rectified flow with a ``FlowMatchEulerDiscreteScheduler``:
    x_σ = (1−σ)·x0 + σ·ε, the model predicts the velocity ε − x0 and takes T·σ as its time
    (diffusers' ``scheduler.timesteps``: 1000·σ for SD3's T = 1000). ``table`` is the σ table
    (ascending in t)."""

    parametrization = "flow"

    def _schedule(self, scheduler) -> torch.Tensor:
        self.prediction_type = "flow"
        self.time_scale = float(scheduler.config.num_train_timesteps)
        return schedule.flow_sigmas(scheduler)

    def snr(self) -> torch.Tensor:
        return schedule.snr_of_sigmas(self.cpu_table)

    def noisy(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """``(x_σ, target)`` in the model's dtype: x_σ = (1−σ_t)·x0 + σ_t·ε and the velocity
        target ε − x0 (formed in float64)."""
        return schedule.add_flow_noise(self.table, x0, t, eps, self._dtype())

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """T·σ_t, as the family's model takes it (Flux: σ_t)."""
        return self.family.flow_input((self.table[t] * self.time_scale).to(torch.float32), self.time_scale)

    def _convert(self, out, x_t, t):
        return out.to(x_t.dtype)
