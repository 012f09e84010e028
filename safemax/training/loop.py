"""The fit's loop, step by step: the data a fit is given as ``Batches``, the method's one-off
preparation (timed as its cost), one optimisation step with its NaN guard, the stopping rule, and
the loop that runs them under Accelerate with checkpoints. ``Unlearner.fit`` drives them."""
import math
import time

import torch
from tqdm.auto import tqdm

from safemax.data import Batches
from safemax.methods import Method
from safemax.training import checkpoint, parallel, sharding, stopping


def fit_data(u, retain, forget, batch_size: int):
    """The fit's data as ``Batches`` (forget None: data-free, or a method that needs none)."""
    method = u.method
    if retain is None and method.uses_retain_data:
        raise ValueError(f"method {method.name!r} needs retain data: (image, label) pairs of the "
                         "classes to keep")
    form = u.targets.form
    retain_b = Batches(retain, "retain", form=form) if method.uses_retain_data else None
    forget_b = Batches(forget, "forget", form=form) if method.uses_forget_data and forget is not None \
        else None
    return retain_b, forget_b


def prepare(u, retain: Batches, forget: Batches, batch_size: int, progress: bool):
    """The method's one-off work on the original model (saliency mask, Fisher, replay set),
    timed into ``prep_seconds`` — part of the method's cost."""
    if u.step > 0:
        raise RuntimeError("a method prepares on the original model, before the first step")
    start = time.perf_counter()
    if progress and type(u.method).prepare is not Method.prepare:
        tqdm.write(f"{u.method.name}: preparing (counted in its cost)")
    was_training = u.unet.training
    u.unet.train()
    u.method.prepare(u, retain, forget, batch_size)
    u.unet.train(was_training)
    u.prep_seconds = u.bind_seconds + time.perf_counter() - start


def train_step(u, optimizer, autocast, params, clip: float, retain, forget, batch_size: int) -> dict:
    """One optimisation step; its record is appended to the history and returned."""
    start = time.perf_counter()
    with autocast():
        loss, stats = u.method.loss(u, retain, forget, batch_size)
    numbers = parallel.mean_over_processes(u.accelerator, [loss.detach(), *stats.values()])
    if not math.isfinite(numbers[0]):
        raise FloatingPointError(
            f"step {u.step + 1}: the loss is {numbers[0]}; stopped before updating, so "
            f"the weights are those after step {u.step}. Lower lr, check the data for "
            "NaN/Inf, or use a float32 model")
    optimizer.zero_grad(set_to_none=True)
    norm = parallel.backward_and_clip(u.accelerator, loss, optimizer, params, clip)
    if not torch.isfinite(norm) and getattr(u.accelerator, "scaler", None) is None:
        # (with fp16 loss scaling an overflow is expected now and then: the scaler
        # skips that step and lowers its scale)
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(
            f"step {u.step + 1}: a gradient is {norm.item()}; stopped before "
            f"updating, so the weights are those after step {u.step}")
    u.method.edit_grads(u)  # after clipping, as SalUn's published code does
    for group in optimizer.param_groups:   # a function of the step alone: resumes exactly
        group["lr"] = u.lr_at(u.step)
    optimizer.step()
    u.step += 1
    elapsed = (u.history[-1]["seconds"] if u.history else 0.0) + time.perf_counter() - start
    record = dict(step=u.step, loss=numbers[0], **dict(zip(stats, numbers[1:])), seconds=elapsed)
    u.history.append(record)
    return record


def should_stop(u, rule, record: dict) -> bool:
    """Whether ``rule`` ends the fit after this step (read from the history, which every
    process shares, so all stop together)."""
    if isinstance(rule, stopping.NatsRule):
        rule.check_history_keys(record, u.method.name)
    if not rule(u.history):
        return False
    u.stopped_at = u.step
    if u.is_main_process:
        tqdm.write(f"safemax: stopped at step {u.step} by stop_when={rule}")
    return True


def run(u, retain_b, forget_b, steps: int, batch_size: int, clip, checkpoint_dir, checkpoint_every: int,
        progress: bool, callback, rule) -> None:
    """``u``'s steps up to ``steps``, under Accelerate's wrapping (DDP, autocast): progress bar,
    checkpoints every ``checkpoint_every`` steps, at the end and on Ctrl-C, ``callback`` and the
    stopping ``rule`` after each step (``Unlearner.fit`` has checked the arguments and prepared)."""
    params = [p for _, p in u.trainable()]
    bar = tqdm(total=steps, initial=u.step, desc=u.method.name, unit="step", dynamic_ncols=True,
               disable=not (progress and u.is_main_process))
    # wrapped after preparing: DDP must not see the preparation (FSDP shards once, when built)
    wrapping = sharding.prepared(u) if u.sharded is not None else \
        parallel.prepared(u.accelerator, u.unet, u.optimizer, u.owns_accelerator, u.resumed_scaler_state)
    try:
        with wrapping as (model, optimizer, autocast):
            u.denoiser.model = model
            u.unet.train()
            while u.step < steps:
                record = train_step(u, optimizer, autocast, params, clip or float("inf"), retain_b, forget_b,
                                    batch_size)
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k not in ("step", "seconds")},
                                refresh=False)
                if checkpoint_dir and checkpoint_every and u.step % checkpoint_every == 0:
                    checkpoint.save_fit(u, checkpoint_dir, batch_size)
                if callback is not None:
                    callback(u, record)
                if rule is not None and should_stop(u, rule, record):
                    break
    except KeyboardInterrupt:
        if checkpoint_dir and u.is_main_process and u.sharded is None:
            checkpoint.save_fit(u, checkpoint_dir, batch_size)
            bar.write(f"safemax: interrupted; checkpoint of step {u.step} saved in "
                      f"{checkpoint_dir} (fit(..., resume=True) continues)")
        elif checkpoint_dir and u.is_main_process:   # gathering the shards needs every process
            saved = checkpoint.saved_step(checkpoint_dir)
            bar.write(f"safemax: interrupted at step {u.step}; under FSDP no checkpoint is gathered then: "
                      + (f"the one of step {saved} in {checkpoint_dir} stands" if saved else "none was written"))
        raise
    finally:
        bar.close()
        u.denoiser.model = u.unet
    u.optimizer.zero_grad(set_to_none=True)  # the gradients are as big as the model
    if checkpoint_dir:
        checkpoint.save_fit(u, checkpoint_dir, batch_size)
    if u.accelerator is not None:
        u.accelerator.wait_for_everyone()  # the checkpoint exists for every process
    u.unet.eval()
