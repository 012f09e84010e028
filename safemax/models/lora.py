"""LoRA adapters (PEFT): unlearn by training a low-rank adapter instead of the whole model.

    u = Unlearner(pipe.unet, pipe.scheduler, forget={"church": church}, lora_rank=8)

The base weights are frozen and a LoRA adapter is added the way diffusers' LoRA training scripts
do (``LoraConfig(r, lora_alpha=r, init_lora_weights="gaussian", target_modules=[to_q, to_k,
to_v, to_out.0])``, through the model's own ``add_adapter`` where diffusers gives it one, else
peft's ``inject_adapter_in_model``, which is what ``add_adapter`` calls). Only the adapter
trains, so Adam holds state for the adapter only; the adapter starts at B = 0, so the model
starts exactly at the original, and the original itself — SAFEMax's distillation teacher — is
the same model with its adapters switched off (``AdaptersOff``): no copy.

``save`` writes what loads back: for a model whose pipeline loads LoRA files (Stable Diffusion
1.x/2.x, SDXL, SD3/3.5, Flux.1, Sana) the pipeline's LoRA file
(``pytorch_lora_weights.safetensors``, ``pipe.load_lora_weights(path)``); for a model without
a diffusers LoRA loader (PixArt, the class-conditional ``UNet2DModel`` and
``DiTTransformer2DModel``) the merged model in diffusers format (``from_pretrained`` loads it)
plus the adapter alone in peft format (``adapter_model.safetensors`` and ``adapter_config.json``,
``peft.PeftModel.from_pretrained(base_model, path)``).
"""
import contextlib
import copy
import os

import torch

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "default"


def _peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("LoRA needs the peft library: pip install peft "
                          '(or pip install "safemax[sd]")') from e
    return peft


def make_config(lora_rank=None, lora=None):
    """The ``peft.LoraConfig`` of ``Unlearner(lora_rank=...)`` or ``Unlearner(lora=...)``;
    None when neither is given."""
    if lora_rank is not None and lora is not None:
        raise ValueError("give lora_rank or lora (a peft.LoraConfig), not both")
    if lora_rank is None and lora is None:
        return None
    peft = _peft()
    if lora is not None:
        if not isinstance(lora, peft.LoraConfig):
            raise ValueError(f"lora must be a peft.LoraConfig, got {type(lora).__name__}")
        if not (isinstance(lora.r, int) and lora.r >= 1):
            raise ValueError(f"the LoRA rank must be an integer >= 1, got {lora.r!r}")
        config = copy.deepcopy(lora)  # add_adapter edits the config it is given
        if config.target_modules is None:
            config.target_modules = list(DEFAULT_TARGETS)
        return config
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
        raise ValueError(f"lora_rank must be an integer >= 1, got {lora_rank!r}")
    return peft.LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                           target_modules=list(DEFAULT_TARGETS))


def settings(config) -> dict:
    """The adapter's settings as JSON-able values (part of ``Unlearner.config()``)."""
    targets = config.target_modules
    targets = targets if isinstance(targets, str) else sorted(targets)
    init = config.init_lora_weights
    return dict(lora_rank=config.r, lora_alpha=config.lora_alpha, lora_target_modules=targets,
                lora_dropout=config.lora_dropout,
                lora_init=init if isinstance(init, (bool, str)) else str(init))


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def check_targets(model, config) -> None:
    """Raise, naming the model's candidate modules, if none of the target modules exists."""
    targets = config.target_modules
    if isinstance(targets, str):  # a regular expression: peft's own check applies
        return
    names = [n for n, _ in model.named_modules() if n]
    if any(_matches(n, t) for n in names for t in targets):
        return
    layers = sorted({n.split(".")[-1] if not n.split(".")[-1].isdigit() else ".".join(n.split(".")[-2:])
                     for n, m in model.named_modules()
                     if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d))})
    raise ValueError(f"{type(model).__name__} has none of the LoRA target modules {sorted(targets)}"
                     f" (e.g. no attention blocks); its linear/conv layers are named: "
                     f"{', '.join(layers)}. Pass lora=peft.LoraConfig(target_modules=[...]) to pick some")


def add_adapter(model, config, seed: int) -> None:
    """Freeze ``model`` and add the LoRA adapter, its initial weights drawn from ``seed``
    (the caller has run ``check_targets``, before any other work)."""
    model.requires_grad_(False)
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # a seeded adapter, the global stream untouched
        torch.manual_seed(seed)
        if hasattr(model, "add_adapter"):  # diffusers' PeftAdapterMixin (UNet2DConditionModel, …)
            model.add_adapter(config, adapter_name=ADAPTER)
        else:  # UNet2DModel, DiTTransformer2DModel: what add_adapter does
            _peft().inject_adapter_in_model(config, model, ADAPTER)
    for name, p in model.named_parameters():  # only the adapter trains
        p.requires_grad_("lora_" in name)
        # on 16-bit base weights the adapter trains in float32 (diffusers' LoRA scripts'
        # cast_training_params): Adam's updates are far below bf16's resolution; peft casts the
        # adapter's input up and its output back to the base layer's dtype
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class AdaptersOff:
    """The original model: ``model`` with its adapters switched off for the call (no copy), in
    eval mode (no dropout), as the frozen copy it replaces was. Called like the model; the
    adapters and the training mode are restored afterwards, even after an error."""

    def __init__(self, model):
        self.model = model
        self._layers = _tuner_layers(model)

    @contextlib.contextmanager
    def off(self):
        was_training = self.model.training
        self.model.eval()
        if hasattr(self.model, "disable_adapters"):  # diffusers' own switch
            self.model.disable_adapters()
        else:
            for m in self._layers:
                m.enable_adapters(False)
        try:
            yield self.model
        finally:
            if hasattr(self.model, "enable_adapters"):
                self.model.enable_adapters()
            else:
                for m in self._layers:
                    m.enable_adapters(True)
            self.model.train(was_training)

    def __call__(self, *args, **kwargs):
        with self.off():
            return self.model(*args, **kwargs)


def adapter_state(model) -> dict:
    """The adapter's weights ``{peft name: tensor}`` (peft's ``get_peft_model_state_dict``)."""
    from peft.utils import get_peft_model_state_dict
    return get_peft_model_state_dict(model, adapter_name=ADAPTER)


def merged_copy(model):
    """A copy of ``model`` with the adapter merged into the base weights and removed."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    merged = copy.deepcopy(model)
    for m in _tuner_layers(merged):
        m.merge(adapter_names=[ADAPTER])
    recurse_remove_peft_layers(merged)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        merged.__dict__.pop(attr, None)
    return merged.requires_grad_(False)


def save(model, config, path: str) -> str:
    """Write the adapter in the format that loads back (see the module's docstring); returns
    a word for what was written: ``"pipeline"`` or ``"merged"``."""
    import diffusers
    from safetensors.torch import save_file

    from safemax.models.families import family_of

    os.makedirs(path, exist_ok=True)
    loader = family_of(model).lora_pipeline
    if loader is not None:  # e.g. ("FluxPipeline", "transformer_lora_layers")
        from diffusers.utils import convert_state_dict_to_diffusers
        pipeline, keyword = loader
        getattr(diffusers, pipeline).save_lora_weights(
            path, **{keyword: convert_state_dict_to_diffusers(adapter_state(model)),
                     keyword.replace("_layers", "_adapter_metadata"): config.to_dict()},
            safe_serialization=True)
        return "pipeline"
    merged_copy(model).save_pretrained(path, safe_serialization=True)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_state(model).items()}
    save_file(state, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)  # adapter_config.json
    return "merged"
