"""The weight side of an Unlearner fit's memory, exactly, from the architecture alone.

    python benchmarks/memory_accounting.py --out benchmarks/results/memory-large   # ~30 s, no GPU

The models are built on ``torch.device("meta")`` from their published configs (no memory, no
download): the parameter counts are exact, and so is every byte below, because the Unlearner keeps
exactly these tensors whatever the batch or image size:

- weights: every parameter and buffer of the model, in the dtype it is stored in;
- teacher: SAFEMax's frozen copy of the original model (``retain_target="distill"`` without
  LoRA: ``copy.deepcopy`` of the model, buffers included); none with LoRA (the teacher is the
  model with its adapter switched off) or with ``retain_target="noise"`` (no teacher);
- adapter: the LoRA parameters (peft's own count on the real module names, float32);
- gradients: one float32 tensor per trainable parameter, alive from the backward to the end of
  the step (a fit frees them when it returns);
- Adam: ``exp_avg`` and ``exp_avg_sq`` per trainable parameter (float32) and a ``step`` scalar
  per trainable tensor;
- autocast copies (an upper bound, transient): under bf16/fp16 autocast with float32 weights,
  each Linear/Conv weight and bias is cast to 16 bits for the forward; with full fine-tuning
  autocast caches the copies of trainable weights for the whole forward, and the backward of a
  trainable graph keeps the copies it needs until it has used them. Gradient checkpointing
  shortens how long the second kind lives, not the first.

*Resident* (between steps) = weights + adapter + teacher + Adam; the *step* adds gradients and
(under autocast) up to the copies, and then the activations — the only part that grows with
batch and image size, which this module does not compute (``benchmarks/memory.py`` measures it).

Full fine-tuning sharded by FSDP2 over N GPUs (``fsdp_side``; safemax.training.sharding, the
config benchmarks/accelerate-configs/fsdp.yaml): weights, teacher, gradients and Adam state are
each GPU's shards, exactly; buffers and activations are not sharded; the gathered units are a bound.
"""
import argparse
import json
import os

from safemax.evaluation.report import write_json
from safemax.models.lora import DEFAULT_TARGETS as LORA_TARGETS  # noqa: F401  (the modules the Unlearner's adapter wraps; the tests read it here)

# ---------------------------------------------------------------------------------- models
# Stable Diffusion 1.x's UNet (860 M) as benchmarks/memory.py has always built it.
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
               attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (the non-default entries; the rest
# are UNet2DConditionModel's defaults, as in that file).
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                 use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
# stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json (SD3 "medium", 2 B:
# depth 24 = heads 24, caption projection 24·64, pos_embed_max_size 192; diffusers'
# scripts/convert_sd3_to_diffusers.py derives the same numbers from the original checkpoint).
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                  caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
# black-forest-labs/FLUX.1-dev, transformer/config.json (19 double + 38 single blocks, width
# 3072 = 24 heads × 128, guidance embedding; diffusers' scripts/convert_flux_to_diffusers.py).
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))

MODELS = {  # name: (diffusers class, config)
    "sd": ("UNet2DConditionModel", SD_UNET),
    "sdxl": ("UNet2DConditionModel", SDXL_UNET),
    "sd3-medium": ("SD3Transformer2DModel", SD3_MEDIUM),
    "flux-dev": ("FluxTransformer2DModel", FLUX_DEV),
}
LARGE = ("sdxl", "sd3-medium", "flux-dev")
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def parse(spec: str):
    """``"sd3-medium"`` or a depth-reduced variant ``"sd3-medium/4"`` → ``(name, depth)``.

    The depth is the number of transformer blocks kept where the model stacks them: SD3's
    ``num_layers`` (24), Flux's double blocks (19; single blocks twice as many, as in the full
    model's 19/38), SDXL's blocks at its lowest resolution (``transformer_layers_per_block``'s
    10). Widths, attention and everything else are the full model's."""
    name, _, depth = spec.partition("/")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; one of {sorted(MODELS)}")
    return name, (int(depth) if depth else None)


def config(spec: str, sample_size: int = None) -> tuple:
    """``(class name, kwargs)`` of a model spec (see ``parse``)."""
    name, depth = parse(spec)
    cls, cfg = MODELS[name]
    cfg = dict(cfg)
    if depth is not None:
        if name == "sd3-medium":
            cfg["num_layers"] = depth
        elif name == "flux-dev":
            cfg.update(num_layers=depth, num_single_layers=2 * depth)
        elif name == "sdxl":
            cfg["transformer_layers_per_block"] = (1, 2, depth)
        else:
            raise ValueError(f"{name} has no depth-reduced variant")
    if sample_size is not None and "sample_size" in cfg:
        cfg["sample_size"] = sample_size
    return cls, cfg


