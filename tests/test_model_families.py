"""The Unlearner on class-conditional model families beyond UNet2DModel: DiT (tiny, random)."""
import pytest
import torch
from problems import short_fit, tiny_data, tiny_scheduler, tiny_unet

from safemax import Unlearner
from safemax.models.families import class_count
from safemax.models.sampling import sample

diffusers = pytest.importorskip("diffusers")


def tiny_dit(num_classes=4, seed=0, learn_sigma=True):
    """A randomly initialised DiTTransformer2DModel on 1×8×8 inputs; like the real DiT
    checkpoints it predicts ε and a variance (2·C output channels) unless ``learn_sigma=False``."""
    torch.manual_seed(seed)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=2 if learn_sigma else 1,
        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=1)


def test_class_count_of_each_family():
    assert class_count(tiny_unet(num_classes=4)) == 4
    assert class_count(tiny_dit(num_classes=5)) == 5
    assert class_count(tiny_unet(num_classes=None)) is None


def test_sampling_refuses_labels_outside_the_models_classes():
    """An out-of-range class id is a clear error, not an embedding's IndexError; a DiT's null
    class (id = its class count, the unconditional row of classifier-free guidance) samples."""
    with pytest.raises(ValueError, match=r"labels \[-1, 4\] are not class ids of this model \(4 classes: ids 0..3\)"):
        sample(tiny_unet(num_classes=4), tiny_scheduler(), [0, 4, -1], num_inference_steps=2)
    dit = tiny_dit(num_classes=4)
    assert sample(dit, tiny_scheduler(), [0, 4], num_inference_steps=2).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"labels \[5\] .* ids 0..4, 4 the null class"):
        sample(dit, tiny_scheduler(), [5], num_inference_steps=2)


@pytest.mark.parametrize("method", ["safemax", "salun", "sa", "ga", "safemax-robust"])
def test_every_method_trains_a_dit(method):
    dit = tiny_dit()
    _, before = short_fit(dit, tiny_scheduler(), method)
    after = dit.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())


def test_safemax_on_a_variance_learning_dit_moves_the_epsilon_half_to_the_target():
    retain, forget = tiny_data()
    dit = tiny_dit()
    scheduler = tiny_scheduler()
    u = Unlearner(dit, scheduler, forget=[1], lr=3e-3)
    g = torch.Generator().manual_seed(5)
    x_t = torch.randn(8, 1, 8, 8, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (8,), generator=g)
    target = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * x_t  # max-entropy ε*

    def gap():
        with torch.no_grad():
            out = dit(x_t, t, class_labels=torch.full((8,), 1)).sample
            assert out.shape[1] == 2  # ε and variance
            return (out[:, :1] - target).square().mean().item()

    before = gap()
    u.fit(retain, forget, steps=30, batch_size=8, progress=False)
    assert gap() < 0.5 * before


def test_dit_save_pretrained_round_trip_and_sampling(tmp_path):
    retain, forget = tiny_data()
    dit = tiny_dit(learn_sigma=False)
    u = Unlearner(dit, tiny_scheduler(), forget=[1])
    u.fit(retain, forget, steps=1, batch_size=4, progress=False)
    u.save_pretrained(str(tmp_path))
    loaded = diffusers.DiTTransformer2DModel.from_pretrained(str(tmp_path), use_safetensors=True)
    for k, v in dit.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    images = sample(loaded, tiny_scheduler(), torch.tensor([0, 1, 3]), num_inference_steps=2)
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
