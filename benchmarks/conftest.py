"""Collects the kernel benchmarks' medians and prints the ratios the README quotes."""
import collections

import pytest

# (device, shape name) -> {(impl, mode): median seconds}
MEDIANS = collections.defaultdict(dict)
# (device, shape name) -> (elements, bytes per element)
SIZES = {}


@pytest.fixture
def record():
    def _record(device, shape_name, key, benchmark, elements, elem_bytes):
        if benchmark.stats is not None:  # None with --benchmark-disable
            MEDIANS[(device, shape_name)][key] = benchmark.stats.stats.median
            SIZES[(device, shape_name)] = (elements, elem_bytes)
    return _record


# Bytes each mode must move at least (the roofline of the op's contract, docs/op.md): the
# forward reads eps_pred and one target tensor per row; the backward reads both again and
# writes grad_eps_pred.
TENSOR_PASSES = {"fwd": 2, "fwd+bwd": 5, "copy": 2}
# The baselines, headline first (bench_kernels.py): label -> (eager impl, compiled impl)
BASELINES = {"plain MSE": ("mse_eager", "mse_compiled"),
             "full reference": ("ref_eager", "ref_compiled")}


def _ms(s):
    return f"{s * 1e3:8.3f}ms" if s else f"{'-':>10}"


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables: the last thing printed
def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    w = terminalreporter.write_line
    rows = [(device, shape, mode, med) for (device, shape), med in sorted(MEDIANS.items())
            for mode in ("fwd", "fwd+bwd") if med.get(("fused", mode))]
    w("")
    w("safemax kernel summary: median times; 'vs' = the baseline's time / the fused op's time "
      "(> 1: the fused op is faster)")
    w("baselines: 'plain MSE' = the masked MSE a user would write by hand (same loss value as "
      "weighting='simple', no nats); 'full reference' = safemax.op.reference (also the per-pixel "
      "nats, float64 coefficients); each eager and torch.compile'd")
    w(f"{'device':6} {'shape':13} {'mode':8} {'baseline':15} {'fused':>10} {'eager':>10} "
      f"{'compiled':>10} {'vs eager':>8} {'vs comp.':>8}")
    for label, (eager, comp) in BASELINES.items():  # the headline baseline's rows first
        for device, shape, mode, med in rows:
            fused = med[("fused", mode)]
            e, c = med.get((eager, mode)), med.get((comp, mode))
            ratio = lambda s: f"{s / fused:7.2f}x" if s else f"{'-':>8}"  # noqa: E731
            w(f"{device:6} {shape:13} {mode:8} {label:15} {_ms(fused)} {_ms(e)} {_ms(c)} "
              f"{ratio(e)} {ratio(c)}")
    w("")
    w("fused op bandwidth: GB/s over the bytes that must move; % of the copy bandwidth into a "
      "reused / a fresh buffer")
    w(f"{'device':6} {'shape':13} {'mode':8} {'GB/s':>6} {'copy GB/s':>13} {'% copy':>11}")
    for device, shape, mode, med in rows:
        elements, elem_bytes = SIZES[(device, shape)]
        gb = lambda m: TENSOR_PASSES[m] * elements * elem_bytes / 1e9  # noqa: E731
        copies = [med.get(("copy", into)) for into in ("reused", "fresh")]
        copy_gbs = [gb("copy") / c if c else None for c in copies]
        gbs = gb(mode) / med[("fused", mode)]
        bw = " / ".join(f"{c:5.1f}" if c else "  -  " for c in copy_gbs)
        pct = " / ".join(f"{100 * gbs / c:3.0f}%" if c else "  - " for c in copy_gbs)
        w(f"{device:6} {shape:13} {mode:8} {gbs:6.1f} {bw:>13} {pct:>11}")
