"""The zoo's second embedded model (Fashion-MNIST) by name, and every command with it (fast:
quick settings; the data-dependent tests skip without Fashion-MNIST, fail under CI)."""
import json
import os

import pytest
import torch
from needs_data import fashion_mnist_or_skip

from safemax.cli import main
from safemax.zoo import (
    MODELS,
    NOT_A_GARMENT,
    load_classifier,
    load_default_classifier,
    load_default_unet,
    load_unet,
    model_info,
)

pytest.importorskip("diffusers")
FM = model_info("fashion-mnist")


def test_zoo_serves_both_models_by_name():
    for name, size in (("digits", 16), ("fashion-mnist", 28)):
        unet, scheduler = load_unet(name)
        assert unet.config.sample_size == size and unet.config.num_class_embeds == 10
        assert next(unet.parameters()).dtype == torch.float32 and not unet.training
        assert scheduler.config.num_train_timesteps == 1000
        assert load_classifier(name).size == size
    # the old names still serve the digits model, identically
    a, b = load_default_unet(), load_unet("digits")[0]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert load_default_classifier().size == 16
    with pytest.raises(ValueError, match="unknown embedded model 'mnist'; the zoo has: digits, fashion-mnist"):
        load_unet("mnist")
    with pytest.raises(ValueError, match="unknown embedded model"):
        load_classifier("cifar10")


def test_fashion_mnist_model_is_small_fp16():
    files = [os.path.join(FM.unet_dir, f) for f in os.listdir(FM.unet_dir)] + [FM.classifier_file]
    assert sum(os.path.getsize(f) for f in files) <= 10 * 2**20
    from safetensors.torch import load_file
    weights = load_file(os.path.join(FM.unet_dir, "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    with open(os.path.join(FM.unet_dir, "scheduler_config.json")) as f:
        assert json.load(f)["_class_name"] == "DDPMScheduler"


def test_fashion_mnist_classifier_meets_its_bars():
    """≥ 90% on the 10,000 test images; pure noise → "not a garment"."""
    fashion_mnist_or_skip()
    from safemax.evaluation.metrics import classify
    clf = load_classifier("fashion-mnist")
    images, labels = FM.dataset("test").tensors
    assert (classify(clf, images).argmax(1) == labels).float().mean() >= 0.90
    noise = torch.randn(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    assert (classify(clf, noise).argmax(1) == NOT_A_GARMENT).float().mean() > 0.95


def test_fashion_mnist_base_samples_are_garments():
    """A few fresh samples of the easiest classes are recognised (quick). The model's sample
    quality itself — mean per-class accuracy, measured from the model, not read from its
    training record — is tests/test_acceptance.py::test_fashion_mnist_samples_are_their_class."""
    from safemax.evaluation.metrics import classify
    from safemax.models.sampling import sample
    labels = torch.tensor([1, 1, 8, 8, 9, 9])   # trousers, bags, ankle boots
    images = sample(*load_unet("fashion-mnist"), labels, num_inference_steps=20, seed=0)
    assert (classify(load_classifier("fashion-mnist"), images).argmax(1) == labels).float().mean() >= 5 / 6


def test_demo_on_fashion_mnist(tmp_path):
    fashion_mnist_or_skip()
    out = tmp_path / "demo"
    assert main(["demo", "--dataset", "fashion-mnist", "--forget", "0", "--steps", "2",
                 "--batch-size", "4", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "fashion-mnist" and report["forget"] == 0
    assert report["lr"] == 1e-4   # the model's own default (digits: 5e-4)
    assert report["gaussian_fraction"] == 0.5   # and its exact halting (digits: 0)
    digits = tmp_path / "digits"
    main(["demo", "--steps", "1", "--batch-size", "2", "--quick", "--out", str(digits)])
    digits_report = json.loads((digits / "report.json").read_text())
    assert set(report) == set(digits_report) and digits_report["lr"] == 5e-4   # one schema
    for side in ("before", "after"):
        assert isinstance(report[side]["fa"], float) and isinstance(report[side]["frechet"], float)
    assert "T-shirt/top" in (out / "report.md").read_text()
    from diffusers import DDPMScheduler, UNet2DModel
    unet = UNet2DModel.from_pretrained(out / "unet")
    assert unet.config.sample_size == 28
    assert DDPMScheduler.from_pretrained(out / "unet").config.num_train_timesteps == 1000


def test_every_command_takes_the_fashion_mnist_model(tmp_path, capsys):
    fashion_mnist_or_skip()
    out = tmp_path / "no-tshirt"
    main(["unlearn", "--model", "fashion-mnist", "--forget", "0", "--steps", "1", "--batch-size", "2",
          "--out", str(out)])
    info = json.loads((out / "safemax.json").read_text())
    assert info["forget"] == [0] and info["lr"] == 1e-4   # the embedded model's default
    assert info["gaussian_fraction"] == 0.5   # (the demo's: exact halting)
    main(["sample", "--model", "fashion-mnist", "--label", "0", "9", "--n", "1", "--steps", "2",
          "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    # a saved 28×28 model is measured by the Fashion-MNIST classifier without being told
    main(["evaluate", "--model", str(out), "--forget", "0", "--n-forget", "2", "--n-per-class", "1",
          "--steps", "2"])
    assert 0 <= json.loads(capsys.readouterr().out)["fa"] <= 1
    with pytest.raises(ValueError, match="the digits classifier measures 16×16 images"):
        main(["evaluate", "--model", str(out), "--dataset", "digits", "--forget", "0"])
    with pytest.raises(ValueError, match="classes are 0..9"):
        main(["evaluate", "--model", "fashion-mnist", "--forget", "10"])
    cmp = tmp_path / "cmp"
    assert main(["compare", "--model", "fashion-mnist", "--quick", "--methods", "safemax",
                 "--out", str(cmp)]) == 0
    results = json.loads((cmp / "results.json").read_text())
    assert results["settings"]["model"] == "fashion-mnist" and results["methods"]["safemax"]["lr"] == 1e-4
    assert results["methods"]["safemax"]["method_config"]["gaussian_fraction"] == 0.5   # as the demo runs it
    assert "Embedded fashion-mnist model" in (cmp / "results.md").read_text()


def test_evaluate_refuses_a_model_no_classifier_measures(tmp_path):
    from diffusers import UNet2DModel
    path = tmp_path / "rgb"
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 8),
                norm_num_groups=4, num_class_embeds=10, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2).save_pretrained(path)
    with pytest.raises(ValueError, match="cannot tell which embedded classifier measures .*pass --dataset"):
        main(["evaluate", "--model", str(path), "--forget", "0"])


def test_zoo_registry_is_consistent():
    for name, info in MODELS.items():
        assert info.name == name and len(info.class_names) == 10
        assert info.unet_config["sample_size"] == info.image_size == info.classifier_config["size"]
