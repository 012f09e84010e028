"""train="class-embedding": only the forgotten classes' embedding rows train (tiny random models)."""
import copy
import json

import pytest
import torch
from problems import T_TINY as T
from problems import forget_loss_probe, tiny_data, tiny_scheduler, tiny_unet
from test_data_forms import text_unet
from test_model_families import tiny_dit
from torch.utils.data import TensorDataset

from safemax import Unlearner
from safemax.models.class_rows import DEFAULT_LR, class_tables

diffusers = pytest.importorskip("diffusers")


def _outputs(model, labels, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), 1, 8, 8, generator=g)
    t = torch.randint(0, T, (len(labels),), generator=g)
    with torch.no_grad():   # eval(): DiT drops labels at random in train mode
        return model.eval()(x, t, class_labels=torch.as_tensor(labels)).sample


@pytest.mark.parametrize("make", [tiny_unet, tiny_dit], ids=["unet", "dit"])
def test_only_the_forgotten_rows_move_and_the_kept_classes_are_bit_identical(make):
    model = make()
    original = copy.deepcopy(model)
    retain, forget = tiny_data()
    u = Unlearner(model, tiny_scheduler(), forget=[1], seed=0, train="class-embedding")
    assert u.lr == DEFAULT_LR and u.config(8)["train"] == "class-embedding"
    tables = dict(class_tables(model))
    assert tables and all(p.requires_grad for p in tables.values())
    assert [n for n, _ in u.trainable()] == list(tables)
    assert len(u.row_hooks) == len(tables) and Unlearner(make(), tiny_scheduler(), forget=[1]).row_hooks == []
    u.fit(retain, forget, steps=5, batch_size=8, progress=False)

    before = original.state_dict()
    for name, value in model.state_dict().items():
        if name in tables:
            moved = (value != before[name]).any(1)
            assert moved.tolist() == [i == 1 for i in range(len(moved))], name   # row 1 only
        else:
            assert torch.equal(value, before[name]), name
    kept = [0, 2, 3, 0, 2, 3]
    assert torch.equal(_outputs(model, kept), _outputs(original, kept))
    assert not torch.equal(_outputs(model, [1, 1]), _outputs(original, [1, 1]))


def test_row_only_forgetting_lowers_the_forget_loss_and_leaves_adam_moments_of_kept_rows_zero():
    model = tiny_unet()
    (x, y), (xf, yf) = (d.tensors for d in tiny_data())
    two = (y == 2)   # forget classes 1 and 2
    retain, forget = TensorDataset(x[~two], y[~two]), TensorDataset(torch.cat([xf, x[two]]), torch.cat([yf, y[two]]))
    u = Unlearner(model, tiny_scheduler(), forget=[1, 2], seed=0, train="class-embedding")
    forget_loss = forget_loss_probe(model, u.scheduler, forget.tensors[0][:12], forget.tensors[1][:12])
    before = forget_loss()
    u.fit(retain, forget, steps=20, batch_size=8, progress=False)
    assert forget_loss() < before
    state = u.optimizer.state[model.class_embedding.weight]
    assert (state["exp_avg_sq"][[0, 3]] == 0).all() and (state["exp_avg_sq"][[1, 2]] > 0).all()


def test_row_only_skips_the_retain_rows_and_trains_as_if_it_had_not():
    """The retain rows' distillation has no gradient in a row-only fit, so it is not computed (and
    no teacher is kept): the same fit as with it, to float tolerance."""
    from safemax.methods import SafeMax

    class FullBatch(SafeMax):
        skips_retain_rows_when_rows_alone = False

    retain, forget = tiny_data()
    fits = {}
    for name, method in (("skip", SafeMax()), ("full", FullBatch())):
        model = tiny_unet()
        u = Unlearner(model, tiny_scheduler(), forget=[1], seed=0, train="class-embedding", method=method)
        assert (method.teacher is None) == (name == "skip")
        u.fit(retain, forget, steps=6, batch_size=8, progress=False)
        fits[name] = model.class_embedding.weight.detach().clone(), u.history
    (skip, h_skip), (full, h_full) = fits["skip"], fits["full"]
    torch.testing.assert_close(skip, full, rtol=1e-4, atol=1e-5)   # Adam at lr 0.3: float noise grows a little
    assert not torch.equal(skip[1], tiny_unet().class_embedding.weight[1])   # it did train
    for a, b in zip(h_skip, h_full):
        assert a["forget_nats"] == pytest.approx(b["forget_nats"], rel=1e-4)
        assert a["retain_nats"] == 0.0 and b["retain_nats"] < 1e-12   # the kept classes cannot drift (float noise)
    # all weights, or the noise target: the retain rows count, and are computed
    assert Unlearner(tiny_unet(), tiny_scheduler(), forget=[1]).method.teacher is not None
    noise = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], train="class-embedding", retain_target="noise")
    noise.fit(retain, forget, steps=1, batch_size=8, progress=False)
    assert noise.history[0]["retain_nats"] > 0


