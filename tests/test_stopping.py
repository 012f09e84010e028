"""The label-free stopping rule (safemax.training.stopping) and fit(stop_when=...) (fast)."""
import json

import pytest
from problems import tiny_data as data
from problems import tiny_scheduler as scheduler
from problems import tiny_unet

from safemax import Unlearner
from safemax.cli import main
from safemax.training.stopping import NatsRule, stop_rule

diffusers = pytest.importorskip("diffusers")


def history(forget, retain):
    return [dict(step=i + 1, forget_nats=f, retain_nats=r) for i, (f, r) in enumerate(zip(forget, retain))]


def test_nats_rule_needs_both_sides_near_their_targets():
    rule = NatsRule(ratio=0.1, window=2)
    assert not rule(history([1.0], [0.0]))                       # fewer steps than the window
    assert not rule(history([1.0, 0.5, 0.05], [0.0, 0.0, 0.0]))  # forget mean 0.275 > 0.1
    assert rule(history([1.0, 0.1, 0.05], [0.0, 0.0, 0.1]))      # 0.075 and 0.05 <= 0.1
    # forgetting is done but the kept classes are still off: the dip, not the end
    assert not rule(history([1.0, 0.01, 0.01], [0.0, 0.5, 0.3]))
    assert rule(history([0.0, 0.0], [0.0, 0.0]))                 # nothing was there to forget


def test_stop_rule_parses_the_command_line_syntax():
    assert stop_rule(None) is None
    assert stop_rule("nats") == NatsRule()
    assert stop_rule("nats:0.02") == NatsRule(0.02, NatsRule.window)
    assert stop_rule("nats:0.02:25") == NatsRule(0.02, 25)
    assert str(NatsRule(0.02, 25)) == "nats:0.02:25"
    f = lambda h: False  # noqa: E731
    assert stop_rule(f) is f
    for bad in ("loss", "nats:x", "nats:0.1:2:3", "nats:0.1:1.5"):
        with pytest.raises(ValueError, match="give 'nats', 'nats:RATIO' or 'nats:RATIO:WINDOW'"):
            stop_rule(bad)
    with pytest.raises(ValueError, match="ratio must be in"):
        stop_rule("nats:1.5")
    with pytest.raises(ValueError, match="window must be >= 1"):
        NatsRule(0.1, 0)


def test_fit_stops_where_the_rule_says_and_records_it(tmp_path):
    retain, forget = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=[1], lr=1e-3)
    seen = []
    hist = u.fit(retain, forget, steps=20, batch_size=4, progress=False,
                 stop_when=lambda h: seen.append(len(h)) or h[-1]["step"] >= 3)
    assert len(hist) == 3 and u.step == 3 and u.stopped_at == 3 and seen == [1, 2, 3]
    u.save_pretrained(str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "safemax.json").read_text())["stopped_at"] == 3
    u.fit(retain, forget, steps=5, batch_size=4, progress=False)   # without a rule: to the end
    assert u.step == 5 and u.stopped_at is None


def test_nats_rule_on_a_real_fit_and_a_baseline_refused():
    retain, forget = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=[1], lr=1e-3)
    # a ratio of 0.999 with window 1 holds as soon as both sides are below the start
    u.fit(retain, forget, steps=30, batch_size=4, progress=False, stop_when=NatsRule(0.999, 1))
    h = u.history
    assert u.stopped_at == len(h) < 30
    assert h[-1]["forget_nats"] <= 0.999 * h[0]["forget_nats"] and h[-1]["retain_nats"] <= 0.999 * h[0]["forget_nats"]
    ga = Unlearner(tiny_unet(), scheduler(), forget=[1], method="ga")
    with pytest.raises(ValueError, match="reads SAFEMax's forget_nats and retain_nats; method 'ga' records"):
        ga.fit(retain, forget, steps=2, batch_size=4, progress=False, stop_when="nats")


def test_cli_stop_when(tmp_path):
    out = tmp_path / "o"
    main(["unlearn", "--forget", "3", "--steps", "3", "--batch-size", "4", "--stop-when", "nats:0.5:2",
          "--out", str(out)])
    info = json.loads((out / "safemax.json").read_text())
    assert info["steps"] <= 3 and info.get("stopped_at", info["steps"]) == info["steps"]
    with pytest.raises(ValueError, match="stop_when='often'"):
        main(["unlearn", "--forget", "3", "--steps", "1", "--stop-when", "often", "--out", str(tmp_path / "x")])
