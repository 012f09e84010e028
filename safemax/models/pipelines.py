"""Concepts from diffusers text-to-image pipelines: prompt conditions and latents in the form the
``Unlearner`` takes, for every supported family.

    pipe = StableDiffusionPipeline.from_pretrained(path_to_sd)
    church = prompt_embeddings(pipe, ["a church", "a photo of a church"])
    retain = pipeline_data(pipe, ["a dog", "a tree", "a car", ""], n_per_prompt=8)
    u = Unlearner(pipe.unet, pipe.scheduler, forget={"church": church})
    u.fit(retain=retain, forget=None, steps=200, batch_size=4)   # data-free forget latents
    pipe.unet = u.unet   # the pipeline now generates without the concept

The denoiser (a UNet or a transformer) works on VAE latents, so that is where the data live and
where the max-entropy target applies: the forgotten concept's reverse chain halts in latent space.

Supported pipelines (``family(pipe)``) and the condition of one prompt each gives, batch-first
(``N`` prompts), float32 on the CPU unless said otherwise; the keys are the pipelines' own names:

| family | pipeline | condition |
| --- | --- | --- |
| ``"sd"`` | ``StableDiffusionPipeline`` (SD 1.x/2.x) | a tensor ``[N, L, D]`` |
| ``"sdxl"`` | ``StableDiffusionXLPipeline`` | ``prompt_embeds [N, L, D]``, ``pooled_prompt_embeds [N, P]``, ``add_time_ids [N, 6]`` |
| ``"sd3"`` | ``StableDiffusion3Pipeline`` (SD3/3.5) | ``prompt_embeds [N, L, D]``, ``pooled_prompt_embeds [N, P]`` |
| ``"flux"`` | ``FluxPipeline`` (Flux.1 dev/schnell) | ``prompt_embeds [N, L, D]``, ``pooled_prompt_embeds [N, P]``; dev (``guidance_embeds``) also ``guidance [N]`` |
| ``"pixart"`` | ``PixArtAlphaPipeline``, ``PixArtSigmaPipeline`` | ``prompt_embeds [N, L, D]``, ``prompt_attention_mask [N, L]`` (int64); α with micro-conditions also ``resolution [N, 2]``, ``aspect_ratio [N, 1]`` |
| ``"sana"`` | ``SanaPipeline`` | ``prompt_embeds [N, L, D]``, ``prompt_attention_mask [N, L]`` (int64) |

Every condition is computed with the pipeline's own ``encode_prompt`` (no classifier-free
guidance) and the defaults of the pipeline's own ``__call__`` (e.g. SD3's 256 and Flux's 512 T5
tokens, Sana's complex human instruction), so it is exactly what ``pipe(prompt, **options)`` feeds
its denoiser; options that change it are passed the same way (``max_sequence_length=…``,
``height=…, width=…`` for SDXL's time ids, ``guidance_scale=…`` for Flux-dev's guidance).

Latents are in the denoiser's space as the family's diffusers training script forms them:
``(z − shift)·scale`` of a VAE posterior sample ``z`` (shift 0 but for SD3 and Flux; SDXL VAEs
with ``latents_mean``/``latents_std`` per channel), Sana's ``AutoencoderDC`` latent times its scale.
Flux's latents are kept unpacked, ``[C, h, w]``, like every other family's.
"""
import inspect

import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from safemax.data import ConditionedImages

FAMILIES = {
    "sd": "StableDiffusionPipeline (SD 1.x/2.x)",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline (SD3/3.5)",
    "flux": "FluxPipeline (Flux.1 dev/schnell)",
    "pixart": "PixArtAlphaPipeline / PixArtSigmaPipeline",
    "sana": "SanaPipeline",
}

# Call options that are the inputs themselves, or that pipeline_data sets.
_RESERVED = {"prompt", "prompt_embeds", "pooled_prompt_embeds", "prompt_attention_mask",
             "negative_prompt_embeds", "negative_pooled_prompt_embeds",
             "negative_prompt_attention_mask", "num_images_per_prompt", "output_type", "generator",
             "latents", "return_dict"}