def test_row_only_resumes_exactly_and_is_part_of_the_config(tmp_path):
    retain, forget = tiny_data()
    base = tiny_unet()
    straight = copy.deepcopy(base)
    Unlearner(straight, tiny_scheduler(), forget=[1], seed=3, train="class-embedding").fit(
        retain, forget, steps=6, batch_size=8, progress=False)
    Unlearner(copy.deepcopy(base), tiny_scheduler(), forget=[1], seed=3, train="class-embedding").fit(
        retain, forget, steps=3, batch_size=8, checkpoint_dir=str(tmp_path), progress=False)
    resumed = copy.deepcopy(base)
    Unlearner(resumed, tiny_scheduler(), forget=[1], seed=3, train="class-embedding").fit(
        retain, forget, steps=6, batch_size=8, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ValueError, match="other settings"):   # all weights vs rows: another fit
        Unlearner(copy.deepcopy(base), tiny_scheduler(), forget=[1], seed=3, lr=DEFAULT_LR).fit(
            retain, forget, steps=6, batch_size=8, checkpoint_dir=str(tmp_path), resume=True, progress=False)


def test_save_pretrained_records_the_mode(tmp_path):
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], train="class-embedding")
    u.fit(retain, forget, steps=1, batch_size=8, progress=False)
    u.save_pretrained(str(tmp_path))
    assert json.load(open(tmp_path / "safemax.json"))["train"] == "class-embedding"
    assert Unlearner(tiny_unet(), tiny_scheduler(), forget=[1]).config(8)["train"] == "all"   # every setting recorded


def test_clear_errors():
    with pytest.raises(ValueError, match="train must be one of"):
        Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], train="rows")
    with pytest.raises(ValueError, match="LoRA"):
        Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], train="class-embedding", lora_rank=2)
    with pytest.raises(ValueError, match="conditioned on text"):
        class_tables(text_unet())
    with pytest.raises(ValueError, match="no class-embedding table"):
        class_tables(tiny_unet(num_classes=None))


def test_the_inversion_attack_moves_only_the_attacked_rows():
    from safemax.harness.compare import relearning_attack

    model = tiny_unet()
    _, forget = tiny_data()
    attacked = relearning_attack(model, tiny_scheduler(), forget.tensors[0][:4], forget.tensors[1][:4], steps=3,
                                 lr=0.1, train="class-embedding")
    before, after = model.state_dict(), attacked.state_dict()
    for name, value in after.items():
        if name == "class_embedding.weight":
            assert (value != before[name]).any(1).tolist() == [False, True, False, False]
        else:
            assert torch.equal(value, before[name]), name
    with pytest.raises(ValueError, match="train must be one of"):
        relearning_attack(model, tiny_scheduler(), forget.tensors[0][:4], forget.tensors[1][:4], train="text")


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(tmp_path):
    """A setting added after a checkpoint was written is absent from its config: at its default the
    fit is the one the checkpoint made and resumes; set otherwise it is another fit and is refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from safemax.training.checkpoint import FILENAME
    retain, forget = tiny_data()
    base = tiny_unet()
    Unlearner(copy.deepcopy(base), tiny_scheduler(), forget=[1], seed=3).fit(
        retain, forget, steps=2, batch_size=8, checkpoint_dir=str(tmp_path), progress=False)
    path = str(tmp_path / FILENAME)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    meta = json.loads(metadata["meta"])
    del meta["config"]["kept_contrast"]   # as written before kept_contrast existed
    save_file(load_file(path), path, metadata=dict(metadata, meta=json.dumps(meta)))
    with pytest.raises(ValueError, match="other settings"):
        Unlearner(copy.deepcopy(base), tiny_scheduler(), forget=[1], seed=3, kept_contrast=4.0).fit(
            retain, forget, steps=3, batch_size=8, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    u = Unlearner(copy.deepcopy(base), tiny_scheduler(), forget=[1], seed=3)
    u.fit(retain, forget, steps=3, batch_size=8, checkpoint_dir=str(tmp_path), resume=True, progress=False)
    assert u.step == 3
