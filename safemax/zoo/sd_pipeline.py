"""A Stable Diffusion pipeline trained here, from scratch, on captioned Fashion-MNIST
(``safemax.data.captions``): a real ``StableDiffusionPipeline`` folder that
``StableDiffusionPipeline.from_pretrained(path)`` loads with diffusers alone.

    python -m safemax.zoo.sd_pipeline --out safemax/zoo/fashion_mnist_sd          # the full size
    python -m safemax.zoo.sd_pipeline --out DIR --resume                          # go on after a stop
    python -m safemax.zoo.sd_pipeline --out DIR --tiny --limit 64                 # a smoke run (seconds)
    python -m safemax.zoo.sd_pipeline --estimate                                  # time a few steps

The stages, each resumable (its whole state in ``--work`` every ``--checkpoint-minutes``, at its
end and on Ctrl-C; ``--resume`` skips the finished stages and continues the one under way), each
with a progress bar:

1. the tokenizer: CLIP's files, its merges learnt from the captions (``safemax.data.caption_tokenizer``);
2. a small CLIP (``transformers.CLIPModel``: the text tower and a ViT on the 32×32 images) trained
   contrastively on (image, caption) pairs (``sd_parts.clip_loss``); its text tower is the
   pipeline's ``CLIPTextModel``, and the whole model is shipped in ``<out>/clip`` for the CLIP
   score (``load_clip``);
3. the ``AutoencoderKL`` (L1 reconstruction + a small KL); its ``scaling_factor`` is 1 / the std of
   the training images' latents, stored in its config as Stable Diffusion does;
4. the ``UNet2DConditionModel`` on the scaled latents, by the project's one trainer
   (``safemax.zoo.trainer.train_denoiser``), conditioned on the frozen text encoder's states of a
   caption drawn per row and step, 10% of the rows the empty caption (``sd_parts.CaptionPrompts``);
   its EMA is shipped;
5. the pipeline: the four parts, the tokenizer and a ``DDPMScheduler`` (linear β, T = 1000)
   saved with ``save_pretrained`` (safetensors; ``safety_checker=None``).

Images are Fashion-MNIST padded to 32×32 with its background (the pipeline wants sides divisible
by 8), latents 4×16×16; ``sd_parts.fashion_frame`` crops samples back to the classifier's 28×28.

Sizes (``sd_parts.FULL``): text encoder 64 wide, 3 layers (0.19 M parameters); ViT 64 wide, 3
layers, 4×4 patches (0.16 M); VAE (32, 64) channels (0.66 M); UNet (32, 64, 128) channels,
cross-attention at 8×8 and 4×4 (4.13 M). Shipped: the UNet and VAE in float16, the text encoder
and the CLIP in float32 (see ``assemble``), ~11.8 MB.

**Time at full size on this project's 2-core CPU machine**, measured (the shipped run, code of
2ac3805, alone with two threads; ``training.json`` of each stage records its seconds): CLIP 299 s,
VAE 713 s, UNet 3,097 s (0.88 s/step) — 69 minutes, with the steps of ``sd_parts.FULL`` (1,000,
1,000 and 3,500) chosen so that the whole run fits one working session. (A first run with 2,000,
2,000 and 6,000 steps was lost with its machine mid-UNet.) ``--estimate`` times a few steps of each
stage on another machine.
"""
import argparse
import copy
import json
import os
import shutil
import statistics
import time

import torch

from safemax.data import captions
from safemax.data.caption_tokenizer import write_tokenizer
from safemax.evaluation.report import write_json
from safemax.zoo import sd_parts
from safemax.zoo.stage import train_stage
from safemax.zoo.trainer import state_path, train_denoiser

DEFAULT_WORK = os.path.expanduser("~/.cache/safemax/fashion-mnist-sd")
STAGES = ("clip", "vae", "unet")

__all__ = ["train", "train_clip", "train_vae", "train_unet", "assemble", "load_clip", "load_data", "latents_of_images",
           "estimate", "add_training_arguments", "main", "DEFAULT_WORK", "STAGES"]


