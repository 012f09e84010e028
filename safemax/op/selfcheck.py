"""``safemax selfcheck``: prove the installed kernels work here, in a few seconds.

Runs the fused op and the pure-PyTorch reference on one random mixed forget/retain batch per
available device, compares loss, nats and gradients, and times forward+backward of both.
"""
import time

import torch

from safemax.op.extension import backends, with_openmp
from safemax.op.ops import safemax_loss
from safemax.op.reference import safemax_loss_reference


def _problem(batch, shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda: torch.randn((batch, *shape), generator=g).to(device)  # noqa: E731
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)
    timesteps = torch.randint(0, 1000, (batch,), generator=g).to(device)
    forget = (torch.arange(batch) % 2 == 0).to(device)
    return rand(), rand(), rand(), timesteps, alphas_cumprod, forget


def _fwd_bwd(fn, args, t_min):
    pred = args[0].detach().requires_grad_(True)
    loss, nats = fn(pred, *args[1:], t_min)
    loss.backward()
    return loss.detach(), nats.detach(), pred.grad


def _median_seconds(fn, reps, device):
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run(batch=64, shape=(3, 32, 32), reps=20) -> bool:
    print(f"safemax selfcheck: torch {torch.__version__}, kernels for {', '.join(backends())}, "
          f"OpenMP {'on' if with_openmp() else 'off'}, {torch.get_num_threads()} CPU threads")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and "cuda" in backends() else [])
    if torch.cuda.is_available() and "cuda" not in backends():
        print("  WARNING: a GPU is visible but safemax was built without CUDA kernels")
    t_min = 500  # forget rows count only in the noisiest half of T = 1000 steps
    ok = True
    print(f"  batch {batch}x{'x'.join(map(str, shape))}, half forget rows, t_min {t_min}")
    for device in devices:
        args = _problem(batch, shape, device)
        fused = _fwd_bwd(safemax_loss, args, t_min)
        ref = _fwd_bwd(safemax_loss_reference, args, t_min)
        diffs = [(a - b).abs().max().item() for a, b in zip(fused, ref)]
        scales = [b.abs().max().item() for b in ref]
        agree = all(d <= 1e-5 * s + 1e-7 for d, s in zip(diffs, scales))
        ok &= agree
        t_fused = _median_seconds(lambda: _fwd_bwd(safemax_loss, args, t_min), reps, device)
        t_ref = _median_seconds(lambda: _fwd_bwd(safemax_loss_reference, args, t_min), reps, device)
        print(f"  {device}: loss {fused[0].item():.6f} (reference {ref[0].item():.6f}); "
              f"max |diff| loss {diffs[0]:.1e}, nats {diffs[1]:.1e}, grad {diffs[2]:.1e} "
              f"-> {'OK' if agree else 'MISMATCH'}")
        print(f"  {device}: forward+backward {t_fused * 1e6:.0f} us fused vs {t_ref * 1e6:.0f} us "
              f"eager reference ({t_ref / t_fused:.1f}x), median of {reps}")
    print("selfcheck " + ("passed" if ok else "FAILED"))
    return ok
