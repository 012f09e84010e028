"""The bar's arithmetic: where a curve meets and holds it, and what a measurement can resolve."""
import math

import pytest

from safemax.evaluation.stats import cell, proportion_se, t_interval, wilson
from safemax.harness.bar import held_step, power


def test_power_says_which_sample_sizes_resolve_the_two_point_bar():
    # the digits (retain ~0.99): 20 a kept class cannot, 100 can; Fashion-MNIST (~0.86) needs ~500
    assert not power(dict(n_per_class=20), 0.99)["resolves_bar"]
    assert power(dict(n_per_class=100), 0.99)["resolves_bar"]
    assert not power(dict(n_per_class=100), 0.86)["resolves_bar"]
    assert power(dict(n_per_class=500), 0.86)["resolves_bar"]
    p = power(dict(n_per_class=100), 0.86)
    assert p["retain_samples"] == 900
    assert p["retain_se"] == pytest.approx(math.sqrt(0.84 * 0.16 / 900))   # at the floor, 2 points under
    assert p["difference_se"] == pytest.approx(p["retain_se"] * math.sqrt(2))
    assert power(dict(n_per_class=20), 1.0)["retain_se"] > 0   # a perfect original still has a noisy floor


def test_intervals():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1 / math.sqrt(3), rel=1e-3)
    assert t_interval([5.0]) == (5.0, None) and cell([]) == "—" and cell([0.5]) == "0.500"
    low, high = wilson(0, 300)
    assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(0.0126, abs=5e-4)
    assert proportion_se(0.5, 100) == 0.05 and proportion_se(0.5, 0) == float("inf")


def test_held_step_is_the_first_step_from_which_every_point_meets_the_bar():
    curve = [dict(step=s, fa=fa, retain_acc=r) for s, fa, r in
             ((0, 1.0, 0.99), (10, 0.0, 0.96), (20, 0.0, 0.98), (30, 0.0, 0.96), (40, 0.0, 0.98), (50, 0.0, 0.99))]
    assert held_step(curve, 0.97) == (20, 40)
    assert held_step(curve, 0.97, leeway=0.01) == (20, 20)   # a later dip of one leeway is forgiven
    assert held_step(curve, 1.0) == (None, None)