def load_data(limit: int = None):
    """Fashion-MNIST's 60,000 training images padded to 32×32 (in [−1, 1]) and their labels;
    the first ``limit`` only, when given."""
    from safemax.data import fashion_mnist
    images, labels = fashion_mnist("train", size=sd_parts.IMAGE_SIZE).tensors
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def _checked(data):
    """``data`` as ``(images [N, 1, 32, 32] float, labels [N] of class ids)``, or a ``ValueError``."""
    images, labels = data
    side = sd_parts.IMAGE_SIZE
    if not (torch.is_tensor(images) and images.is_floating_point() and tuple(images.shape[1:]) == (1, side, side)):
        raise ValueError(f"data: images must be float [N, 1, {side}, {side}] in [-1, 1] (Fashion-MNIST "
                         f"padded: fashion_mnist(split, size={side})), got {tuple(getattr(images, 'shape', ()))}")
    labels = torch.as_tensor(labels)
    if len(labels) != len(images) or len(labels) == 0 or labels.min() < 0 or labels.max() >= captions.NUM_CLASSES:
        raise ValueError(f"data: one class id 0..{captions.NUM_CLASSES - 1} per image, got {len(labels)} labels "
                         f"for {len(images)} images")
    return images, labels.long()


def _recipe(size, stage: str, seed: int, steps, n: int) -> dict:
    recipe = dict(getattr(size, f"{stage}_train"), size=size.name, seed=seed, images=n)
    if steps is not None:
        recipe["steps"] = steps
    return recipe


def _finished(folder: str, recipe: dict, resume: bool) -> bool:
    """Whether the stage's output in ``folder`` can be reused: only on resume, and only if it was
    made with ``recipe`` (otherwise a resume is a ``ValueError``: it would mix two recipes)."""
    record = os.path.join(folder, "training.json")
    if not (resume and os.path.exists(record)):
        return False
    with open(record) as f:
        made = json.load(f)["recipe"]
    if made != recipe:
        raise ValueError(f"resume: {folder} was made with {made}, not {recipe}; pass the same "
                         "settings, or start without --resume")
    return True


def _record(folder: str, recipe: dict, run, **extra):
    """The stage's ``training.json`` (with its provenance: the commit and machine that made it)."""
    write_json(os.path.join(folder, "training.json"),
               dict(recipe=recipe, steps=run.steps, seconds=round(run.seconds),
                    final_loss=round(run.mean_loss(), 5), **extra))