def build(spec: str, device="meta", dtype=None, sample_size: int = None):
    """The model of ``spec``, its weights created on ``device`` (``"meta"``: no memory) in
    ``dtype`` (default float32), with diffusers' own random initialisation."""
    import diffusers
    import torch

    cls, cfg = config(spec, sample_size)
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)  # created in dtype: no float32 copy first
    try:
        with torch.device(device):
            return getattr(diffusers, cls)(**cfg)
    finally:
        torch.set_default_dtype(previous)


def lora_parameters(model, rank: int) -> int:
    """Parameters of the LoRA adapter the Unlearner adds (``lora_rank=rank``): peft's count,
    from injecting the adapter into a meta-device copy of ``model``'s architecture."""
    return lora_counts(model, rank)[0]


def lora_counts(model, rank: int) -> tuple:
    """``(parameters, tensors)`` of the LoRA adapter (see ``lora_parameters``)."""
    import copy

    import torch
    from peft import inject_adapter_in_model

    from safemax.models.lora import make_config

    meta = copy.deepcopy(model).to("meta") if next(model.parameters()).device.type != "meta" \
        else copy.deepcopy(model)
    config = make_config(lora_rank=rank)  # the Unlearner's own adapter config
    with torch.device("meta"):
        inject_adapter_in_model(config, meta, "default", low_cpu_mem_usage=True)
    lora = [p for n, p in meta.named_parameters() if "lora_" in n]
    return sum(p.numel() for p in lora), len(lora)


def counts(model) -> dict:
    """Parameter, buffer and autocast-castable (Linear/Conv weight and bias) element counts,
    and the number of parameter tensors."""
    import torch

    castable = sum(p.numel() for m in model.modules()
                   if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))
                   for p in m.parameters(recurse=False))
    params = list(model.parameters())
    return dict(params=sum(p.numel() for p in params), tensors=len(params),
                buffers=sum(b.numel() for b in model.buffers() if b.is_floating_point()),
                castable=castable)


def weight_side(spec_or_model, lora_rank: int = None, weights: str = "fp32",
                retain_target: str = "distill", mixed_precision: str = None, _counts=None,
                _lora=None) -> dict:
    """Bytes of everything an Unlearner fit holds that does not depend on batch or image size.

    Args:
        spec_or_model: a model spec (``"sdxl"``, ``"flux-dev/2"``, …) or a model.
        lora_rank: ``Unlearner(lora_rank=...)``; None = full fine-tuning.
        weights: the dtype the model's weights are stored in (``"fp32"``; ``"bf16"``/``"fp16"``
            only with LoRA: full fine-tuning keeps float32 weights and Adam state, and so does
            the adapter).
        retain_target: ``"distill"`` (SAFEMax's default: a teacher) or ``"noise"`` (none).
        mixed_precision: ``"bf16"``/``"fp16"`` autocast, or None.

    Returns a dict of element counts and bytes; ``resident`` is the sum held between steps,
    ``step_without_activations`` adds the gradients and the autocast copies' upper bound.
    """
    if weights not in BYTES:
        raise ValueError(f"weights must be one of {sorted(BYTES)}, got {weights!r}")
    if lora_rank is None and weights != "fp32":
        raise ValueError("full fine-tuning trains float32 weights (weights='fp32')")
    if retain_target not in ("distill", "noise"):
        raise ValueError(f'retain_target must be "distill" or "noise", got {retain_target!r}')
    if _counts is None:
        model = build(spec_or_model) if isinstance(spec_or_model, str) else spec_or_model
        _counts = counts(model)
        if lora_rank is not None:
            _lora = lora_counts(model, lora_rank)
    c = _counts
    wb = BYTES[weights]
    base = (c["params"] + c["buffers"]) * wb
    if lora_rank is None:
        trainable, tensors, adapter = c["params"], c["tensors"], 0
        teacher = base if retain_target == "distill" else 0
    else:  # _lora: (parameters, tensors) of the adapter
        (trainable, tensors), teacher = _lora, 0
        adapter = trainable * 4
    grads = trainable * 4
    adam = trainable * 8 + tensors * 4
    # autocast's 16-bit copies: only of float32 weights, only under autocast
    copies = c["castable"] * 2 if mixed_precision in ("bf16", "fp16") and weights == "fp32" else 0
    out = dict(params=c["params"], buffers=c["buffers"], trainable=trainable,
               lora_params=_lora[0] if lora_rank is not None else 0,
               weights_bytes=base, adapter_bytes=adapter, teacher_bytes=teacher,
               adam_bytes=adam, grad_bytes=grads, autocast_copies_bytes=copies)
    out["resident_bytes"] = base + adapter + teacher + adam
    out["step_without_activations_bytes"] = out["resident_bytes"] + grads + copies
    return out


