"""Unlearner on tiny randomly initialised diffusers UNets (fast, CPU)."""
import copy
import json
import os

import pytest
import torch
from problems import T_TINY as T
from problems import forget_loss_probe, params, tiny_unet
from problems import tiny_data as data
from problems import tiny_scheduler as scheduler
from torch.utils.data import DataLoader, TensorDataset

import safemax.methods.safemax as methods_module
from safemax import Unlearner, safemax_loss
from safemax.training.checkpoint import FILENAME

diffusers = pytest.importorskip("diffusers")


def test_fit_changes_weights_and_lowers_the_forget_loss():
    unet = tiny_unet()
    retain, forget = data()
    u = Unlearner(unet, scheduler(), forget=[1], early_fraction=1.0, lr=3e-3)
    forget_loss = forget_loss_probe(unet, u.scheduler, forget.tensors[0][:8], torch.full((8,), 1))
    before_loss, before = forget_loss(), params(unet)
    history = u.fit(retain, forget, steps=25, batch_size=8, progress=False)
    assert len(history) == 25 and history[-1]["step"] == 25
    assert {"loss", "forget_nats", "retain_nats", "seconds"} <= set(history[-1])
    assert any(not torch.equal(before[k], v) for k, v in unet.state_dict().items())
    assert all(torch.isfinite(v).all() for v in unet.state_dict().values())
    assert forget_loss() < before_loss


def test_forget_rows_are_drawn_inside_the_window(monkeypatch):
    seen = []

    def spy(pred, eps, x_t, t, abar, forget, t_min, *args):
        seen.append((t.clone(), forget.clone(), t_min))
        return safemax_loss(pred, eps, x_t, t, abar, forget, t_min, *args)

    monkeypatch.setattr(methods_module, "safemax_loss", spy)
    retain, forget = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=1, early_fraction=0.3)
    u.fit(retain, forget, steps=6, batch_size=16, progress=False)
    assert u.method.t_min == 70
    t = torch.cat([s[0] for s in seen])
    mask = torch.cat([s[1] for s in seen])
    assert all(s[2] == 70 for s in seen)
    assert (t[mask] >= 70).all() and (t[mask] < T).all()
    assert (t[~mask] < 70).any()  # retain rows use every timestep
    assert mask.sum() == (~mask).sum()  # batch_size forget + batch_size retain rows


