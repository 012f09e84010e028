"""The erasure probes (safemax.evaluation.probes) and ``safemax probe`` (fast: the embedded digits model,
few samples, few DDIM steps)."""
import json

import pytest
import torch
from problems import HaltedModel

from safemax.cli import main
from safemax.data import digits_dataset
from safemax.evaluation.probes import (
    ExactlyHalted,
    guided,
    seeds,
    table,
    trajectory,
    wilson_upper,
)
from safemax.models.sampling import sample
from safemax.zoo import load_classifier, load_unet

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def digits():
    unet, scheduler = load_unet("digits")
    images, labels = digits_dataset().tensors
    return unet, scheduler, load_classifier("digits"), images[labels == 3][:12]


def test_the_original_model_lets_the_class_through(digits):
    unet, scheduler, clf, threes = digits
    rows = trajectory(unet, scheduler, clf, 3, threes, t_starts=(250,), others=[5], num_inference_steps=10)
    by = {r["condition"]: r for r in rows}
    assert by["forgotten"]["t"] == 200   # DDIM-10's steps are 900, 800, ...: it starts at the last ≤ 250
    assert by["forgotten"]["rate"] >= 0.9 and by["forgotten"]["n"] == 12
    assert by["others (mean)"]["rate"] == by[5]["rate"]
    s = seeds(unet, scheduler, clf, 3, n=20, num_inference_steps=10)[0]
    assert s["rate"] >= 0.9 and s["upper95"] >= s["rate"]


def test_a_halted_model_gives_noise_and_guidance_at_zero_is_plain_sampling(digits):
    _, scheduler, clf, _ = digits
    halted = HaltedModel(scheduler.alphas_cumprod)
    assert seeds(halted, scheduler, clf, 3, n=16, num_inference_steps=10)[0]["rate"] == 0
    rows, pictures = guided(halted, scheduler, clf, 3, n=6, scales=(0.0, 5.0), num_inference_steps=10,
                            return_samples=True)
    plain = sample(halted, scheduler, torch.full((6,), 3), num_inference_steps=10, seed=0)
    torch.testing.assert_close(pictures[0.0], plain)
    assert [r["scale"] for r in rows] == [0.0, 5.0] and rows[0]["rate"] == 0
    assert not torch.allclose(pictures[5.0], plain)   # the guide's gradient moved the samples


def test_exactly_halted_replaces_only_the_forgotten_class(digits):
    """The control: rows of the forgotten class get ε* = √(1−ᾱ_t)·x_t exactly, the others the
    original model's prediction; its forget samples are noise, the other classes still draw."""
    unet, scheduler, clf, threes = digits
    ideal = ExactlyHalted(unet, scheduler, [3])
    x, t, y = torch.randn(4, 1, 16, 16), torch.tensor([10, 500, 500, 999]), torch.tensor([3, 3, 5, 1])
    with torch.no_grad():
        out, original = ideal(x, t, class_labels=y).sample, unet(x, t, class_labels=y).sample
    s = (1 - scheduler.alphas_cumprod[t].float()).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(out[:2], (s * x)[:2])
    torch.testing.assert_close(out[2:], original[2:])
    assert seeds(ideal, scheduler, clf, 3, n=16, num_inference_steps=10)[0]["rate"] == 0
    rows = trajectory(ideal, scheduler, clf, 3, threes, t_starts=(500,), others=[5], num_inference_steps=10)
    by = {r["condition"]: r for r in rows}
    assert by["forgotten"]["rate"] <= 0.1
    assert seeds(ideal, scheduler, clf, 5, n=8, num_inference_steps=10)[0]["rate"] >= 0.75   # kept
    from diffusers import DDPMScheduler
    with pytest.raises(ValueError, match="ε-prediction"):
        ExactlyHalted(unet, DDPMScheduler(prediction_type="v_prediction"), [3])


def test_probe_refusals(digits):
    unet, scheduler, clf, threes = digits
    with pytest.raises(ValueError, match="forget=10 is not a class of this model"):
        seeds(unet, scheduler, clf, 10, n=2)
    with pytest.raises(ValueError, match="the classifier measures 28×28 images, the model makes 16×16"):
        seeds(unet, scheduler, load_classifier("fashion-mnist"), 3, n=2)
    from diffusers import FlowMatchEulerDiscreteScheduler
    with pytest.raises(ValueError, match="rectified-flow model is not supported"):
        guided(unet, FlowMatchEulerDiscreteScheduler(), clf, 3, n=2)


def test_wilson_upper():
    assert abs(wilson_upper(0, 300) - 0.0126) < 5e-4
    assert wilson_upper(5, 5) == 1.0 and wilson_upper(0, 0) == 1.0


def test_probe_command(tmp_path, capsys):
    out = tmp_path / "p"
    main(["probe", "--model", "digits", "default", "--forget", "3", "--images", "4", "--t", "300",
          "--scales", "0", "2", "--n-guided", "3", "--n-seeds", "5", "--steps", "4", "--out", str(out)])
    report = json.loads((out / "probes.json").read_text())
    assert report["models"] == ["digits", "default"] and report["forget"] == 3
    assert report["results"]["digits"] == report["results"]["default"]   # the same model twice
    md = (out / "probes.md").read_text()
    assert "| probe | n | digits | default |" in md and "classifier-guided towards the class, scale 2" in md
    assert (out / "guided.png").stat().st_size > 0
    assert "many seeds of the class" in table(report["results"])
    # --control adds the exactly halted model as the last column: it never draws the class
    main(["probe", "--model", "digits", "--forget", "3", "--images", "4", "--t", "300", "--scales", "0",
          "--n-guided", "3", "--n-seeds", "5", "--steps", "4", "--control", "--out", str(out / "c")])
    report = json.loads((out / "c" / "probes.json").read_text())
    assert report["models"] == ["digits", "exactly halted (control)"]
    seeds_row = [r for r in report["results"]["exactly halted (control)"] if r["probe"] == "seeds"][0]
    assert seeds_row["rate"] == 0
