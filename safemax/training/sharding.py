"""Full fine-tuning sharded over processes: FSDP2 (torch's ``fully_shard``) through Accelerate.

Under an FSDP accelerator (``accelerate launch --config_file benchmarks/accelerate-configs/fsdp.yaml``)
the Unlearner shards once, when it is built: the model and its Adam state by Accelerate's
``prepare`` (the config's wrap policy: each block of the model its own unit), and SAFEMax's
frozen teacher copy the same way, without an optimizer, its units resharded after every forward.
Each process then holds 1/N of the weights, gradients, Adam state and teacher; the activations of
its own rows are its own. The global batch is DDP's: every process draws the same batch and
trains on its share (``parallel.Shard``); FSDP's reduce-scatter averages the gradients.

Checkpoints keep the single-file format, so any number of processes resumes them: every process
takes part in gathering the full weights and Adam state, the main process writes them; a resume
hands every process the full state and each keeps its shard. Refused, with what to do instead:
methods that read whole weights or gradients (``Method.unsharded_because``), LoRA, training the
class-embedding rows, FSDP1, Accelerate's own activation checkpointing.
"""
import contextlib

import torch


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type == DistributedType.FSDP


def check(accelerator, method, lora, train: str) -> None:
    """Raise, before any work, what an FSDP fit cannot do (nothing without FSDP)."""
    if not is_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if not accelerator.is_fsdp2:
        raise ValueError("FSDP1 is not supported: set fsdp_version: 2 in the Accelerate config "
                         "(torch's fully_shard; benchmarks/accelerate-configs/fsdp.yaml)")
    if plugin.activation_checkpointing:
        raise ValueError("fsdp_activation_checkpointing: set it false and pass gradient_checkpointing=True "
                         "to the Unlearner (the model's own checkpointing, tested under FSDP)")
    if method.unsharded_because:
        raise ValueError(f"method {method.name!r} cannot run under FSDP: {method.unsharded_because}; run it "
                         "with DDP (accelerate launch --multi_gpu) — as a LoRA fit (lora_rank=...) if the model "
                         "is too large — or on a single GPU")
    if lora is not None:
        raise ValueError("LoRA is not sharded: FSDP shards full fine-tuning; a LoRA fit holds the base weights "
                         "once per process and fits one GPU, so launch it with DDP (accelerate launch --multi_gpu)")
    if train == "class-embedding":
        raise ValueError('train="class-embedding" masks whole embedding rows by a gradient hook, which a shard '
                         "does not hold: train it with DDP or on a single GPU (it trains a few rows: no need "
                         "to shard)")


class Sharded:
    """An FSDP fit's state beside the Unlearner's: Accelerate's optimizer wrapper (its loss
    scaler's steps) and the model's own class (the sharded module's is FSDP's subclass of it)."""

    def __init__(self, accelerator, optimizer, model_class):
        self.accelerator, self.optimizer, self.model_class = accelerator, optimizer, model_class


def shard(u):
    """Shard ``u``'s model, Adam and teacher in place (``u.unet`` becomes the FSDP module);
    returns the ``Sharded`` state, or None without FSDP."""
    acc = u.accelerator
    if not is_fsdp(acc):
        return None
    from accelerate.utils import fsdp2_prepare_model

    model_class = type(u.unet)
    model, optimizer = acc.prepare(u.unet, u.optimizer)
    if model is not u.unet:   # torch.compile wraps the module: the Unlearner holds the model itself
        raise ValueError("under FSDP the model must be sharded in place: launch with dynamo_backend no")
    teacher = getattr(u.method, "teacher", None)
    if isinstance(teacher, torch.nn.Module):
        # the same units, mixed precision and offload as the model; no optimizer. Resharded after
        # every forward, the root too: the teacher has no backward that would free its weights
        fsdp2_prepare_model(acc, teacher)
        teacher.set_reshard_after_forward(True)
    u.denoiser.follow_device()
    return Sharded(acc, optimizer, model_class)


@contextlib.contextmanager
def prepared(u):
    """``(model, optimizer, autocast)`` of a sharded fit: wrapped once for good (FSDP2 shards in
    place; there is nothing to unwrap after a fit), with a resumed loss scaler's state."""
    acc = u.accelerator
    if u.resumed_scaler_state and acc.scaler is not None:
        acc.scaler.load_state_dict(u.resumed_scaler_state)
    yield u.unet, u.sharded.optimizer, acc.autocast


def _trained_names(model) -> list:
    """The trained parameters' names in the optimizer's order (it was built from this list)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def full_state(u, optimizer: bool = True) -> tuple:
    """``(weights, optimizer state dict)`` in full, as ``model.state_dict()`` and a plain
    ``optimizer.state_dict()`` give them (the optimizer's state by index): gathered from every
    process's shards, on the host. Every process must call it; the main process gets the
    tensors, the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(u.unet, options=options)
    if not optimizer:
        return weights, None
    named = get_optimizer_state_dict(u.unet, u.optimizer, options=options)
    if not u.is_main_process:
        return weights, {}
    index = {n: i for i, n in enumerate(_trained_names(u.unet))}
    state = {index[n]: s for n, s in named["state"].items()}
    groups = [dict(g, params=[index[n] for n in g["params"]]) for g in named["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_full_state(u, weights: dict, optimizer_state: dict) -> None:
    """Restore the full ``weights`` and optimizer state (``full_state``'s form, every process
    given all of it): each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(u.unet, weights, options=options)
    names = _trained_names(u.unet)
    named = {"state": {names[i]: s for i, s in optimizer_state["state"].items()},
             "param_groups": [dict(g, params=[names[i] for i in g["params"]])
                              for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(u.unet, u.optimizer, named, options=options)


def full_model(u):
    """The trained model unsharded, on the main process (None on the others; every process must
    call it): the model's own class built on the meta device (no memory), given the gathered
    weights — what ``save_pretrained`` writes, under the model's own class name."""
    weights, _ = full_state(u, optimizer=False)
    if not u.is_main_process:
        return None
    with torch.device("meta"):
        model = u.sharded.model_class.from_config(u.unet.config)
    model.load_state_dict(weights, assign=True)
    return model