def family(pipe) -> str:
    """The family of a diffusers pipeline: ``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"``,
    ``"pixart"`` or ``"sana"`` (see the module's table); a ``ValueError`` for any other."""
    import diffusers

    for name, classes in (("sd", ("StableDiffusionPipeline",)),
                          ("sdxl", ("StableDiffusionXLPipeline",)),
                          ("sd3", ("StableDiffusion3Pipeline",)),
                          ("flux", ("FluxPipeline",)),
                          ("pixart", ("PixArtAlphaPipeline", "PixArtSigmaPipeline")),
                          ("sana", ("SanaPipeline",))):
        if any(isinstance(pipe, getattr(diffusers, c, ())) for c in classes):  # () if too old
            return name
    raise ValueError(
        f"safemax.models.pipelines supports the text-to-image pipelines {', '.join(FAMILIES.values())}; "
        f"got a {type(pipe).__name__}. Load the model's text-to-image pipeline (e.g. "
        "DiffusionPipeline.from_pretrained(path) for the base model, or build the supported class "
        "from its components), or give the Unlearner conditions and latents you computed yourself.")


def _device(pipe):
    return pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device


def _prompts(prompts) -> list:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("give at least one prompt (a string or a list of strings)")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings (use \"\" for the unconditional prompt); got {bad[0]!r}")
    return prompts


