"""Relearning attacks (safemax.evaluation.attacks): the specs, and what each attacker may and may not change."""
import json

import pytest
import torch
from problems import T_TINY, tiny_data, tiny_scheduler, tiny_unet

from safemax.evaluation.attacks import (
    DEFAULT_ATTACKS,
    PRESETS,
    Attack,
    draw_images,
    parse_attack,
    relearning_attack,
    run_attack,
)


def test_presets_and_overrides():
    assert parse_attack("weak") == PRESETS["weak"] == Attack("weak", 1e-4)
    assert parse_attack("strong:steps=100") == Attack("strong", 1e-3, steps=100)
    assert parse_attack("lora:rank=4,lr=5e-4") == Attack("lora", 5e-4, train="lora", rank=4)
    mine = parse_attack("mine:lr=2e-3,steps=7,images=3,train=class-embedding")
    assert mine == Attack("mine", 2e-3, steps=7, images=3, train="class-embedding")
    # the run's steps and images fill what an attack leaves open, never what it fixes
    assert PRESETS["strong"].resolved(50, 10) == Attack("strong", 1e-3, steps=50, images=10)
    assert PRESETS["long"].resolved(50, 10) == Attack("long", 1e-3, steps=200, images=50)
    assert set(DEFAULT_ATTACKS) <= set(PRESETS)
    assert parse_attack("strong").resolved(50, 10).record() == dict(name="strong", lr=1e-3, steps=50, images=10,
                                                                   train="all")


@pytest.mark.parametrize("spec, message", [
    ("huge", "no preset"), ("huge:steps=3", "give at least its lr"), ("strong:depth=3", "name=value"),
    ("strong:steps", "name=value"), ("strong:steps=1.5", "whole number"), ("strong:lr=fast", "must be a number"),
    ("strong:train=text", "train must be one of"), ("strong:lr=0", "lr must be > 0"),
    ("strong:images=0", "images must be >= 1"), ("lora:rank=0", "rank must be >= 1"), (":lr=1", "start with a name"),
])
def test_bad_specs_say_what_to_write(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_attack(spec)


def fixed_batch(forget, n=8, seed=7):
    """n forget images noised at seeded t: (x_t, t, eps)."""
    g = torch.Generator().manual_seed(seed)
    x0, t = forget.tensors[0][:n], torch.randint(0, T_TINY, (n,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    s = tiny_scheduler().alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    return (s.sqrt() * x0 + (1 - s).sqrt() * eps).float(), t, eps


@torch.no_grad()
def predict(model, x_t, t, label):
    return model(x_t, t, class_labels=torch.full((len(t),), label)).sample


def _loss(model, forget):
    """The plain denoising loss the attacker lowers, on a fixed batch of the class."""
    x_t, t, eps = fixed_batch(forget)
    return (predict(model, x_t, t, 1) - eps).square().mean().item()


def test_lora_attack_trains_an_adapter_only_and_relearns():
    pytest.importorskip("peft")
    _, forget = tiny_data()
    unet = tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    attacked = run_attack(Attack("lora", 3e-2, steps=30, images=8, train="lora", rank=4), unet, tiny_scheduler(),
                          forget.tensors[0], forget.tensors[1])
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in before.items())   # the input is left alone
    state = attacked.state_dict()
    adapter = [k for k in state if "lora_" in k]
    assert adapter and all(".to_" in k for k in adapter)   # on the attention projections only
    for k, v in state.items():   # peft renames the wrapped layers' weights to ...base_layer...
        if "lora_" not in k:
            assert torch.equal(v, before[k.replace("base_layer.", "")]), k
    assert _loss(attacked, forget) < _loss(unet, forget)


def test_lora_attack_on_a_lora_result_merges_its_adapter_first():
    pytest.importorskip("peft")
    from safemax import Unlearner

    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lora_rank=2, seed=0)
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    attacked = relearning_attack(u.unet, tiny_scheduler(), forget.tensors[0][:4], forget.tensors[1][:4], steps=1,
                                 lr=1e-3, train="lora", rank=2)
    x_t, t, _ = fixed_batch(forget)   # the attacker's fresh adapter starts at B = 0: one step moves it a little
    assert (predict(attacked, x_t, t, 1) - predict(u.unet, x_t, t, 1)).abs().max() < 0.1


def test_lora_attack_needs_attention_projections():
    pytest.importorskip("peft")
    _, forget = tiny_data()
    plain = tiny_unet(mid_block_type=None)
    with pytest.raises(ValueError, match="LoRA target modules"):
        relearning_attack(plain, tiny_scheduler(), forget.tensors[0][:2], forget.tensors[1][:2], train="lora")


def test_an_attack_on_a_text_model_by_its_row_says_why_not():
    _, forget = tiny_data()
    with pytest.raises(ValueError, match="no class-embedding table"):
        relearning_attack(tiny_unet(num_classes=None), tiny_scheduler(), forget.tensors[0][:2],
                          forget.tensors[1][:2], train="class-embedding")


def test_run_attack_uses_the_first_images():
    _, forget = tiny_data()
    x, y = forget.tensors
    a = Attack("mine", 1e-3, steps=2, images=3)
    one = run_attack(a, tiny_unet(), tiny_scheduler(), x, y, seed=1)
    two = relearning_attack(tiny_unet(), tiny_scheduler(), x[:3], y[:3], steps=2, lr=1e-3, seed=1)
    assert all(torch.equal(v, two.state_dict()[k]) for k, v in one.state_dict().items())
    # the images are a seeded draw whose shorter draws are its prefixes (compare's 10 inside long's 50)
    few, many = draw_images(forget, 3, seed=2), draw_images(forget, 6, seed=2)
    assert torch.equal(few[0], many[0][:3]) and torch.equal(few[1], many[1][:3])
    with pytest.raises(ValueError, match="wants 13 images of class 1; the training set has 12"):
        draw_images(forget, 13)


def test_compare_runs_every_attack_and_says_where_each_method_breaks(tmp_path):
    pytest.importorskip("peft")
    from safemax.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--quick", "--out", str(out), "--methods", "ga",
                 "--attacks", "weak", "lora:rank=2", "inversion", "mine:lr=1e-2,steps=1,images=2"]) == 0
    report = json.loads((out / "results.json").read_text())
    attacks = report["methods"]["ga"]["attack"]
    assert [a["name"] for a in attacks] == ["weak", "lora", "inversion", "mine"]
    assert [a["steps"] for a in attacks] == [2, 2, 2, 1] and [a["images"] for a in attacks] == [4, 4, 4, 2]
    assert attacks[1]["train"] == "lora" and attacks[1]["rank"] == 2 and "rank" not in attacks[0]
    assert all(0 <= a["fa_after"] <= 1 and a["seconds"] > 0 for a in attacks)
    md = (out / "results.md").read_text()
    assert "breaks under" in md and "a LoRA adapter of rank 2, lr 0.001" in md
    assert report["settings"]["attacks"] == [{k: v for k, v in a.items() if k not in
                                              ("seconds", "fa_before", "fa_after", "fa_digits_after")}
                                             for a in attacks]
    for bad, message in ((["--attacks", "weak", "weak:lr=1"], "share a name"),
                         (["--attacks", "huge:lr=1e-3,images=100000"], "wants 100000 images")):
        with pytest.raises(ValueError, match=message):
            main(["compare", "--quick", "--out", str(out / "bad"), "--methods", "ga"] + bad)
