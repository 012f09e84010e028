"""Kernel speed: the fused op vs the eager reference vs torch.compile of the reference.

    pytest --benchmark-only                  # all shapes, CPU (and CUDA when present)
    SAFEMAX_BENCH_QUICK=1 pytest --benchmark-only --benchmark-disable   # smoke run (CI)

Prints a summary of the ratios at the end (benchmarks/conftest.py). Speed is reported, never
asserted: a timing depends on the machine.
"""
import os

import pytest
import torch

import safemax
from problems import make_problem  # tests/problems.py (on pytest's pythonpath)
from safemax import safemax_loss, safemax_loss_reference

QUICK = os.environ.get("SAFEMAX_BENCH_QUICK") == "1"
SHAPES = {"2x3x8x8": (2, 3, 8, 8)} if QUICK else {
    "128x3x32x32": (128, 3, 32, 32),   # CIFAR-10 DDPM batch
    "16x4x64x64": (16, 4, 64, 64),     # Stable Diffusion latents
    "64x3x256x256": (64, 3, 256, 256),  # DRAM-sized: 50 MB per float32 tensor
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in safemax.backends() else [])
T_MIN = 300  # forget rows active for t >= 300 of T = 1000

torch._dynamo.config.cache_size_limit = 64
_compiled_reference = torch.compile(safemax_loss_reference, dynamic=False)
IMPLS = {"fused": safemax_loss, "eager": safemax_loss_reference, "compiled": _compiled_reference}


def make_inputs(shape, device):
    """Half forget, half retain rows (the Unlearner's mix), random timesteps."""
    B = shape[0]
    eps_pred, eps, x_t, timesteps, alphas_cumprod, forget = make_problem(
        shape, device=device, forget=torch.arange(B) % 2 == 0)
    return (eps_pred, eps, x_t), timesteps, alphas_cumprod, forget


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_loss(benchmark, record, impl, mode, shape_name, device):
    shape = SHAPES[shape_name]
    (eps_pred, eps, x_t), timesteps, alphas_cumprod, forget = make_inputs(shape, device)
    fn = IMPLS[impl]
    pred = eps_pred.requires_grad_(mode == "fwd+bwd")

    def run():
        loss, _ = fn(pred, eps, x_t, timesteps, alphas_cumprod, forget, T_MIN)
        if mode == "fwd+bwd":
            torch.autograd.grad(loss, pred)
        _sync(device)

    run()  # compile (torch.compile) and warm up outside the timing
    benchmark.group = f"{device} {shape_name} {mode}"
    benchmark(run)
    record(device, shape_name, (impl, mode), benchmark, eps_pred.numel(), eps_pred.element_size())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("into", ["reused", "fresh"])
def test_copy_bandwidth(benchmark, record, into, shape_name, device):
    """Bandwidth of a plain copy of one input-sized tensor: into a reused buffer (the machine's
    streaming limit) and into a freshly allocated one (what any op returning a new tensor, such
    as a gradient, also pays: on CPU the OS maps and zeroes fresh pages on first touch)."""
    src = torch.randn(SHAPES[shape_name], device=device)
    dst = torch.empty_like(src)

    def run():
        if into == "reused":
            dst.copy_(src)
        else:
            src.clone()
        _sync(device)

    run()
    benchmark.group = f"{device} {shape_name} copy"
    benchmark(run)
    record(device, shape_name, ("copy", into), benchmark, src.numel(), src.element_size())