def _call_defaults(pipe) -> dict:
    """The named parameters of ``pipe.__call__`` with their defaults."""
    return {k: p.default for k, p in inspect.signature(type(pipe).__call__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _check_options(pipe, options: dict, extra=()) -> dict:
    """Options must be parameters of the pipeline's ``__call__`` (and not the inputs themselves)."""
    allowed = _call_defaults(pipe)
    for k in options:
        if k in _RESERVED:
            raise ValueError(f"{k}= is set by safemax itself; leave it out")
        if k not in allowed and k not in extra:
            raise ValueError(
                f"{type(pipe).__name__}.__call__ takes no option {k}=; options are the pipeline's own "
                f"call arguments ({', '.join(sorted(set(allowed) - _RESERVED))})")
    return allowed


def _size(pipe, fam, options) -> tuple:
    """(height, width) in pixels the pipeline generates at, from ``size=(h, w)`` or height/width."""
    size = options.get("size")
    if size is not None:
        height, width = (int(s) for s in size)
    else:
        height, width = options.get("height"), options.get("width")
    if fam == "sdxl":
        default = pipe.default_sample_size * pipe.vae_scale_factor
    else:  # PixArt: the transformer's sample size in pixels
        default = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return int(height or default), int(width or default)


def _encode_kwargs(pipe, options: dict, allowed: dict) -> dict:
    """Text options of ``encode_prompt`` that ``__call__`` also takes, with ``__call__``'s defaults
    (they can differ from ``encode_prompt``'s: PixArt's clean_caption, Sana's instruction)."""
    encode = inspect.signature(pipe.encode_prompt).parameters
    names = {"prompt_2", "prompt_3", "clip_skip", "max_sequence_length", "clean_caption",
             "complex_human_instruction"}
    kw = {k: options.get(k, allowed[k]) for k in names if k in encode and k in allowed}
    # A LoRA scale for the text encoders, which __call__ takes from its attention kwargs.
    for name in ("cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs"):
        scale = (options.get(name) or {}).get("scale")
        if scale is not None and "lora_scale" in encode:
            kw["lora_scale"] = scale
    return kw


def _cpu(t, dtype=torch.float32):
    return t.to(device="cpu", dtype=dtype)


@torch.no_grad()
def prompt_embeddings(pipe, prompts, **options):
    """The condition of one prompt or a list, batch-first, in the form of the module's table.

    ``options`` are the pipeline's own call arguments (``pipe(prompt, **options)``), those that
    shape the condition taking effect: the text ones (``max_sequence_length``, ``clip_skip``,
    ``clean_caption``, ``complex_human_instruction``, ``prompt_2``, ``prompt_3``), the size for
    SDXL's ``add_time_ids`` and PixArt-α's micro-conditions (``height``/``width``, or
    ``size=(h, w)``; SDXL's ``original_size``, ``crops_coords_top_left``, ``target_size``; PixArt-α's
    ``use_resolution_binning``), Flux-dev's ``guidance_scale`` (default 3.5) and the LoRA ``scale``
    in the attention kwargs. Others (steps, negative prompts, ...) do not change the condition and
    are ignored, so the same options can go to ``pipe(...)`` and here.
    """
    prompts = _prompts(prompts)
    fam = family(pipe)
    allowed = _check_options(pipe, options, extra=("size",))
    if options.get("size") is not None and (options.get("height") is not None
                                            or options.get("width") is not None):
        raise ValueError("give size=(height, width) or height=/width=, not both")
    kw = _encode_kwargs(pipe, options, allowed)
    device, n = _device(pipe), len(prompts)
    if fam == "sd":
        emb, _ = pipe.encode_prompt(prompts, device, 1, False, **kw)
        return _cpu(emb)
    if fam == "sdxl":
        emb, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False, **kw)
        height, width = _size(pipe, fam, options)
        proj = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                else pipe.text_encoder_2.config.projection_dim)
        time_ids = pipe._get_add_time_ids(
            tuple(options.get("original_size") or (height, width)),
            tuple(options.get("crops_coords_top_left") or (0, 0)),
            tuple(options.get("target_size") or (height, width)),
            dtype=emb.dtype, text_encoder_projection_dim=proj)
        return {"prompt_embeds": _cpu(emb), "pooled_prompt_embeds": _cpu(pooled),
                "add_time_ids": _cpu(time_ids).repeat(n, 1)}
    if fam == "sd3":
        emb, _, pooled, _ = pipe.encode_prompt(prompts, kw.pop("prompt_2", None), kw.pop("prompt_3", None),
                                               device=device, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False, **kw)
        return {"prompt_embeds": _cpu(emb), "pooled_prompt_embeds": _cpu(pooled)}
    if fam == "flux":
        emb, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1, **kw)
        out = {"prompt_embeds": _cpu(emb), "pooled_prompt_embeds": _cpu(pooled)}
        if pipe.transformer.config.guidance_embeds:
            scale = options.get("guidance_scale", allowed["guidance_scale"])  # __call__'s: 3.5
            out["guidance"] = torch.full((n,), float(scale))
        return out
    # PixArt-α/Σ and Sana: T5 / Gemma embeddings with their attention mask
    emb, mask, _, _ = pipe.encode_prompt(prompts, False, device=device, num_images_per_prompt=1, **kw)
    out = {"prompt_embeds": _cpu(emb), "prompt_attention_mask": _cpu(mask, torch.int64)}
    if fam == "pixart" and getattr(pipe.transformer, "use_additional_conditions", False):
        height, width = _pixart_binned(pipe, *_size(pipe, fam, options),
                                       options.get("use_resolution_binning",
                                                   allowed.get("use_resolution_binning", False)))
        out["resolution"] = torch.tensor([[float(height), float(width)]]).repeat(n, 1)
        out["aspect_ratio"] = torch.tensor([[float(height / width)]]).repeat(n, 1)
    return out


def _pixart_binned(pipe, height, width, binning):
    """PixArt-α's resolution binning, as its ``__call__`` does it before the micro-conditions."""
    if not binning:
        return height, width
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )
    bins = {128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}
    size = pipe.transformer.config.sample_size
    if size not in bins:
        raise ValueError(f"PixArt's resolution binning knows sample sizes 32, 64 and 128, not {size}: "
                         "pass use_resolution_binning=False")
    return pipe.image_processor.classify_height_width_bin(height, width, ratios=bins[size])


# ----------------------------------------------------------------------------- latents

