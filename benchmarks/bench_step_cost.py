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
