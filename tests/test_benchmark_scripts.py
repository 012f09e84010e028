"""The benchmark scripts run end to end (tiny settings, seconds): benchmarks/classes.py →
benchmarks/stopping.py on its runs, retain_dip.py, probes.py, tune_baselines.py, first_steps.py,
class_embedding.py, halting.py, robust_attack.py, memory.py, step_cost.py and tau_sweep.py; and
every script that forgets a class of an embedded model sets it up through ``harness.task.Task``.
(flow_digits.py, flow_halt_probe.py: tests/test_flow_digits.py; concept_digits.py:
tests/test_stable_diffusion.py; memory_accounting.py: tests/test_memory_accounting.py; concept_erasure.py:
tests/test_erase.py; concept_drift.py: tests/test_erase.py; confirm_held.py: test_confirm_held_script;
pipeline_halting.py, guided_residuals.py: tests/test_sd3_pipeline.py.)"""
import json
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def run(script, *args):
    done = subprocess.run([sys.executable, os.path.join(BENCH, script), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_classes_then_stopping(tmp_path):
    out = tmp_path / "classes"
    tiny = ["--steps", 4, "--ddim-steps", 4, "--n-forget", 6, "--n-per-class", 1, "--curve-every", 2, "--curve-forget", 4,
            "--curve-per-class", 1]
    run("classes.py", "--model", "digits", "--classes", 3, 5, "--seeded", 3, "--seeds", 1, *tiny, "--out", out)
    runs = sorted(os.listdir(out / "runs"))
    assert runs == ["class3-seed0.json", "class3-seed1.json", "class5-seed0.json"]
    r = json.loads((out / "runs" / "class3-seed0.json").read_text())
    assert [p["step"] for p in r["curve"]] == [0, 2, 4] and len(r["history"]) == 4
    assert {"forget_nats", "retain_nats"} <= set(r["history"][0])
    md = (out / "classes.md").read_text()
    assert "Mean ± 95% t-interval over the 2 classes" in md and "2 seeds of the classes 3" in md
    assert "| held step, by seed |" in md and "Over these 2 runs: retain accuracy" in md
    # a second call reuses the finished runs (nothing is recomputed: the file is untouched)
    stamp = os.path.getmtime(out / "runs" / "class5-seed0.json")
    run("classes.py", "--model", "digits", "--classes", 3, 5, "--seeded", 3, "--seeds", 1, *tiny, "--out", out)
    assert os.path.getmtime(out / "runs" / "class5-seed0.json") == stamp
    text = run("stopping.py", out, "--out", tmp_path / "stop")
    assert "Replayed on 3 runs (digits)" in text and "nats:0.01:5 (default)" in text
    assert len(json.loads((tmp_path / "stop" / "stopping.json").read_text())) == 15
    assert "| classes | forget | " in text and "| classes | retain | " in text   # which side holds it back
    # chosen on class 3 alone, reported on the held-out class 5 beside the default
    text = run("stopping.py", out, "--out", tmp_path / "held", "--choose-on", "digits:3")
    record = json.loads((tmp_path / "held" / "held-out.json").read_text())
    assert record["chosen_on"] == dict(model="digits", classes=[3]) and record["default"] == "nats:0.01:5"
    assert [g["name"] for g in record["groups"]] == ["digits 3–3 (chosen on)", "digits 5–5 (held out)"]
    assert all(record["chosen"] in [r["rule"] for r in g["rules"]] for g in record["groups"])
    assert "## Chosen on digits classes 3–3, reported on the rest" in text
    assert record["provenance"]["machine"]["threads"] >= 1


def test_the_held_out_rule_is_the_cheapest_of_those_that_stop_on_a_finished_model():
    sys.path.insert(0, BENCH)
    try:
        from stopping import choose, parse_classes
    finally:
        sys.path.remove(BENCH)
    replays = [dict(rule="fast", met_at_stop=5, missed=0, mean_stop=20.0),
               dict(rule="safe", met_at_stop=7, missed=0, mean_stop=70.0),
               dict(rule="safe-but-slow", met_at_stop=7, missed=0, mean_stop=90.0),
               dict(rule="misses", met_at_stop=7, missed=2, mean_stop=60.0)]
    assert choose(replays)["rule"] == "safe"
    assert parse_classes("digits:0-2,7") == ("digits", {0, 1, 2, 7})
    import pytest
    with pytest.raises(SystemExit, match="write MODEL:CLASSES"):
        parse_classes("digits")


def test_which_side_holds_the_stopping_rule_back():
    """Each side is read on its own with the rule's window and bound (the forget rows' first nats)."""
    sys.path.insert(0, BENCH)
    from stopping import side_step, sides

    from safemax.training.stopping import NatsRule

    # forget nats: 1 at step 1, then 0.5 until step 9, 0.001 after; retain: 0.001 from step 3
    history = [dict(step=i, forget_nats=1.0 if i == 1 else 0.5 if i < 10 else 0.001,
                    retain_nats=0.5 if i < 3 else 0.001) for i in range(1, 31)]
    rule = NatsRule(0.01, 5)
    assert side_step(rule, history, "retain_nats") == 7 and side_step(rule, history, "forget_nats") == 14
    res = sides([dict(history=history)], rule)
    assert res["forget_nats"]["under"] == [14] and res["retain_nats"]["under"] == [7]
    assert res["forget_nats"]["relative"] == {25: 0.001} and res["steps"] == 30   # only the steps within the fit


def test_probes_script(tmp_path):
    out = tmp_path / "probes"
    run("probes.py", "--methods", "safemax", "--images", 3, "--n-guided", 2, "--n-seeds", 4,
        "--steps-scale", 0.02, "--ddim-steps", 4, "--t", 300, "--out", out)
    report = json.loads((out / "probes.json").read_text())
    assert list(report["results"]) == ["original", "SAFEMax"]
    assert report["fits"]["SAFEMax"]["steps"] == 2
    assert (out / "guided.png").exists() and (out / "models" / "safemax" / "config.json").exists()


def test_tune_baselines_script(tmp_path):
    """The sweep picks each method's setting by the one rule, then the head to head runs tuned and
    published settings of every method in one `safemax compare` per class (compare's smoke mode)."""
    out = tmp_path / "tuned"
    text = run("tune_baselines.py", "--model", "digits", "--grid", "smoke", "--quick", "--methods", "ga", "sa",
               "--classes", 1, "--out", out)
    assert "## Sweep (class 2)" in text and "## Head to head" in text and "## Per class" in text
    # some methods, one of the planned classes (digits: 1, 5, 8): their own report
    report = json.loads((out / "tuned-sa-ga-class1.json").read_text())
    assert not (out / "tuned.json").exists() and (out / "tuned-sa-ga-class1.md").read_text().startswith("# Tuned baselines")
    assert set(report["chosen"]) == {"ga", "sa"} and report["chosen"]["ga"]["spec"] == "ga:lr=0.0001"
    assert set(report["head_to_head"]) == {"ga/tuned", "ga/published", "sa/tuned", "sa/published"}
    # a tuned setting that is the published one: one row in the table, said so
    assert "| ga | tuned = published: `ga:lr=0.0001` |" in text and "| ga | published:" not in text
    assert (out / "head-to-head" / "class1" / "results.md").exists()
    assert (out / "sweep" / "sa" / "curves.png").exists()
    # the head to head's times priced side by side: each setting's step and preparation, one process
    prices = json.loads((out / "head-to-head" / "prices.json").read_text())
    assert set(prices["seconds_per_step"]) == {"plain", "ga:lr=0.0001", "sa:lr=0.0001,ewc_lambda=10"}
    assert prices["prep_seconds"]["sa:lr=0.0001,ewc_lambda=10"] > prices["prep_seconds"]["ga:lr=0.0001"]   # SA: replay, Fisher
    assert "| held s (priced) |" in text and report["prices"]["settings"]["model"] == "digits"
    assert "| held ±1: steps |" in text and "By *held ±1* the pick" in text
    # --status reads the same files and runs nothing: both sweeps done and picked, the head to head done
    state = run("tune_baselines.py", "--model", "digits", "--grid", "smoke", "--quick", "--methods", "ga", "sa",
                "--classes", 1, "--out", out, "--status")
    assert "ga: 1 of 1 done; tuned: ga:lr=0.0001" in state and "sa: 1 of 1 done; tuned: sa:lr=0.0001,ewc_lambda=10" in state
    assert "head to head, class 1" in state and "not begun" not in state and "under way" not in state
    assert state.rstrip().endswith("left: 0 sweep runs and 0 head-to-head runs (counting any run in progress)")
    # one method again (as a lane sharing the plan runs it): the class's report keeps the other's rows
    run("tune_baselines.py", "--model", "digits", "--grid", "smoke", "--quick", "--methods", "ga",
        "--classes", 1, "--out", out)
    kept = json.loads((out / "head-to-head" / "class1" / "results.json").read_text())["methods"]
    assert set(kept) == {"ga:lr=0.0001", "sa:lr=0.0001,ewc_lambda=10"}


def test_tune_pick_ranks_steps_not_the_load():
    """The sweep's pick: fewest steps to the held bar (ties: Fréchet), whatever the seconds were —
    a grid point run while the cores were busy must not lose for it; the published setting when
    none met the bar."""
    sys.path.insert(0, BENCH)
    from tune_baselines import pick

    def r(spec, held, first, seconds, frechet=5.0):
        return dict(spec=spec, steps_to_forget_held=held, seconds_to_forget_held=seconds if held else None,
                    steps_to_forget=first, seconds_to_forget=seconds if first else None, prep_seconds=10.0,
                    step_seconds=2.0, frechet_final=frechet)
    loaded, quiet = r("a", 50, 25, 400.0), r("b", 75, 25, 160.0)
    assert pick([quiet, loaded], "p")[0] == "a"
    assert "50 steps: 110 s" in pick([quiet, loaded], "p")[1]   # priced at the median times: 10 + 50 x 2
    assert pick([r("a", 50, 25, 1.0, 6.0), r("b", 50, 25, 1.0, 4.0)], "p")[0] == "b"
    assert pick([r("a", None, 75, 1.0), r("b", None, 50, 9.0)], "p")[0] == "b"
    assert pick([r("a", None, None, 1.0)], "p") == ("p", "no setting met the bar: the published one")


def test_tune_sweep_table_says_whether_the_pick_survives_one_sample():
    """The sweep table shows each setting's held ±1 and says whether picking by it would change
    a method's pick (one retain sample's flip must not be what decides a tuned setting)."""
    sys.path.insert(0, BENCH)
    from tune_baselines import pick, sweep_table

    def r(spec, held, loose):
        return dict(spec=spec, steps_to_forget_held=held, steps_to_forget_held_within_one=loose,
                    seconds_to_forget_held=float(held), steps_to_forget=loose, prep_seconds=0.0, step_seconds=1.0,
                    fa_final=0.0, retain_acc_final=0.85, frechet_final=5.0)
    sweep = {"safemax": [r("a", 125, 40), r("b", 100, 100)]}
    costs = {"safemax": {"a": 1.0, "b": 1.0}}
    chosen = {m: pick(rs, "p") for m, rs in sweep.items()}
    loose = {m: pick(rs, "p", held_key="steps_to_forget_held_within_one") for m, rs in sweep.items()}
    assert chosen["safemax"][0] == "b" and loose["safemax"][0] == "a"
    text = "\n".join(sweep_table("fashion-mnist", sweep, chosen, costs, loose))
    assert "| safemax | `a` | 1.00× | 125 | 125.0 | 40 | 40 |" in text
    assert "By *held ±1* the pick would differ — safemax: `a`." in text
    same = "\n".join(sweep_table("fashion-mnist", sweep, chosen, costs, chosen))
    assert "By *held ±1* the picks are the same." in same


def test_tune_published_settings_are_grid_points():
    """Each method's published setting is written as its grid writes it — a tuned setting that is
    the published one is one run in the head to head, not two under two names — and is what the
    method object defaults to."""
    sys.path.insert(0, BENCH)
    from tune_baselines import GRIDS, PUBLISHED, published

    from safemax.harness.compare import parse_method
    for model in ("digits", "fashion-mnist"):
        for m in PUBLISHED:
            assert published(model, m) in GRIDS["small"][m], (model, m)
    assert published("fashion-mnist", "sa") == "sa:lr=0.0001,ewc_lambda=10"
    assert parse_method(published("digits", "salun"))[1] == dict(lr=1e-4, retain_weight=1e-3, mask_fraction=0.5)


def test_tune_pick_weighs_steps_by_their_cost():
    """A setting whose step costs 1.35× (kept_contrast's) is picked by steps × cost: held from 25
    (33.75) beats 40 at cost 1 and loses to 30; priced at the grid's median plain step."""
    sys.path.insert(0, BENCH)
    from tune_baselines import pick

    def r(spec, held, step_seconds):
        return dict(spec=spec, steps_to_forget_held=held, steps_to_forget=held, prep_seconds=0.0,
                    step_seconds=step_seconds, frechet_final=5.0)
    costs = {"kc": 1.35}
    assert pick([r("plain", 40, 2.0), r("kc", 25, 2.7)], "p", costs)[0] == "kc"
    assert pick([r("plain", 30, 2.0), r("kc", 25, 2.7)], "p", costs)[0] == "plain"
    assert pick([r("plain", 30, 2.0), r("kc", 25, 2.7)], "p")[0] == "kc"   # unweighted: fewest steps
    assert "25 steps at 1.35× the step: 68 s" in pick([r("plain", 40, 2.0), r("kc", 25, 2.7)], "p", costs)[1]


def test_tune_step_costs_read_the_measured_ratio(tmp_path):
    """Only kept_contrast points cost more, by the ratio of the measured median steps; a file of
    another model, or none, is refused with the command that measures it."""
    import pytest
    sys.path.insert(0, BENCH)
    from tune_baselines import GRIDS, step_costs
    path = tmp_path / "step_cost.json"
    path.write_text(json.dumps(dict(settings=dict(model="fashion-mnist"),
                                    seconds_per_step={"plain": 3.0, "safemax": 4.0, "kept-contrast": 5.4})))
    grid = GRIDS["small"]["safemax"]
    costs = step_costs("fashion-mnist", grid, str(path))
    assert costs == {spec: 1.35 if "kept_contrast" in spec else 1.0 for spec in grid} and len(grid) == 6
    assert step_costs("fashion-mnist", GRIDS["small"]["salun"], str(tmp_path / "none")) == \
        {spec: 1.0 for spec in GRIDS["small"]["salun"]}   # no kept_contrast point: no file needed
    with pytest.raises(SystemExit, match="measured the fashion-mnist model, not digits"):
        step_costs("digits", grid, str(path))
    with pytest.raises(SystemExit, match="step_cost.py --model fashion-mnist"):
        step_costs("fashion-mnist", grid, str(tmp_path / "none"))


def test_race_weighs_the_steps_by_their_cost():
    """Behind a setting held from step 100 at cost 1, one whose step costs 1.35× can still win only by
    holding before 100 / 1.35 ≈ 74: it is out at its first failed measurement from step 75 on, not
    100; a cheaper one (cost 0.5) keeps running to 200. Unknown settings' costs are refused."""
    import pytest

    from safemax.harness import compare
    ok, bad = dict(fa=0.0, retain_acc=0.9), dict(fa=0.0, retain_acc=0.5)
    done = dict(curve=[dict(step=s, **(ok if s >= 100 else bad)) for s in (0, 25, 50, 75, 100, 125)])
    race = compare.Race.behind([(done, 1.0)], 0.8, 1.35)
    assert race.best == pytest.approx(100 / 1.35)
    assert not race.judge(dict(step=50, **bad)) and race.judge(dict(step=75, **bad)) and race.out_at == 75
    cheap = compare.Race.behind([(done, 1.0)], 0.8, 0.5)
    assert cheap.best == 200 and not cheap.judge(dict(step=175, **bad))
    assert compare.Race.behind([(done, 1.0), (dict(curve=[dict(step=0, **ok)]), 1.35)], 0.8).best == 0
    with pytest.raises(ValueError, match="not compared"):
        compare.run(methods=["ga"], step_costs={"sa": 2.0}, out="/nonexistent")
    with pytest.raises(ValueError, match="positive"):
        compare.run(methods=["ga"], step_costs={"ga": 0.0}, out="/nonexistent")


def test_the_head_to_heads_steps_do_not_drop_a_class_that_never_held_the_bar(monkeypatch):
    """A class where a method never held the bar is counted, not dropped: beside the mean over
    those that held, a lower bound with it at its whole budget."""
    monkeypatch.syspath_prepend(BENCH)
    from tune_baselines import steps_cell
    rs = [dict(steps=500, steps_to_forget_held=100), dict(steps=500, steps_to_forget_held=200),
          dict(steps=500, steps_to_forget_held=None)]
    cell = steps_cell(rs, "steps_to_forget_held")
    assert cell.startswith("150 ± ") and cell.endswith("(2/3); ≥ 267 counting the rest at the budget")
    assert steps_cell(rs[:2], "steps_to_forget_held").endswith("(2/2)")
    assert steps_cell(rs[2:], "steps_to_forget_held") == "never within 500 (0/1)"


def test_the_per_class_table_lists_every_run_once_with_its_dip_and_stop(monkeypatch):
    """The per-class table: one row per run — a tuned setting that is the published one once,
    said so — in class then plan order, with the floor, the lowest retain accuracy after step 0
    and whether the stopping rule's step meets the bar."""
    monkeypatch.syspath_prepend(BENCH)
    from tune_baselines import per_class_table

    def r(spec, forget, curve, stop=None, held=None):
        pts = [dict(step=s, fa=fa, retain_acc=ra) for s, fa, ra in curve]
        return dict(spec=spec, forget=forget, bar=dict(retain_acc_min=0.8), curve=pts, stop_rule=stop,
                    steps_to_forget=held, steps_to_forget_held=held, steps_to_forget_held_within_one=held,
                    fa_final=pts[-1]["fa"], retain_acc_final=pts[-1]["retain_acc"], frechet_final=1.0,
                    attack=[dict(name="weak", fa_after=0.5, fa_digits_after=0.5)])
    curve = [(0, 1.0, 0.82), (5, 0.0, 0.1), (10, 0.0, 0.85)]
    rows = {("safemax", "tuned"): [r("safemax:a", 5, curve, dict(step=6), held=10),
                                   r("safemax:a", 3, curve, dict(step=None), held=10)],
            ("safemax", "published"): [r("safemax:b", 5, curve, dict(step=3)), r("safemax:b", 3, curve, dict(step=3))],
            ("ga", "tuned"): [r("ga:x", 5, curve), r("ga:x", 3, curve)],
            ("ga", "published"): [r("ga:x", 5, curve), r("ga:x", 3, curve)]}
    lines = per_class_table("digits", rows, ["weak", "strong"])
    body = [line for line in lines if line.startswith("| 3") or line.startswith("| 5")]
    assert len(body) == 6 and all(line.startswith("| 3") for line in body[:3])
    assert [line.split(" | ")[1] for line in body[:3]] == ["safemax", "safemax", "ga"]
    assert "tuned = published: `ga:x`" in body[2] and sum("ga:x" in line for line in lines) == 2
    first = body[3].split(" | ")   # class 5, SAFEMax tuned: stopped at 6, the measurement at 10 meets the bar
    assert first[0] == "| 5, floor 0.800" and first[3:8] == ["10", "10", "10", "6 (met)", "0.100"]
    assert body[4].split(" | ")[6] == "3 (not met)" and body[0].split(" | ")[6] == "did not stop"
    assert body[2].split(" | ")[6] == "—" and body[2].endswith("| 0.50 | — |")
    # a damaged sample called none of the classes: FA over the classes only, in brackets
    rows["ga", "tuned"][0]["attack"] = [dict(name="weak", fa_after=0.0, fa_digits_after=0.67)]
    assert [line for line in per_class_table("digits", rows, ["weak"]) if line.startswith("| 5")][2].endswith(
        "| 0.00 (0.67) |")


def test_tune_report_names_say_which_part_of_the_plan_they_hold():
    sys.path.insert(0, BENCH)
    from tune_baselines import report_name

    every = ["safemax", "salun", "sa", "ga"]
    assert report_name(every, [1, 5, 8], [1, 5, 8]) == "tuned" and report_name(every) == "tuned"
    assert report_name(["ga", "salun"], [1, 5, 8], [1, 5, 8]) == "tuned-salun-ga"   # the published order
    assert report_name(["salun"], [2, 6], [2, 6, 9]) == "tuned-salun-class2-6"   # a lane's share of the classes
    assert report_name(every, [9], [2, 6, 9]) == "tuned-class9"


def test_stopping_rule_replayed_on_a_comparisons_run():
    """compare keeps where SAFEMax's label-free rule would have stopped (replayed on the fit's
    history), and the head to head says how often the measurement there meets the bar."""
    sys.path.insert(0, BENCH)
    from tune_baselines import stop_cells

    from safemax.harness.compare import stop_rule_replay
    from safemax.training.stopping import NatsRule

    # forget nats 1 at the first step, both sides 0.001 from step 4 on: the 5-step window is under
    # 0.01 x 1 once steps 4..8 are in it
    history = [dict(step=i, seconds=2.0 * i, forget_nats=1.0 if i == 1 else 0.5 if i < 4 else 0.001,
                    retain_nats=0.001) for i in range(1, 21)]
    assert stop_rule_replay(history) == dict(rule="nats:0.01:5", step=8, train_seconds=16.0)
    assert stop_rule_replay(history, NatsRule(0.01, 20))["step"] is None   # never fires
    assert stop_rule_replay([dict(step=1, seconds=1.0, loss=2.0)]) is None   # a baseline: no nats
    bar = dict(fa_max=0.01, retain_acc_min=0.8)
    curve = [dict(step=s, fa=0.0, retain_acc=a) for s, a in ((0, 0.9), (5, 0.5), (10, 0.9), (15, 0.9))]
    run = lambda stop: dict(spec="safemax", bar=bar, curve=curve, stop_rule=dict(rule="nats:0.01:5", step=stop))  # noqa: E731
    # stops at 8 (the measurement at 10 meets the bar), at 3 (5 does not), never
    assert stop_cells([run(8), run(3), run(None)]) == ["6 ± 32 (2/3 stopped; bar met there: 1)"]
    price = dict(prep_seconds={"safemax": 1.0}, seconds_per_step={"safemax": 2.0})
    assert stop_cells([run(8)], price) == ["8 (1/1 stopped; bar met there: 1)", "17.0"]
    assert stop_cells([dict(spec="ga", stop_rule=None)], price) == ["—", "—"]


def test_step_cost_on_fashion_mnist_runs_the_sweeps_settings(tmp_path, fashion_mnist_dir):
    """`step_cost.py --model fashion-mnist` times the sweep's SAFEMax: the sneaker, lr 1e-4, half
    the forget rows' x_0 Gaussian (what `tune_baselines.step_costs` reads)."""
    run("step_cost.py", "--model", "fashion-mnist", "--reps", 1, "--batch-size", 2, "--trainers", "kept-contrast",
        "--out", tmp_path)
    written = json.loads((tmp_path / "step_cost.json").read_text())
    assert written["settings"] | dict(lr=1e-4, forget=[7], gaussian_fraction=0.5, model="fashion-mnist") == written["settings"]
    assert set(written["seconds_per_step"]) == {"plain", "kept-contrast"}


def test_retain_dip_script(tmp_path):
    out = tmp_path / "dip"
    text = run("retain_dip.py", "--smoke", "--classes", 3, "--variants", "warmup0", "gaussian0.5", "--out", out)
    assert "| warmup0 | 3 |" in text and "| gaussian0.5 | 3 |" in text
    r = json.loads((out / "gaussian0.5" / "runs" / "class3-seed0.json").read_text())
    assert r["gaussian_fraction"] == 0.5 and r["steps"] == 2


def test_first_steps_script(tmp_path):
    out = tmp_path / "first"
    text = run("first_steps.py", "--smoke", "--classes", 3, "--ablation-classes", 3,
               "--variants", "default", "fisher1e4", "lookahead", "hinge0.1", "project-retain", "rows-first", "--out", out)
    assert "| conv/linear | 941,632 |" in text and "| all, random signs |" in text
    for v in ("default", "fisher1e4", "lookahead", "hinge0.1", "project-retain", "rows-first"):
        r = json.loads((out / "runs" / f"{v}-class3.json").read_text())
        assert [p["step"] for p in r["points"]] == [0, 1, 2]
    kept = (out / "runs" / "default-class3.json").stat().st_mtime_ns
    run("first_steps.py", "--smoke", "--classes", 3, "--ablation-classes", 3, "--variants", "default", "--out", out)
    assert (out / "runs" / "default-class3.json").stat().st_mtime_ns == kept   # reused, not rerun
    # warm-rows holds the shared weights for its first 20 steps and moves only the class's own
    # offset: the kept classes' samples, hence their accuracy, are the original's bit for bit
    text = run("first_steps.py", "--smoke", "--classes", 3, "--ablation-classes", "--variants", "warm-rows", "sgd0.01",
               "--out", out)
    assert "| conv/linear |" not in text and "| sgd0.01 | 3 |" in text
    warm = json.loads((out / "runs" / "warm-rows-class3.json").read_text())["points"]
    assert [p["step"] for p in warm] == [0, 1, 2] and warm[1]["retain_acc"] == warm[2]["retain_acc"] == warm[0]["retain_acc"]


def test_class_embedding_script(tmp_path):
    out = tmp_path / "ce"
    text = run("class_embedding.py", "--smoke", "--classes", 3, "--sweep-class", 3, "--out", out)
    assert "| 3 | rows |" in text and "| 3 | full |" in text and (out / "forget-samples.png").exists()
    rows = json.loads((out / "runs" / "rows-class3.json").read_text())
    original = json.loads((out / "runs" / "original-class3.json").read_text())
    # the row-only fit cannot touch the kept classes: their samples, hence these numbers, are the original's
    assert rows["after"]["retain_acc"] == original["retain_acc"] and rows["after"]["frechet"] == original["frechet"]
    assert set(rows["attacks"]) == {"weak", "strong", "inversion"}


def test_halting_settings_are_parsed_before_any_fit():
    import importlib.util

    import pytest

    spec = importlib.util.spec_from_file_location("halting", os.path.join(BENCH, "halting.py"))
    halting = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(halting)
    assert halting.parse_setting("real") == dict(gaussian_fraction=0.0)
    assert halting.parse_setting("gaussian:0.25") == dict(gaussian_fraction=0.25)
    assert halting.parse_setting("data-free:1.0") == dict(gaussian_fraction=1.0)
    assert halting.parse_setting("original") is None   # the model before any fit
    for gone in ("gaussian:0.25@0.1", "gaussian:0.75+0.25"):   # settings that left the code
        with pytest.raises(SystemExit, match="left the code after commit ccee319"):
            halting.parse_setting(gone)
    done = subprocess.run([sys.executable, os.path.join(BENCH, "halting.py"), "--settings", "real", "gauss:0.5",
                           "--out", "/nonexistent/never"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown setting 'gauss:0.5'" in done.stderr


def test_robust_attack_retrain_row_checks_its_model(tmp_path):
    """robust_attack.py and probes.py --retrained DIR: the reference model must be one trained
    without the class forgotten (its training.json says which); another is refused before any
    measurement."""
    import safemax.zoo.train as train

    train.train_unet("digits", steps=1, batch_size=4, exclude=[5], work=str(tmp_path / "w"),
                     out=str(tmp_path / "u"), checkpoint_minutes=1e9)
    done = subprocess.run([sys.executable, os.path.join(BENCH, "robust_attack.py"), "--methods", "retrain",
                           "--retrained", tmp_path / "u", "--forget", "3", "--out", tmp_path / "r"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "trained without [5], not [3]" in done.stderr
    done = subprocess.run([sys.executable, os.path.join(BENCH, "robust_attack.py"), "--methods", "retrain",
                           "--out", tmp_path / "r"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--methods retrain needs --retrained DIR" in done.stderr
    done = subprocess.run([sys.executable, os.path.join(BENCH, "probes.py"), "--methods", "retrain",
                           "--retrained", tmp_path / "u", "--forget", "3", "--out", tmp_path / "p"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "trained without [5], not [3]" in done.stderr


def test_robust_attack_table_has_intervals_over_seeds(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(BENCH)   # (it reads classes.py's intervals, as run from benchmarks/)
    spec = importlib.util.spec_from_file_location("robust_attack", os.path.join(BENCH, "robust_attack.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def row(method, fa_strong, seed, steps=100, seconds=10.0):
        return dict(method=method, seed=seed, fa=0.0, retain_acc=0.99, frechet=3.0, gaussian_std=0.8,
                    steps=steps, train_seconds=seconds,
                    attacks=[dict(name="strong", fa_after=fa_strong, fa_classes_only_after=fa_strong + 0.1)])

    text = module.table([row("safemax", 0.5, 0), row("safemax", 0.7, 1, seconds=20.0),
                         row("retrain", 0.4, 0, steps=0, seconds=3600.0)], ["strong"])
    lines = text.splitlines()
    assert lines[0] == "| method | seeds | steps | fit s | FA | retain acc | Fréchet | forget std | strong |"
    # two seeds: mean ± t-interval (t_0.975,1 = 12.71, sd 0.1414, /√2 → 1.27); one seed: the value
    # in brackets: the mean over the data set's classes only (a damaged sample may be "not a digit")
    assert lines[2] == "| safemax | 2 | 100 | 15 | 0.00 ± 0.00 | 0.990 ± 0.000 | 3.00 ± 0.00 | 0.80 ± 0.00 | 0.60 ± 1.27 (0.70) |"
    assert lines[3] == "| retrain | 1 |  | 3,600 | 0.00 | 0.990 | 3.00 | 0.80 | 0.40 (0.50) |"
    # the same method at another step count is a row of its own, not pooled with the first
    text = module.table([row("safemax", 0.5, 0), row("safemax", 0.7, 0, steps=200, seconds=20.0)], ["strong"])
    assert text.splitlines()[2:] == ["| safemax | 1 | 100 | 10 | 0.00 | 0.990 | 3.00 | 0.80 | 0.50 (0.60) |",
                                     "| safemax | 1 | 200 | 20 | 0.00 | 0.990 | 3.00 | 0.80 | 0.70 (0.80) |"]


def test_robust_attack_takes_compare_method_specs(monkeypatch):
    """robust_attack.py --methods: compare's specs (baselines with their options), steps=N per
    method; a bad spec is refused before any fit."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("robust_attack", os.path.join(BENCH, "robust_attack.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(BENCH)
    spec.loader.exec_module(module)
    split = module.split_spec
    assert split("salun:retain_weight=1,steps=200", "", 100) == ("salun", "retain_weight=1", 200)
    assert split("sa", "", 100) == ("sa", "", 100)
    assert split("safemax-robust", "attack_radius=1", 100) == ("safemax-robust", "attack_radius=1", 100)
    assert split("safemax-robust:attack_radius=2", "attack_radius=1", 100) == ("safemax-robust", "attack_radius=2", 100)
    done = subprocess.run([sys.executable, os.path.join(BENCH, "robust_attack.py"), "--methods", "salun:bogus=1",
                           "--out", "/nonexistent/never"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "bogus is not a setting of method 'salun'" in done.stderr


def test_robust_attack_lanes_share_one_file(monkeypatch, tmp_path):
    """Two processes under one --name: a row another lane wrote while this one fitted is kept
    (not overwritten), and a row another lane already finished is not fitted again."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("robust_attack", os.path.join(BENCH, "robust_attack.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.syspath_prepend(BENCH)
    spec.loader.exec_module(module)
    path = tmp_path / "shared.json"
    strong = module.parse_attack("strong").resolved(50, 10).record()

    def row(method, seed, steps):
        return dict(method=method, seed=seed, steps=steps, fa=0.0, retain_acc=0.99, frechet=3.0, gaussian_std=0.8,
                    train_seconds=1.0, attacks=[dict(strong, fa_after=0.5, fa_classes_only_after=0.5)])

    fitted = []

    def fake_run(model, forget, parsed, steps, seed, attacks, retrained=None, device="cpu", size=None):
        fitted.append((parsed[0], seed))
        if seed == 0:   # meanwhile the other lane finishes sa at seeds 0 and 1
            saved = json.loads(path.read_text()) if path.exists() else dict(model="digits", forget=3, rows=[])
            saved["rows"] += [row("sa", 0, 100), row("sa", 1, 100)]
            path.write_text(json.dumps(saved))
        return {k: v for k, v in row(parsed[0], seed, steps).items() if k not in ("seed", "steps")}

    monkeypatch.setattr(module, "run", fake_run)
    module.main(["--methods", "safemax", "sa", "--seed", "0", "1", "--attacks", "strong",
                 "--name", "shared", "--out", str(tmp_path)])
    # sa's rows were finished by the other lane before this one reached them: only safemax is fitted
    assert fitted == [("safemax", 0), ("safemax", 1)]
    saved = json.loads(path.read_text())
    assert sorted((r["method"], r["seed"]) for r in saved["rows"]) == [("sa", 0), ("sa", 1), ("safemax", 0), ("safemax", 1)]
    assert saved["seeds"] == [0, 1]


def test_compare_race_stops_only_settings_that_can_no_longer_be_picked(tmp_path, monkeypatch):
    """A sweep ranks its settings by the fewest steps to the held bar. With ``race`` a setting stops
    at its first measurement that fails the bar at or after the best finished setting's held step
    (it cannot hold from earlier any more); the rest run their whole budget, and the held steps —
    so the pick — are those of the full sweep."""
    import torch

    import safemax.harness.compare as compare
    monkeypatch.syspath_prepend(BENCH)
    from tune_baselines import pick

    ok, bad = (0.0, 1.0), (1.0, 1.0)   # (FA, retain accuracy) at each measurement: steps 1 2 3 4 6
    script = {"ga:lr=1e-5": [bad, bad, ok, ok, ok],    # held from 3: the mark
              "ga:lr=2e-5": [ok, bad, ok, bad, ok],    # fails at 4 >= 3: out there
              "ga:lr=3e-5": [bad, ok, ok, ok, ok],     # held from 2: runs on, and moves the mark to 2
              "ga:lr=4e-5": [ok, bad, ok, ok, ok]}     # fails at 2 >= 2: out there (held from 3 in full)
    state = {"spec": None, "k": 0}   # the setting under way (None: the original model), its measurement
    real_run_method = compare._run_method

    def run_method(spec, *a, **k):
        state.update(spec=spec, k=0)
        return real_run_method(spec, *a, **k)

    def scripted(unet, return_samples=False, **k):
        k = state["k"] - 1 if return_samples else state["k"]   # the final measurement repeats the last
        fa, acc = (1.0, 1.0) if state["spec"] is None else script[state["spec"]][k]
        state["k"] += not return_samples
        m = dict(fa=fa, fa_digits=fa, retain_acc=acc, frechet=1.0, gaussian_std=0.5, gaussian_mean=0.0, entropy=0.0)
        if return_samples:   # the original's, and each run's final measurement (a repeat of its last)
            m["samples"] = {"forget": torch.zeros(4, 1, 16, 16)}
        return m

    monkeypatch.setattr(compare, "evaluate", scripted)
    monkeypatch.setattr(compare, "_run_method", run_method)
    settings = dict(forget=3, methods=list(script), steps=6, eval_every=2, batch_size=4, attack=False,
                    n_forget=4, n_per_class=1, num_inference_steps=2, progress=False)
    full = compare.run(out=str(tmp_path / "full"), **settings)["methods"]
    state.update(spec=None)
    raced = compare.run(out=str(tmp_path / "raced"), race=True, **settings)["methods"]
    assert {s: r["raced_out_at"] for s, r in raced.items()} == \
        {"ga:lr=1e-5": None, "ga:lr=2e-5": 4, "ga:lr=3e-5": None, "ga:lr=4e-5": 2}
    assert [raced[s]["steps"] for s in script] == [6, 4, 6, 2] and all(r["steps"] == 6 for r in full.values())
    assert "(out of the race at step 4) |" in (tmp_path / "raced" / "results.md").read_text()
    assert [full[s]["steps_to_forget_held"] for s in script] == [3, 6, 2, 3]
    assert [raced[s]["steps_to_forget_held"] for s in script] == [3, None, 2, None]
    results = lambda rs: [dict(spec=s, **r) for s, r in rs.items()]
    assert pick(results(raced), "ga")[0] == pick(results(full), "ga")[0] == "ga:lr=3e-5"
    # keep_finished: a comparison of one setting reports the folder's other finished runs of the
    # same comparison — not those the race stopped (outside a race), nor another comparison's
    state.update(spec=None)
    cache = tmp_path / "raced" / "methods" / "ga_lr_3e-5.json"
    other = json.loads(cache.read_text())
    other["config"].update(method="ga:lr=5e-5", seed=1)
    (tmp_path / "raced" / "methods" / "ga_lr_5e-5.json").write_text(json.dumps(other))
    kept = compare.run(out=str(tmp_path / "raced"), resume=True, keep_finished=True,
                       **dict(settings, methods=["ga:lr=3e-5"]))["methods"]
    assert list(kept) == ["ga:lr=1e-5", "ga:lr=3e-5"] and state["spec"] is None   # reused, nothing run
    assert "gradient ascent (lr=1e-5)" in (tmp_path / "raced" / "results.md").read_text()
    # the rows' order does not depend on which setting the call ran (two lanes write one report)
    other_lane = compare.run(out=str(tmp_path / "raced"), resume=True, keep_finished=True,
                             **dict(settings, methods=["ga:lr=1e-5"]))["methods"]
    assert list(other_lane) == list(kept)
    (tmp_path / "raced" / "methods" / "ga_lr_5e-5.json").unlink()
    # a raced-out result is reused only by another race: a plain comparison runs it in full
    again = compare.run(out=str(tmp_path / "raced"), resume=True, **settings)["methods"]
    assert again["ga:lr=2e-5"]["steps"] == 6 and again["ga:lr=1e-5"]["steps"] == 6
    monkeypatch.undo()   # the command line: `safemax compare --race` on the real model
    from safemax.cli import main
    assert main(["compare", "--quick", "--no-attack", "--race", "--methods", "ga", "safemax", "--out", str(tmp_path / "cli")]) == 0
    written = json.loads((tmp_path / "cli" / "results.json").read_text())["methods"]
    assert "raced_out_at" in written["ga"]
    # the stopping rule replayed on SAFEMax's history (2 steps: its 5-step window never filled), none for GA
    assert written["safemax"]["stop_rule"] == dict(rule="nats:0.01:5", step=None, train_seconds=None)
    assert written["ga"]["stop_rule"] is None


def test_tau_sweep_writes_its_table_and_plot(tmp_path):
    """benchmarks/tau_sweep.py at tiny size: the original, one τ and the data-free run, measured."""
    out = tmp_path / "sweep"
    run("tau_sweep.py", "--taus", 0.5, "--steps", 1, "--batch-size", 2, "--n-forget", 2, "--n-per-class", 1,
        "--ddim-steps", 2, "--out", out)
    result = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["original", "τ=0.5", "τ=1.0 data-free"]
    assert result["rows"][1]["t_min"] == 500 and result["provenance"]["commit"] is not None
    assert (out / "sweep.md").exists() and (out / "sweep.png").exists()


def test_halting_script(tmp_path):
    out = tmp_path / "h"
    text = run("halting.py", "--digits", 3, "--settings", "original", "real", "gaussian:0.5", "--steps", 2, "--smoke",
               "--out", out)
    rows = json.loads((out / "halting.json").read_text())
    assert [r["setting"] for r in rows] == ["original", "real", "gaussian:0.5"] and "| gaussian:0.5 | 3 |" in text
    assert "| original | 3 | 0 | — | — | 1 |" in text and rows[0]["train_seconds"] == 0   # measured, not fitted
    rows = rows[1:]
    assert all(r["provenance"]["commit"] for r in rows) and (out / "residuals-3.png").exists()
    assert len(rows[0]["residual_after"]["gaussian"]) == len(rows[0]["residual_before"]["real"])


def test_robust_attack_script(tmp_path):
    out = tmp_path / "r"
    run("robust_attack.py", "--methods", "safemax", "--steps", 2, "--attacks", "weak", "--smoke", "--out", out)
    saved = json.loads((out / "safemax.json").read_text())
    (row,) = saved["rows"]
    assert row["method"] == "safemax" and row["steps"] == 2 and row["provenance"]["commit"]
    assert [a["name"] for a in row["attacks"]] == ["weak"] and 0 <= row["attacks"][0]["fa_after"] <= 1


def test_every_script_sets_its_task_up_through_the_harness():
    """A script that forgets a class of an embedded model builds it with ``harness.task.Task``:
    none loads the classifier, splits the data or builds the Fréchet reference itself."""
    import re

    own = re.compile(r"load_classifier\(|kept_reference\(|split_by_class\(\s*(model_info|info)\b")
    for name in sorted(os.listdir(BENCH)):
        if name.endswith(".py"):
            with open(os.path.join(BENCH, name)) as f:
                found = own.findall(f.read())
            assert not found, f"benchmarks/{name} sets up its task by hand ({found}): use safemax.harness.task.Task"


def test_memory_script(tmp_path):
    """benchmarks/memory.py at its smallest: one configuration of the embedded model, in its own process."""
    out = tmp_path / "m"
    text = run("memory.py", "--models", "embedded", "--configs", "fp32", "--batch", 2, "--out", out)
    (row,) = json.loads((out / "memory.json").read_text())
    assert "error" not in row, row
    assert row["model"] == "embedded" and row["config"] == "fp32" and row["step_seconds"] > 0 and "| embedded" in text


def test_held_out_script(tmp_path):
    out = tmp_path / "h"
    text = run("held_out.py", "--classes", 7, "--quick", "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    (s,) = summary["summaries"]
    assert s["forget"] == 7 and set(s["methods"]) == {"safemax", "sa", "ga", "salun"} and s["heavy"] is not None
    assert "| 7 | SAFEMax |" in text and "Power of the bar's judgement" in text and (out / "prices" / "step_cost.json").exists()
    again = run("held_out.py", "--classes", 7, "--quick", "--summarise", "--out", out)   # tables only, from the files
    assert again in text   # (the run also prints compare's progress before the tables)
    done = subprocess.run([sys.executable, os.path.join(BENCH, "held_out.py"), "--classes", "3", "--out", tmp_path / "x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "report on 5-9" in done.stderr


def test_confirm_held_script(tmp_path):
    """confirm_held.py replays a finished run to its held step and measures it heavy there: the
    replay gives the recorded light measurement (the same fit, bit for bit), and the confirmed step
    is the first heavy measurement that meets the bar. The quick comparison never holds, so its
    recorded curve is marked as holding from step 1 (the true numbers kept to check the replay)."""
    from safemax.harness.compare import run as compare
    from safemax.harness.store import method_cache
    out = tmp_path / "c"
    compare(forget=3, methods=["safemax", "ga"], quick=True, attack=False, out=str(out), progress=False)
    cache = method_cache(str(out), "safemax")
    saved = json.loads(open(cache).read())
    true = {p["step"]: (p["fa"], p["retain_acc"]) for p in saved["result"]["curve"]}
    for p in saved["result"]["curve"][1:]:
        p.update(fa=0.0, retain_acc=1.0)
    open(cache, "w").write(json.dumps(saved))
    report = json.loads((out / "results.json").read_text())
    report["methods"]["safemax"] = saved["result"]
    (out / "results.json").write_text(json.dumps(report))
    text = run("confirm_held.py", "--comparisons", out, "--per-class", 2, "--out", tmp_path / "t")
    answer = json.loads((out / "confirm" / "safemax.json").read_text())
    assert answer["held"] == 1 and answer["per_class"] == 2 and answer["points"]
    for p in answer["points"]:
        assert (p["replayed"]["fa"], p["replayed"]["retain_acc"]) == true[p["step"]]   # the same fit
        meets = p["heavy"]["fa"] <= 0.01 and p["heavy"]["retain_acc"] >= answer["heavy_floor"]
        assert p["meets"] == meets
    assert answer["confirmed"] == next((p["step"] for p in answer["points"] if p["meets"]), None)
    assert [p["step"] for p in answer["points"]] == ([1, 2] if answer["confirmed"] != 1 else [1])
    ga = json.loads((out / "confirm" / "ga.json").read_text())
    assert ga["held"] is None and ga["points"] == [] and "never held" in ga["why"]
    assert "| 3 | SAFEMax |" in text and "| 3 | gradient ascent | never | never held |" in text
    stamp = os.path.getmtime(out / "confirm" / "safemax.json")
    again = run("confirm_held.py", "--comparisons", out, "--per-class", 2, "--summarise", "--out", tmp_path / "t")
    assert again in text and os.path.getmtime(out / "confirm" / "safemax.json") == stamp   # reused, not replayed
    # --specs chooses what is replayed, not what the table lists: the other runs keep their rows
    only = run("confirm_held.py", "--comparisons", out, "--specs", "safemax", "--per-class", 2, "--summarise",
               "--out", tmp_path / "t")
    assert "| 3 | gradient ascent | never | never held |" in only and only == again


def test_held_out_pools_the_classes():
    """held_out.pooled: the mean over the classes where a method was confirmed, and a lower bound
    counting the others at their budget."""
    sys.path.insert(0, BENCH)
    try:
        from held_out import pooled
    finally:
        sys.path.remove(BENCH)
    row = lambda c, t, r: dict(confirmed=c, priced_seconds=t, vs_safemax=r)   # noqa: E731
    summaries = [dict(methods=dict(safemax=row(40, 40.0, 1.0), ga=row(None, None, {">": 6.0}))),
                 dict(methods=dict(safemax=row(60, 60.0, 1.0), ga=row(100, 120.0, 2.0)))]
    p = pooled(summaries)
    assert p["safemax"]["n"] == 2 and p["safemax"]["confirmed"]["mean"] == 50 and p["safemax"]["ratio_at_least"] is None
    assert p["ga"]["n"] == 1 and p["ga"]["vs_safemax"] == dict(mean=2.0, half=None)
    assert p["ga"]["ratio_at_least"]["mean"] == 4.0   # (6 + 2) / 2
