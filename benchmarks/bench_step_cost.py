"""Smoke test of benchmarks/step_cost.py: it runs and writes its result, at tiny settings.
Untimed — the benchmark prints its ratios; a speed is never asserted (it depends on the machine)."""
import json

import step_cost  # benchmarks/ is on the path when pytest collects this file


def test_the_step_cost_benchmark_runs(tmp_path, capsys):
    result = step_cost.main(["--reps", "2", "--batch-size", "2", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "step_cost.json").read_text())
    for r in (result, written):
        assert set(r["seconds_per_step"]) == set(step_cost.TRAINERS)
        assert r["ratio_to_plain"]["plain"] == 1.0
        assert r["counted_steps"] == {n: 2 for n in step_cost.TRAINERS}
    assert "vs plain" in capsys.readouterr().out


def test_the_step_cost_benchmark_measures_a_subset_and_the_separate_contrast_is_the_same_loss(tmp_path):
    """``--trainers`` measures those (and plain); the kept-contrast step batched into the step's
    forwards and the one on forwards of its own take the same steps (their histories agree)."""
    result = step_cost.main(["--reps", "1", "--batch-size", "2", "--trainers", "kept-contrast",
                             "kept-contrast-separate"])
    assert set(result["seconds_per_step"]) == {"plain", "kept-contrast", "kept-contrast-separate"}
    trainers = step_cost.build(2)
    a, b = trainers["kept-contrast"], trainers["kept-contrast-separate"]
    for _ in range(3):
        a.run(2), b.run(2)
    for x, y in zip(a.u.history, b.u.history):
        for key in ("loss", "kept_bowl", "forget_nats"):
            assert abs(x[key] - y[key]) <= 1e-4 * max(1.0, abs(y[key])), (key, x[key], y[key])


def test_the_step_cost_benchmark_prices_compare_specs(tmp_path):
    """``--specs`` times `safemax compare`'s methods as compare builds them (their lr, their
    objects) beside the plain step, and their preparations."""
    result = step_cost.main(["--reps", "1", "--batch-size", "2", "--specs", "safemax", "salun:lr=5e-4,retain_weight=1",
                             "--out", str(tmp_path)])
    assert set(result["seconds_per_step"]) == {"plain", "safemax", "salun:lr=5e-4,retain_weight=1"}
    assert result["prep_seconds"]["salun:lr=5e-4,retain_weight=1"] > 0   # its saliency mask
    trainers = step_cost.build_specs(2, "digits", ["salun:lr=5e-4,retain_weight=1", "safemax"])
    salun, safemax = trainers["salun:lr=5e-4,retain_weight=1"].u, trainers["safemax"].u
    assert (salun.lr, salun.method.retain_weight, safemax.lr) == (5e-4, 1.0, 5e-4)
