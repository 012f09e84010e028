"""ESD — Erased Stable Diffusion (Gandikota et al., ICCV 2023, arXiv 2303.07345): fine-tuning
with negative guidance, the field's standard concept-erasure baseline, in the Unlearner's loop.

Each step, as the official code (rohitgandikota/erasing) does: x_t is made by partially
denoising pure noise with the model being trained, conditioned on the concept c with
classifier-free guidance 3, stopped at a uniformly random step k of a 50-step DDIM grid (t its
timestep); then the frozen original θ* gives the target

    ε_θ(x_t, c, t)  →  ε_θ*(x_t, t) − η (ε_θ*(x_t, c, t) − ε_θ*(x_t, t)),    η = 1

(the unconditional prediction pushed away from the concept: negative guidance). ESD-x
(``esd-x``) trains the cross-attention only (``attn2``), ESD-u (``esd-u``) every other weight but
the time embedding and the output layer, as the official ``xattn`` / ``noxattn``. Published
recipe: Adam at 1e-5, 1000 steps of batch 1, no gradient clipping. No retain term: the kept
data a fit is given are not used.

The unconditional condition ε_θ*(x_t, t) needs — the empty prompt's, in the concept's form —
is given when the method is built: ``ESDx(unconditional=prompt_embeddings(pipe, [""]))``
(``safemax erase --method esd-x`` does it). Class-conditional models are refused.

On a rectified flow (SD3, Flux), as the authors' SD3.5 script (in rohitgandikota/erasing) does:
the same target on the velocity (guidance is linear in the prediction, so
v_θ*(x_t) − η(v_θ*(x_t, c) − v_θ*(x_t)); their η = 2 on v_c is this η = 1), x_t made by guided
Euler steps on the σ grid, and joint attention in place of the cross-attention: ESD-x trains the
joint attention (``.attn.``: the image and text streams' projections, where text meets the
image), ESD-u everything else. Their recipe — 200 steps at 3e-5, x_t sampled by the original at
the pipeline's guidance (``sample_from="original"``) — is a setting, not the default here.
"""
from dataclasses import dataclass

import torch

from safemax.data import rows
from safemax.methods.base import Method, frozen_original, mse
from safemax.models.cross_attention import is_cross_attention
from safemax.settings import Settings, finite, one_of, positive, setting, whole


@dataclass(frozen=True)
class ESDSettings(Settings):
    """ESD's settings; the defaults are the official code's."""
    negative_guidance: float = setting(1.0, "ESD's η: how far the target is pushed from the concept", check=finite)
    sample_guidance: float = setting(3.0, "classifier-free guidance of the partial sampling that makes x_t",
                                     check=positive)
    ddim_steps: int = setting(50, "steps of the DDIM grid x_t is stopped on (a flow's: Euler)", check=whole)
    sample_from: str = setting("trained", "the model whose partial sampling makes x_t: the one being trained "
                               "(ESD's SD code) or the original (its SD3.5 script)", check=one_of("trained", "original"))


JOINT = ("sd3", "flux")
"""The families whose text meets the image in a joint attention, not a cross-attention."""


def trains(name: str, weights: str, family: str = "sd") -> bool:
    """Whether ESD's ``weights`` (``"xattn"`` or ``"noxattn"``) train the parameter ``name`` of a
    model of ``family`` (a joint-attention family's: its ``.attn.`` modules, or the rest)."""
    if family in JOINT:
        return (".attn." in name) == (weights == "xattn")
    if weights == "xattn":
        return is_cross_attention(name)
    return not (is_cross_attention(name) or "time_embedding" in name or name.startswith(("conv_out", "conv_norm_out")))


