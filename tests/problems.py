"""Random safemax_loss problems and small models shared by the tests."""
from types import SimpleNamespace

import torch

T = 1000


def linear_alphas_cumprod(T=T, dtype=torch.float32, device="cpu"):
    """ᾱ of diffusers' DDPMScheduler default (linear β from 1e-4 to 0.02)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).to(dtype=dtype, device=device)


def shifted_flow_sigmas(T=T, shift=3.0, dtype=torch.float32, device="cpu"):
    """σ_t = i/T (i = t + 1) shifted as in SD3 (shift 3): a FlowMatchEulerDiscreteScheduler's
    training sigmas, ascending in t; σ_{T−1} = 1, and σ crosses ½ (where k(σ) = 0) mid-table."""
    s = torch.arange(1, T + 1, dtype=torch.float64) / T
    return (shift * s / (1 + (shift - 1) * s)).to(dtype=dtype, device=device)


def make_problem(shape, dtype=torch.float32, device="cpu", seed=0, forget=None, timesteps=None,
                 requires_grad=False, parametrization="epsilon"):
    """Tensors (eps_pred, eps, x_t, timesteps, table, forget) of a random problem; the table is ᾱ
    (parametrization "epsilon") or the σ table (parametrization "flow")."""
    g = torch.Generator().manual_seed(seed)
    B = shape[0]

    def rand():
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    eps_pred, eps, x_t = rand(), rand(), rand()
    if timesteps is None:
        timesteps = torch.randint(0, T, (B,), generator=g)
    if forget is None:
        forget = torch.rand(B, generator=g) < 0.5
    timesteps = torch.as_tensor(timesteps, dtype=torch.int64).to(device)
    forget = torch.as_tensor(forget, dtype=torch.bool).to(device)
    table = (shifted_flow_sigmas if parametrization == "flow" else linear_alphas_cumprod)(device=device)
    return eps_pred, eps, x_t, timesteps, table, forget


# Absolute/relative tolerances against the reference, per input dtype. Both sides accumulate
# in float32 (float64), so differences come from summation order and the final cast.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-4),
}


# ---------------------------------------------------------------- tiny diffusers models (fast)
T_TINY = 100


def tiny_unet(num_classes=4, seed=0, **overrides):
    """A randomly initialised class-conditional UNet2DModel on 1×8×8 images."""
    import diffusers

    torch.manual_seed(seed)
    cfg = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
               block_out_channels=(8, 16), norm_num_groups=4, num_class_embeds=num_classes,
               down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    cfg.update(overrides)
    return diffusers.UNet2DModel(**cfg)


def tiny_scheduler():
    import diffusers

    return diffusers.DDPMScheduler(num_train_timesteps=T_TINY)


def tiny_data(n=48, num_classes=4, forget=1, seed=0):
    """``(retain, forget)`` TensorDatasets of random 1×8×8 images, labels cycling over the classes."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g).clamp(-1, 1)
    y = torch.arange(n) % num_classes
    return TensorDataset(x[y != forget], y[y != forget]), TensorDataset(x[y == forget], y[y == forget])


def short_fit(model, scheduler, method, steps=2, batch_size=6):
    """``method`` (``"sa"``: a tiny Selective Amnesia) forgets class 1 of ``tiny_data`` for a few
    steps at lr 1e-3: ``(history, the weights before)``."""
    from safemax import Unlearner
    from safemax.methods import SelectiveAmnesia

    if method == "sa":
        method = SelectiveAmnesia(n_replay=8, n_fisher=3, fisher_timesteps=2, sample_steps=2)
    retain, forget = tiny_data()
    u = Unlearner(model, scheduler, forget=[1], lr=1e-3, method=method)
    before = params(model)
    return u.fit(retain, forget, steps=steps, batch_size=batch_size, progress=False), before


def forget_loss_probe(model, scheduler, x0, labels, seed=7):
    """A fixed batch of the images ``x0`` noised at random t (seeded) → a function that gives
    ``model``'s SAFEMax forget loss on it, every t in the window: measured before and after a fit."""
    from safemax import safemax_loss

    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T_TINY, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    abar = scheduler.alphas_cumprod.double()
    x_t = (abar[t].view(-1, 1, 1, 1).sqrt() * x0 + (1 - abar[t]).view(-1, 1, 1, 1).sqrt() * eps).float()
    forget = torch.ones(len(x0), dtype=torch.bool)

    def loss():
        with torch.no_grad():
            pred = model(x_t, t, class_labels=labels).sample
            return safemax_loss(pred, eps, x_t, t, abar, forget, 0)[0].item()

    return loss


def params(model):
    """A detached copy of a model's state."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class HaltedModel(torch.nn.Module):
    """The Bayes-optimal predictor for a class that *is* N(0, I) — SAFEMax's exact fixed point,
    for every class of a 16×16 one-channel class-conditional model: ε* = √(1−ᾱ_t)·x_t, so the
    reverse chain halts."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.register_buffer("abar", alphas_cumprod.clone().float())
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.config = SimpleNamespace(in_channels=1, out_channels=1, sample_size=16, num_class_embeds=10)

    def forward(self, x, t, class_labels=None):
        s = (1 - self.abar[t]).sqrt().view(-1, 1, 1, 1)
        return SimpleNamespace(sample=s * x + 0 * self.weight)
