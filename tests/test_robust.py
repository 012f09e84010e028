"""Robust SAFEMax (method="safemax-robust"): the simulated attack and its term (fast, tiny models)."""
import copy
import json

import pytest
import torch
from problems import params, tiny_unet
from problems import tiny_data as data
from problems import tiny_scheduler as scheduler

from safemax import Unlearner
from safemax.cli import main
from safemax.methods import SafeMaxRobust, make_method
from safemax.methods.robust import Shifted

diffusers = pytest.importorskip("diffusers")


def test_settings_and_refusals():
    m = make_method("safemax-robust", attack_radius=1e-2, attack_steps=2, early_fraction=0.5)
    assert isinstance(m, SafeMaxRobust) and m.default_lr == 5e-4
    # each scope's measured defaults: a radius is an embedding coordinate's or a weight's
    assert (SafeMaxRobust().attack_scope, SafeMaxRobust().attack_radius, SafeMaxRobust().attack_steps) == \
        ("class-embedding", 0.5, 2)
    weights = SafeMaxRobust(attack_scope="weights")
    assert (weights.attack_radius, weights.attack_steps) == (5e-3, 1)
    for bad, message in ((dict(attack_radius=0), "attack_radius must be > 0"),
                         (dict(attack_steps=0), "attack_steps must be a whole number"),
                         (dict(robust_weight=-1), "robust_weight must be >= 0"),
                         (dict(attacked_retain_weight=-1), "attacked_retain_weight must be >= 0"),
                         (dict(attacked_retain_weight=1), "needs attack_scope='weights'"),
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
    torch.testing.assert_close(Shifted(unet, named, zero)(x, t, class_labels=y).sample,
                               unet(x, t, class_labels=y).sample)
    shift = {n: torch.full_like(p, 1e-2) for n, p in named.items()}
    before = params(unet)
    out = Shifted(unet, named, shift)(x, t, class_labels=y).sample
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
    robust, hist = fit(SafeMaxRobust(attack_scope="weights", attack_radius=1e-2))
    assert any(not torch.allclose(robust[k], plain[k]) for k in plain)
    # at the attacked weights the forget rows are farther from their target than at θ, at first
    assert hist[0]["attacked_forget_nats"] > hist[0]["forget_nats"]
    # the kept classes at the attacked weights: a term of its own, zero at θ on the first step
    # (student = teacher) but not at θ − δ
    both, hist = fit(SafeMaxRobust(attack_scope="weights", attack_radius=1e-2, attacked_retain_weight=1.0))
    assert hist[0]["retain_nats"] == 0 and hist[0]["attacked_retain_nats"] > 0
    assert any(not torch.allclose(both[k], robust[k]) for k in plain)
    configs = [Unlearner(tiny_unet(), scheduler(), forget=[1], method=SafeMaxRobust(**kw)).method.config()
               for kw in (dict(attack_scope="weights"), dict(attack_scope="weights", attacked_retain_weight=0.5))]
    assert configs[0]["attacked_retain_weight"] == 0.0 and configs[1]["attacked_retain_weight"] == 0.5


def test_command_line_and_compare(tmp_path):
    out = tmp_path / "robust"
    main(["unlearn", "--method", "safemax-robust", "--forget", "3", "--steps", "1", "--batch-size", "4",
          "--out", str(out)])
    info = json.loads((out / "safemax.json").read_text())
    assert info["method"] == "safemax-robust" and info["lr"] == 5e-4
    assert (info["attack_scope"], info["attack_radius"], info["attack_steps"]) == ("class-embedding", 0.5, 2)
    cmp = tmp_path / "cmp"
    assert main(["compare", "--quick", "--methods", "safemax", "safemax-robust:attack_radius=0.01",
                 "--out", str(cmp)]) == 0
    results = json.loads((cmp / "results.json").read_text())
    assert results["methods"]["safemax-robust:attack_radius=0.01"]["method_config"]["attack_radius"] == 0.01
    assert "robust SAFEMax (attack_radius=0.01)" in (cmp / "results.md").read_text()


def test_class_embedding_scope_moves_only_the_forgotten_rows():
    """attack_scope="class-embedding" simulates the inversion attacker: the shift touches the
    forgotten class's embedding row alone, and the term still trains the shared weights."""
    with pytest.raises(ValueError, match="attack_scope must be one of"):
        SafeMaxRobust(attack_scope="everything")
    retain, forget = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=[1], lr=1e-3,
                  method=SafeMaxRobust(attack_scope="class-embedding", attack_radius=0.5, attack_steps=1))
    assert u.method.config()["attack_scope"] == "class-embedding"
    x0 = torch.stack([forget[i][0] for i in range(4)])
    y, eps, t = torch.full((4,), 1), torch.randn(4, 1, 8, 8), torch.tensor([5, 20, 50, 90])
    x_t = u.scheduler.add_noise(x0, eps, t)
    moved, shift = u.method.simulate_attack(u, x_t, t, y, eps)
    assert list(moved) == ["class_embedding.weight"]
    delta = shift["class_embedding.weight"]
    assert delta[1].abs().min() > 0 and delta[[0, 2, 3]].abs().max() == 0   # the forgotten row alone
    torch.testing.assert_close(delta[1].abs(), torch.full_like(delta[1], 0.5))   # signed, radius 0.5

    def relearn(model):
        return (model(x_t, t, class_labels=y).sample - eps).square().mean().item()
    # the simulated attacker relearns: the denoising loss on the class is lower at θ − δ
    assert relearn(Shifted(u.unet, moved, shift)) < relearn(u.unet)
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    h = u.history[0]
    assert h["attacked_forget_nats"] >= 0 and h["attacked_forget_nats"] != h["forget_nats"]
    plain = Unlearner(tiny_unet(), scheduler(), forget=[1], lr=1e-3, method="safemax")
    plain.fit(retain, forget, steps=2, batch_size=4, progress=False)
    mine, theirs = params(u.unet), params(plain.unet)   # the term at the moved row trains shared weights
    assert any(not torch.allclose(mine[k], theirs[k]) for k in mine if "class_embedding" not in k)