class ESDx(Method):
    """ESD-x: negative guidance on the cross-attention weights (see the module's docstring)."""

    name = "esd-x"
    weights = "xattn"
    default_lr = 1e-5
    settings_class = ESDSettings
    uses_retain_data = False
    needs_forget_images = False   # x_t comes from its own partial sampling: only the rows' conditions count

    def __init__(self, settings=None, unconditional=None, **options):
        super().__init__(settings, **options)
        self.unconditional = unconditional
        self.teacher = None

    def config(self) -> dict:
        return dict(self.settings.record(), weights=self.weights)

    def check(self, denoiser, targets) -> None:
        if targets.concepts is None:
            raise ValueError(f"{self.name} erases text concepts; forget classes with safemax, salun, sa or ga")
        if self.unconditional is None:
            raise ValueError(f"{self.name} needs the empty prompt's condition: {type(self).__name__}("
                             "unconditional=prompt_embeddings(pipe, ['']))")
        family = denoiser.family.name
        if not any(trains(n, self.weights, family) for n, _ in denoiser.unet.named_parameters()):
            what = "the cross-attention (attn2)" if self.weights == "xattn" else "weights outside the cross-attention"
            raise ValueError(f"{self.name} trains {what}; {type(denoiser.unet).__name__} has none")

    def bind(self, u) -> None:
        self.teacher = frozen_original(u)
        family = u.denoiser.family.name
        for name, p in u.denoiser.unet.named_parameters():
            if p.requires_grad and not trains(name, self.weights, family):
                p.requires_grad_(False)   # never gets a gradient: Adam leaves it as it is

    def _x_t(self, u, cond, uncond, shape):
        """x_t by DDIM (η = 0; a flow: Euler) from pure noise, guided by ``sample_guidance``,
        stopped at a random step of the grid; returns ``(x_t, t)``."""
        d, g = u.denoiser, u.generator
        model = self.teacher if self.sample_from == "original" else None
        T, flow = d.num_train_timesteps, d.parametrization == "flow"
        grid = torch.linspace(T - 1, 0, self.ddim_steps).round().long()
        k = int(torch.randint(0, self.ddim_steps, (1,), generator=g))
        x = u.local(torch.randn(shape, generator=g)).to(d.device(), d._dtype())
        table = d.table   # ᾱ (DDPM) or σ (flow), indexed by t
        for i in range(k):
            t, t_next = grid[i], grid[i + 1]
            tt = torch.full((len(x),), int(t), device=x.device)
            e_u, e_c = d.predict(x, tt, uncond, model=model), d.predict(x, tt, cond, model=model)
            e = (e_u + self.sample_guidance * (e_c - e_u)).double()
            if flow:   # an Euler step of dx/dσ = v
                x = (x.double() + (table[t_next] - table[t]) * e).to(x.dtype)
                continue
            a, a_next = table[t], table[t_next]
            x0 = (x.double() - (1 - a).sqrt() * e) / a.sqrt()
            x = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * e).to(x.dtype)
        return x, torch.full((len(x),), int(grid[k]), device=x.device)

    def loss(self, u, retain, forget, batch_size):
        xf, cond = forget.draw(batch_size, u.generator, u.local)
        (cond,) = u.denoiser.to_device(cond)
        uncond = rows.to(rows.take(self.unconditional, torch.zeros(rows.count(cond), dtype=torch.long)),
                         u.denoiser.device())
        with torch.no_grad():
            x_t, t = self._x_t(u, cond, uncond, (batch_size, *xf.shape[1:]))
            e0 = u.denoiser.predict(x_t, t, uncond, model=self.teacher)
            ep = u.denoiser.predict(x_t, t, cond, model=self.teacher)
        target = e0 - self.negative_guidance * (ep - e0)
        loss = mse(u.denoiser.predict(x_t, t, cond), target)
        return loss, dict(forget_loss=loss.item(), retain_loss=0.0)


class ESDu(ESDx):
    """ESD-u: negative guidance on every weight but the cross-attention, the time embedding and
    the output layer (see the module's docstring)."""

    name = "esd-u"
    weights = "noxattn"


__all__ = ["ESDSettings", "ESDx", "ESDu", "trains", "JOINT"]
