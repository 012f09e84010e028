"""Conditional sampling from a diffusers UNet (DDIM or DDPM; Euler for a rectified-flow model),
returning raw samples.

Raw means before any clipping to [-1, 1]: the Gaussianity of forgotten classes is measured there.
A condition is a class id (``class_labels``) or a prompt embedding (``encoder_hidden_states``).
"""
import torch
from tqdm.auto import tqdm

from .schedule import is_flow


def epsilon_part(pred: torch.Tensor, channels: int) -> torch.Tensor:
    """The ε prediction of a model output: models that also learn their variance (DiT, improved
    DDPM) output 2·C channels, ε first."""
    return pred[:, :channels] if pred.shape[1] == 2 * channels else pred


def condition(cond: torch.Tensor) -> dict:
    """The keyword by which a diffusers model takes per-row conditions: class ids (integer
    ``[B]``) are ``class_labels``, prompt embeddings (floating ``[B, L, D]``, e.g. from a CLIP
    text encoder) are ``encoder_hidden_states``."""
    return {"encoder_hidden_states": cond} if cond.is_floating_point() else {"class_labels": cond}


def make_sampler(scheduler, method: str = "ddim", num_inference_steps: int = 50):
    """A fresh scheduler for sampling, with the training scheduler's noise schedule and no
    clipping of the predicted x_0. A rectified-flow model's ``FlowMatchEulerDiscreteScheduler``
    samples with its own Euler steps (``method`` "euler", the only one there)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if is_flow(scheduler):
        if method not in ("ddim", "euler"):  # "ddim" is the default of every caller
            raise ValueError(f'a flow-matching model samples with method "euler", got {method!r}')
        sampler = type(scheduler).from_config(scheduler.config)
        sampler.set_timesteps(num_inference_steps)
        return sampler
    if method not in ("ddim", "ddpm"):
        raise ValueError(f'method must be "ddim" or "ddpm", got {method!r}')
    cls = DDIMScheduler if method == "ddim" else DDPMScheduler
    sampler = cls.from_config(scheduler.config, clip_sample=False)
    sampler.set_timesteps(num_inference_steps if method == "ddim" else scheduler.config.num_train_timesteps)
    return sampler


@torch.no_grad()
def sample(unet, scheduler, labels, num_inference_steps: int = 50, method: str = "ddim",
           seed: int = 0, batch_size: int = 256, progress: bool = False,
           guidance_scale: float = 1.0, uncond=None) -> torch.Tensor:
    """Generate one image (or latent) per entry of ``labels``, ``[N, C, H, W]``, unclipped.

    ``labels``: class ids ``[N]``, or prompt embeddings ``[N, L, D]`` for a text-conditional
    UNet. ``guidance_scale`` w ≠ 1 samples with classifier-free guidance ε_u + w·(ε_c − ε_u),
    ε_u the prediction for ``uncond`` (the empty prompt's embedding ``[L, D]``, or the
    "no class" id); w = 1 is plain conditional sampling. Deterministic for a given ``seed``: the
    initial noise and the DDPM noise come from a CPU generator, whatever the device.
    """
    labels = torch.as_tensor(labels)
    if not labels.is_floating_point():
        labels = labels.long()
    if guidance_scale != 1 and uncond is None:
        raise ValueError("guidance_scale != 1 needs uncond: the empty prompt's embedding (or the "
                         "unconditional class id) the model was trained with")
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) \
        else (cfg.in_channels, *cfg.sample_size)
    g = torch.Generator().manual_seed(seed)
    flow = is_flow(scheduler)
    was_training = unet.training
    unet.eval()
    out = []
    chunks = range(0, len(labels), batch_size)
    for start in tqdm(chunks, desc="sampling", disable=not progress, leave=False):
        y = labels[start:start + batch_size].to(device)
        y = y.to(dtype) if y.is_floating_point() else y
        if guidance_scale != 1:
            null = torch.as_tensor(uncond).to(device=device, dtype=y.dtype).expand_as(y)
        sampler = make_sampler(scheduler, method, num_inference_steps)
        x = torch.randn((len(y), *shape), generator=g).to(device=device, dtype=dtype)
        for t in sampler.timesteps:
            # a DDPM-style model takes the integer step, a flow model T·σ (float)
            tt = torch.full((len(y),), float(t) if flow else int(t), device=device,
                            dtype=torch.float32 if flow else torch.long)
            eps = epsilon_part(unet(x, tt, **condition(y)).sample, shape[0])
            if guidance_scale != 1:
                e_u = epsilon_part(unet(x, tt, **condition(null)).sample, shape[0])
                eps = e_u + guidance_scale * (eps - e_u)
            kwargs = {} if flow else {"eta": 0.0} if method == "ddim" else {"generator": g}
            x = sampler.step(eps, t, x, **kwargs).prev_sample
        out.append(x.float().cpu())
    unet.train(was_training)
    return torch.cat(out) if out else torch.empty((0, *shape))
