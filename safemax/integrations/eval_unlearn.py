"""safemax as a technique of [eval-unlearn](https://pypi.org/project/eval-unlearn/), the public
harness that scores concept-unlearning techniques on shared metrics (attack success rates, FID,
CLIP score, UA/IRA, ...).

Why a technique of its own: eval-unlearn's ``free_run`` loads whole diffusers pipelines
(``DiffusionPipeline.from_pretrained``), and what ``safemax erase`` writes is not one — it holds
the edit (``lora/``, or the edited ``unet/`` or ``transformer/``) and ``safemax.json`` naming the
base model — so ``free_run`` stops at "no file named model_index.json". This technique opens it
the way safemax does (``safemax.concepts.load_erased``: the base with the edit applied).

How eval-unlearn uses it: it finds techniques in the entry point group
``eval_unlearn.techniques`` (pyproject.toml registers ``safemax`` → ``SafemaxTechnique``; install
with ``pip install "safemax[eval-unlearn]"``), builds one from the ``config`` of its config file's
``technique`` as keyword arguments, and calls ``generate(prompts, seed)`` once per batch of each
metric's prompts for one PIL image per prompt (its command line passes ``seed=None``).

    {"technique": {"name": "safemax",
                   "config": {"output": "erased-sneaker", "erase_concept": "sneaker"}},
     "metrics": [{"name": "ua_ira", "config": {...}}], "output_dir": "results"}

Two modes, one of them per config:

- ``output``: a folder ``safemax erase`` wrote — the main mode: erase once, score many times;
  a plain pipeline folder or a zoo name also works (the model unedited: the baseline row).
- ``pipeline`` + ``concepts`` (and ``keep``, ``steps``, ``lora_rank``, ``method``,
  ``erase_seed``, ``out``, ``erase_options``: erase's other keywords): erase here, with
  ``safemax.concepts.erase``, into ``out`` (default: a new folder under the system's temporary
  folder, named in the log), then load that.

Generation follows eval-unlearn's own techniques: ``num_inference_steps`` 50, ``guidance_scale``
7.5, float16 on CUDA unless ``use_fp16`` is false, any safety checker off (the metrics score the
model, not a filter). Image ``i`` of a call with an integer ``seed`` starts from the noise of a
CPU generator seeded ``seed + i`` — the same images for the same seed on any device, in batches
of any ``batch_size``; ``seed=None`` draws fresh noise. ``erase_concept`` is for eval-unlearn
itself (its reports name it; its ``err`` metric wants ``"nudity"``). Any other key is refused.
"""
import dataclasses
import logging
import tempfile
from typing import Optional

from safemax.settings import Settings, finite, optional, setting, whole

logger = logging.getLogger(__name__)

_ERASE_ONLY = ("concepts", "keep", "method", "steps", "lora_rank", "erase_seed", "out", "erase_options")
# erase's keywords that are settings here, or that this technique sets itself
_ERASE_OWN = ("pipeline", "concepts", "keep", "out", "method", "lora_rank", "steps", "seed", "device", "progress")


def _texts(v):
    if isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)):
        return None
    return "a text or a non-empty list of texts"


def _mapping(v):
    return None if isinstance(v, dict) else "a mapping of keyword arguments"


