"""The command line, the embedded default model, sampling and metrics (fast)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from problems import HaltedModel

from safemax.cli import main
from safemax.data import ImageFolder, digits_dataset, split_by_class
from safemax.evaluation.metrics import gaussianity
from safemax.models.sampling import sample
from safemax.zoo import (
    CLASSIFIER_FILE,
    NOT_A_DIGIT,
    UNET_DIR,
    default_scheduler,
    load_default_classifier,
    load_default_unet,
)

diffusers = pytest.importorskip("diffusers")


# ---------------------------------------------------------------- the method's fixed point

def test_max_entropy_target_halts_denoising():
    """DDIM with the max-entropy prediction returns the starting noise, scaled by ≈ 0.96."""
    scheduler = default_scheduler()
    model = HaltedModel(scheduler.alphas_cumprod)
    out = sample(model, scheduler, torch.zeros(256, dtype=torch.long), num_inference_steps=50, seed=1)
    start = torch.randn((256, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    ratio = (out / start).flatten()
    assert ratio.std() < 1e-3 and 0.94 < ratio.mean() < 0.98
    g = gaussianity(out)
    assert abs(g["gaussian_mean"]) < 0.02 and 0.93 < g["gaussian_std"] < 0.99
    assert 2.8 < g["gaussian_kurtosis"] < 3.2


# ---------------------------------------------------------------- embedded default

def test_embedded_model_and_classifier_load_and_are_small():
    unet = load_default_unet()
    assert unet.config.num_class_embeds == 10 and unet.config.sample_size == 16
    assert next(unet.parameters()).dtype == torch.float32
    size = sum(os.path.getsize(os.path.join(UNET_DIR, f)) for f in os.listdir(UNET_DIR))
    assert size + os.path.getsize(CLASSIFIER_FILE) <= 10 * 2**20
    clf = load_default_classifier()
    images, labels = digits_dataset().tensors
    with torch.no_grad():
        assert (clf(images).argmax(1) == labels).float().mean() > 0.97
        noise = torch.randn(200, 1, 16, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        assert (clf(noise).argmax(1) == NOT_A_DIGIT).float().mean() > 0.95


def test_digits_data_and_split():
    data = digits_dataset()
    images, labels = data.tensors
    assert images.shape == (1797, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    forget, retain = split_by_class(data, [3])
    assert set(forget.tensors[1].tolist()) == {3} and 3 not in retain.tensors[1].tolist()
    assert len(forget) + len(retain) == len(data)


def test_image_folder(tmp_path):
    from PIL import Image
    for c in (0, 2):
        (tmp_path / str(c)).mkdir()
        for i in range(2):
            Image.new("L", (20, 20), color=40 * (i + c)).save(tmp_path / str(c) / f"{i}.png")
    ds = ImageFolder(str(tmp_path), size=8, channels=1)
    x, y = ds[3]
    assert len(ds) == 4 and x.shape == (1, 8, 8) and y == 2 and -1 <= x.min() <= x.max() <= 1
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(str(tmp_path / "0"), size=8, channels=1)


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize("command", [[], ["demo"], ["unlearn"], ["sample"], ["evaluate"], ["selfcheck"], ["probe"],
                                     ["compare"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: safemax" in text
    if command == ["demo"]:
        assert "--forget" in text and "--steps" in text and "--out" in text


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "safemax", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(__file__))
    assert out.returncode == 0 and "demo" in out.stdout and "unlearn" in out.stdout


def test_demo_smoke(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "2", "--batch-size", "8", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("forget", "steps", "seconds"):
        assert key in report
    assert report["gaussian_fraction"] == 0.0   # the digits' default, recorded
    for side in ("before", "after"):
        for key in ("fa", "fa_digits", "p_forget", "entropy", "retain_acc", "frechet",
                    "gaussian_mean", "gaussian_std"):
            assert isinstance(report[side][key], float)
    for name in ("before.png", "after.png", "curve.png", "report.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "unet" / "safemax.json").exists()


def test_unlearn_sample_evaluate_commands(tmp_path, capsys):
    out = tmp_path / "no3"
    main(["unlearn", "--forget", "3", "--steps", "2", "--batch-size", "4", "--out", str(out),
          "--checkpoint-every", "1"])
    assert (out / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "checkpoint" / "checkpoint.safetensors").exists()
    info = json.loads((out / "safemax.json").read_text())
    assert info["forget"] == [3] and info["steps"] == 2
    main(["sample", "--model", str(out), "--label", "3", "5", "--n", "2", "--steps", "2",
          "--out", str(tmp_path / "s.png")])
    assert (tmp_path / "s.png").exists()
    capsys.readouterr()
    main(["evaluate", "--model", str(out), "--forget", "3", "--n-forget", "4", "--n-per-class", "1",
          "--steps", "2"])
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["fa"] <= 1 and result["frechet"] >= 0


def test_unlearn_gaussian_fraction_one_data_free(tmp_path, monkeypatch):
    """--gaussian-fraction 1 --data-free: exact halting with neither forget images nor sampling."""
    import safemax.training.conditions

    def no_sampling(*args, **kwargs):
        raise AssertionError("gaussian_fraction=1 must not sample forget images")

    monkeypatch.setattr(safemax.training.conditions, "sample", no_sampling)
    out = tmp_path / "no3"
    main(["unlearn", "--forget", "3", "--steps", "2", "--batch-size", "4", "--gaussian-fraction", "1",
          "--data-free", "--out", str(out)])
    assert json.loads((out / "safemax.json").read_text())["gaussian_fraction"] == 1.0


def test_unlearn_kept_contrast(tmp_path):
    """--kept-contrast λ: SAFEMax with the retain dip's term, recorded; λ ≤ 1 and a baseline refuse it."""
    out = tmp_path / "no3"
    main(["unlearn", "--forget", "3", "--steps", "1", "--batch-size", "4", "--kept-contrast", "4",
          "--out", str(out)])
    assert json.loads((out / "safemax.json").read_text())["kept_contrast"] == 4.0
    with pytest.raises(ValueError, match="kept_contrast must be 0 .off. or a finite λ > 1"):
        main(["unlearn", "--forget", "3", "--steps", "1", "--kept-contrast", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="kept_contrast is not a setting of method .ga."):
        main(["unlearn", "--method", "ga", "--forget", "3", "--steps", "1", "--kept-contrast", "4",
              "--out", str(tmp_path / "y")])


def test_unlearn_with_a_baseline_method(tmp_path):
    out = tmp_path / "ga"
    main(["unlearn", "--method", "ga", "--forget", "3", "--steps", "1", "--batch-size", "4",
          "--out", str(out)])
    info = json.loads((out / "safemax.json").read_text())
    assert info["method"] == "ga" and info["lr"] == 1e-4 and info["steps"] == 1
    with pytest.raises(ValueError, match="early_fraction is not a setting of method .salun."):
        main(["unlearn", "--method", "salun", "--early-fraction", "0.5", "--forget", "3",
              "--steps", "1", "--out", str(tmp_path / "x")])


def test_unlearn_the_class_embedding_rows_only(tmp_path):
    from safetensors.torch import load_file

    from safemax.zoo import load_unet

    out = tmp_path / "rows"
    main(["unlearn", "--train", "class-embedding", "--forget", "3", "--steps", "2", "--batch-size", "4",
          "--out", str(out)])
    info = json.loads((out / "safemax.json").read_text())
    assert info["train"] == "class-embedding" and info["lr"] == 0.3
    saved, (original, _) = load_file(str(out / "diffusion_pytorch_model.safetensors")), load_unet("digits")
    for name, value in original.state_dict().items():   # only digit 3's row of the class embedding moved
        if name == "class_embedding.weight":
            assert (saved[name] != value).any(1).tolist() == [i == 3 for i in range(10)]
        else:
            assert torch.equal(saved[name], value), name


def test_unlearn_refuses_a_missing_model(tmp_path):
    with pytest.raises(ValueError, match="neither an embedded model .* nor a local folder"):
        main(["unlearn", "--model", str(tmp_path / "nope"), "--forget", "1", "--out", str(tmp_path / "o")])


def test_the_command_tells_a_mistake_in_one_line(tmp_path, capsys, monkeypatch):
    """`safemax` (the console script: cli) says a bad input's message, exit status 2, no traceback;
    SAFEMAX_TRACEBACK=1 raises it as main does; a method option that is no number says which."""
    import tomllib

    from safemax.cli import cli
    from safemax.errors import one_line_errors
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["safemax"] == "safemax.cli:cli"
    monkeypatch.delenv("SAFEMAX_TRACEBACK", raising=False)
    args = ["unlearn", "--model", str(tmp_path / "nope"), "--forget", "1", "--out", str(tmp_path / "o")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("safemax: error: ") and "nor a local folder" in err and "Traceback" not in err
    assert cli(["compare", "--quick", "--methods", "salun:retain_weight=abc", "--out", str(tmp_path / "c")]) == 2
    assert "'salun:retain_weight=abc': retain_weight=abc: not a number" in capsys.readouterr().err
    assert cli(["sample", "--model", "digits", "--label", "15", "3", "-1", "--out", str(tmp_path / "s.png")]) == 2
    assert "labels [-1, 15] are not class ids of this model (10 classes: ids 0..9)" in capsys.readouterr().err
    for bad, said in ((["--steps", "-3"], "--steps must be >= 0"), (["--early-fraction", "2"], "early_fraction must be")):
        assert cli(["demo", "--quick", "--out", str(tmp_path / "d"), *bad]) == 2   # before measuring anything
        err = capsys.readouterr().err
        assert said in err and "sampling" not in err
    def fails(argv):   # a failure that is no mistake of the user's (torch's own) keeps its traceback
        raise RuntimeError("a kernel failed")
    with pytest.raises(RuntimeError, match="a kernel failed"):
        one_line_errors(fails, "safemax")
    monkeypatch.setenv("SAFEMAX_TRACEBACK", "1")
    with pytest.raises(ValueError, match="nor a local folder"):
        cli(args)
    # (from the tests' folder: the repository root's safemax/ has no built extension when installed)
    here = os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-m", "safemax", "compare", "--forget", "12", "--quick"],
                          capture_output=True, text=True, env={**os.environ, "SAFEMAX_TRACEBACK": ""}, cwd=here)
    assert done.returncode == 2 and "(--forget) must be a class id 0..9" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "safemax.zoo.train", "--dataset", "fashion-mnist", "--work",
                           str(tmp_path / "w"), "--out", str(tmp_path / "z")], capture_output=True, text=True,
                          env={**os.environ, "SAFEMAX_TRACEBACK": "", "FASHION_MNIST_DIR": str(tmp_path / "none")},
                          cwd=here)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("python -m safemax.zoo.train: error: Fashion-MNIST not found")


