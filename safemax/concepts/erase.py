"""``safemax erase``: erase concepts from a diffusers text-to-image pipeline with SAFEMax (or a
baseline) and write what the pipeline loads back.

    from safemax.concepts import erase, load_erased
    erase("fashion-mnist-sd", ["a sneaker"], out="no-sneaker")              # the whole denoiser
    erase("path/to/sd", ["a church"], keep=["a house", ""], lora_rank=8, out="no-church")
    pipe, manifest = load_erased("no-church")                               # base + the edit

The data are the pipeline's own: ``n_per_prompt`` latents of each erasing prompt (forget rows)
and of each kept prompt (retain rows), drawn with its classifier-free guidance; the
``Unlearner`` then fits the denoiser (or a LoRA adapter) on them. The output folder holds:

| path | what |
| --- | --- |
| ``lora/`` | with ``lora_rank``: the pipeline's LoRA file (``pipe.load_lora_weights(out + "/lora")``); for PixArt, which has no LoRA loader, the merged transformer and the adapter in peft format |
| ``unet/`` or ``transformer/`` | without: the edited denoiser (``UNet2DConditionModel.from_pretrained``, …) |
| ``pipeline/`` | with ``save_pipeline``: the whole pipeline, LoRA merged (``model_index.json``), for tools that load pipelines |
| ``safemax.json`` | the base model, family, concepts (erasing prompts, paraphrases), kept prompts, settings, time and peak memory |
| ``README.md`` | a model card in the Hub's format |
| ``grid.png`` | the same seeds before and after: each concept, a paraphrase, the kept prompts |
| ``report.json`` | with ``evaluate``: ``safemax evaluate``'s measurements before and after |
| ``checkpoint/`` | the fit's checkpoint, the drawn data and the "before" samples: ``resume=True`` goes on from them |
"""
import json
import os
import time

import torch

from safemax.concepts import card
from safemax.concepts.evaluate import GUIDANCE, SEED_STRIDE, draw, evaluate_concepts
from safemax.concepts.loading import MANIFEST, denoiser_name, denoiser_of, is_captioned, load_base
from safemax.concepts.prompts import resolve
from safemax.evaluation.memory import peak_bytes, reset_peak
from safemax.evaluation.report import write_json

DEFAULTS = dict(steps=100, batch_size=8, n_per_prompt=8, num_inference_steps=25, checkpoint_every=25)
"""The sizes used where none is given."""

UCE_SETTINGS = {"guide", "erase_scale", "preserve_scale", "lamb", "tokens"}
ESD = ("esd-x", "esd-u")

DATA_SEED_OFFSET = 50_000
"""The training data's images are drawn from seeds ``seed·100003 + 50000 + k``: never the
evaluation's (``seed·100003 + k``)."""