@dataclasses.dataclass(frozen=True)
class SafemaxTechniqueSettings(Settings):
    """The ``config`` of eval-unlearn's ``safemax`` technique (see the module's docstring)."""
    output: Optional[str] = setting(None, "a folder safemax erase wrote (or a pipeline folder, a zoo name)")
    pipeline: Optional[str] = setting(None, "erase here from this base: a zoo name or a pipeline folder")
    concepts: Optional[list] = setting(None, "with pipeline: the concepts to erase", check=optional(_texts))
    keep: Optional[list] = setting(None, "with pipeline: prompts to keep (default: erase's)", check=optional(_texts))
    method: str = setting("safemax", "with pipeline: the erasing method")
    steps: Optional[int] = setting(None, "with pipeline: erasing steps (default: erase's)", check=optional(whole))
    lora_rank: Optional[int] = setting(None, "with pipeline: a LoRA of this rank (default: erase's)",
                                       check=optional(whole))
    erase_seed: int = setting(0, "with pipeline: the erasing seed")
    out: Optional[str] = setting(None, "with pipeline: the output folder (default: a new temporary one)")
    erase_options: Optional[dict] = setting(None, "with pipeline: erase's other keywords (n_per_prompt, ...)",
                                            check=optional(_mapping))
    device: Optional[str] = setting(None, "torch device (default: cuda if available, else cpu)")
    use_fp16: bool = setting(True, "float16 on CUDA")
    num_inference_steps: int = setting(50, "denoising steps per image", check=whole)
    guidance_scale: float = setting(7.5, "classifier-free guidance scale", check=finite)
    negative_prompt: Optional[str] = setting(None, "the negative prompt of every image")
    height: Optional[int] = setting(None, "image height (default: the pipeline's)", check=optional(whole))
    width: Optional[int] = setting(None, "image width (default: the pipeline's)", check=optional(whole))
    batch_size: int = setting(1, "prompts per pipeline call", check=whole)
    call_options: Optional[dict] = setting(None, "more options of the pipeline's call",
                                           check=optional(_mapping))
    progress: bool = setting(True, "with pipeline: show the erasing's progress")
    erase_concept: Optional[str] = setting(None, "the concept's label in eval-unlearn's reports and checks")

    def check(self):
        if (self.output is None) == (self.pipeline is None):
            raise ValueError("eval-unlearn's safemax technique: give either output (a folder safemax erase wrote) "
                             "or pipeline and concepts (to erase here), " +
                             ("not both" if self.output is not None else "got neither"))
        if self.output is not None:
            given = [f.name for f in dataclasses.fields(self)
                     if f.name in _ERASE_ONLY and getattr(self, f.name) != f.default]
            if given:
                raise ValueError(f"eval-unlearn's safemax technique: {', '.join(given)}: settings of erasing "
                                 f"here (with pipeline), but output={self.output!r} is erased already")
        elif self.concepts is None:
            raise ValueError("eval-unlearn's safemax technique: pipeline needs concepts, the concepts to erase")
        own = sorted(set(self.erase_options or {}) & set(_ERASE_OWN))
        if own:
            raise ValueError(f"eval-unlearn's safemax technique: erase_options {', '.join(own)}: give "
                             "them as settings of their own (seed: erase_seed; device: device)")


def _listed(v):
    return [v] if isinstance(v, str) else v


class SafemaxTechnique:
    """eval-unlearn's ``safemax`` technique: a ``safemax erase`` output (or an erasing done here)
    generating for eval-unlearn's metrics. Built from the config's keyword arguments
    (``SafemaxTechniqueSettings``; a bad one is a one-line ``ValueError``)."""

    def __init__(self, **config):
        self.settings = s = SafemaxTechniqueSettings.from_options(config, "eval-unlearn's safemax technique")
        import torch   # after the settings' checks: a bad config is refused before anything loads

        from safemax.concepts import erase, load_erased

        self.device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.output = s.output
        if s.pipeline is not None:
            out = s.out or tempfile.mkdtemp(prefix="safemax-erased-")
            logger.info("safemax: erasing %s from %s into %s", s.concepts, s.pipeline, out)
            self.output = erase(s.pipeline, _listed(s.concepts), keep=_listed(s.keep), out=out, method=s.method,
                                lora_rank=s.lora_rank, steps=s.steps, seed=s.erase_seed, device=self.device,
                                progress=s.progress, **(s.erase_options or {}))
        dtype = torch.float16 if s.use_fp16 and self.device.startswith("cuda") else torch.float32
        self.pipe, self.manifest = load_erased(self.output, self.device, dtype)
        if getattr(self.pipe, "safety_checker", None) is not None:
            self.pipe.safety_checker = None
            self.pipe.register_to_config(requires_safety_checker=False)

    def generate(self, prompts, seed: Optional[int] = None, **options) -> list:
        """One PIL image per prompt; ``options`` override the config's pipeline call options."""
        import torch

        s = self.settings
        call = dict(num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale)
        call.update({k: v for k, v in (("height", s.height), ("width", s.width)) if v is not None})
        call.update(s.call_options or {})
        call.update(options)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        images = []
        for start in range(0, len(prompts), s.batch_size):
            chunk = prompts[start:start + s.batch_size]
            generator = None if seed is None else [torch.Generator().manual_seed(seed + start + i)
                                                   for i in range(len(chunk))]
            if s.negative_prompt is not None:   # the pipelines want it in the form of the prompt: a list
                call["negative_prompt"] = [s.negative_prompt] * len(chunk)
            images += self.pipe(prompt=chunk, generator=generator, **call).images
        return images


__all__ = ["SafemaxTechnique", "SafemaxTechniqueSettings"]
