"""Robust SAFEMax (method="safemax-robust"): the simulated attack and its term (fast, tiny models)."""
import copy
import json

import pytest
import torch

from safemax import Unlearner
from safemax.__main__ import main
from safemax.methods import SafeMaxRobust, _Shifted, make_method

from problems import params, tiny_data as data, tiny_scheduler as scheduler, tiny_unet

diffusers = pytest.importorskip("diffusers")


def test_settings_and_refusals():
    m = make_method("safemax-robust", attack_radius=1e-2, attack_steps=2, early_fraction=0.5)
    assert isinstance(m, SafeMaxRobust) and m.default_lr == 5e-4
    for bad, message in ((dict(attack_radius=0), "attack_radius must be > 0"),
                         (dict(attack_steps=0), "attack_steps must be a whole number"),
                         (dict(robust_weight=-1), "robust_weight must be >= 0"),
                         (dict(attacked_retain_weight=-1), "attacked_retain_weight must be >= 0"),
                         (dict(gaussian_fraction=1.0), "needs|real forget images")):
        with pytest.raises(ValueError, match=message):
            SafeMaxRobust(**bad)
    from types import SimpleNamespace
    with pytest.raises(ValueError, match="runs on one process for now"):
        SafeMaxRobust().bind(SimpleNamespace(local=SimpleNamespace(world=2)))


def test_shifted_call_moves_the_weights_functionally():
    unet = tiny_unet()
    named = dict((n, p) for n, p in unet.named_parameters())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 50]), torch.tensor([0, 1])
    zero = {n: torch.zeros_like(p) for n, p in named.items()}
    torch.testing.assert_close(_Shifted(unet, named, zero)(x, t, class_labels=y).sample,
                               unet(x, t, class_labels=y).sample)
    shift = {n: torch.full_like(p, 1e-2) for n, p in named.items()}
    before = params(unet)
    out = _Shifted(unet, named, shift)(x, t, class_labels=y).sample
    assert not torch.allclose(out, unet(x, t, class_labels=y).sample)
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())   # untouched
    moved = copy.deepcopy(unet)   # the functional call is the model with its weights moved
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p -= shift[n]
    torch.testing.assert_close(out, moved(x, t, class_labels=y).sample)
    out.sum().backward()
    assert all(p.grad is not None for p in named.values() if p.requires_grad)


def test_without_its_term_it_is_safemax_and_with_it_another_fit():
    retain, forget = data()

    def fit(method):
        unet = tiny_unet()
        u = Unlearner(unet, scheduler(), forget=[1], lr=1e-3, method=method)
        u.fit(retain, forget, steps=3, batch_size=4, progress=False)
        return params(unet), u.history

    plain, _ = fit("safemax")
    zero, hist = fit(SafeMaxRobust(robust_weight=0.0))
    for k in plain:   # the simulated attack's extra passes draw no random numbers
        torch.testing.assert_close(zero[k], plain[k], rtol=1e-6, atol=1e-7)
    assert all(h["attacked_forget_nats"] >= 0 for h in hist)
    robust, hist = fit(SafeMaxRobust(attack_radius=1e-2))
    assert any(not torch.allclose(robust[k], plain[k]) for k in plain)
    # at the attacked weights the forget rows are farther from their target than at θ, at first
    assert hist[0]["attacked_forget_nats"] > hist[0]["forget_nats"]
    # the kept classes at the attacked weights: a term of its own, zero at θ on the first step
    # (student = teacher) but not at θ − δ
    both, hist = fit(SafeMaxRobust(attack_radius=1e-2, attacked_retain_weight=1.0))
    assert hist[0]["retain_nats"] == 0 and hist[0]["attacked_retain_nats"] > 0
    assert any(not torch.allclose(both[k], robust[k]) for k in plain)
    configs = [Unlearner(tiny_unet(), scheduler(), forget=[1], method=SafeMaxRobust(**kw)).method.config()
               for kw in ({}, dict(attacked_retain_weight=0.5))]
    assert "attacked_retain_weight" not in configs[0] and configs[1]["attacked_retain_weight"] == 0.5


def test_command_line_and_compare(tmp_path):
    out = tmp_path / "robust"
    main(["unlearn", "--method", "safemax-robust", "--forget", "3", "--steps", "1", "--batch-size", "4",
          "--out", str(out)])
    info = json.loads((out / "safemax.json").read_text())
    assert info["method"] == "safemax-robust" and info["lr"] == 5e-4 and info["attack_radius"] == 5e-3
    cmp = tmp_path / "cmp"
    assert main(["compare", "--quick", "--methods", "safemax", "safemax-robust:attack_radius=0.01",
                 "--out", str(cmp)]) == 0
    results = json.loads((cmp / "results.json").read_text())
    assert results["methods"]["safemax-robust:attack_radius=0.01"]["method_config"]["attack_radius"] == 0.01
    assert "robust SAFEMax (attack_radius=0.01)" in (cmp / "results.md").read_text()
