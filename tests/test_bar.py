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


def test_a_light_step_is_confirmed_by_a_heavy_measurement_once_per_streak():
    from safemax.harness.bar import (
        Confirmer,
        confirmed_held,
        needed_per_class,
        summarise,
    )
    heavy_results = iter([dict(fa=0.0, retain_acc=0.90), dict(fa=0.0, retain_acc=0.97),
                          dict(fa=0.0, retain_acc=0.98)])
    calls = []

    def evaluate(unet, **kw):
        calls.append(kw)
        return next(heavy_results)

    c = Confirmer(dict(n_per_class=100), floor=0.95, light_floor=0.97)
    light = [(0, 1.0, 0.99), (10, 0.0, 0.98), (20, 0.0, 0.98), (30, 0.0, 0.99), (40, 0.0, 0.96),
             (50, 0.0, 0.98), (60, 0.0, 0.99)]
    curve = [dict(step=s, seconds=float(s), fa=fa, retain_acc=r, frechet=1.0) for s, fa, r in light]
    for point in curve[1:]:
        c(None, point, evaluate)
    # 10: heavy fails (0.90); 20: heavy meets; 30: no need; 40: light fails; 50: heavy again; 60: no need
    assert [p.get("confirm", {}).get("meets") for p in curve] == [None, False, True, None, None, True, None]
    assert len(calls) == 3 and calls[0] == dict(n_per_class=100)
    assert confirmed_held(curve, 0.97) == 5   # light held from 50, confirmed there
    out = summarise(dict(curve=curve, prep_seconds=0.0, train_seconds=60.0), 0.97)
    assert out["steps_to_forget_held"] == 50 and out["steps_to_forget_confirmed"] == 50
    resumed = Confirmer(dict(n_per_class=100), floor=0.95, light_floor=0.97)
    resumed.replay(curve[:3])
    assert resumed.ok   # a resumed run does not confirm again what its saved curve confirmed
    assert "steps_to_forget_confirmed" not in summarise(
        dict(curve=[{k: v for k, v in p.items() if k != "confirm"} for p in curve], prep_seconds=0.0,
             train_seconds=60.0), 0.97)
    for acc in (0.996, 0.86):   # the fewest samples per kept class that resolve the bar
        n = needed_per_class(acc)
        assert power(dict(n_per_class=n), acc)["resolves_bar"] and not power(dict(n_per_class=n - 1), acc)["resolves_bar"]
    assert needed_per_class(0.996) == 53 and needed_per_class(0.86) == 299


def test_compare_confirms_with_a_heavy_measurement(tmp_path):
    import json

    from safemax.cli import main
    out = tmp_path / "c"
    assert main(["compare", "--quick", "--no-attack", "--methods", "safemax", "--confirm", "auto", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["confirm_per_class"] == 2 and "confirm" in report["original"]
    assert "steps_to_forget_confirmed" in report["methods"]["safemax"] or not any(
        "confirm" in p for p in report["methods"]["safemax"]["curve"])
    assert "| method | held: steps | confirmed: steps | s |" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="--confirm 'lots'"):
        main(["compare", "--quick", "--confirm", "lots", "--out", str(out)])
