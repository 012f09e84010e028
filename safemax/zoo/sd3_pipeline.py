"""An SD3-architecture pipeline trained here on the captioned Fashion-MNIST of the Stable Diffusion
one (``safemax.zoo.sd_pipeline``): a real ``StableDiffusion3Pipeline`` folder that
``StableDiffusion3Pipeline.from_pretrained(path)`` loads with diffusers alone — the rectified-flow
family of SD3/3.5 on this project's own data, captions, synonyms and templates.

    python -m safemax.zoo.sd3_pipeline --out safemax/zoo/fashion_mnist_sd3       # the full size
    python -m safemax.zoo.sd3_pipeline --out DIR --resume                        # go on after a stop
    python -m safemax.zoo.sd3_pipeline --out DIR --resume --transformer-more-steps 2000   # train it further
    python -m safemax.zoo.sd3_pipeline --out DIR --tiny --base SD_DIR            # a smoke run (seconds)
    python -m safemax.zoo.sd3_pipeline --estimate                                # time a few steps

Its parts, as SD3 has them:

- ``tokenizer`` / ``text_encoder``, and the ``vae``: the Stable Diffusion pipeline's own (``--base``,
  the zoo's by default) — its tokenizer, its CLIP's text tower with the text projection
  (``CLIPTextModelWithProjection``, whose projected end-of-text state is SD3's pooled prompt) and
  its VAE with ``shift_factor`` 0. So both pipelines read the same text states and the same
  latents, and a difference between them is the denoiser's and the objective's.
- ``tokenizer_2`` / ``text_encoder_2``: a second small CLIP, trained here as the first was but from
  another seed (SD3 pairs two CLIPs).
- no T5 (``text_encoder_3=None``, which SD3 allows): the pipeline gives its zero states.
- ``transformer``: an ``SD3Transformer2DModel`` (MMDiT) on the 4×16×16 latents in 2×2 patches,
  trained by the project's one trainer (``safemax.zoo.trainer.train_denoiser``) with the rectified
  flow objective of ``FlowMatchEulerDiscreteScheduler`` (shift 1: 16×16 latents are small; SD3's 3.0
  is for 128×128), conditioned on every caption's SD3 prompt embeddings — the pipeline's own
  ``encode_prompt``, computed once (``caption_table``) — 10% of the rows the empty caption's; its
  EMA is shipped.

Each stage resumes as the Stable Diffusion one's do (``--work``, ``--checkpoint-minutes``,
``--resume``, Ctrl-C). Its sample-quality bar is the Stable Diffusion one's, at SD3's own
guidance (7.0) and steps (28): ``python -m safemax.zoo.sd_quality --pipeline fashion-mnist-sd3``.
"""
import argparse
import copy
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass

import torch

from safemax.data import captions
from safemax.data.caption_tokenizer import write_tokenizer
from safemax.evaluation.report import write_json
from safemax.zoo import sd_parts
from safemax.zoo import sd_pipeline as sd
from safemax.zoo.trainer import state_path, train_denoiser

DEFAULT_WORK = os.path.expanduser("~/.cache/safemax/fashion-mnist-sd3")
STAGES = ("clip_2", "transformer")
MORE = "transformer_more"
"""The folder and state of the transformer's second phase (``continue_transformer``)."""
GUIDANCE, STEPS = 7.0, 28
"""SD3's ``__call__`` defaults: the guidance scale and steps its quality is judged at."""

__all__ = ["SD3Size", "FULL", "TINY", "SIZES", "base_parts", "make_transformer", "make_scheduler", "caption_table",
           "train_transformer", "continue_transformer", "assemble", "train", "estimate", "main", "DEFAULT_WORK",
           "STAGES", "MORE", "GUIDANCE", "STEPS"]


@dataclass(frozen=True)
class SD3Size:
    """One size: the CLIP's size (``sd_parts.SIZES``: the second CLIP's config and recipe), the
    transformer's config and its recipe (``steps``, ``batch_size``, ``lr``)."""
    name: str
    clip: str
    transformer: dict
    transformer_train: dict


# 96 wide, 4 joint blocks (1.3 M parameters): ~0.5 s a step of 64 on one core of this project's
# machine, so that the run fits a working session beside other jobs; the UNet's learning rate
FULL = SD3Size("full", "full", dict(num_layers=4, attention_head_dim=32, num_attention_heads=3),
               dict(steps=4000, batch_size=128, lr=1e-3))
TINY = SD3Size("tiny", "tiny", dict(num_layers=1, attention_head_dim=8, num_attention_heads=2),   # tests: seconds
               dict(steps=4, batch_size=8, lr=1e-3))
SIZES = {s.name: s for s in (FULL, TINY)}