def shard_counts(model, processes: int) -> dict:
    """Element counts of a model sharded by FSDP2 over ``processes``: ``params``, the first
    rank's shard of every parameter — FSDP2 splits dim 0 as ``torch.chunk`` does, ceil(rows/N)
    rows on the first ranks, so the first holds the most —; and the FSDP units the shipped config
    makes (TRANSFORMER_BASED_WRAP: a unit per module of a class in the model's
    ``_no_split_modules``, each holding the parameters no inner unit holds; the rest is the
    root's): ``root``, the root's own parameters, and ``largest_unit``, the largest other unit's."""
    units = {n for n, m in model.named_modules()
             if n and type(m).__name__ in set(getattr(model, "_no_split_modules", None) or ())}
    own = {}
    params = 0
    for name, p in model.named_parameters():
        rows = p.shape[0] if p.dim() else 1
        params += -(-rows // processes) * (p.numel() // max(rows, 1))
        unit = max((u for u in units if name.startswith(u + ".")), key=len, default="")
        own[unit] = own.get(unit, 0) + p.numel()
    return dict(params=params, root=own.get("", 0),
                largest_unit=max((v for k, v in own.items() if k), default=0))


def fsdp_side(spec_or_model, processes: int, retain_target: str = "distill", mixed_precision: str = None,
              _counts=None, _shards=None) -> dict:
    """Bytes one GPU holds of a full fine-tuning sharded by FSDP2 over ``processes`` GPUs (the
    first rank's, the largest), before activations (which are each GPU's own rows', not sharded).

    Exact: the shards of the float32 weights, of the teacher (SAFEMax's frozen copy, sharded the
    same way), of the gradients and of Adam's two moments (a ``step`` scalar per tensor); the
    buffers, which FSDP does not shard, in the weights and the teacher. A bound, ``gathered``:
    FSDP2 all-gathers a unit's weights for its forward and backward, in the compute dtype (bf16
    under mixed precision, so autocast has no float32 weights left to copy), and their unsharded
    gradients before the reduce-scatter: the root's weights and gradient for the whole step, two
    units' weights at a time (the one computing and the one prefetched) and two units' gradients
    (the one computing and the one being reduce-scattered)."""
    if retain_target not in ("distill", "noise"):
        raise ValueError(f'retain_target must be "distill" or "noise", got {retain_target!r}')
    if _counts is None:
        model = build(spec_or_model) if isinstance(spec_or_model, str) else spec_or_model
        _counts, _shards = counts(model), shard_counts(model, processes)
    c, s = _counts, _shards
    weights = (s["params"] + c["buffers"]) * 4
    teacher = weights if retain_target == "distill" else 0
    grads, adam = s["params"] * 4, s["params"] * 8 + c["tensors"] * 4
    gathered = (2 * s["root"] + 4 * s["largest_unit"]) * (2 if mixed_precision in ("bf16", "fp16") else 4)
    out = dict(processes=processes, weights_bytes=weights, teacher_bytes=teacher, grad_bytes=grads,
               adam_bytes=adam, gathered_bytes=gathered, resident_bytes=weights + teacher + adam)
    out["step_without_activations_bytes"] = out["resident_bytes"] + grads + gathered
    return out


OPTIONS = [  # (label, lora_rank, weights, retain_target, mixed_precision)
    ("full, fp32", None, "fp32", "distill", None),
    ("full, bf16 autocast", None, "fp32", "distill", "bf16"),
    ('full, bf16 autocast, retain_target="noise"', None, "fp32", "noise", "bf16"),
    ("LoRA r=16, fp32 weights, bf16 autocast", 16, "fp32", "distill", "bf16"),
    ("LoRA r=16, bf16 weights", 16, "bf16", "distill", None),
    ("LoRA r=64, bf16 weights", 64, "bf16", "distill", None),
]


def table(specs, options=OPTIONS) -> tuple:
    """Rows (dicts) and markdown lines of the weight-side figures of each model and option."""
    gib = 2 ** 30
    rows, lines = [], [
        "| model | parameters | option | trainable | weights | adapter | teacher | Adam | gradients | "
        "autocast copies ≤ | resident | step without activations |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for spec in specs:
        model = build(spec)
        c = counts(model)
        loras = {r: lora_counts(model, r) for r in {o[1] for o in options if o[1]}}
        for label, rank, weights, target, mp in options:
            w = weight_side(spec, rank, weights, target, mp, _counts=c, _lora=loras.get(rank))
            rows.append(dict(model=spec, option=label, lora_rank=rank, weights=weights,
                             retain_target=target, mixed_precision=mp, **w))
            g = lambda k: f"{w[k + '_bytes'] / gib:.2f}"  # noqa: E731
            lines.append(f"| {spec} | {c['params'] / 1e9:.3f} B | {label} | {w['trainable'] / 1e6:,.1f} M "
                         f"| {g('weights')} | {g('adapter')} | {g('teacher')} | {g('adam')} | {g('grad')} | "
                         f"{g('autocast_copies')} | **{g('resident')}** | **{g('step_without_activations')}** |")
    return rows, lines


# ------------------------------------------------------------------------- which GPU fits
GPUS = (24, 40, 80, 140)  # GiB: 24 GB cards, A100 40 GB, A100/H100 80 GB, H200 (141 GB = 140 GiB)
RESERVE = 1.0  # GiB kept free for the CUDA context, cuBLAS workspaces and fragmentation
# (label, memory.py config, lora_rank, weights, retain_target): the options of the fit table
FIT_OPTIONS = [
    ("full, bf16 autocast + checkpointing", "bf16 + checkpointing", 0, "fp32", "distill"),
    ('full, bf16 autocast + checkpointing, retain_target="noise"', "bf16 + checkpointing", 0, "fp32", "noise"),
    ("LoRA r=16, fp32 weights, bf16 autocast + checkpointing", "bf16 + checkpointing", 16, "fp32", "distill"),
    ("LoRA r=16, bf16 weights", "fp32", 16, "bf16", "distill"),
    ("LoRA r=16, bf16 weights, checkpointing", "fp32 + checkpointing", 16, "bf16", "distill"),
]
MIXED = {"fp32": None, "bf16": "bf16", "fp16": "fp16"}  # a memory.py config's autocast


def _key(r):
    return (r.get("config"), r.get("lora_rank") or 0, r.get("weights", "fp32"),
            r.get("retain_target", "distill"))


FULL_DEPTH = {"sdxl": 10, "sd3-medium": 24, "flux-dev": 19}  # what NAME/DEPTH varies (see parse)
# the estimate that stands in for the activations of the other options with checkpointing
CHECKPOINTED_PROXY = ("fp32 + checkpointing", 16, "bf16", "distill")


def activation_estimates(rows, latent=128, batch=1) -> dict:
    """``{(model, option key): (GiB, depths)}``: a full-depth model's step peak (the memory a step
    adds to the resident: activations, gradients, transients), extrapolated linearly in depth from
    runs of two depth-reduced variants (``memory.py`` rows of ``NAME/DEPTH``, same option, size and
    batch). An estimate: the CPU's kernels are not a GPU's."""
    by = {}
    for r in rows:
        if "error" in r or r.get("latent") != latent or r.get("batch") != batch or "/" not in r["model"]:
            continue
        name, depth = parse(r["model"])
        by.setdefault((name, _key(r)), {})[depth] = r["step_peak_gib"]
    out = {}
    for (name, key), points in by.items():
        if len(points) >= 2 and name in FULL_DEPTH:
            (d1, a1), (d2, a2) = sorted(points.items())[-2:]
            full = FULL_DEPTH[name]
            out[(name, key)] = (a2 + (full - d2) * (a2 - a1) / (d2 - d1), (d1, d2))
    return out


def w_twin_teacher(spec, c, mp) -> float:
    """GiB of the teacher copy a full fine-tuning of ``spec`` holds (counts ``c``)."""
    return weight_side(spec, None, "fp32", "distill", mp, _counts=c)["teacher_bytes"] / 2 ** 30


FSDP_GPU = 80  # GiB: the GPUs the FSDP columns shard over (A100/H100 80 GB)


def fsdp_cell(per_gpu: float, activations: float = None, gpu=FSDP_GPU, reserve=RESERVE) -> str:
    """An FSDP column's cell: ✗ where the computed per-GPU part alone exceeds the GPU, "✓ est." /
    "✗ est." with an activation estimate (activations are not sharded), else "?"; the figure is
    the computed per-GPU GiB before activations."""
    if per_gpu + reserve > gpu:
        mark = "✗"
    elif activations is None:
        mark = "?"
    else:
        mark = "✓ est." if per_gpu + activations + reserve <= gpu else "✗ est."
    return f"{mark} ({per_gpu:.1f})"


def fits(measured, models=LARGE, latent=128, batch=1, gpus=GPUS, reserve=RESERVE,
         estimated=None, options=FIT_OPTIONS, fsdp=()) -> list:
    """Markdown lines of the table "which model fits which GPU with which options".

    ``measured``: rows of ``memory.py --device cuda`` (memory.json). A cell is ✓ or ✗ by the
    measured peak (+ ``reserve``) where a run of that model and option at ``latent``/``batch``
    exists; otherwise ✗ where the computed weight side alone (+ reserve) exceeds the GPU — exact,
    whatever the activations — and "?" where it fits and the activations decide. ``estimated``
    (``activation_estimates``) turns a "?" into "✓ est."/"✗ est.": computed resident + the
    estimated step peak of the same option; for another option with gradient checkpointing, its
    computed weight side before activations + the estimated step peak of LoRA on bf16 weights with
    checkpointing (``CHECKPOINTED_PROXY``).

    ``fsdp``: process counts N of the FSDP columns — full fine-tuning sharded over N ×
    ``FSDP_GPU`` GiB GPUs (``fsdp_cell``: the computed per-GPU GiB, and the activations of the
    checkpointing proxy where estimated); "—" for LoRA, which is not sharded."""
    estimated = estimated or {}
    lines = ["| model | option | computed: before activations GiB | measured peak GiB | "
             "estimated peak GiB | " + " | ".join(f"{g} GiB" for g in gpus)
             + "".join(f" | FSDP {n} × {FSDP_GPU} GiB: per GPU" for n in fsdp) + " |",
             "| --- | --- | ---: | ---: | ---: |" + " :---: |" * (len(gpus) + len(fsdp))]
    for spec in models:
        model = build(spec)
        c = counts(model)
        shards = {n: shard_counts(model, n) for n in fsdp}
        runs = {_key(r): r for r in measured if r.get("model") == spec and r.get("latent") == latent
                and r.get("batch") == batch and r.get("device") == "cuda" and "error" not in r}
        loras = {}
        rows = list(options) + [  # and any other option measured at this size
            (None, k[0], k[1], k[2], k[3]) for k in runs
            if k not in {(o[1], o[2], o[3], o[4]) for o in options}]
        for label, config, rank, weights, target in rows:
            mp = MIXED[config.split()[0]]
            if rank and rank not in loras:
                loras[rank] = lora_counts(model, rank)
            w = weight_side(spec, rank or None, weights, target, mp, _counts=c, _lora=loras.get(rank))
            before = w["step_without_activations_bytes"] / 2 ** 30
            run = runs.get((config, rank, weights, target))
            peak = run["peak_gib"] if run else None
            bound = None  # without a teacher: the measured run with one, less the teacher (≥)
            twin = runs.get((config, rank, weights, "distill")) if target == "noise" else None
            if peak is None and twin is not None:
                bound = twin["peak_gib"] - w_twin_teacher(spec, c, mp)
            est = estimated.get((spec, (config, rank, weights, target)))
            proxy = estimated.get((spec, CHECKPOINTED_PROXY))
            if est:
                est = w["resident_bytes"] / 2 ** 30 + est[0]
            elif proxy and "checkpointing" in config:
                # another option with checkpointing: its whole weight side at once (gradients and
                # autocast's copies included: a bound) + the activations of LoRA on bf16 weights
                est = before + proxy[0]
            cells = []
            for g in gpus:
                if peak is not None:
                    cells.append("✓" if peak + reserve <= g else "✗")
                elif bound is not None and bound + reserve <= g:
                    cells.append("✓")
                elif before + reserve > g:
                    cells.append("✗")
                elif est is not None:
                    cells.append("✓ est." if est + reserve <= g else "✗ est.")
                else:
                    cells.append("?")
            if label is None:
                label = f"{config}, " + (f"LoRA r={rank}, {weights} weights" if rank else "full")
                label += f", retain_target={target}" if target != "distill" else ""
            fmt = lambda v: f"{v:.1f}" if v is not None else "—"  # noqa: E731
            shown = fmt(peak) if bound is None else f"≤ {bound:.1f} (the run with a teacher, less it)"
            for n in fsdp:   # activations: the checkpointing proxy's estimate, as above
                per = fsdp_side(spec, n, target, mp, _counts=c, _shards=shards[n])
                acts = proxy[0] if proxy and "checkpointing" in config else None
                cells.append("—" if rank else fsdp_cell(per["step_without_activations_bytes"] / 2 ** 30, acts,
                                                         reserve=reserve))
            lines.append(f"| {spec} | {label} | {before:.1f} | {shown} | {fmt(est)} | "
                         + " | ".join(cells) + " |")
    return lines


def validate(measured) -> list:
    """Markdown lines comparing each measured run's resident memory (minus the process's own
    base) with the computed resident weight side it carries (``memory.py`` rows)."""
    gib = 2 ** 30
    lines = ["| model | config | rows × size | computed resident GiB | measured resident − base GiB | "
             "difference GiB |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in measured:
        if "error" in r or not r.get("computed") or "base_gib" not in r:
            continue
        c = r["computed"]["resident_bytes"] / gib
        m = r["resident_gib"] - r["base_gib"]
        config = r["config"] if r.get("weights", "fp32") == "fp32" else r["config"].replace("fp32", "no autocast")
        opts = [config] + ([f"LoRA r={r['lora_rank']}"] if r.get("lora_rank") else ["full"])
        opts += [f"{r['weights']} weights"] if r.get("weights", "fp32") != "fp32" else []
        opts += [f"retain_target={r['retain_target']}"] if r.get("retain_target", "distill") != "distill" else []
        lines.append(f"| {r['model']} | {', '.join(opts)} | {r['rows']} × {r['latent']}² | {c:.2f} | "
                     f"{m:.2f} | {m - c:+.2f} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None,
                   help="model specs: sd, sdxl, sd3-medium, flux-dev, or a depth-reduced NAME/DEPTH "
                        "(default: sd and the three large ones; with --fits the large ones)")
    p.add_argument("--fits", nargs="*", metavar="MEMORY_JSON",
                   help="print the which-GPU-fits table instead, from these measured memory.json "
                        "files of GPU runs (none: from the computed weight side alone)")
    p.add_argument("--estimate-from", nargs="+", metavar="MEMORY_JSON", default=[],
                   help="--fits: estimate the activations from these runs of depth-reduced variants")
    p.add_argument("--validate", nargs="+", metavar="MEMORY_JSON",
                   help="print measured resident memory against the computed, from memory.json files")
    p.add_argument("--measured-only", action="store_true", help="--fits: only the options measured")
    p.add_argument("--fsdp", nargs="*", type=int, default=[], metavar="N",
                   help=f"--fits: columns of full fine-tuning sharded by FSDP over N × {FSDP_GPU} GiB GPUs")
    p.add_argument("--latent", type=int, default=128, help="--fits: the latent size judged (default 128)")
    p.add_argument("--batch", type=int, default=1, help="--fits: forget rows per step judged (default 1)")
    p.add_argument("--out", default=None, help="write weight_side.json/.md (or fits.md) here")
    args = p.parse_args()
    if args.validate:
        print("\n".join(validate([r for path in args.validate for r in json.load(open(path))])))
        return
    if args.fits is not None:
        measured = [r for path in args.fits for r in json.load(open(path))]
        cpu = [r for path in args.estimate_from for r in json.load(open(path))]
        lines = fits(measured, tuple(args.models or LARGE), args.latent, args.batch,
                     estimated=activation_estimates(cpu, args.latent, args.batch),
                     options=[] if args.measured_only else FIT_OPTIONS, fsdp=tuple(args.fsdp))
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "fits.md"), "w") as f:
                f.write(text)
        return
    rows, lines = table(args.models or ["sd", *LARGE])
    text = "\n".join(["All figures GiB (2^30 bytes), computed (exact) from meta-device models.", "",
                      *lines]) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "weight_side.json"), rows, indent=1)   # (a list: provenance in a sidecar)
        with open(os.path.join(args.out, "weight_side.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
