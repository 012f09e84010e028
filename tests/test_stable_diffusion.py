"""Text-conditional UNets (Stable Diffusion): a concept given by its prompt embeddings is
forgotten through the same Unlearner, on a tiny random StableDiffusionPipeline built offline."""
import json

import pytest
import torch
from torch.utils.data import TensorDataset

pytest.importorskip("transformers")
from diffusers import UNet2DConditionModel  # noqa: E402
from problems import params, tiny_unet  # noqa: E402
from tiny_sd import HIDDEN, MAX_LENGTH, tiny_sd_pipeline  # noqa: E402

from safemax import Unlearner  # noqa: E402
from safemax.models.pipelines import (
    decode_latents,
    encode_images,
    pipeline_data,
    prompt_embeddings,
)

CHURCH = ["a church", "a photo of a church"]
OTHERS = ["a dog", "a tree", "a car", ""]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="module")
def retain(pipe):
    return pipeline_data(pipe, OTHERS, n_per_prompt=4, num_inference_steps=3, progress=False)


def test_prompt_embeddings_are_the_pipelines_own(pipe):
    emb = prompt_embeddings(pipe, CHURCH)
    assert emb.shape == (2, MAX_LENGTH, HIDDEN) and emb.dtype == torch.float32
    direct, _ = pipe.encode_prompt(CHURCH[1], "cpu", 1, False)
    torch.testing.assert_close(emb[1:], direct)
    assert prompt_embeddings(pipe, "a church").shape == (1, MAX_LENGTH, HIDDEN)


def test_latents_from_images_and_from_the_pipeline(pipe, retain):
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    lat = encode_images(pipe, images, batch_size=2)
    assert lat.shape == (3, 4, 8, 8)
    torch.testing.assert_close(lat, encode_images(pipe, images))  # seeded posterior sample
    mean = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    assert (lat - mean).abs().max() < 10 * pipe.vae.config.scaling_factor  # a sample around the mean
    assert decode_latents(pipe, lat).shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        encode_images(pipe, images * 200)
    x, c = retain.tensors
    assert x.shape == (16, 4, 8, 8) and c.shape == (16, MAX_LENGTH, HIDDEN)
    torch.testing.assert_close(c[4], prompt_embeddings(pipe, OTHERS[1])[0])  # 4 per prompt, in order


def concept_error(u, emb, n=32, seed=0):
    """Mean squared distance of the concept's ε prediction to √(1−ᾱ_t)·x_t on the window."""
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.randint(u.method.t_min, u.denoiser.num_train_timesteps, (n,), generator=g)
    with torch.no_grad():
        pred = u.denoiser.predict(x_t, t, emb[torch.arange(n) % len(emb)], model=u.unet)
    target = (1 - u.denoiser.table[t]).sqrt().float().view(-1, 1, 1, 1) * x_t
    return (pred - target).square().mean().item()


def test_safemax_forgets_a_concept_and_keeps_the_others(pipe):
    # A random text encoder maps every prompt to nearly the same embedding (cosine ~0.6-0.9),
    # which no model can tell apart; distinct random embeddings stand in for a trained encoder.
    g = torch.Generator().manual_seed(1)
    concepts = torch.randn(5, MAX_LENGTH, HIDDEN, generator=g)
    church, others = concepts[:1], concepts[1:]
    retain = TensorDataset(torch.randn(32, 4, 8, 8, generator=g), others[torch.arange(32) % 4])
    u = Unlearner(tiny_sd_pipeline(seed=0).unet, pipe.scheduler, forget={"church": church},
                  lr=3e-3, early_fraction=0.5)
    x, t = torch.randn(16, 4, 8, 8, generator=g), torch.randint(500, 1000, (16,), generator=g)

    def pred(c):
        with torch.no_grad():
            return u.denoiser.predict(x, t, c.expand(16, -1, -1))

    church0, kept0, before = pred(church), pred(others[:1]), concept_error(u, church)
    u.fit(retain=retain, forget=None, steps=40, batch_size=4, progress=False)  # data-free forget latents
    assert u.forget_set.images.shape[1:] == (4, 8, 8)
    assert concept_error(u, church) < 0.7 * before  # 1.11 -> 0.65 when written
    moved = (pred(church) - church0).square().mean()
    moved_kept = (pred(others[:1]) - kept0).square().mean()
    assert moved_kept < 0.6 * moved, (moved, moved_kept)  # 0.30 vs 0.15 when written