def _latent_affine(pipe, fam):
    """(shift, scale) with denoiser latents = (z − shift)·scale, as the family's training scripts
    form them and the inverse of how its pipeline decodes: ``z = latents / scale + shift``."""
    cfg = pipe.vae.config
    scale = torch.tensor(float(cfg.scaling_factor))
    shift = torch.tensor(0.0)
    if fam in ("sd3", "flux"):
        shift = torch.tensor(float(getattr(cfg, "shift_factor", None) or 0.0))
    elif fam == "sdxl" and getattr(cfg, "latents_mean", None) is not None \
            and getattr(cfg, "latents_std", None) is not None:
        shift = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        scale = scale / torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1)
    return shift, scale


def _multiple(pipe, fam) -> int:
    """Image sides must be multiples of this: the VAE's factor times the denoiser's patch."""
    f = pipe.vae_scale_factor
    if fam == "flux":
        return 2 * f  # 2x2 latent packing
    if fam in ("sd3", "pixart", "sana"):
        return f * int(getattr(pipe.transformer.config, "patch_size", 1) or 1)
    return f


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor, batch_size: int = 8, seed: int = 0) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [-1, 1] → the latents ``[N, C, H/f, W/f]`` the denoiser works on,
    formed as the family's diffusers training script does: a (seeded) VAE posterior sample ``z``,
    then ``(z − shift)·scale`` (see the module docstring); Flux's unpacked."""
    fam = family(pipe)
    vae = pipe.vae
    channels = getattr(vae.config, "in_channels", 3)
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != channels:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, {channels}, H, W], got {shape}")
    if len(images) == 0:
        raise ValueError("give at least one image")
    if images.min() < -1.001 or images.max() > 1.001:
        raise ValueError("images must be scaled to [-1, 1] (x / 127.5 - 1 for 8-bit pixels)")
    m = _multiple(pipe, fam)
    if images.shape[2] % m or images.shape[3] % m:
        raise ValueError(f"image height and width must be multiples of {m} for this {type(pipe).__name__} "
                         f"(VAE factor x patch), got {images.shape[2]}x{images.shape[3]}: resize or crop")
    shift, scale = _latent_affine(pipe, fam)
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device=vae.device, dtype=vae.dtype)
        enc = vae.encode(x)
        if hasattr(enc, "latent_dist"):  # AutoencoderKL: a posterior sample
            dist = enc.latent_dist
            noise = torch.randn(dist.mean.shape, generator=g).to(dist.mean)
            z = dist.mean + dist.std * noise
        else:  # Sana's AutoencoderDC: deterministic
            z = enc.latent
        z = z.float().cpu()
        out.append((z - shift) * scale)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Denoiser latents ``[N, C, h, w]`` (Flux's unpacked) → images ``[N, 3, H, W]`` in [-1, 1]."""
    fam = family(pipe)
    vae = pipe.vae
    channels = vae.config.latent_channels
    if not torch.is_tensor(latents) or latents.dim() != 4 or latents.shape[1] != channels:
        shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
        hint = " (unpack Flux's packed latents first)" if fam == "flux" else ""
        raise ValueError(f"latents must be a tensor [N, {channels}, h, w]{hint}, got {shape}")
    shift, scale = _latent_affine(pipe, fam)
    out = []
    for start in range(0, len(latents), batch_size):
        z = latents[start:start + batch_size].float().cpu() / scale + shift
        x = vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample
        out.append(x.float().cpu().clamp(-1, 1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- generated data

def _unpack_flux(pipe, packed, options):
    height = options.get("height") or pipe.default_sample_size * pipe.vae_scale_factor
    width = options.get("width") or pipe.default_sample_size * pipe.vae_scale_factor
    return pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)


@torch.no_grad()
def latents_for(pipe, prompts, seeds, **call) -> torch.Tensor:
    """One final latent per ``(prompt, seed)`` pair, in one batched ``pipe(...)`` call: image
    ``k`` starts from the noise of ``torch.Generator().manual_seed(seeds[k])``, so it is the
    image ``pipe(prompts[k], generator=that generator, **call)`` gives alone (batching changes
    only float rounding). ``[len(prompts), C, h, w]``, float32, CPU, in the denoiser's space
    (Flux's unpacked)."""
    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: one seed per image")
    out = pipe(prompts, num_images_per_prompt=1, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in seeds], **call)
    lat = out.images
    if family(pipe) == "flux":
        lat = _unpack_flux(pipe, lat, call)
    return lat.float().cpu()


BATCH = 32
"""Images per pipeline call when sampling many prompts (one call per image is mostly overhead)."""


@torch.no_grad()
def latents_of(pipe, prompts, n: int, first_seed: int, progress: bool = False, desc: str = "sampling",
               batch: int = BATCH, **call) -> torch.Tensor:
    """``n`` final latents of each prompt, prompt-major, ``batch`` images a call: image ``k`` of
    the list (prompt ``k // n``) from seed ``first_seed + k`` (see :func:`latents_for`);
    ``call``: the pipeline's call arguments (guidance, steps, ...)."""
    texts = [p for p in _prompts(prompts) for _ in range(int(n))]
    chunks = range(0, len(texts), batch)
    return torch.cat([latents_for(pipe, texts[k:k + batch], range(first_seed + k, first_seed + min(k + batch, len(texts))),
                                  **call)
                      for k in tqdm(chunks, desc=desc, disable=not progress, leave=False)])


@torch.no_grad()
def pipeline_data(pipe, prompts, n_per_prompt: int, num_inference_steps: int = 25,
                  guidance_scale: float = None, seed: int = 0, batch_size: int = 4,
                  progress: bool = True, **options):
    """``(latent, condition)`` pairs generated by the pipeline itself (with its classifier-free
    guidance; ``guidance_scale=None`` is the pipeline's own default): ``n_per_prompt`` latents per
    prompt, in prompt order, ``batch_size`` a call; latent ``k`` is what ``pipe(prompt,
    generator=torch.Generator().manual_seed(seed + k))`` gives (:func:`latents_of`). Data for keeping other concepts without a data set (their retain
    target is the original model's own prediction anyway), or forget data for a concept when the
    built-in plain conditional sampling of ``Unlearner.fit(forget=None)`` is too poor a sampler.

    ``options`` go to every ``pipe(...)`` call and to :func:`prompt_embeddings` alike (e.g.
    ``height=512, width=512``, ``max_sequence_length=…``). The latents are the pipeline's
    ``output_type="latent"`` output, already in the denoiser's space (Flux's unpacked to
    ``[C, h, w]``); the conditions are rows of :func:`prompt_embeddings`.

    Stable Diffusion 1.x/2.x gives a ``TensorDataset`` of ``(latent, prompt embeddings [L, D])``;
    every other family a :class:`safemax.data.ConditionedImages` of ``(latent, dict of per-row tensors)``.
    """
    prompts = _prompts(prompts)
    family(pipe)
    if int(n_per_prompt) < 1:
        raise ValueError(f"n_per_prompt must be at least 1, got {n_per_prompt}")
    allowed = _check_options(pipe, options)
    for k in ("prompt_2", "prompt_3", "size"):
        if k in options:
            raise ValueError(f"pipeline_data takes no {k}=: it generates each prompt on its own "
                             "(use height=/width= for the size)")
    if guidance_scale is None:
        guidance_scale = allowed["guidance_scale"]
    cond = prompt_embeddings(pipe, prompts, guidance_scale=guidance_scale, **options)
    latents = latents_of(pipe, prompts, n_per_prompt, seed, progress, "generating latents", batch_size,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **options)
    return conditioned_latents(latents, torch.arange(len(prompts)).repeat_interleave(int(n_per_prompt)), cond)


def conditioned_latents(latents: torch.Tensor, index: torch.Tensor, cond):
    """The data set of ``latents`` whose row ``i`` has the condition of prompt ``index[i]``, from
    the conditions ``cond`` of :func:`prompt_embeddings` (in the form of :func:`pipeline_data`)."""
    if len(latents) != len(index):
        raise ValueError(f"{len(latents)} latents but {len(index)} prompt indices")
    if torch.is_tensor(cond):
        return TensorDataset(latents, cond[index].contiguous())
    return ConditionedImages(latents, {k: v[index].contiguous() for k, v in cond.items()})
