"""The Fashion-MNIST Stable Diffusion pipeline trained here (safemax.zoo.sd_pipeline), at its tiny
size on a few dozen synthetic images (seconds): each stage trains and resumes after Ctrl-C to the
weights of an uninterrupted run, the assembled folder loads with diffusers alone and generates at
guidance 7.5 and from the empty prompt, and bad input is one clear error."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from safemax.data import captions
from safemax.data.caption_tokenizer import caption_tokenizer
from safemax.zoo import sd_parts
from safemax.zoo import sd_pipeline as sp

N = 40


def synthetic(n: int = N, seed: int = 0):
    """``n`` 1×32×32 images in [−1, 1] whose mean brightness tells the class, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = (torch.rand(n, 1, 32, 32, generator=g) * 0.4 - 1 + labels.view(-1, 1, 1, 1) * 0.15).clamp(-1, 1)
    return images, labels


@pytest.fixture(scope="module")
def tokenizer():
    return caption_tokenizer()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One whole tiny run: ``(out, work)``."""
    root = tmp_path_factory.mktemp("sd")
    out = sp.train(str(root / "pipe"), "tiny", work=str(root / "work"), data=synthetic(), progress=False)
    return out, str(root / "work")


def interrupt_at(step):
    def callback(run):
        if run.steps == step:
            os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C: the loop saves after this step and exits
    return callback


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def resumes_bit_for_bit(run, tmp_path, at: int = 2) -> None:
    """``run(work, resume=False, callback=None)`` (a stage trained into ``work``), stopped by
    Ctrl-C after step ``at`` and resumed, ends with the weights of an uninterrupted run."""
    whole = weights(run(tmp_path / "whole"))
    with pytest.raises(SystemExit):
        run(tmp_path / "cut", callback=interrupt_at(at))
    resumed = weights(run(tmp_path / "cut", resume=True))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("stage", ["clip", "vae"])
def test_a_stage_interrupted_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(stage, tokenizer, tmp_path):
    data = synthetic()

    def run(work, resume=False, callback=None):
        common = dict(size="tiny", work=str(work), steps=6, resume=resume, progress=False, callback=callback)
        return sp.train_clip(tokenizer, data, **common) if stage == "clip" else sp.train_vae(data, **common)

    whole = weights(run(tmp_path / "whole"))
    with pytest.raises(SystemExit) as stop:
        run(tmp_path / "cut", callback=interrupt_at(3))
    assert stop.value.code == 130
    assert not os.path.exists(tmp_path / "cut" / stage / "training.json")      # not finished
    resumed = weights(run(tmp_path / "cut", resume=True))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), f"the resumed {stage} differs"
    record = json.load(open(tmp_path / "cut" / stage / "training.json"))
    assert record["steps"] == 6 and record["recipe"]["steps"] == 6


def test_the_unet_stage_resumes_through_the_trainer(tokenizer, tmp_path):
    data = synthetic()
    clip = sd_parts.make_clip("tiny", tokenizer)
    text_encoder, vae = sd_parts.text_encoder_of(clip), sd_parts.make_vae("tiny").eval()

    def run(work, resume=False, callback=None):
        return sp.train_unet(tokenizer, text_encoder, vae, data, size="tiny", work=str(work), steps=5,
                             resume=resume, progress=False, callback=callback)

    resumes_bit_for_bit(run, tmp_path)


def test_the_caption_condition_draws_captions_of_each_rows_class_and_drops_some():
    table = torch.arange(len(captions.CAPTIONS), dtype=torch.float32).view(-1, 1, 1).expand(-1, 16, 4)
    condition = sd_parts.CaptionPrompts(table, drop=0.3)
    labels = torch.arange(10).repeat(100)
    cond = condition(labels, torch.Generator().manual_seed(0))
    ids = cond[:, 0, 0].long()
    assert cond.shape == (1000, 16, 4)
    assert 0.25 < (ids == 0).float().mean() < 0.35                       # the empty caption
    kept = ids != 0
    assert torch.equal(captions.CAPTION_CLASSES[ids[kept]], labels[kept])
    again = condition(labels, torch.Generator().manual_seed(0))
    assert torch.equal(cond, again)
    with pytest.raises(ValueError, match="one row per caption"):
        sd_parts.CaptionPrompts(table[:5])


def test_the_assembled_folder_is_a_stable_diffusion_pipeline(trained):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open
    from transformers import CLIPTokenizer
    out, work = trained
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "clip"):
        assert os.path.isdir(os.path.join(out, part)), part
    assert {"vocab.json", "merges.txt"} <= set(os.listdir(os.path.join(out, "tokenizer")))
    assert not any(f.endswith(".bin") for _, _, files in os.walk(out) for f in files)   # safetensors only
    with safe_open(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    with safe_open(os.path.join(out, "text_encoder", "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float32
    index = json.load(open(os.path.join(out, "model_index.json")))
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    tok = CLIPTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    captions.check_tokenizer(tok)

    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32
    assert type(pipe.scheduler).__name__ == "DDPMScheduler" and pipe.scheduler.config.steps_offset == 1
    vae_record = json.load(open(os.path.join(work, "vae", "training.json")))
    assert pipe.vae.config.scaling_factor == vae_record["scaling_factor"] > 0
    g = torch.Generator().manual_seed(0)
    images = pipe(["a photo of a sneaker", "a bag on a black background"], num_inference_steps=3,
                  guidance_scale=7.5, output_type="pt", generator=g).images
    assert images.shape == (2, 1, 32, 32) and images.isfinite().all() and 0 <= images.min() <= images.max() <= 1
    empty = pipe("", num_inference_steps=3, guidance_scale=7.5, output_type="pil").images[0]
    assert empty.size == (32, 32) and empty.mode == "L"
    assert sd_parts.fashion_frame(images).shape == (2, 1, 28, 28)

    record = json.load(open(os.path.join(out, "training.json")))
    assert record["size"] == "tiny" and set(record["stages"]) == set(sp.STAGES)
    assert record["erase_templates"] == captions.ERASE_TEMPLATES and record["dtype"] == "float16"
    assert "commit" in record["provenance"] and "provenance" in record["stages"]["unet"]


def test_diffusers_alone_loads_it(trained):
    out, _ = trained
    code = ("import sys, torch; from diffusers import StableDiffusionPipeline; "
            f"p = StableDiffusionPipeline.from_pretrained({out!r}); p.set_progress_bar_config(disable=True); "
            "x = p('a photo of a dress', num_inference_steps=2, output_type='pt').images; "
            "assert x.shape == (1, 1, 32, 32), x.shape; "
            "assert not [m for m in sys.modules if m.startswith('safemax')]; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def unshipped(folder: str, zoo_name: str) -> list:
    """The files of ``folder`` that pyproject's package-data globs would not ship as the zoo's
    ``safemax/zoo/<zoo_name>`` (setuptools' ``*`` stays within one folder)."""
    import fnmatch
    import tomllib
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["safemax.zoo"]
    out = Path(folder)

    def shipped(rel):
        parts = (zoo_name,) + rel.parts
        return any(len(g.split("/")) == len(parts) and all(map(fnmatch.fnmatch, parts, g.split("/"))) for g in globs)
    return [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not shipped(p.relative_to(out))]


def test_every_file_of_the_pipeline_folder_is_shipped_by_the_wheel(trained):
    """pyproject's package-data globs take every file the zoo's folder will hold, so an installed
    safemax has the whole pipeline."""
    missing = unshipped(trained[0], "fashion_mnist_sd")
    assert not missing, f"not in pyproject's package-data: {missing}"


def test_the_shipped_clip_scores_images_against_captions(trained, tokenizer):
    out, _ = trained
    clip = sp.load_clip(out)
    images = synthetic(4)[0]
    ids = sd_parts.tokenize(tokenizer, ["a photo of a coat", ""])
    with torch.no_grad():
        result = clip(input_ids=ids, pixel_values=images)
    assert result.logits_per_image.shape == (4, 2)


def test_resume_skips_finished_stages_and_refuses_another_recipe(trained, tmp_path):
    out, work = trained
    before = os.path.getmtime(os.path.join(work, "unet", "training.json"))
    again = sp.train(str(tmp_path / "again"), "tiny", work=work, data=synthetic(), resume=True, progress=False)
    assert os.path.getmtime(os.path.join(work, "unet", "training.json")) == before   # not retrained
    for part in ("unet", "vae"):
        a = open(os.path.join(out, part, "diffusion_pytorch_model.safetensors"), "rb").read()
        assert a == open(os.path.join(again, part, "diffusion_pytorch_model.safetensors"), "rb").read()
    with pytest.raises(ValueError, match="was made with"):
        sp.train(str(tmp_path / "other"), "tiny", work=work, data=synthetic(), resume=True,
                 steps={"clip": 7}, progress=False)


def test_a_resume_that_trains_the_text_encoder_again_does_not_keep_an_old_unet(trained, tmp_path):
    import shutil
    work = str(tmp_path / "work")
    shutil.copytree(trained[1], work)
    os.remove(os.path.join(work, "clip", "training.json"))     # as if the CLIP had not finished
    def written(stage):
        return os.stat(os.path.join(work, stage, "training.json")).st_mtime_ns

    vae, unet = written("vae"), written("unet")
    sp.train(str(tmp_path / "pipe"), "tiny", work=work, data=synthetic(), resume=True, progress=False)
    assert written("unet") != unet and written("vae") == vae     # the UNet trained again, the VAE kept


def test_a_session_stopped_by_its_minutes_goes_on_to_the_same_pipeline(trained, tmp_path):
    out, _ = trained
    work, path = str(tmp_path / "work"), str(tmp_path / "pipe")
    assert sp.train(path, "tiny", work=work, data=synthetic(), minutes=1e-9, progress=False) is None
    assert sp.train(path, "tiny", work=work, data=synthetic(), resume=True, progress=False) == path
    for part in ("unet", "vae"):
        a = open(os.path.join(out, part, "diffusion_pytorch_model.safetensors"), "rb").read()
        assert a == open(os.path.join(path, part, "diffusion_pytorch_model.safetensors"), "rb").read()


def test_bad_input_is_one_clear_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="unknown size 'huge'; the sizes are full, tiny"):
        sd_parts.size_of("huge")
    with pytest.raises(ValueError, match=r"unknown stages \['text'\]"):
        sp.train(str(tmp_path / "p"), "tiny", data=synthetic(), steps={"text": 3})
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        sp.train(str(tmp_path / "p"), "tiny", work=str(tmp_path / "w"), data=synthetic(), steps={"clip": 0})
    with pytest.raises(ValueError, match=r"images must be float \[N, 1, 32, 32\]"):
        sp.train(str(tmp_path / "p"), "tiny", data=(torch.zeros(4, 1, 28, 28), torch.zeros(4)))
    with pytest.raises(ValueError, match="one class id 0..9 per image"):
        sp.train(str(tmp_path / "p"), "tiny", data=(torch.zeros(4, 1, 32, 32), torch.full((4,), 10)))
    with pytest.raises(ValueError, match="tokens .* at most 16"):
        sd_parts.tokenize(tokenizer, ["a photo of a sneaker " * 4])
    with pytest.raises(ValueError, match="labels must be class ids"):
        sd_parts.CaptionPrompts(torch.zeros(len(captions.CAPTIONS), 16, 4))(torch.tensor([12]), torch.Generator())
    with pytest.raises(ValueError, match="resume needs work"):
        from safemax.zoo.stage import train_stage
        train_stage(torch.nn.Linear(1, 1), lambda m, g: m.weight.sum(), steps=1, lr=1e-3, resume=True)


