"""Atomic, pickle-free training checkpoints: one safetensors file holding the model weights, the
optimizer state, the random-generator state and any cached tensors, with the step, history and
configuration as JSON metadata.

Written to a temporary file in the same folder and renamed over the old one, so an interruption
at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FILENAME = "checkpoint.safetensors"


def save(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator, meta: dict, extra: dict = None) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
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
         generator: torch.Generator) -> tuple:
    """Restore model, optimizer and generator in place; return ``(meta, extra)``."""
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
    model.load_state_dict(model_state)
    optimizer.load_state_dict({
        "state": {i: {k: (v.to(device) if k != "step" else v) for k, v in s.items()}
                  for i, s in optim_state.items()},
        "param_groups": json.loads(metadata["param_groups"]),
    })
    return json.loads(metadata["meta"]), extra