def test_zoo_training_resumes_bit_for_bit(tmp_path, monkeypatch):
    """python -m safemax.zoo.train: Ctrl-C saves the training state, --resume continues it and
    ends where an uninterrupted run ends (tiny: 4 steps at batch 4)."""
    from safetensors.torch import load_file

    import safemax.zoo.train as train

    kw = dict(steps=4, batch_size=4, checkpoint_minutes=1e9)
    train.train_unet("digits", work=str(tmp_path / "w1"), out=str(tmp_path / "a"), **kw)
    before = signal.getsignal(signal.SIGINT)   # (SIG_IGN where the tests run in the background)
    clip, calls = train.torch.nn.utils.clip_grad_norm_, []

    def interrupt_at_third(*args, **kwargs):   # Ctrl-C in the middle of the third step
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return clip(*args, **kwargs)

    monkeypatch.setattr(train.torch.nn.utils, "clip_grad_norm_", interrupt_at_third)
    with pytest.raises(SystemExit) as stop:
        train.train_unet("digits", work=str(tmp_path / "w2"), out=str(tmp_path / "b"), **kw)
    assert stop.value.code == 130 and not (tmp_path / "b").exists()
    assert signal.getsignal(signal.SIGINT) is before   # restored
    monkeypatch.setattr(train.torch.nn.utils, "clip_grad_norm_", clip)
    with pytest.raises(ValueError, match="was made with steps=4"):
        train.train_unet("digits", work=str(tmp_path / "w2"), out=str(tmp_path / "b"), resume=True,
                         steps=5, batch_size=4)
    train.train_unet("digits", work=str(tmp_path / "w2"), out=str(tmp_path / "b"), resume=True, **kw)
    a = load_file(str(tmp_path / "a" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "b" / "training.json").read_text())["steps"] == 4


