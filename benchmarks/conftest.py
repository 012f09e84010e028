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


# Bytes each mode must move at least (the roofline of DESIGN.md §2): the forward reads eps_pred
# and one target tensor per row; the backward reads both again and writes grad_eps_pred.
TENSOR_PASSES = {"fwd": 2, "fwd+bwd": 5, "copy": 2}


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    w = terminalreporter.write_line
    w("")
    w("safemax kernel summary: median times; 'vs' = other impl's time / fused time; GB/s over the "
      "bytes that must move; % of the copy bandwidth into a reused / a fresh buffer")
    w(f"{'device':6} {'shape':13} {'mode':8} {'fused':>9} {'eager':>9} {'compile':>9} "
      f"{'vs eager':>8} {'vs comp.':>8} {'GB/s':>6} {'copy GB/s':>13} {'% copy':>11}")
    for (device, shape), med in sorted(MEDIANS.items()):
        elements, elem_bytes = SIZES[(device, shape)]
        gb = lambda mode: TENSOR_PASSES[mode] * elements * elem_bytes / 1e9  # noqa: E731
        copies = [med.get(("copy", into)) for into in ("reused", "fresh")]
        copy_gbs = [gb("copy") / c if c else None for c in copies]
        for mode in ("fwd", "fwd+bwd"):
            fused = med.get(("fused", mode))
            if fused is None:
                continue
            eager, comp = med.get(("eager", mode)), med.get(("compiled", mode))
            gbs = gb(mode) / fused
            ms = lambda s: f"{s * 1e3:7.3f}ms" if s else f"{'-':>9}"  # noqa: E731
            ratio = lambda s: f"{s / fused:7.2f}x" if s else f"{'-':>8}"  # noqa: E731
            bw = " / ".join(f"{c:5.1f}" if c else "  -  " for c in copy_gbs)
            pct = " / ".join(f"{100 * gbs / c:3.0f}%" if c else "  - " for c in copy_gbs)
            w(f"{device:6} {shape:13} {mode:8} {ms(fused)} {ms(eager)} {ms(comp)} "
              f"{ratio(eager)} {ratio(comp)} {gbs:6.1f} {bw:>13} {pct:>11}")