def _size(size) -> SD3Size:
    if isinstance(size, SD3Size):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; the sizes are {', '.join(SIZES)}")
    return SIZES[size]


def base_parts(base: str = "fashion-mnist-sd"):
    """``(tokenizer, CLIPModel, AutoencoderKL)`` of a Stable Diffusion pipeline trained by
    ``safemax.zoo.sd_pipeline`` (a zoo name or its folder), float32, the VAE with ``shift_factor`` 0."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from safemax import zoo
    folder = zoo.PIPELINES.get(base, base)
    missing = [p for p in ("tokenizer", "vae", "clip") if not os.path.isdir(os.path.join(str(folder), p))]
    if missing:
        raise ValueError(f"base {base!r}: not a Stable Diffusion pipeline trained by safemax.zoo.sd_pipeline "
                         f"(no {', '.join(missing)} in {folder}); train one with python -m safemax.zoo.sd_pipeline")
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), torch_dtype=torch.float32).eval()
    vae.register_to_config(shift_factor=0.0)
    return CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer")), sd.load_clip(folder), vae


def make_transformer(size, text_encoders, vae):
    """A fresh ``SD3Transformer2DModel`` on the VAE's latents, 2×2 patches, reading the two text
    encoders' states side by side (``joint_attention_dim`` = their widths' sum: SD3's pipeline pads
    the CLIP states to the T5 width, which is this when there is no T5) and their pooled pair."""
    from diffusers import SD3Transformer2DModel
    cfg = _size(size).transformer
    channels = vae.config.latent_channels
    side = sd_parts.LATENT_SIZE
    return SD3Transformer2DModel(
        sample_size=side, patch_size=2, in_channels=channels, out_channels=channels, pos_embed_max_size=side // 2,
        joint_attention_dim=sum(e.config.hidden_size for e in text_encoders),
        pooled_projection_dim=sum(e.config.projection_dim for e in text_encoders),
        caption_projection_dim=cfg["attention_head_dim"] * cfg["num_attention_heads"], **cfg)


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def _pipeline(tokenizer, text_encoders, vae, transformer):
    from diffusers import StableDiffusion3Pipeline
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=make_scheduler(), vae=vae,
                                    text_encoder=text_encoders[0], tokenizer=tokenizer,
                                    text_encoder_2=text_encoders[1], tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def caption_table(pipe) -> dict:
    """Every caption's SD3 condition, row 0 the empty caption's: ``{"prompt_embeds": [N, L, D],
    "pooled_prompt_embeds": [N, P]}``, exactly what the pipeline computes for those prompts."""
    from safemax.models.pipelines import prompt_embeddings
    return prompt_embeddings(pipe, list(captions.CAPTIONS))


def _fit(transformer, tokenizer, text_encoders, vae, data, recipe, name, work, resume, minutes, checkpoint_minutes,
         progress, callback, desc):
    """Trains ``transformer`` for ``recipe``'s steps under the stage state ``name``; its EMA, saved
    with its record in ``work/name``, or None when ``minutes`` ran out first."""
    images, labels = data
    condition = sd_parts.CaptionPrompts(caption_table(_pipeline(tokenizer, text_encoders, vae, transformer)))
    run = train_denoiser(transformer, make_scheduler(), (sd.latents_of_images(vae, images), labels),
                         steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"],
                         condition=condition, minutes=minutes, work=work, name=name,
                         resume=resume and os.path.exists(state_path(work, name)),
                         checkpoint_minutes=checkpoint_minutes, progress=progress, desc=desc, callback=callback)
    if run.stopped != "steps":
        return None
    folder = os.path.join(work, name)
    run.ema.save_pretrained(folder, safe_serialization=True)
    sd._record(folder, recipe, run)
    return run.ema.eval()


def _load(folder, device):
    from diffusers import SD3Transformer2DModel
    return SD3Transformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval()


def train_transformer(tokenizer, text_encoders, vae, data, size="full", work=DEFAULT_WORK, seed=0, resume=False,
                      steps=None, device="cpu", minutes=None, checkpoint_minutes=10.0, progress=True, callback=None):
    """The transformer stage: the flow objective on the VAE's scaled latents, conditioned on
    captions; its EMA in ``work/transformer``. Returns it (None when ``minutes`` ran out first)."""
    size = _size(size)
    recipe = dict(size.transformer_train, size=size.name, seed=seed, images=len(data[1]))
    if steps is not None:
        recipe["steps"] = steps
    folder = os.path.join(work, "transformer")
    if sd._finished(folder, recipe, resume):
        return _load(folder, device)
    transformer = sd._seeded(seed, make_transformer, size, text_encoders, vae).to(device)
    return _fit(transformer, tokenizer, text_encoders, vae, data, recipe, "transformer", work, resume, minutes,
                checkpoint_minutes, progress, callback, "2/2 transformer")


def continue_transformer(tokenizer, text_encoders, vae, data, more_steps: int, lr: float = None, work=DEFAULT_WORK,
                         resume=False, device="cpu", minutes=None, checkpoint_minutes=10.0, progress=True,
                         callback=None):
    """A second phase of the finished transformer stage (``work/transformer``): ``more_steps``
    further steps from its EMA, with a fresh warm-up and cosine at ``lr`` (the first phase's by
    default) and batches drawn from the next seed, so that it does not replay the first phase's. Its
    EMA in ``work/{MORE}``; resumes as the stages do. Returns it (None when ``minutes`` ran out)."""
    first = os.path.join(work, "transformer", "training.json")
    if not os.path.exists(first):
        raise FileNotFoundError(f"{first}: the transformer stage is not finished, so there is nothing to continue; "
                                "train it first (python -m safemax.zoo.sd3_pipeline --out DIR), then add "
                                "--transformer-more-steps N --resume")
    with open(first) as f:
        made = json.load(f)["recipe"]
    if made["images"] != len(data[1]):
        raise ValueError(f"continue: the transformer was trained on {made['images']} images, not {len(data[1])}; "
                         "pass the same data (and --limit)")
    recipe = dict(after=made, steps=more_steps, batch_size=made["batch_size"], lr=lr or made["lr"],
                  seed=made["seed"] + 1)
    folder = os.path.join(work, MORE)
    if sd._finished(folder, recipe, resume):
        return _load(folder, device)
    transformer = _load(os.path.dirname(first), device).train()
    return _fit(transformer, tokenizer, text_encoders, vae, data, recipe, MORE, work, resume, minutes,
                checkpoint_minutes, progress, callback, "+ transformer, more steps")


def assemble(out: str, tokenizer, clips, vae, transformer, dtype=torch.float16, record: dict = None) -> str:
    """Saves the ``StableDiffusion3Pipeline`` (and the first CLIP in ``out/clip``, for the CLIP
    score), replacing the folder whole. The transformer and VAE are stored in ``dtype``, the text
    encoders in float32 (see ``sd_pipeline.assemble``). Returns ``out``."""
    def shipped(model, as_dtype=dtype):
        return copy.deepcopy(model).to("cpu", as_dtype).eval()

    encoders = [shipped(sd_parts.text_encoder_with_projection(c), torch.float32) for c in clips]
    pipe = _pipeline(tokenizer, encoders, shipped(vae), shipped(transformer))
    out = os.path.abspath(out)
    tmp, old = out + ".partial", out + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):   # CLIP's own vocab.json and merges.txt beside tokenizer.json
        write_tokenizer(os.path.join(tmp, name), tokenizer.model_max_length)
    shipped(clips[0], torch.float32).save_pretrained(os.path.join(tmp, "clip"), safe_serialization=True)
    counts = {name: sd_parts.parameters(m) for name, m in (("text_encoder", encoders[0]), ("text_encoder_2", encoders[1]),
                                                           ("vae", vae), ("transformer", transformer))}
    write_json(os.path.join(tmp, "training.json"),
               dict(record or {}, dtype=str(dtype).replace("torch.", ""), parameters=counts,
                    erase_templates=captions.ERASE_TEMPLATES, templates=list(captions.TEMPLATES),
                    synonyms=[list(w) for w in captions.SYNONYMS], guidance_scale=GUIDANCE, num_inference_steps=STEPS))
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def train(out: str, size="full", base: str = "fashion-mnist-sd", work: str = None, resume: bool = False,
          seed: int = 0, steps: dict = None, data=None, limit: int = None, device: str = "cpu",
          minutes: float = None, checkpoint_minutes: float = 10.0, dtype=torch.float16, progress: bool = True,
          more_steps: int = None, more_lr: float = None):
    """The second CLIP and the transformer, then the pipeline in ``out``; returns ``out`` (None when
    ``minutes`` ran out first: ``resume=True`` goes on). ``base``: the Stable Diffusion pipeline
    whose tokenizer, first text encoder and VAE are taken; ``steps``: ``{stage: steps}``; ``data``:
    ``(images [N, 1, 32, 32], labels)`` instead of Fashion-MNIST (``limit``: its first rows);
    ``more_steps``: then a second transformer phase of that many steps at ``more_lr``
    (``continue_transformer``; with ``resume=True`` the finished first phase is reused)."""
    size = _size(size)
    steps = dict(steps or {})
    unknown = set(steps) - set(STAGES)
    if unknown:
        raise ValueError(f"steps: unknown stages {sorted(unknown)}; the stages are {', '.join(STAGES)}")
    if more_lr is not None and not more_steps:
        raise ValueError("more_lr is the second transformer phase's learning rate: pass more_steps too")
    work = work or DEFAULT_WORK
    tokenizer, clip, vae = base_parts(base)
    data = sd._checked(data if data is not None else sd.load_data(limit))
    start = time.time()

    def left():
        return None if minutes is None else max(minutes - (time.time() - start) / 60, 1e-3)

    loop = dict(work=work, device=device, checkpoint_minutes=checkpoint_minutes, progress=progress)
    kept = resume and os.path.exists(os.path.join(work, "clip_2", "training.json"))
    clip_2 = sd.train_clip(tokenizer, data, size=size.clip, seed=seed + 1, steps=steps.get("clip_2"), minutes=left(),
                           resume=resume, name="clip_2", desc="1/2 second CLIP", **loop)
    transformer = None
    if clip_2 is not None:
        encoders = [sd_parts.text_encoder_with_projection(c) for c in (clip, clip_2)]
        transformer = train_transformer(tokenizer, encoders, vae.to(device), data, size, seed=seed,
                                        steps=steps.get("transformer"), minutes=left(), resume=resume and kept, **loop)
    if transformer is not None and more_steps:
        transformer = continue_transformer(tokenizer, encoders, vae.to(device), data, more_steps, more_lr,
                                           minutes=left(), resume=resume and kept, **loop)
    if transformer is None:
        print(f"stopped after {minutes} minutes; the state is in {work}: go on with --resume")
        return None
    record = dict(size=size.name, seed=seed, base=str(base), stages={})
    for stage in STAGES + ((MORE,) if more_steps else ()):
        with open(os.path.join(work, stage, "training.json")) as f:
            record["stages"][stage] = json.load(f)
    return assemble(out, tokenizer, [clip, clip_2], vae, transformer, dtype, record)


def estimate(size="full", base: str = "fashion-mnist-sd", repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds per transformer step at ``size`` (the median of ``repeats`` steps after a first, on
    random images) and the hours its steps would take (the second CLIP: see ``sd_pipeline``)."""
    import tempfile
    size, (tokenizer, clip, vae) = _size(size), base_parts(base)
    n, times = 1000, []
    data = (torch.rand(n, 1, sd_parts.IMAGE_SIZE, sd_parts.IMAGE_SIZE) * 2 - 1, torch.arange(n) % 10)
    encoders = [sd_parts.text_encoder_with_projection(clip)] * 2
    with tempfile.TemporaryDirectory() as work:
        train_transformer(tokenizer, encoders, vae, data, size, work=work, steps=repeats + 1, device=device,
                          progress=False, callback=lambda run: times.append(time.perf_counter()))
    per_step = statistics.median(b - a for a, b in zip(times, times[1:]))
    return dict(seconds_per_step=round(per_step, 3), steps=size.transformer_train["steps"],
                hours=round(per_step * size.transformer_train["steps"] / 3600, 2))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m safemax.zoo.sd3_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="the pipeline's folder (the zoo's: safemax/zoo/fashion_mnist_sd3)")
    p.add_argument("--base", default="fashion-mnist-sd",
                   help="the Stable Diffusion pipeline whose tokenizer, text encoder and VAE are taken (default: the zoo's)")
    sd.add_training_arguments(p, DEFAULT_WORK, SIZES, STAGES, "a few transformer steps")
    p.add_argument("--transformer-more-steps", type=int, default=None, metavar="N",
                   help="then N more transformer steps from its EMA, a fresh warm-up and cosine "
                        "(with --resume, the finished transformer is reused)")
    p.add_argument("--more-lr", type=float, default=None, help="those steps' peak learning rate (default: the first's)")
    args = p.parse_args(argv)
    if args.estimate:
        print(json.dumps(estimate(args.size, args.base, device=args.device), indent=2))
        return 0
    if not args.out:
        p.error("--out DIR is needed (where the pipeline is saved)")
    steps = {s: getattr(args, f"{s}_steps") for s in STAGES if getattr(args, f"{s}_steps") is not None}
    out = train(args.out, args.size, base=args.base, work=args.work, resume=args.resume, seed=args.seed, steps=steps,
                limit=args.limit, device=args.device, minutes=args.minutes,
                checkpoint_minutes=args.checkpoint_minutes, dtype=getattr(torch, args.dtype),
                more_steps=args.transformer_more_steps, more_lr=args.more_lr)
    if out:
        print(f"saved the pipeline in {out}: StableDiffusion3Pipeline.from_pretrained({out!r}); its bar: "
              f"python -m safemax.zoo.sd_quality --pipeline {out}")
    return 0


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "python -m safemax.zoo.sd3_pipeline"))