def test_zoo_training_without_a_class_never_sees_it(tmp_path):
    """--exclude-class N (the "retrain" reference of unlearning N): N's images never enter a batch,
    so its class-embedding row leaves training exactly as initialised while the others learn."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    import safemax.zoo.train as train

    with pytest.raises(ValueError, match="give out="):
        train.train_unet("digits", steps=1, batch_size=4, exclude=[3], work=str(tmp_path))
    with pytest.raises(ValueError, match=r"class ids \[10\] out of range"):
        train.train_unet("digits", steps=1, batch_size=4, exclude=[10], work=str(tmp_path), out=str(tmp_path / "x"))
    with pytest.raises(SystemExit):   # the zoo's model is never the reference
        train.main(["--exclude-class", "3", "--out", str(tmp_path / "y")])
    train.train_unet("digits", steps=3, batch_size=16, exclude=[3], work=str(tmp_path / "w"),
                     out=str(tmp_path / "u"), checkpoint_minutes=1e9)
    torch.manual_seed(0)   # train_unet initialises its UNet right after seeding
    init = UNet2DModel(**train.model_info("digits").unet_config).class_embedding.weight.detach().half()
    rows = load_file(str(tmp_path / "u" / "diffusion_pytorch_model.safetensors"))["class_embedding.weight"]
    assert torch.equal(rows[3], init[3])
    assert all(not torch.equal(rows[c], init[c]) for c in range(10) if c != 3)
    record = json.loads((tmp_path / "u" / "training.json").read_text())
    assert record["exclude"] == [3] and record["images"] == int((train.model_info("digits").dataset("train")
                                                                 .tensors[1] != 3).sum())


def test_frechet_reference_measures_as_a_fresh_distance_in_any_order():
    """``FrechetReference`` computes the real images' features once; each ``distance`` equals a
    fresh torchmetrics FID over the same images bit for bit, in any order of calls, and the
    written-out formula ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) on the classifier's features."""
    import numpy as np
    from scipy import linalg
    from torchmetrics.image.fid import FrechetInceptionDistance

    from safemax.evaluation.metrics import (
        FrechetReference,
        _Features,
        evaluate,
        frechet_distance,
    )
    from safemax.zoo import load_classifier, model_info
    clf = load_classifier("digits")
    images, labels = model_info("digits").reference_images()
    real = images[labels != 3][:400].float()
    g = torch.Generator().manual_seed(0)
    fakes = [(images[labels == c][:60].float() + 0.3 * torch.randn(60, *images.shape[1:], generator=g)).clamp(-1, 1)
             for c in (1, 5)]

    def fresh(fake):
        fid = FrechetInceptionDistance(feature=_Features(clf), normalize=True).double()
        fid.update(real, real=True)
        fid.update(fake, real=False)
        return float(fid.compute())

    ref = FrechetReference(clf, real)
    for fake in fakes + fakes[::-1] + fakes:
        assert ref.distance(fake) == fresh(fake) == frechet_distance(clf, real, fake)
    with torch.no_grad():
        a, b = clf.features(real).double().numpy(), clf.features(fakes[0]).double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert ref.distance(fakes[0]) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="another classifier"):
        evaluate(None, None, load_classifier("digits"), [3], [1], ref)