def _seeded(seed: int, make, *args):
    """``make(*args)`` with its initial weights drawn from ``seed`` (the global generator untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make(*args)


def _batches(images, labels, batch_size, device):
    def batch(generator):
        idx = torch.randint(0, len(labels), (batch_size,), generator=generator)
        return images[idx].to(device), labels[idx]
    return batch


def train_clip(tokenizer, data, size="full", work=DEFAULT_WORK, seed=0, resume=False, steps=None,
               device="cpu", name: str = "clip", desc: str = "1/3 CLIP", **loop):
    """Stage 2: the small CLIP, contrastive on (image, caption of its class); ``work/<name>``
    (SD3's pipeline trains a second one under another name and seed). Returns the ``CLIPModel``
    (None when ``minutes`` ran out first: resume goes on)."""
    from transformers import CLIPModel
    size, images, labels = sd_parts.size_of(size), *data
    recipe, folder = _recipe(size, "clip", seed, steps, len(labels)), os.path.join(work, name)
    if _finished(folder, recipe, resume):
        return CLIPModel.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    clip = _seeded(seed, sd_parts.make_clip, size, tokenizer).to(device)
    ids = sd_parts.tokenize(tokenizer, captions.CAPTIONS)
    batch = _batches(images, labels, recipe["batch_size"], device)

    def loss(model, g):
        x, y = batch(g)
        return sd_parts.clip_loss(model, x, ids[captions.draw(y, g)].to(device), y.to(device))

    run = train_stage(clip, loss, steps=recipe["steps"], lr=recipe["lr"], seed=seed, work=work, name=name,
                      resume=resume and os.path.exists(state_path(work, name)), desc=desc,
                      fixed=dict(batch_size=recipe["batch_size"]), **loop)
    if run.stopped != "steps":
        return None
    clip.save_pretrained(folder, safe_serialization=True)
    _record(folder, recipe, run)
    return clip


def train_vae(data, size="full", work=DEFAULT_WORK, seed=0, resume=False, steps=None, device="cpu", **loop):
    """Stage 3: the VAE, then its ``scaling_factor`` from the training latents; ``work/vae``.
    Returns the ``AutoencoderKL`` (None when ``minutes`` ran out first)."""
    from diffusers import AutoencoderKL
    size, images, labels = sd_parts.size_of(size), *data
    recipe, folder = _recipe(size, "vae", seed, steps, len(labels)), os.path.join(work, "vae")
    if _finished(folder, recipe, resume):
        return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval()
    vae = _seeded(seed, sd_parts.make_vae, size).to(device)
    batch = _batches(images, labels, recipe["batch_size"], device)
    run = train_stage(vae, lambda model, g: sd_parts.vae_loss(model, batch(g)[0], g, recipe["kl_weight"]),
                      steps=recipe["steps"], lr=recipe["lr"], seed=seed, work=work, name="vae",
                      resume=resume and os.path.exists(state_path(work, "vae")), desc="2/3 VAE",
                      fixed=dict(batch_size=recipe["batch_size"]), **loop)
    if run.stopped != "steps":
        return None
    latents = latents_of_images(vae, images, scaling_factor=1.0)
    vae.register_to_config(scaling_factor=round(1.0 / float(latents.std()), 5))
    vae.save_pretrained(folder, safe_serialization=True)
    _record(folder, recipe, run, scaling_factor=vae.config.scaling_factor,
            reconstruction_l1=round(_reconstruction(vae, images), 5))
    return vae


@torch.no_grad()
def latents_of_images(vae, images, scaling_factor=None, batch_size=500):
    """The images' latents (the posterior means: deterministic), times the scaling factor."""
    device = next(vae.parameters()).device
    sf = vae.config.scaling_factor if scaling_factor is None else scaling_factor
    return torch.cat([vae.encode(x.to(device)).latent_dist.mode().cpu() * sf for x in images.split(batch_size)])


@torch.no_grad()
def _reconstruction(vae, images, n=1000) -> float:
    x = images[:n].to(next(vae.parameters()).device)
    return float((vae.decode(vae.encode(x).latent_dist.mode()).sample - x).abs().mean())


def train_unet(tokenizer, text_encoder, vae, data, size="full", work=DEFAULT_WORK, seed=0, resume=False,
               steps=None, device="cpu", minutes=None, checkpoint_minutes=10.0, progress=True, callback=None):
    """Stage 4: the UNet on the VAE's scaled latents through ``train_denoiser``, conditioned on
    captions (``CaptionPrompts``); its EMA in ``work/unet``. Returns the EMA UNet (None when
    ``minutes`` ran out first)."""
    from diffusers import UNet2DConditionModel
    size, images, labels = sd_parts.size_of(size), *data
    recipe, folder = _recipe(size, "unet", seed, steps, len(labels)), os.path.join(work, "unet")
    if _finished(folder, recipe, resume):
        return UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32).to(device).eval()
    condition = sd_parts.CaptionPrompts(sd_parts.caption_table(tokenizer, text_encoder))
    unet = _seeded(seed, sd_parts.make_unet, size).to(device)
    run = train_denoiser(unet, sd_parts.make_scheduler(), (latents_of_images(vae, images), labels),
                         steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"], seed=seed,
                         condition=condition, minutes=minutes, work=work, name="unet",
                         resume=resume and os.path.exists(state_path(work, "unet")),
                         checkpoint_minutes=checkpoint_minutes, progress=progress, desc="3/3 UNet",
                         callback=callback)
    if run.stopped != "steps":
        return None
    run.ema.save_pretrained(folder, safe_serialization=True)
    _record(folder, recipe, run)
    return run.ema.eval()