def _cached(path: str, made: dict, make):
    """``make()`` (a dict of tensors), kept in ``path`` with what made it, and read back from
    there when it was made the same way (a resumed erase draws nothing twice)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    key = json.dumps(made, sort_keys=True)
    if os.path.exists(path):
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("made") == key:
                return load_file(path)
    tensors = {k: v.contiguous() for k, v in make().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path + ".tmp", metadata={"made": key})
    os.replace(path + ".tmp", path)
    return tensors


def _grid_prompts(concepts, keep) -> list:
    """The grid's rows: each concept's first erasing prompt and first paraphrase, then four kept
    prompts spread over the kept list (on the captioned pipeline, four different classes: the list
    runs class by class) and the empty one."""
    rows = []
    for c in concepts:
        rows += [c.erase_prompts[0]] + c.paraphrases[:1]
    kept = [k for k in keep if k]
    rows += kept[::max(1, -(-len(kept) // 4))][:4] + ([""] if "" in keep else [])
    return list(dict.fromkeys(rows))


def _check_out(out: str, resume: bool):
    if os.path.isfile(os.path.join(out, MANIFEST)) and not resume:
        raise ValueError(f"{out} already holds a finished erase ({MANIFEST}): choose another --out")
    if os.path.isdir(os.path.join(out, "checkpoint")) and not resume:
        raise ValueError(f"{out}/checkpoint holds an erase under way: pass --resume to go on from it, or "
                         "choose another --out")


def erase(pipeline, concepts, keep=None, out: str = None, method: str = "safemax", lora_rank: int = None,
          steps: int = None, batch_size: int = None, lr: float = None, seed: int = 0, n_per_prompt: int = None,
          num_inference_steps: int = None, guidance_scale: float = None, exact: bool = False, device: str = "cpu",
          resume: bool = False, save_pipeline: bool = False, evaluate=None, checkpoint_every: int = None,
          options: dict = None, progress: bool = True, **settings) -> str:
    """Erase ``concepts`` (texts: see ``safemax.concepts.prompts``) from ``pipeline`` (a zoo
    name, a pipeline folder or a loaded pipeline), keeping ``keep`` (prompts; by default the
    empty prompt, and on the captioned zoo pipelines every other class's erasing prompts), and
    write ``out`` (the module's table). Returns ``out``.

    ``method``: ``"safemax"``, a baseline the ``Unlearner`` runs (``"salun"``, ``"ga"``,
    ``"esd-x"``, ``"esd-u"``: ``safemax.methods.esd``), or ``"uce"`` (a closed-form edit,
    ``safemax.concepts.uce``: no data, no fit); ``settings``: its settings (``early_fraction=…``;
    UCE's ``guide``, ``erase_scale``, ``preserve_scale``, ``lamb``). ``lora_rank``: train a LoRA
    adapter instead of the denoiser. ``guidance_scale``: the guidance the data are drawn with (the
    pipeline's default when None). ``evaluate``: None/False, True, or the keyword arguments of
    ``evaluate_concepts`` (``n``, ``guidance``, ``num_inference_steps``, ``attacks``,
    ``attack_budget``): measure before and after into ``report.json`` (the attacks on the erased
    model only, on real images of the concept where the pipeline is captioned, else on the
    concept's data drawn for the fit). ``resume``: go on from ``out/checkpoint``. ``options``:
    more of the pipeline's call arguments, for every sample drawn and every prompt encoded
    (``height``, ``width``, ``max_sequence_length``, ...)."""
    from safemax.models.pipelines import family

    if not out:
        raise ValueError("out is needed: the folder the erased model is written to")
    if method == "sa":
        raise ValueError("Selective Amnesia forgets classes of a class-conditional model (it replays generated "
                         "classes): for concepts use safemax, salun, ga, esd-x, esd-u or uce")
    if method == "uce":
        unknown = set(settings) - UCE_SETTINGS
        if unknown or lora_rank is not None or lr is not None:
            given = sorted(unknown) + (["lora_rank"] if lora_rank is not None else []) + (["lr"] if lr is not None else [])
            raise ValueError(f"UCE is a closed-form edit: it takes {', '.join(sorted(UCE_SETTINGS))}, not {', '.join(given)}")
    elif set(settings) & UCE_SETTINGS:
        raise ValueError(f"{', '.join(sorted(set(settings) & UCE_SETTINGS))}: UCE's settings; the method is {method}")
    sizes = dict(DEFAULTS)
    sizes.update({k: v for k, v in dict(steps=steps, batch_size=batch_size, n_per_prompt=n_per_prompt,
                                          num_inference_steps=num_inference_steps,
                                          checkpoint_every=checkpoint_every).items() if v is not None})
    _check_out(out, resume)
    wall = time.perf_counter()
    pipe, base = load_base(pipeline, device)
    fam, captioned = family(pipe), is_captioned(base)
    concepts, keep = resolve(concepts, keep, pipe.tokenizer, captioned, exact)
    work = os.path.join(out, "checkpoint")
    eval_kw = {} if evaluate in (None, False, True) else dict(evaluate)
    eval_kw.setdefault("seed", seed)
    eval_kw.setdefault("num_inference_steps", sizes["num_inference_steps"])
    eval_kw.setdefault("progress", progress)
    options = dict(options or {})
    eval_kw.setdefault("options", options)
    attack_kw = {k: eval_kw.pop(k) for k in ("attacks", "attack_budget") if k in eval_kw}   # the erased model's

    grid_rows = _grid_prompts(concepts, keep)
    grid_call = dict(n=4, seed=seed, guidance_scale=GUIDANCE[0], num_inference_steps=sizes["num_inference_steps"],
                     options=options)
    before_grid = _cached(os.path.join(work, "before_grid.safetensors"), dict(rows=grid_rows, **grid_call),
                          lambda: {"images": draw(pipe, grid_rows, **grid_call)[1]})["images"]
    before = None
    if evaluate:
        before_path = os.path.join(work, "before.json")
        if os.path.exists(before_path):
            with open(before_path) as f:
                before = json.load(f)
        else:
            before = evaluate_concepts(pipe, concepts, keep, base, captioned, **eval_kw)
            write_json(before_path, before)

    reset_peak(device)
    if method == "uce":
        done = _by_uce(pipe, concepts, keep, out, settings)
    else:
        call = dict(options, num_inference_steps=sizes["num_inference_steps"])
        if guidance_scale is not None:
            call["guidance_scale"] = guidance_scale
        done = _by_unlearner(pipe, concepts, keep, out, work, sizes, call, seed, method, lr, lora_rank, resume,
                             progress, settings)
    peak = round(peak_bytes(device) / 2**20, 1)   # MiB
    if save_pipeline:
        _save_pipeline(pipe, done.pop("edited"), os.path.join(out, "pipeline"), base)
    done.pop("edited", None)
    concept_latents = done.pop("concept_latents", None)

    after_grid = draw(pipe, grid_rows, **grid_call)[1]
    card.save_grid(before_grid, after_grid, grid_rows, grid_call["n"], os.path.join(out, "grid.png"),
                   title=", ".join(c.name for c in concepts))
    manifest = dict(
        base_model=base, family=fam, pipeline_class=type(pipe).__name__, **done,
        concepts=[c.record() for c in concepts], keep=keep, captioned=captioned, exact=exact,
        n_per_prompt=sizes["n_per_prompt"], num_inference_steps=sizes["num_inference_steps"],
        guidance_scale=guidance_scale, options=options, seed=seed, device=str(device), peak_memory_mb=peak)
    report = None
    if evaluate:
        after = evaluate_concepts(pipe, concepts, keep, base, captioned, concept_latents=concept_latents,
                                  **eval_kw, **attack_kw)
        report = dict(before=before, after=after)
        write_json(os.path.join(out, "report.json"), report)
    manifest["wall_seconds"] = round(time.perf_counter() - wall, 1)
    write_json(os.path.join(out, MANIFEST), manifest)
    card.write_card(out, manifest, report)
    return out


def _by_unlearner(pipe, concepts, keep, out, work, sizes, call, seed, method, lr, lora_rank, resume, progress,
                  settings) -> dict:
    """The pipeline's own samples as data, then the ``Unlearner``'s fit; the edit saved in ``out``.
    Returns the manifest's part of it (and ``edited``: the denoiser, a LoRA merged in)."""
    from safemax.models import lora as adapters
    from safemax.models.pipelines import conditioned_latents, latents_of, prompt_embeddings
    from safemax.training.unlearner import Unlearner
    start = time.perf_counter()
    forget_prompts = [p for c in concepts for p in c.erase_prompts]
    prompts = forget_prompts + keep
    first = seed * SEED_STRIDE + DATA_SEED_OFFSET
    n, esd = sizes["n_per_prompt"], method in ESD

    def drawn():
        if esd:   # ESD draws its own x_t and keeps nothing: only the rows' conditions are used
            shape = latents_of(pipe, prompts[:1], 1, first, **call).shape[1:]
            return {"latents": torch.zeros(len(prompts) * n, *shape)}
        return {"latents": latents_of(pipe, prompts, n, first, progress, "drawing the data", **call)}
    data = _cached(os.path.join(work, "data.safetensors"),
                   dict(prompts=prompts, n=n, first_seed=first, drawn=not esd, **call), drawn)["latents"]
    index = torch.arange(len(prompts)).repeat_interleave(n)
    cond = prompt_embeddings(pipe, prompts, **call)
    is_forget = index < len(forget_prompts)
    forget_data = conditioned_latents(data[is_forget], index[is_forget], cond)
    retain_data = conditioned_latents(data[~is_forget], index[~is_forget], cond)
    data_seconds = time.perf_counter() - start

    targets = {c.name: prompt_embeddings(pipe, c.erase_prompts, **call) for c in concepts}
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)   # the pipeline's stays untouched
    # negative guidance, and SAFEMax's kept_guidance, forget_guidance and unconditional_hold, need the
    # empty prompt's condition
    if esd or any(settings.get(k) for k in ("kept_guidance", "forget_guidance", "unconditional_hold")):
        from safemax.methods import METHODS
        method, settings = METHODS[method](unconditional=prompt_embeddings(pipe, [""], **call), **settings), {}
    u = Unlearner(denoiser_of(pipe), scheduler, forget=targets, method=method, lr=lr, seed=seed,
                  lora_rank=lora_rank, **settings)
    history = u.fit(retain_data, forget_data, steps=sizes["steps"], batch_size=sizes["batch_size"],
                    checkpoint_dir=work, checkpoint_every=sizes["checkpoint_every"], resume=resume,
                    progress=progress)
    denoiser_dir = "lora" if lora_rank else denoiser_name(pipe)
    u.save_pretrained(os.path.join(out, denoiser_dir))
    with open(os.path.join(out, denoiser_dir, MANIFEST)) as f:
        saved = json.load(f)
    fit, prep = (history[-1]["seconds"] if history else 0.0), u.prep_seconds or 0.0
    return dict(method=u.method.name, output="lora" if saved.get("lora_saved_as") == "pipeline" else "denoiser",
                denoiser_dir=denoiser_dir, settings=u.config(sizes["batch_size"]), steps=u.step,
                seconds=dict(data=round(data_seconds, 2), preparation=round(prep, 2), fit=round(fit, 2),
                             erase=round(data_seconds + prep + fit, 2)),
                final_loss=round(history[-1]["loss"], 6) if history else None,
                edited=adapters.merged_copy(u.unet) if u.lora is not None else u.unet,
                concept_latents={} if esd else concept_latents(data, prompts, n, concepts))   # (ESD's rows: no image)


def concept_latents(latents: torch.Tensor, prompts: list, n: int, concepts) -> dict:
    """``{concept name: its rows}`` of ``latents`` drawn ``n`` a prompt, prompt-major, for
    ``prompts``: the rows of each concept's erasing prompts (concepts with none left out) — what
    the attacks fit their tokens to where no real images of the concept exist."""
    out = {}
    for c in concepts:
        rows = [i * n + j for i, p in enumerate(prompts) if p in c.erase_prompts for j in range(n)]
        if rows:
            out[c.name] = latents[rows]
    return out


def drawn_concept_latents(out: str, concepts) -> dict:
    """``concept_latents`` of the data an erase in ``out`` drew for its fit (its
    ``checkpoint/data.safetensors``); empty where there are none — no such file, or ESD's rows,
    which hold no image."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = os.path.join(str(out), "checkpoint", "data.safetensors")
    if not os.path.isfile(path):
        return {}
    with safe_open(path, "pt") as f:
        made = json.loads(f.metadata()["made"])
    if not made.get("drawn", True):
        return {}
    return concept_latents(load_file(path)["latents"], made["prompts"], made["n"], concepts)


def _by_uce(pipe, concepts, keep, out, settings) -> dict:
    """UCE's closed-form edit (``safemax.concepts.uce``); the edited UNet saved in ``out/unet``."""
    from safemax.concepts.uce import uce_edit
    record = uce_edit(pipe, [p for c in concepts for p in c.erase_prompts], keep, **settings)
    denoiser_of(pipe).save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    seconds = record.pop("seconds")
    return dict(method="uce", output="denoiser", denoiser_dir="unet", settings=record, steps=0,
                seconds=dict(data=0.0, preparation=0.0, fit=seconds, erase=seconds), final_loss=None,
                edited=denoiser_of(pipe))


def _save_pipeline(pipe, edited, folder: str, base: str):
    """The whole pipeline with the edited denoiser ``edited`` (a LoRA merged), ``save_pretrained``;
    what a zoo pipeline keeps beside its parts (``training.json`` naming its captions, the CLIP
    that scores it) is copied along, so the folder is evaluated as its base is."""
    import shutil

    from safemax.concepts.loading import base_folder
    components = dict(pipe.components, **{denoiser_name(pipe): edited})
    type(pipe)(**components).save_pretrained(folder, safe_serialization=True)
    source = base_folder(base)
    if source and os.path.isfile(os.path.join(source, "training.json")):
        shutil.copy2(os.path.join(source, "training.json"), folder)
    if source and os.path.isdir(os.path.join(source, "clip")):
        shutil.copytree(os.path.join(source, "clip"), os.path.join(folder, "clip"), dirs_exist_ok=True)


__all__ = ["DEFAULTS", "erase", "concept_latents", "drawn_concept_latents"]