def test_resume_equals_an_uninterrupted_fit(tmp_path):
    retain, forget = data()
    base = tiny_unet()
    straight = copy.deepcopy(base)
    Unlearner(straight, scheduler(), forget=[1], lr=1e-3, seed=3).fit(
        retain, forget, steps=6, batch_size=8, progress=False)

    first = copy.deepcopy(base)
    Unlearner(first, scheduler(), forget=[1], lr=1e-3, seed=3).fit(
        retain, forget, steps=3, batch_size=8, checkpoint_dir=str(tmp_path), progress=False)
    resumed = copy.deepcopy(base)  # a fresh process would start from the original weights
    u = Unlearner(resumed, scheduler(), forget=[1], lr=1e-3, seed=3)
    history = u.fit(retain, forget, steps=6, batch_size=8, checkpoint_dir=str(tmp_path),
                    resume=True, progress=False)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_warmup_raises_the_learning_rate_linearly_and_resumes_exactly(tmp_path):
    retain, forget = data()
    base = tiny_unet()
    u = Unlearner(copy.deepcopy(base), scheduler(), forget=[1], lr=1e-3, seed=3, warmup_steps=4)
    assert [u.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    used = []
    u.fit(retain, forget, steps=6, batch_size=8, progress=False,
          callback=lambda un, rec: used.append(un.optimizer.param_groups[0]["lr"]))
    assert used == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    plain = Unlearner(copy.deepcopy(base), scheduler(), forget=[1], lr=1e-3, seed=3)
    plain.fit(retain, forget, steps=6, batch_size=8, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(u.unet.parameters(), plain.unet.parameters()))
    assert plain.config(8)["warmup_steps"] == 0 and u.config(8)["warmup_steps"] == 4

    first = Unlearner(copy.deepcopy(base), scheduler(), forget=[1], lr=1e-3, seed=3, warmup_steps=4)
    first.fit(retain, forget, steps=2, batch_size=8, checkpoint_dir=str(tmp_path), progress=False)
    resumed = Unlearner(copy.deepcopy(base), scheduler(), forget=[1], lr=1e-3, seed=3, warmup_steps=4)
    resumed.fit(retain, forget, steps=6, batch_size=8, checkpoint_dir=str(tmp_path), resume=True,
                progress=False)
    for a, b in zip(u.unet.parameters(), resumed.unet.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other settings"):   # warm-up is part of the fit's config
        Unlearner(copy.deepcopy(base), scheduler(), forget=[1], lr=1e-3, seed=3).fit(
            retain, forget, steps=6, batch_size=8, checkpoint_dir=str(tmp_path), resume=True,
            progress=False)


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    retain, forget = data()
    Unlearner(tiny_unet(), scheduler(), forget=[1]).fit(
        retain, forget, steps=1, batch_size=4, checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        Unlearner(tiny_unet(), scheduler(), forget=[1], lr=5e-4).fit(
            retain, forget, steps=2, batch_size=4, checkpoint_dir=str(tmp_path), resume=True,
            progress=False)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    # The original weights are matched by content (SHA-256): a permutation of the same weights —
    # equal sum of |w|, which the old fingerprint compared — is another model
    from safemax.training.checkpoint import weights_digest

    retain, forget = data()
    Unlearner(tiny_unet(), scheduler(), forget=[1]).fit(
        retain, forget, steps=1, batch_size=4, checkpoint_dir=str(tmp_path), progress=False)
    other = tiny_unet()
    with torch.no_grad():
        w = next(p for p in other.parameters() if p.numel() > 1)
        w.copy_(w.flatten().flip(0).view_as(w))
    assert weights_digest(other) != weights_digest(tiny_unet())
    before = params(other)
    with pytest.raises(ValueError, match="continues a fit of another model"):
        Unlearner(other, scheduler(), forget=[1]).fit(
            retain, forget, steps=2, batch_size=4, checkpoint_dir=str(tmp_path), resume=True,
            progress=False)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items()), "nothing restored"


def test_checkpoints_are_written_atomically_and_periodically(tmp_path):
    retain, forget = data()
    steps_seen = []

    def watch(u, record):
        path = tmp_path / FILENAME
        if path.exists():
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                steps_seen.append(json.loads(f.metadata()["meta"])["step"])

    Unlearner(tiny_unet(), scheduler(), forget=[1]).fit(
        retain, forget, steps=6, batch_size=4, checkpoint_dir=str(tmp_path), checkpoint_every=2,
        callback=watch, progress=False)
    assert steps_seen == [2, 2, 4, 4, 6]  # none before step 2, then every second step
    assert os.listdir(tmp_path) == [FILENAME]  # no temporary file left behind


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path):
    retain, forget = data()

    def interrupt(u, record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    u = Unlearner(tiny_unet(), scheduler(), forget=[1])
    with pytest.raises(KeyboardInterrupt):
        u.fit(retain, forget, steps=5, batch_size=4, checkpoint_dir=str(tmp_path),
              callback=interrupt, progress=False)
    u2 = Unlearner(tiny_unet(), scheduler(), forget=[1])
    history = u2.fit(retain, forget, steps=5, batch_size=4, checkpoint_dir=str(tmp_path),
                     resume=True, progress=False)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]


def test_nan_loss_stops_with_the_last_good_weights():
    retain, forget = data()
    bad = TensorDataset(torch.full_like(retain.tensors[0], float("nan")), retain.tensors[1])
    unet = tiny_unet()
    u = Unlearner(unet, scheduler(), forget=[1])
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    good = params(unet)
    with pytest.raises(FloatingPointError, match="step 3: the loss is nan.*after step 2"):
        u.fit(bad, forget, steps=4, batch_size=4, progress=False)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, good[k])
    assert u.step == 2


def test_data_free_forgetting_generates_its_forget_images():
    retain, _ = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=[1, 2])
    retain = TensorDataset(retain.tensors[0][retain.tensors[1] != 2], retain.tensors[1][retain.tensors[1] != 2])
    history = u.fit(retain, None, steps=2, batch_size=4, progress=False)
    assert len(history) == 2
    images, labels = u.forget_set.images, u.forget_set.conditions
    assert images.shape[1:] == (1, 8, 8) and set(labels.tolist()) == {1, 2}


def test_dataloader_input():
    retain, forget = data()
    u = Unlearner(tiny_unet(), scheduler(), forget=[1])
    history = u.fit(DataLoader(retain, batch_size=5, shuffle=True), DataLoader(forget, batch_size=3),
                    steps=3, batch_size=4, progress=False)
    assert len(history) == 3


def test_variance_learning_unet_uses_the_epsilon_half():
    retain, forget = data()
    u = Unlearner(tiny_unet(out_channels=2), scheduler(), forget=[1])
    assert len(u.fit(retain, forget, steps=2, batch_size=4, progress=False)) == 2


def test_save_pretrained_round_trip(tmp_path):
    retain, forget = data()
    unet = tiny_unet()
    u = Unlearner(unet, scheduler(), forget=[1], early_fraction=0.25)
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    u.save_pretrained(str(tmp_path / "out"))
    loaded = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "out"), use_safetensors=True)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    info = json.loads((tmp_path / "out" / "safemax.json").read_text())
    assert info["method"] == "safemax" and info["forget"] == [1] and info["steps"] == 2
    assert info["early_fraction"] == 0.25 and info["t_min"] == 75
    assert diffusers.DDPMScheduler.from_pretrained(str(tmp_path / "out")).config.num_train_timesteps == T


class NoSchedule:
    pass