def test_real_forget_latents_and_the_pipeline_runs_with_the_unlearned_unet(pipe, retain, tmp_path):
    church = prompt_embeddings(pipe, CHURCH)
    forget = pipeline_data(pipe, CHURCH, n_per_prompt=2, num_inference_steps=2, progress=False)
    unet = tiny_sd_pipeline(seed=0).unet
    u = Unlearner(unet, pipe.scheduler, forget={"church": church}, lr=1e-3)
    u.fit(retain=retain, forget=forget, steps=2, batch_size=2, progress=False)
    u.save_pretrained(str(tmp_path))
    loaded = UNet2DConditionModel.from_pretrained(str(tmp_path))
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, u.unet.state_dict()[k])
    info = json.loads((tmp_path / "safemax.json").read_text())
    assert info["forget"] == ["church"] and info["method"] == "safemax"
    sd = tiny_sd_pipeline(seed=0)
    sd.unet = loaded
    image = sd("a photo of a church", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 16, 16) and torch.isfinite(image).all()


@pytest.mark.parametrize("method", ["salun", "ga"])
def test_baselines_run_on_concepts(pipe, retain, method):
    unet = tiny_sd_pipeline(seed=0).unet
    before = params(unet)
    u = Unlearner(unet, pipe.scheduler, forget={"church": prompt_embeddings(pipe, CHURCH)},
                  method=method, lr=1e-3)
    h = u.fit(retain=retain, forget=None, steps=2, batch_size=2, progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in h)
    assert any(not torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_clear_errors_for_concepts(pipe, retain):
    unet, church = tiny_sd_pipeline(seed=0).unet, prompt_embeddings(pipe, CHURCH)
    with pytest.raises(ValueError, match="Selective Amnesia replays"):
        Unlearner(unet, pipe.scheduler, forget={"church": church}, method="sa")
    # robust SAFEMax's default attacker moves a class-embedding row: a text model has none
    with pytest.raises(ValueError, match="attack_scope='weights' simulates fine-tuning instead"):
        Unlearner(unet, pipe.scheduler, forget={"church": church}, method="safemax-robust")
    with pytest.raises(ValueError, match=r"\[L, 16\] or \[N, L, 16\]"):
        Unlearner(unet, pipe.scheduler, forget={"church": torch.randn(4, 7)})
    with pytest.raises(ValueError, match="NaN"):
        Unlearner(unet, pipe.scheduler, forget={"church": church * float("nan")})
    with pytest.raises(ValueError, match="forget={name: prompt embeddings}"):
        Unlearner(unet, pipe.scheduler, forget=[1])
    with pytest.raises(ValueError, match="the model is class-conditional"):
        Unlearner(tiny_unet(), pipe.scheduler, forget={"church": church})
    u = Unlearner(unet, pipe.scheduler, forget={"church": church})
    with pytest.raises(ValueError, match="retain data must yield \\(latent, condition\\)"):
        u.fit(retain=TensorDataset(torch.randn(4, 4, 8, 8), torch.arange(4)), forget=None, steps=1)
    with pytest.raises(ValueError, match="latents: encode images"):
        u.fit(retain=TensorDataset(torch.randn(4, 3, 16, 16), retain.tensors[1][:4]), steps=1)


def test_the_concept_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/concept_digits.py (whose figures the README quotes), with tiny settings."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "concept_digits.py")
    done = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--train-steps", "3",
                           "--steps", "2", "--n", "5"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert {"before_w1", "after_w1", "before_w3", "after_w3"} <= result.keys()
    assert (tmp_path / "samples.png").exists() and (tmp_path / "model" / "config.json").exists()
