"""Kernel speed: the fused op vs the loss a user would write by hand, and vs the full reference.

Baselines, each eager and torch.compile'd:
- plain masked MSE (the headline): forget rows' target √(1−ᾱ_t)·x_t, retain rows' target ε, the
  early-timestep window, a weighted mean; no nats. The same loss value as the op's "simple"
  weighting (test_plain_mse_is_the_simple_loss), so the ratios compare the same computation.
- the full reference (safemax.op.reference): also the per-pixel KL in nats, coefficients in float64.

    pytest --benchmark-only                  # all shapes, CPU (and CUDA when present)
    SAFEMAX_BENCH_QUICK=1 pytest --benchmark-only --benchmark-disable   # smoke run (CI)

Prints a summary of the ratios at the end (benchmarks/conftest.py). Speed is reported, never
asserted: a timing depends on the machine.
"""
import os

import pytest
import torch
from problems import T, make_problem  # tests/problems.py (on pytest's pythonpath)

import safemax
from safemax import safemax_loss, safemax_loss_reference

QUICK = os.environ.get("SAFEMAX_BENCH_QUICK") == "1"
SHAPES = {"2x3x8x8": (2, 3, 8, 8)} if QUICK else {
    "128x3x32x32": (128, 3, 32, 32),   # CIFAR-10 DDPM batch
    "16x4x64x64": (16, 4, 64, 64),     # Stable Diffusion latents
    "64x3x256x256": (64, 3, 256, 256),  # DRAM-sized: 50 MB per float32 tensor
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in safemax.backends() else [])
T_MIN = 300  # forget rows active for t >= 300 of T = 1000


def plain_masked_mse(eps_pred, eps, x_t, timesteps, alphas_cumprod, forget, t_min,
                     forget_weight=1.0):
    """The SAFEMax loss as a user would write it by hand in PyTorch: a masked, weighted MSE."""
    row = (-1,) + (1,) * (eps_pred.dim() - 1)
    scale = (1 - alphas_cumprod[timesteps]).sqrt().view(row)
    target = torch.where(forget.view(row), scale * x_t, eps)
    mse = (eps_pred - target).square().flatten(1).mean(1)
    active = ~forget | (timesteps >= t_min)
    weight = torch.where(forget, mse.new_tensor(forget_weight), 1.0) * active
    return (weight * mse).mean()


torch._dynamo.config.cache_size_limit = 64
# The summary (conftest.py) reads the names: fused vs mse_* (headline), then vs ref_*.
IMPLS = {
    "fused": safemax_loss,
    "mse_eager": plain_masked_mse,
    "mse_compiled": torch.compile(plain_masked_mse, dynamic=False),
    "ref_eager": safemax_loss_reference,
    "ref_compiled": torch.compile(safemax_loss_reference, dynamic=False),
}


def make_inputs(shape, device):
    """Half forget, half retain rows (the Unlearner's mix), random timesteps."""
    B = shape[0]
    eps_pred, eps, x_t, timesteps, alphas_cumprod, forget = make_problem(
        shape, device=device, forget=torch.arange(B) % 2 == 0)
    return (eps_pred, eps, x_t), timesteps, alphas_cumprod, forget


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("forget_weight", [1.0, 0.6])
def test_plain_mse_is_the_simple_loss(dtype, forget_weight):
    """The headline baseline computes the op's loss ("simple" weighting), value and gradient,
    on a batch with masked forget rows, active forget rows and retain rows."""
    args = make_problem((6, 3, 5, 5), dtype=dtype, forget=[1, 1, 0, 1, 0, 1],
                        timesteps=[T - 1, 100, 50, 700, 999, 299])
    args = (*args[:4], args[4].to(dtype), args[5])  # ᾱ in the inputs' precision
    pred = args[0].clone().requires_grad_(True)
    ref = pred.detach().clone().requires_grad_(True)
    plain = plain_masked_mse(pred, *args[1:], T_MIN, forget_weight)
    loss, _ = safemax_loss_reference(ref, *args[1:], T_MIN, forget_weight, "simple")
    plain.backward()
    loss.backward()
    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(plain, loss, **tol)
    torch.testing.assert_close(pred.grad, ref.grad, **tol)
    fused, _ = safemax_loss(*args, T_MIN, forget_weight)
    torch.testing.assert_close(plain.detach(), fused, **tol)


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
        loss = fn(pred, eps, x_t, timesteps, alphas_cumprod, forget, T_MIN)
        if isinstance(loss, tuple):  # (loss, nats) of the op and the reference
            loss = loss[0]
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
