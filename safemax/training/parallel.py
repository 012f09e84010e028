"""Scale-out and mixed precision through HF Accelerate (no home-made launcher).

Data parallelism here keeps the *global* batch independent of the number of processes: every
process draws the same global batch from the same seeded generator (indices, timesteps, noise:
cheap) and trains on its own contiguous share of the rows; DDP averages the gradients. So a
2-process run equals a 1-process run with the same ``batch_size`` up to float rounding, and a
checkpoint resumes on any number of processes. Under FSDP the same batches train a model sharded
over the processes (``safemax.training.sharding``).
"""
import contextlib
import math
import os

import torch

from safemax.data import rows


def launched_distributed() -> bool:
    """True under ``accelerate launch`` / ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_sharded() -> bool:
    """True under ``accelerate launch`` with an FSDP config (one process or more)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(accelerator=None, mixed_precision: str = None):
    """The ``accelerate.Accelerator`` a fit runs under, or None for a plain single-process fit.

    One is created when ``mixed_precision`` asks for it or when the script was started by a
    multi-process launcher or an FSDP config; a user-built one is taken as is (its own mixed
    precision)."""
    if mixed_precision not in (None, "no", "bf16", "fp16"):
        raise ValueError(f'mixed_precision must be None, "no", "bf16" or "fp16", got {mixed_precision!r}')
    if accelerator is None and mixed_precision in (None, "no") and not launched_distributed() \
            and not launched_sharded():
        return None
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if accelerator is None:
        if not launched_distributed():
            # Accelerate keeps its settings in a process-wide singleton that refuses a second
            # mixed precision; a single process may start afresh (e.g. a bf16 fit after an fp32 one)
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
        # on a machine without GPUs, multi-process means CPU processes over gloo
        accelerator = Accelerator(mixed_precision=mixed_precision or "no",
                                  cpu=launched_distributed() and not _has_gpu())
    elif mixed_precision not in (None, accelerator.mixed_precision):
        raise ValueError(f"mixed_precision={mixed_precision!r} disagrees with the accelerator's "
                         f"{accelerator.mixed_precision!r}: set it on the Accelerator only")
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError('mixed_precision="fp16" needs a GPU (Accelerate runs float16 autocast and '
                         'loss scaling on accelerators only); on a CPU use "bf16"')
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise NotImplementedError(
            f"{accelerator.distributed_type.value}: the Unlearner shards with FSDP2 (accelerate launch "
            "--config_file benchmarks/accelerate-configs/fsdp.yaml) or trains with DDP (--multi_gpu); "
            "docs: tutorials/scale-out")
    if launched_sharded() and accelerator.distributed_type != DistributedType.FSDP:
        # Accelerate turns FSDP on for GPU-family processes only: CPU processes stay MULTI_CPU (DDP)
        raise RuntimeError(
            f"the launch asks for FSDP, but Accelerate runs these processes as "
            f"{accelerator.distributed_type.value} on {accelerator.device.type} (it shards on GPUs "
            "only): each would hold the whole model. Launch on GPUs, or without the FSDP config for DDP")
    if launched_distributed() and accelerator.num_processes == 1:
        raise RuntimeError(
            f"launched as one of {os.environ['WORLD_SIZE']} processes, but the Accelerator runs a single "
            "one: every process would train alone on the whole batch. Build it inside the launched "
            "script (Accelerator(cpu=True) for CPU processes), or let the Unlearner make it")
    return accelerator


def _has_gpu() -> bool:
    device = getattr(torch, "accelerator", None)  # torch >= 2.6: any accelerator backend
    return device.is_available() if device is not None else torch.cuda.is_available()


class Shard:
    """This process's share of each global batch: rows ``[rank·n/W, (rank+1)·n/W)``."""

    def __init__(self, accelerator):
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1

    def check(self, batch_size: int):
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} does not split evenly over {self.world} "
                             f"processes: use a multiple of {self.world}")

    def __call__(self, x, parts: int = 1):
        """The local rows of ``x`` (a tensor or a batch of conditions), a global batch made of
        ``parts`` equal blocks (e.g. forget rows then retain rows): this process's share of each
        block, in order."""
        if self.world == 1:
            return x
        n = rows.count(x) // parts
        k = n // self.world
        lo = self.rank * k
        return rows.cat([rows.take(x, slice(p * n + lo, p * n + lo + k)) for p in range(parts)])


@contextlib.contextmanager
def prepared(accelerator, model, optimizer, owned: bool, scaler_state: dict = None):
    """``(model, optimizer, autocast)`` for one fit: under Accelerate, the DDP/mixed-precision
    wrappers (with a resumed loss scaler's state), removed again when the fit ends; otherwise the
    plain ones. ``owned``: the accelerator was made for this Unlearner, so it may be cleared."""
    if accelerator is None:
        yield model, optimizer, contextlib.nullcontext
        return
    wrapped, wrapped_optimizer = accelerator.prepare(model, optimizer)
    if scaler_state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    try:
        yield wrapped, wrapped_optimizer, accelerator.autocast
    finally:
        # drops the DDP wrapper and Accelerate's autocast patch of model.forward (set on the
        # model itself, even in a single process)
        accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)
        if owned:  # and forgets this fit's wrappers, so that a next fit starts clean
            accelerator.free_memory()


def backward_and_clip(accelerator, loss: torch.Tensor, optimizer, params: list,
                      max_norm: float) -> torch.Tensor:
    """Backward pass and gradient-norm clipping; returns the norm before clipping. Under fp16
    only *this* optimizer's gradients are unscaled (Accelerate's own clip_grad_norm_ would
    unscale every optimizer it ever prepared, a former fit's too)."""
    if accelerator is None:
        loss.backward()
    else:
        accelerator.backward(loss)  # scales the loss under fp16
        accelerator.unscale_gradients(optimizer=optimizer)
    return clip_grad_norm(params, max_norm)


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """The gradients' total 2-norm, clipping them to ``max_norm`` unless it is infinite: then
    the norm alone (``clip_grad_norm_`` would multiply every gradient by exactly 1.0 — a pass
    over all of them for nothing: 0.6 of 1.8 ms a step on the embedded model, see
    docs/results/step-cost.md).
    A non-finite norm stops the fit either way."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if hasattr(norm, "full_tensor"):   # FSDP: a DTensor over the shards' gradients; the whole norm
        norm = norm.full_tensor()
    if not math.isinf(max_norm):   # (clip_grad_norm_ is these two calls)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def mean_over_processes(accelerator, values: list) -> list:
    """Floats averaged over the processes (so that every process logs the same, and a NaN on
    one stops them all); the values themselves in a single process."""
    values = [v.item() if torch.is_tensor(v) else float(v) for v in values]
    if accelerator is None or accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="mean").tolist()


def scaler_state(accelerator):
    """The fp16 loss scaler's state (None without one), for checkpoints."""
    scaler = accelerator.scaler if accelerator is not None else None
    return scaler.state_dict() if scaler is not None else None
