"""Atomic, pickle-free training checkpoints: one safetensors file holding the model weights (with a
LoRA adapter: the adapter's weights only; the frozen base is checked by its SHA-256), the
optimizer state, the random-generator state and any cached tensors, with the step, history and
configuration as JSON metadata.

Written to a temporary file in the same folder and renamed over the old one, so an interruption
at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""
import hashlib
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from safemax import __version__
from safemax.models import lora as adapters
from safemax.training import sharding

FILENAME = "checkpoint.safetensors"


def save(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, meta: dict, extra: dict = None, only_trainable: bool = False,
         gathered: tuple = None) -> None:
    """``only_trainable``: of the model, only the parameters that require grad (a LoRA
    adapter: the frozen base weights are not written). ``gathered``: ``(weights, optimizer
    state dict)`` in full, to write instead of the model's and the optimizer's own (a model
    sharded over processes: ``sharding.full_state``)."""
    if gathered is not None:
        weights, state = gathered
    else:
        weights = {k: v for k, v in model.named_parameters() if v.requires_grad} if only_trainable \
            else model.state_dict()
        state = optimizer.state_dict()
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in weights.items()}
    for index, param_state in state["state"].items():
        for key, value in param_state.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value.detach().contiguous().cpu()
    tensors["rng"] = generator.get_state()
    for key, value in (extra or {}).items():
        tensors[f"extra.{key}"] = value.detach().contiguous().cpu()
    metadata = {"meta": json.dumps(meta), "param_groups": json.dumps(state["param_groups"])}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def load(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, only_trainable: bool = False, restore=None) -> tuple:
    """Restore model, optimizer and generator in place; return ``(meta, extra)``.
    ``only_trainable``: the file holds exactly the parameters that require grad. ``restore``:
    ``restore(weights, optimizer state dict)`` puts the full state in place instead (a model
    sharded over processes: ``sharding.load_full_state``)."""
    device = next(model.parameters()).device
    model_state, optim_state, extra = {}, {}, {}
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            value = f.get_tensor(key)
            kind, _, rest = key.partition(".")
            if kind == "model":
                model_state[rest] = value
            elif kind == "optim":
                index, _, name = rest.partition(".")
                optim_state.setdefault(int(index), {})[name] = value
            elif kind == "extra":
                extra[rest] = value
            elif key == "rng":
                generator.set_state(value)
    optim = {"state": optim_state, "param_groups": json.loads(metadata["param_groups"])}
    if restore is not None:
        restore(model_state, optim)
        return json.loads(metadata["meta"]), extra
    if only_trainable:
        params = {k: v for k, v in model.named_parameters() if v.requires_grad}
        if params.keys() != model_state.keys():
            raise ValueError(f"checkpoint {path} holds other trainable weights than the model's "
                             f"({sorted(set(model_state) ^ set(params))[:5]} ...)")
        with torch.no_grad():
            for k, v in model_state.items():
                params[k].copy_(v)
    else:
        model.load_state_dict(model_state)
    optimizer.load_state_dict({
        "state": {i: {k: (v.to(device) if k != "step" else v) for k, v in s.items()}
                  for i, s in optim_state.items()},
        "param_groups": optim["param_groups"],
    })
    return json.loads(metadata["meta"]), extra


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and bytes, in name order): a resume
    continues only the fit of the very model it started from."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        value = value.detach().contiguous().cpu()
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)};".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return h.hexdigest()


def save_fit(u, checkpoint_dir: str, batch_size: int) -> None:
    """Write an Unlearner's whole fit state (weights, optimizer, generator, step, history, the
    method's prepared tensors, the data-free forget set, the loss scaler) to ``checkpoint_dir``.
    Under FSDP every process must call it (the shards are gathered); the main process writes."""
    gathered = sharding.full_state(u) if u.sharded is not None else None
    if not u.is_main_process:  # every process holds the same (gathered) state; one writes it
        return
    os.makedirs(checkpoint_dir, exist_ok=True)
    extra = {f"method.{k}": v for k, v in u.method.state().items()}
    if u.forget_set is not None:  # conditions: a tensor, or a dict saved key by key
        conds = u.forget_set.conditions
        extra["forget_images"] = u.forget_set.images
        extra.update({f"forget_labels.{k}": v for k, v in conds.items()} if isinstance(conds, dict)
                     else {"forget_labels": conds})
    meta = dict(step=u.step, history=u.history, config=u.config(batch_size),
                original_sha256=u.original_digest, prep_seconds=u.prep_seconds,
                grad_scaler=u.scaler_state())
    # with LoRA only the adapter: the base weights are the original's (checked by digest)
    save(os.path.join(checkpoint_dir, FILENAME), u.unet, u.optimizer, u.generator, meta, extra,
         only_trainable=u.lora is not None, gathered=gathered)


def saved_step(checkpoint_dir: str):
    """The step of the fit checkpointed in ``checkpoint_dir`` (read from its metadata, nothing
    loaded); None without a checkpoint."""
    path = os.path.join(checkpoint_dir, FILENAME)
    if not os.path.exists(path):
        return None
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["meta"])["step"]


def _as_then(config: dict, saved: dict, u) -> dict:
    """``config`` without the settings ``saved`` lacks that sit at their defaults: a setting added
    to safemax after a checkpoint was written, left at its default, is the fit the checkpoint
    made (one set otherwise is not)."""
    import dataclasses
    defaults = {f.name: f.default for s in (u.settings, u.method.settings) for f in dataclasses.fields(s)}
    return {k: v for k, v in config.items() if k in saved or k not in defaults or v != defaults[k]}


def resume_fit(u, checkpoint_dir: str, batch_size: int) -> bool:
    """Restore an Unlearner's fit state from ``checkpoint_dir``; False if there is no checkpoint.
    Refuses a checkpoint of other settings or of another original model."""
    from safemax.data import ConditionedImages

    path = os.path.join(checkpoint_dir, FILENAME)
    if not os.path.exists(path):
        return False
    with safe_open(path, framework="pt") as f:  # check before anything is restored
        meta = json.loads(f.metadata()["meta"])
    if meta["config"] != _as_then(u.config(batch_size), meta["config"], u):
        raise ValueError(f"checkpoint {path} was made with other settings "
                         f"({meta['config']}) than this fit ({u.config(batch_size)})")
    if meta.get("original_sha256") != u.original_digest:
        raise ValueError(f"checkpoint {path} continues a fit of another model (or was written by an "
                         "older safemax): resume with the same original model the fit started from, "
                         "or start afresh in an empty checkpoint_dir")
    restore = (lambda weights, optim: sharding.load_full_state(u, weights, optim)) if u.sharded is not None \
        else None   # (every process reads the whole file and keeps its shard)
    meta, extra = load(path, u.unet, u.optimizer, u.generator, only_trainable=u.lora is not None,
                       restore=restore)
    u.step, u.history = meta["step"], meta["history"]
    u.prep_seconds = meta.get("prep_seconds")
    u.resumed_scaler_state = meta.get("grad_scaler")
    u.method.load_state({k[len("method."):]: v for k, v in extra.items() if k.startswith("method.")}, u)
    if "forget_images" in extra:
        parts = {k.split(".", 1)[1]: v for k, v in extra.items() if k.startswith("forget_labels.")}
        u.forget_set = ConditionedImages(extra["forget_images"], parts or extra["forget_labels"])
    return True


def save_unlearned(u, path: str) -> None:
    """``Unlearner.save_pretrained``: the unlearned model (or its LoRA adapter), the scheduler's
    config and ``safemax.json``; only the main process writes (under FSDP every process must call
    it: the full weights are gathered from the shards)."""
    model = sharding.full_model(u) if u.sharded is not None else u.unet
    if not u.is_main_process:
        return
    os.makedirs(path, exist_ok=True)
    if u.lora is not None:
        saved_as = adapters.save(u.unet, u.lora, path)
    else:
        model.save_pretrained(path, safe_serialization=True)
    if hasattr(u.scheduler, "save_pretrained"):
        u.scheduler.save_pretrained(path)
    info = {**u.config(None), "safemax_version": __version__, "steps": u.step,
            "num_train_timesteps": u.denoiser.num_train_timesteps,
            "data_free": u.forget_set is not None}
    if u.lora is not None:
        info["lora_saved_as"] = saved_as
    if u.stopped_at is not None:
        info["stopped_at"] = u.stopped_at
    info.pop("batch_size")
    with open(os.path.join(path, "safemax.json"), "w") as f:
        json.dump(info, f, indent=2)