def test_l2_attack_is_one_step_of_its_length_along_the_gradient():
    """attack_norm="l2" (SAM's ascent step): δ has total L2 length attack_radius, points along the
    relearning gradient, and lowers the relearning loss; "sign" moves every weight by the radius."""
    with pytest.raises(ValueError, match="attack_norm must be"):
        SafeMaxRobust(attack_norm="linf")
    retain, forget = data()
    x0 = torch.stack([forget[i][0] for i in range(4)])
    y, eps, t = torch.full((4,), 1), torch.randn(4, 1, 8, 8), torch.tensor([5, 20, 50, 90])
    for norm in ("l2", "sign"):
        u = Unlearner(tiny_unet(), scheduler(), forget=[1],
                      method=SafeMaxRobust(attack_scope="weights", attack_norm=norm, attack_radius=1e-3))
        x_t = u.scheduler.add_noise(x0, eps, t)
        moved, shift = u.method.simulate_attack(u, x_t, t, y, eps)
        flat = torch.cat([v.flatten() for v in shift.values()])
        loss = (u.unet(x_t, t, class_labels=y).sample - eps).square().mean()
        grads = torch.autograd.grad(loss, list(moved.values()))
        g = torch.cat([v.flatten() for v in grads])
        if norm == "l2":
            torch.testing.assert_close(flat.norm(), torch.tensor(1e-3))
            torch.testing.assert_close(flat / flat.norm(), g / g.norm())
            assert u.method.config()["attack_norm"] == "l2"
        else:
            assert torch.equal(flat.abs()[g != 0], torch.full_like(flat[g != 0], 1e-3))
            assert u.method.config()["attack_norm"] == "sign"
        after = (Shifted(u.unet, moved, shift)(x_t, t, class_labels=y).sample - eps).square().mean()
        assert after < loss


def test_class_embedding_scope_under_lora():
    """With a LoRA adapter the class tables are frozen; the attacker still moves the row (on
    detached copies) and the term trains the adapter."""
    retain, forget = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=[1], lr=1e-3, lora_rank=2, method=SafeMaxRobust())
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    assert all(h["attacked_forget_nats"] >= 0 for h in u.history)
    assert all("lora" in n for n, _ in u.trainable())
