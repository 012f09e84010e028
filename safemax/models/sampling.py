"""Conditional sampling from a diffusers model (DDIM or DDPM; the scheduler's own steps for a
rectified-flow model), returning raw samples.

Raw means before any clipping to [-1, 1]: the Gaussianity of forgotten classes is measured there.
A condition is a class id, a prompt embedding or a text family's dict of conditions (see
``safemax.models.families``); a batch of them is one ``safemax.data.rows`` batch.
"""
import torch
from tqdm.auto import tqdm

from safemax.data import rows
from safemax.models.families import class_count, family_of
from safemax.models.schedule import is_flow


def epsilon_part(pred: torch.Tensor, channels: int) -> torch.Tensor:
    """The ε prediction of a model output: models that also learn their variance (DiT, PixArt,
    improved DDPM) output 2·C channels, ε first."""
    return pred[:, :channels] if pred.shape[1] == 2 * channels else pred


def make_sampler(scheduler, method: str = "ddim", num_inference_steps: int = 50, image_seq_len: int = None):
    """A fresh scheduler for sampling, with the training scheduler's noise schedule and no
    clipping of the predicted x_0. A rectified-flow model's scheduler samples with its own steps
    (``FlowMatchEulerDiscreteScheduler``: Euler, ``method`` "euler", the only one there); one
    that shifts its schedule by resolution (Flux's ``use_dynamic_shifting``) is shifted for
    ``image_seq_len`` tokens as the pipelines do."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if is_flow(scheduler):
        if method not in ("ddim", "euler"):  # "ddim" is the default of every caller
            raise ValueError(f'a flow-matching model samples with method "euler", got {method!r}')
        sampler = type(scheduler).from_config(scheduler.config)
        kwargs = {}
        if getattr(scheduler.config, "use_dynamic_shifting", False):
            kwargs["mu"] = dynamic_shift(scheduler.config, image_seq_len)
        sampler.set_timesteps(num_inference_steps, **kwargs)
        return sampler
    if method not in ("ddim", "ddpm"):
        raise ValueError(f'method must be "ddim" or "ddpm", got {method!r}')
    cls = DDIMScheduler if method == "ddim" else DDPMScheduler
    sampler = cls.from_config(scheduler.config, clip_sample=False)
    sampler.set_timesteps(num_inference_steps if method == "ddim" else scheduler.config.num_train_timesteps)
    return sampler


def dynamic_shift(config, image_seq_len: int) -> float:
    """μ of a resolution-dependent shift (Flux): linear in the number of image tokens between
    ``base_shift`` at ``base_image_seq_len`` and ``max_shift`` at ``max_image_seq_len``."""
    if image_seq_len is None:
        raise ValueError("this scheduler shifts its schedule by resolution: give the image size")
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    return image_seq_len * slope + config.base_shift - slope * config.base_image_seq_len


def _as_labels(labels):
    if isinstance(labels, dict):
        return rows.normalized({k: torch.as_tensor(v) for k, v in labels.items()})
    labels = torch.as_tensor(labels)
    return labels if labels.is_floating_point() else labels.long()


@torch.no_grad()
def sample(unet, scheduler, labels, num_inference_steps: int = 50, method: str = "ddim",
           seed: int = 0, batch_size: int = 256, progress: bool = False,
           guidance_scale: float = 1.0, uncond=None, shape=None) -> torch.Tensor:
    """Generate one image (or latent) per row of ``labels``, ``[N, C, H, W]``, unclipped.

    ``labels``: class ids ``[N]`` (an id outside the model's classes is a ValueError; a DiT's
    null class, id = its class count, is one); prompt embeddings ``[N, L, D]`` for a Stable Diffusion UNet;
    a text family's dict of conditions with N rows (``safemax.models.pipelines.prompt_embeddings``).
    ``shape``: ``(C, H, W)`` of one sample; by default the model's ``in_channels`` and
    ``sample_size`` (a Flux transformer has none: give it). ``guidance_scale`` w ≠ 1 samples with
    classifier-free guidance ε_u + w·(ε_c − ε_u), ε_u the prediction for ``uncond`` (one row: the
    empty prompt's condition, or the "no class" id); w = 1 is plain conditional sampling.
    Deterministic for a given ``seed``: the initial noise and the DDPM noise come from a CPU
    generator, whatever the device.
    """
    labels = _as_labels(labels)
    if not isinstance(labels, dict) and not labels.is_floating_point() and labels.numel():
        n = class_count(unet)
        # a DiT's embedding has one more row, the null class n (classifier-free guidance's uncond)
        dit = n is not None and getattr(unet.config, "norm_type", None) == "ada_norm_zero"
        if n is not None and not 0 <= int(labels.min()) <= int(labels.max()) <= n - 1 + dit:
            bad = sorted({int(c) for c in labels.unique() if not 0 <= c <= n - 1 + dit})
            raise ValueError(f"labels {bad} are not class ids of this model ({n} classes: ids 0..{n - 1 + dit}"
                             f"{f', {n} the null class' if dit else ''})")
    if guidance_scale != 1 and uncond is None:
        raise ValueError("guidance_scale != 1 needs uncond: the empty prompt's embedding (or the "
                         "unconditional class id) the model was trained with")
    family = family_of(unet)
    shape = tuple(shape) if shape is not None else family.sample_shape()
    if shape is None:
        raise ValueError(f"{family.title} does not say its sample size: give shape=(C, H, W) of a latent")
    param = next(unet.parameters())
    device, dtype = param.device, param.dtype
    g = torch.Generator().manual_seed(seed)
    flow = is_flow(scheduler)
    was_training = unet.training
    unet.eval()
    out = []
    chunks = range(0, rows.count(labels), batch_size)
    for start in tqdm(chunks, desc="sampling", disable=not progress, leave=False):
        y = rows.to(rows.take(labels, slice(start, start + batch_size)), device, dtype)
        n = rows.count(y)
        if guidance_scale != 1:  # one row, repeated
            null = rows.apply(lambda v: v.expand(n, *v.shape), rows.to(_as_labels(uncond), device, dtype))
        sampler = make_sampler(scheduler, method, num_inference_steps, family.image_seq_len(shape))
        x = torch.randn((n, *shape), generator=g).to(device=device, dtype=dtype)
        for t in sampler.timesteps:
            # a DDPM-style model takes the integer step, a flow model its scheduler's timestep
            # T·σ (float), in the family's convention (Flux: σ)
            tt = torch.full((n,), float(t) if flow else int(t), device=device,
                            dtype=torch.float32 if flow else torch.long)
            if flow:
                tt = family.flow_input(tt, scheduler.config.num_train_timesteps)
            eps = epsilon_part(family.call(unet, x, tt, y), shape[0])
            if guidance_scale != 1:
                e_u = epsilon_part(family.call(unet, x, tt, null), shape[0])
                eps = e_u + guidance_scale * (eps - e_u)
            kwargs = {} if flow else {"eta": 0.0} if method == "ddim" else {"generator": g}
            x = sampler.step(eps, t, x, **kwargs).prev_sample
        out.append(x.float().cpu())
    unet.train(was_training)
    return torch.cat(out) if out else torch.empty((0, *shape))