def assemble(out: str, tokenizer, clip, vae, unet, dtype=torch.float16, record: dict = None) -> str:
    """Stage 5: saves the ``StableDiffusionPipeline`` (and the CLIP in ``out/clip``); the folder is
    replaced whole, so a reader never sees half of it. Returns ``out``.

    ``dtype`` is the stored dtype of the UNet and the VAE (most of the bytes), which diffusers
    loads as float32 unless told otherwise. The text encoder and the CLIP stay float32: small,
    and transformers loads a model in its stored dtype, so a float16 text encoder would hand a
    plain ``from_pretrained(path)`` pipeline float16 prompts for a float32 UNet."""
    from diffusers import StableDiffusionPipeline

    def shipped(model, as_dtype=dtype):
        return copy.deepcopy(model).to("cpu", as_dtype).eval()

    pipe = StableDiffusionPipeline(
        vae=shipped(vae), text_encoder=shipped(sd_parts.text_encoder_of(clip), torch.float32),
        tokenizer=tokenizer, unet=shipped(unet), scheduler=sd_parts.make_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    out = os.path.abspath(out)
    tmp, old = out + ".partial", out + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; CLIP's own vocab.json and merges.txt go beside it
    write_tokenizer(os.path.join(tmp, "tokenizer"), tokenizer.model_max_length)
    shipped(clip, torch.float32).save_pretrained(os.path.join(tmp, "clip"), safe_serialization=True)
    counts = {name: sd_parts.parameters(m) for name, m in
              (("text_encoder", pipe.text_encoder), ("clip", clip), ("vae", vae), ("unet", unet))}
    write_json(os.path.join(tmp, "training.json"),
               dict(record or {}, dtype=str(dtype).replace("torch.", ""), parameters=counts,
                    erase_templates=captions.ERASE_TEMPLATES, templates=list(captions.TEMPLATES),
                    synonyms=[list(w) for w in captions.SYNONYMS]))
    if os.path.exists(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def load_clip(folder: str, device="cpu"):
    """The CLIP shipped beside a pipeline (``folder/clip``), float32, in eval mode."""
    from transformers import CLIPModel
    return CLIPModel.from_pretrained(os.path.join(folder, "clip"), dtype=torch.float32).to(device).eval()


def train(out: str, size="full", work: str = None, resume: bool = False, seed: int = 0, steps: dict = None,
          data=None, limit: int = None, device: str = "cpu", minutes: float = None,
          checkpoint_minutes: float = 10.0, dtype=torch.float16, progress: bool = True):
    """Every stage, then the pipeline in ``out``; returns ``out`` (None when ``minutes``, this
    session's budget, ran out first: ``resume=True`` goes on). ``steps``: ``{stage: steps}``
    overriding the size's; ``data``: ``(images [N, 1, 32, 32], labels)`` instead of Fashion-MNIST
    (``limit``: its first rows only)."""
    size = sd_parts.size_of(size)
    steps = dict(steps or {})
    unknown = set(steps) - set(STAGES)
    if unknown:
        raise ValueError(f"steps: unknown stages {sorted(unknown)}; the stages are {', '.join(STAGES)}")
    work = work or DEFAULT_WORK
    data = _checked(data if data is not None else load_data(limit))
    start = time.time()

    def left():
        return None if minutes is None else max(minutes - (time.time() - start) / 60, 1e-3)

    tokenizer = write_tokenizer(os.path.join(work, "tokenizer"))
    loop = dict(size=size, work=work, seed=seed, device=device, checkpoint_minutes=checkpoint_minutes,
                progress=progress)
    # the UNet learns from the CLIP's text states and the VAE's latents: when either is trained in
    # this session, a UNet (or UNet state) left in work by an earlier run is stale, not resumed
    kept = {stage: resume and os.path.exists(os.path.join(work, stage, "training.json")) for stage in STAGES}
    clip = train_clip(tokenizer, data, steps=steps.get("clip"), minutes=left(), resume=resume, **loop)
    vae = unet = None
    if clip is not None:
        vae = train_vae(data, steps=steps.get("vae"), minutes=left(), resume=resume, **loop)
    if vae is not None:
        unet = train_unet(tokenizer, sd_parts.text_encoder_of(clip), vae, data, steps=steps.get("unet"),
                          minutes=left(), resume=resume and kept["clip"] and kept["vae"], **loop)
    if unet is None:
        print(f"stopped after {minutes} minutes; the state is in {work}: go on with --resume")
        return None
    record = {}
    for stage in STAGES:
        with open(os.path.join(work, stage, "training.json")) as f:
            record[stage] = json.load(f)
    return assemble(out, tokenizer, clip, vae, unet, dtype, dict(size=size.name, seed=seed, stages=record))


def estimate(size="full", repeats: int = 3, device: str = "cpu") -> dict:
    """Seconds per step of each stage at ``size`` (the median of ``repeats`` steps after a first,
    on random data of the real shapes: no files needed) and the hours its steps would take."""
    import tempfile

    from safemax.data.caption_tokenizer import caption_tokenizer
    size, tokenizer = sd_parts.size_of(size), caption_tokenizer()
    n = 1000
    data = (torch.rand(n, 1, sd_parts.IMAGE_SIZE, sd_parts.IMAGE_SIZE) * 2 - 1, torch.arange(n) % 10)
    times, out = [], {}

    def tick(run):
        times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as work:
        common = dict(size=size, work=work, device=device, steps=repeats + 1)
        for stage in STAGES:
            times.clear()
            if stage == "clip":
                clip = train_clip(tokenizer, data, progress=False, callback=tick, **common)
            elif stage == "vae":
                vae = train_vae(data, progress=False, callback=tick, **common)
            else:
                train_unet(tokenizer, sd_parts.text_encoder_of(clip), vae, data, progress=False, callback=tick,
                           **common)
            per_step = statistics.median(b - a for a, b in zip(times, times[1:]))
            full_steps = getattr(size, f"{stage}_train")["steps"]
            out[stage] = dict(seconds_per_step=round(per_step, 3), steps=full_steps,
                              hours=round(per_step * full_steps / 3600, 2))
    out["total_hours"] = round(sum(v["hours"] for v in out.values()), 2)
    return out


def add_training_arguments(p, work: str, sizes, stages, estimated: str) -> None:
    """The options a zoo pipeline's training command shares (this one's, SD3's): where its state
    is, its size, each stage's steps (``--<stage>-steps``, dest ``<stage>_steps``), resuming, the
    seed, a smoke run's data limit, the device, the session's minutes and checkpoints, the
    shipped dtype and ``--estimate``."""
    p.add_argument("--work", default=work, help=f"the stages' states and outputs (default {work})")
    p.add_argument("--size", choices=list(sizes), default="full")
    p.add_argument("--tiny", action="store_const", const="tiny", dest="size", help="the smoke size (--size tiny)")
    for stage in stages:
        p.add_argument(f"--{stage.replace('_', '-')}-steps", type=int, default=None, dest=f"{stage}_steps",
                       help=f"{stage} steps (default: the size's)")
    p.add_argument("--resume", action="store_true", help="skip finished stages, continue the one under way")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only (smoke runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--minutes", type=float, default=None, help="stop this session after that long (then --resume)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="the shipped weights' dtype")
    p.add_argument("--estimate", action="store_true", help=f"time {estimated} at --size and exit")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m safemax.zoo.sd_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="the pipeline's folder (the zoo's: safemax/zoo/fashion_mnist_sd)")
    add_training_arguments(p, DEFAULT_WORK, sd_parts.SIZES, STAGES, "a few steps of each stage")
    args = p.parse_args(argv)
    if args.estimate:
        print(json.dumps(estimate(args.size, device=args.device), indent=2))
        return 0
    if not args.out:
        p.error("--out DIR is needed (where the pipeline is saved)")
    steps = {s: getattr(args, f"{s}_steps") for s in STAGES if getattr(args, f"{s}_steps") is not None}
    out = train(args.out, args.size, work=args.work, resume=args.resume, seed=args.seed, steps=steps,
                limit=args.limit, device=args.device, minutes=args.minutes,
                checkpoint_minutes=args.checkpoint_minutes, dtype=getattr(torch, args.dtype))
    if out:
        print(f"saved the pipeline in {out}: StableDiffusionPipeline.from_pretrained({out!r})")
    return 0


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "python -m safemax.zoo.sd_pipeline"))
