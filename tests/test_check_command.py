"""``safemax check``: a recorded result re-run smaller agrees with itself; a doctored figure is
found out (exit 1); a file it cannot re-run is told in one line (exit 2); the tolerance follows
from the sample sizes. Tiny recorded results (seconds), made here."""
import json
import math

import pytest

from safemax.cli import main
from safemax.cli.check import agreement
from safemax.harness import demo


@pytest.fixture(scope="module")
def recorded_demo(tmp_path_factory):
    """A tiny demo: 10 steps at batch 16 (forgets the 3 on 16 samples), DDIM-5."""
    out = tmp_path_factory.mktemp("demo")
    demo.run(forget=3, steps=10, batch_size=16, out=str(out), eval_every=0, n_forget=16, n_per_class=2,
             num_inference_steps=5, progress=False)
    return out


def test_a_quick_rerun_of_a_recorded_demo_agrees(recorded_demo, capsys):
    assert main(["check", str(recorded_demo / "report.json"), "--size", "quick"]) == 0
    text = capsys.readouterr().out
    assert "measuring 16 forget samples and 2 per kept class with DDIM-5 (recorded: 16 and 2, from report.json)" in text
    assert "after: forget accuracy " in text and "after: retain accuracy" in text and " NO" not in text
    assert "6 of 6 figures agree" in text


def test_a_doctored_figure_does_not_agree(recorded_demo, tmp_path, capsys):
    report = json.loads((recorded_demo / "report.json").read_text())
    assert report["after"]["fa"] <= 1 / 16, "the tiny demo no longer forgets: the doctored figure would be near it"
    report["after"]["fa"] = 0.9
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "report.md").write_text((recorded_demo / "report.md").read_text())
    assert main(["check", str(tmp_path / "report.json")]) == 1
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("after: forget accuracy "))
    assert "0.900 (16)" in row and row.rstrip().endswith("NO")
    assert "1 of 6 figures do not agree: after: forget accuracy" in text


def test_a_comparison_rerun_at_its_steps_agrees(tmp_path, capsys):
    main(["compare", "--quick", "--methods", "safemax", "--no-attack", "--out", str(tmp_path)])
    capsys.readouterr()
    assert main(["check", str(tmp_path / "results.json")]) == 0
    text = capsys.readouterr().out
    assert "re-running safemax to step 2" in text and "original: forget accuracy" in text
    assert "safemax at step 2: retain accuracy" in text and "figures agree" in text


@pytest.mark.parametrize("content, says", [
    (None, "no such file"),
    ("{", "not JSON"),
    ("[1, 2]", "not a result safemax check can re-run (it knows the demo's report.json"),
])
def test_a_file_it_cannot_rerun_is_told_in_one_line(tmp_path, capsys, content, says):
    from safemax.cli import cli
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert cli(["check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert says in err[0] and err[0].startswith("safemax: error: ")
    assert err[1:] == ["(SAFEMAX_TRACEBACK=1 shows where it was raised)"]   # every command's hint line


def test_the_tolerance_follows_from_the_sample_sizes():
    z = 1.959964
    ok, low, high = agreement(0.0, 100, 0.0, 20, z)
    assert ok and low == 0.0 and 0.2 < high < 0.3   # 0 of 20: Wilson [0, 0.16]; the recorded 100 reach it from 0.23
    ok_small, _, high_small = agreement(0.0, 100, 0.0, 5, z)
    assert ok_small and high_small > high   # fewer re-run samples: a wider tolerance
    ok_big, _, high_big = agreement(0.0, 100, 0.0, 1000, z)
    assert high_big < high
    assert not agreement(0.9, 100, 0.0, 20, z)[0]   # forget accuracy 0.9 recorded, 0 of 20 now
    assert agreement(0.05, 100, 0.0, 20, z)[0]      # 5 of 100 against 0 of 20: within the noise
    ok, low, high = agreement(0.5, 100, 0.5, 20, z)
    assert ok and low < 0.5 < high and math.isclose(0.5 - low, high - 0.5, abs_tol=1e-6)   # symmetric at 0.5
    for rec in (low - 0.01, high + 0.01):
        assert not agreement(rec, 100, 0.5, 20, z)[0]   # the range printed is the range that agrees
    for rec in (low + 0.01, high - 0.01):
        assert agreement(rec, 100, 0.5, 20, z)[0]


def test_an_older_demo_report_gives_its_sizes_in_report_md(tmp_path):
    """A report.json from before the demo recorded its measurement's sizes: report.md says them."""
    from safemax.cli.check import _demo_sizes

    (tmp_path / "report.md").write_text("Samples: DDIM 50 steps, 100 of digit 3, 30 of each other class, same seed")
    assert _demo_sizes(str(tmp_path / "report.json"), {}) == (100, 30, 50, "report.md")
    recorded = dict(n_forget=8, n_per_class=2, num_inference_steps=4)
    assert _demo_sizes(str(tmp_path / "report.json"), recorded) == (8, 2, 4, "report.json")