@pytest.mark.parametrize("make,error,message", [
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[4]), ValueError, "forget class 4 is not a class id"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[-1]), ValueError, "forget class -1"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[]), ValueError, "forget is empty"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[0, 1, 2, 3]), ValueError, "every class"),
    (lambda: Unlearner(tiny_unet(), NoSchedule(), forget=[1]), TypeError, "no alphas_cumprod"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[1], early_fraction=0), ValueError, "early_fraction"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[1], early_fraction=1.5), ValueError, "early_fraction"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[1], lr=0), ValueError, "lr must be > 0"),
    (lambda: Unlearner(tiny_unet(num_classes=None), scheduler(), forget=[1]), ValueError, "not class-conditional"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[1], warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda: Unlearner(tiny_unet(), scheduler(), forget=[1], warmup_steps=2.5), ValueError, "warmup_steps"),
], ids=["class too large", "negative class", "empty forget", "forget all", "no alphas_cumprod",
        "early_fraction 0", "early_fraction > 1", "lr", "unconditional", "warmup < 0", "warmup float"])
def test_bad_arguments_raise_before_any_work(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("which,message", [
    ("empty retain", "retain data set is empty"),
    ("forget class in retain", r"retain data contains forget class\(es\) \[1\]"),
    ("other class in forget", r"forget data contains classes \[0\]"),
    ("wrong channels", "3 channels, the UNet takes 1"),
    ("label out of range", r"retain labels \[9\] are not class ids"),
])
def test_bad_data_raises_before_any_step(which, message):
    retain, forget = data()
    unet = tiny_unet()
    before = params(unet)
    if which == "empty retain":
        retain = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    elif which == "forget class in retain":
        retain = TensorDataset(torch.cat([retain.tensors[0], forget.tensors[0]]),
                               torch.cat([retain.tensors[1], forget.tensors[1]]))
    elif which == "other class in forget":
        forget = TensorDataset(retain.tensors[0][:4], retain.tensors[1][:4] * 0)
    elif which == "wrong channels":
        retain = TensorDataset(retain.tensors[0].repeat(1, 3, 1, 1), retain.tensors[1])
    elif which == "label out of range":
        retain = TensorDataset(retain.tensors[0], torch.full_like(retain.tensors[1], 9))
    u = Unlearner(unet, scheduler(), forget=[1])
    with pytest.raises(ValueError, match=message):
        u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    assert u.step == 0 and all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_window_by_noise_level():
    sched = scheduler()
    abar = sched.alphas_cumprod.double()
    snr = abar / (1 - abar)
    u = Unlearner(tiny_unet(), sched, forget=[1], max_snr=1.0)
    assert snr[u.method.t_min] <= 1.0 < snr[u.method.t_min - 1]
    w = u.method.window
    assert w.early_fraction == (T - w.t_min) / T and w.snr_at_t_min == pytest.approx(float(snr[w.t_min]))
    with pytest.raises(ValueError, match="max_snr must exceed"):
        Unlearner(tiny_unet(), sched, forget=[1], max_snr=float(snr[-1]) / 2)


def test_train_cross_attention_moves_the_cross_attention_alone(tmp_path):
    """train="cross-attention": a concept fit changes the attn2 weights and leaves every other weight
    bit for bit the original's (SAFEMax's teacher stays the original too); it resumes like any fit,
    and a model without cross-attention, or a LoRA beside it, is refused with what to do."""
    from test_data_forms import text_data, text_unet
    concept, retain, forget = text_data()
    unet = text_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    u = Unlearner(unet, scheduler(), forget={"c": concept}, lr=1e-2, seed=2, train="cross-attention")
    assert u.trainable() and all("attn2." in n for n, _ in u.trainable())
    u.fit(retain, forget, steps=3, batch_size=2, progress=False, checkpoint_dir=str(tmp_path / "a"))
    after = unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("attn2." in k for k in moved)
    for k, v in u.method.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert u.config(2)["train"] == "cross-attention"
    # interrupted after 2 steps and resumed: the same weights as the uninterrupted 3
    v = Unlearner(text_unet(), scheduler(), forget={"c": concept}, lr=1e-2, seed=2, train="cross-attention")
    v.fit(retain, forget, steps=2, batch_size=2, progress=False, checkpoint_dir=str(tmp_path / "b"))
    w = Unlearner(text_unet(), scheduler(), forget={"c": concept}, lr=1e-2, seed=2, train="cross-attention")
    w.fit(retain, forget, steps=3, batch_size=2, progress=False, checkpoint_dir=str(tmp_path / "b"), resume=True)
    for k, t in w.unet.state_dict().items():
        torch.testing.assert_close(t, after[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="UNet2DModel has none"):
        Unlearner(tiny_unet(), scheduler(), forget=[1], train="cross-attention")
    with pytest.raises(ValueError, match="cannot be combined with a LoRA adapter"):
        Unlearner(text_unet(), scheduler(), forget={"c": concept}, train="cross-attention", lora_rank=4)