def test_load_pipeline_says_how_to_train_it_when_it_is_absent(monkeypatch, tmp_path, trained):
    import safemax.zoo as zoo
    monkeypatch.setitem(zoo.PIPELINES, "fashion-mnist-sd", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="not trained yet: python -m safemax.zoo.sd_pipeline --out"):
        zoo.load_pipeline("fashion-mnist-sd")
    with pytest.raises(ValueError, match="unknown pipeline 'sd'"):
        zoo.load_pipeline("sd")
    monkeypatch.setitem(zoo.PIPELINES, "fashion-mnist-sd", trained[0])
    pipe = zoo.load_pipeline("fashion-mnist-sd")
    assert pipe.unet.dtype == torch.float32 and pipe.unet.config.sample_size == sd_parts.LATENT_SIZE


def test_estimate_times_every_stage():
    est = sp.estimate("tiny", repeats=2)
    assert set(est) == set(sp.STAGES) | {"total_hours"}
    assert all(est[s]["seconds_per_step"] > 0 for s in sp.STAGES)


def test_the_command_line_trains_a_smoke_pipeline_on_fashion_mnist(fashion_mnist_dir, tmp_path, capsys):
    assert sp.main(["--out", str(tmp_path / "pipe"), "--work", str(tmp_path / "work"), "--tiny",
                    "--limit", "48", "--unet-steps", "3"]) == 0
    assert "StableDiffusionPipeline.from_pretrained" in capsys.readouterr().out
    record = json.load(open(tmp_path / "pipe" / "training.json"))
    assert record["stages"]["unet"]["recipe"]["steps"] == 3 and record["stages"]["clip"]["recipe"]["images"] == 48


def test_the_sample_quality_bar_is_measured_per_class_with_intervals(trained, tmp_path):
    from diffusers import StableDiffusionPipeline

    from safemax.zoo.sd_quality import sample_quality
    pipe = StableDiffusionPipeline.from_pretrained(trained[0])
    pipe.set_progress_bar_config(disable=True)
    q = sample_quality(pipe, n=1, n_empty=3, num_inference_steps=2, progress=False, grid=str(tmp_path / "g.png"))
    from PIL import Image
    assert Image.open(tmp_path / "g.png").size == (4 * (9 * 33 + 1), 4 * (11 * 33 + 1))   # 9 a row, 10 classes + empty
    assert len(q["per_class"]) == 10 and all(c["n"] == 27 for c in q["per_class"].values())
    assert q["overall"]["n"] == 270 and q["empty_prompt"]["garments"]["n"] == 3
    assert q["meets"] == all(c["value"] >= 0.8 for c in q["per_class"].values())
    assert q["min_class"]["value"] == min(c["value"] for c in q["per_class"].values())
    assert sum(q["empty_prompt"]["classes"].values()) <= 3
