"""Open what ``safemax erase`` and ``safemax evaluate`` are pointed at: a zoo pipeline's name, a
diffusers pipeline folder, or a folder ``safemax erase`` wrote (the base pipeline with the edit
applied). Nothing is downloaded."""
import json
import os

import torch

from safemax.data import captions

MANIFEST = "safemax.json"
"""The file ``safemax erase`` writes in its output folder, naming the base model and the edit."""


def denoiser_name(pipe) -> str:
    """The pipeline's attribute (and folder) of its denoiser: ``"unet"`` or ``"transformer"``."""
    return "transformer" if getattr(pipe, "unet", None) is None else "unet"


def denoiser_of(pipe):
    """The pipeline's denoiser: ``pipe.unet`` or ``pipe.transformer``."""
    return getattr(pipe, denoiser_name(pipe))


def load_base(spec, device: str = "cpu", dtype=torch.float32):
    """``(pipeline, base)``: the pipeline ``spec`` names (a zoo name or a local pipeline folder;
    an already loaded pipeline is returned as it is) and the string that names it again
    (recorded in ``safemax.json``). Its family and text encoder are checked."""
    from safemax import zoo
    from safemax.models.pipelines import family
    if not isinstance(spec, str):
        pipe, base = spec, getattr(spec, "name_or_path", None) or spec.config.get("_name_or_path")
    elif spec in zoo.PIPELINES:
        pipe, base = zoo.load_pipeline(spec, device, dtype), spec
    elif os.path.isfile(os.path.join(spec, MANIFEST)):
        raise ValueError(f"{spec} is an output of safemax erase, not a base pipeline: erase from its base "
                         f"({_manifest(spec)['base_model']}), or evaluate it with safemax evaluate")
    elif os.path.isfile(os.path.join(spec, "model_index.json")):
        _check_index(spec)
        try:
            pipe = zoo.open_pipeline(spec, dtype)
        except (OSError, EnvironmentError, ValueError) as e:
            raise ValueError(f"pipeline {spec!r}: diffusers cannot load it: {' '.join(str(e).split())}") from None
        pipe, base = pipe.to(device), os.path.abspath(spec)
    else:
        raise ValueError(f"pipeline {spec!r} is neither a zoo pipeline ({', '.join(zoo.PIPELINES)}) nor a local "
                         "folder with model_index.json (a diffusers pipeline; safemax never downloads weights)")
    family(pipe)  # an unknown family: its one-line error names the supported ones
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ValueError(f"the {type(pipe).__name__} from {base} has no text encoder or tokenizer: concepts are "
                         "erased through prompts, which need them; load the pipeline with its text encoder")
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe, base


def _check_index(folder: str) -> None:
    """Refuse, before diffusers does with a longer story, a pipeline folder whose
    ``model_index.json`` has no text encoder (or names one that is not there)."""
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    entry = index.get("text_encoder")
    missing = "text_encoder" in index and (not entry or entry[0] is None
                                           or not os.path.isdir(os.path.join(folder, "text_encoder")))
    if missing:
        raise ValueError(f"the {index.get('_class_name', 'pipeline')} in {folder} has no text encoder: concepts are "
                         "erased through prompts, which need it; give the pipeline with its text encoder")


def base_folder(base: str):
    """The folder of a base model's name (a zoo name or a path), or None."""
    from safemax import zoo
    folder = zoo.PIPELINES.get(base, base)
    return folder if isinstance(folder, str) and os.path.isdir(folder) else None


def is_captioned(base: str) -> bool:
    """Whether the base pipeline was trained on ``safemax.data.captions`` (its ``training.json``
    names the same synonyms): then its concepts are classes the Fashion-MNIST classifier knows."""
    folder = base_folder(base)
    record = os.path.join(folder, "training.json") if folder else None
    if not record or not os.path.isfile(record):
        return False
    with open(record) as f:
        synonyms = json.load(f).get("synonyms")
    return synonyms == [list(w) for w in captions.SYNONYMS]


def _manifest(path: str) -> dict:
    with open(os.path.join(path, MANIFEST)) as f:
        return json.load(f)


def load_erased(path, device: str = "cpu", dtype=torch.float32):
    """The pipeline a ``safemax erase`` output folder stands for — its base with the edit applied
    (the LoRA loaded, or the edited denoiser in place of the base's) — and the manifest, as
    ``(pipeline, manifest)``. Given a zoo name or a plain pipeline folder, that pipeline unedited
    and ``None``."""
    if not (isinstance(path, str) and os.path.isfile(os.path.join(path, MANIFEST))):
        return load_base(path, device, dtype)[0], None
    manifest = _manifest(path)
    if "base_model" not in manifest:
        raise ValueError(f"{path}/{MANIFEST} names no base_model: it was not written by safemax erase")
    pipe, _ = load_base(manifest["base_model"], device, dtype)
    name = denoiser_name(pipe)
    if manifest["output"] == "lora":
        pipe.load_lora_weights(os.path.join(path, "lora"))
    else:
        cls = type(denoiser_of(pipe))
        folder = os.path.join(path, manifest.get("denoiser_dir", name))
        edited = cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
        setattr(pipe, name, edited.to(device).eval())
        pipe.register_modules(**{name: getattr(pipe, name)})
    return pipe, manifest


__all__ = ["MANIFEST", "denoiser_name", "denoiser_of", "load_base", "base_folder", "is_captioned", "load_erased"]
