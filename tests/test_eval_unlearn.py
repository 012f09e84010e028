"""eval-unlearn's ``safemax`` technique (``safemax.integrations.eval_unlearn``).

The technique itself is tested without eval-unlearn, on a tiny random SD pipeline and its
``safemax erase`` output (2 erasing steps, 2 denoising steps: seconds on one core). The last test
runs eval-unlearn's own command line on that output (skipped without eval-unlearn): its
technique found through the entry point pyproject.toml declares, its ``ua_ira`` metric scoring
with a stand-in tiny CLIP under the name of the real one in a Hugging Face cache in tmp_path,
offline — nothing is downloaded.
"""
import importlib
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import tiny_clip_tokenizer, tiny_sd_pipeline

from safemax.integrations.eval_unlearn import SafemaxTechnique

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
QUICK = dict(device="cpu", num_inference_steps=2)                      # the technique's generation
QUICK_ERASE = dict(n_per_prompt=1, num_inference_steps=2, batch_size=2)  # erase's data and fit
PROMPTS = ["a cat", "a dog", "a tree"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``(base, erased)``: a tiny SD pipeline folder and ``safemax erase``'s output of it without
    "a cat"."""
    from safemax.concepts import erase
    root = tmp_path_factory.mktemp("eval_unlearn")
    base = str(root / "base")
    tiny_sd_pipeline(0).save_pretrained(base)
    erased = erase(base, ["a cat"], keep=["a dog", ""], out=str(root / "erased"), steps=2, progress=False,
                   **QUICK_ERASE)
    return base, erased


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_one_pil_image_per_prompt_at_the_size_asked(folders):
    images = SafemaxTechnique(output=folders[1], **QUICK).generate(PROMPTS, seed=0)
    assert len(images) == 3 and all(isinstance(im, Image.Image) for im in images)
    assert {im.size for im in images} == {(16, 16)}   # the pipeline's default size
    t = SafemaxTechnique(output=folders[1], height=32, width=24, batch_size=2, negative_prompt="a car",
                         call_options={"guidance_rescale": 0.5}, **QUICK)
    images = t.generate(PROMPTS, seed=0)
    assert len(images) == 3 and {im.size for im in images} == {(24, 32)}


def test_the_same_seed_gives_the_same_images(folders):
    t = SafemaxTechnique(output=folders[1], **QUICK)
    first = pixels(t.generate(PROMPTS, seed=5))
    assert np.array_equal(first, pixels(t.generate(PROMPTS, seed=5)))
    assert np.array_equal(first[1:], pixels(t.generate(PROMPTS[1:], seed=6)))   # image i: seed + i
    assert not np.array_equal(first, pixels(t.generate(PROMPTS, seed=6)))
    batched = pixels(SafemaxTechnique(output=folders[1], batch_size=2, **QUICK).generate(PROMPTS, seed=5))
    assert np.abs(batched - first).max() <= 1   # batching changes the arithmetic, not the noise
    assert len(t.generate(PROMPTS, seed=None)) == 3   # eval-unlearn's command line passes no seed


def test_it_loads_the_edit_not_the_base(folders):
    base, erased = folders
    edited, plain = SafemaxTechnique(output=erased, **QUICK), SafemaxTechnique(output=base, **QUICK)
    assert edited.manifest["concepts"][0]["name"] == "a cat" and plain.manifest is None
    before, after = plain.pipe.unet.state_dict(), edited.pipe.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_it_erases_inside_it_when_given_a_pipeline(folders, tmp_path):
    out = str(tmp_path / "erased-here")
    t = SafemaxTechnique(pipeline=folders[0], concepts="a cat", keep=["a dog", ""], steps=2, out=out,
                         erase_options=QUICK_ERASE, progress=False, **QUICK)
    assert t.output == out and os.path.isfile(os.path.join(out, "safemax.json"))
    assert t.manifest["base_model"] == os.path.abspath(folders[0])
    assert len(t.generate(["a cat"], seed=0)) == 1


@pytest.mark.parametrize("config, message", [
    ({}, "got neither"),
    ({"output": "x", "pipeline": "y"}, "not both"),
    ({"output": "x", "colour": "red"}, "colour is not a setting of eval-unlearn's safemax technique"),
    ({"output": "x", "steps": 10}, "steps: settings of erasing here"),
    ({"pipeline": "y"}, "pipeline needs concepts"),
    ({"pipeline": "y", "concepts": []}, "concepts must be a text or a non-empty list of texts"),
    ({"pipeline": "y", "concepts": "a", "erase_options": {"seed": 1}}, "erase_options seed"),
    ({"output": "x", "num_inference_steps": 0}, "num_inference_steps must be a whole number"),
])
def test_a_bad_config_is_refused_in_one_line(config, message):
    with pytest.raises(ValueError, match=message) as e:
        SafemaxTechnique(**config)
    assert "\n" not in str(e.value)


def test_a_missing_output_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="neither a zoo pipeline") as e:
        SafemaxTechnique(output=str(tmp_path / "missing"), **QUICK)
    assert "\n" not in str(e.value)


def entry_points():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    return project, project["entry-points"]["eval_unlearn.techniques"]


def test_the_entry_point_and_the_extra_are_declared():
    project, group = entry_points()
    module, _, name = group["safemax"].partition(":")
    assert getattr(importlib.import_module(module), name) is SafemaxTechnique
    assert any(r.startswith("eval-unlearn>=") for r in project["optional-dependencies"]["eval-unlearn"])


def stand_in_clip(hf_home, name: str = "openai/clip-vit-base-patch32"):
    """A tiny random CLIP model and processor saved in a Hugging Face cache under ``name``: what
    ``CLIPModel.from_pretrained(name)`` finds offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    repo = os.path.join(hf_home, "hub", "models--" + name.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", "0" * 40)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("0" * 40)
    tokenizer = tiny_clip_tokenizer(model_max_length=77)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(snapshot)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(snapshot)


def test_eval_unlearn_runs_and_scores_a_safemax_output(folders, tmp_path):
    pytest.importorskip("eval_unlearn")
    # The entry point as pyproject.toml declares it, in a distribution of its own on PYTHONPATH: what
    # `pip install safemax[eval-unlearn]` installs, without reinstalling safemax here.
    _, group = entry_points()
    probe = tmp_path / "entry-points"
    (probe / "safemax_eval_unlearn_probe-0.dist-info").mkdir(parents=True)
    (probe / "safemax_eval_unlearn_probe-0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: safemax-eval-unlearn-probe\nVersion: 0\n")
    (probe / "safemax_eval_unlearn_probe-0.dist-info" / "entry_points.txt").write_text(
        "[eval_unlearn.techniques]\n" + "".join(f"{k} = {v}\n" for k, v in group.items()))
    stand_in_clip(str(tmp_path / "hf"))
    (tmp_path / "target.csv").write_text("prompt\na cat\na photo of a cat\n")
    (tmp_path / "retain.csv").write_text("prompt\na dog\na photo of a dog\n")
    config = {
        "output_dir": str(tmp_path / "results"),
        "technique": {"name": "safemax", "config": dict(output=folders[1], erase_concept="cat", **QUICK)},
        "metrics": [{"name": "ua_ira", "config": {
            "clip_model_name": "openai/clip-vit-base-patch32", "device": "cpu",
            "target_prompts_path": str(tmp_path / "target.csv"), "retain_prompts_path": str(tmp_path / "retain.csv"),
            "target_concept": "cat", "retain_concept": "dog", "batch_size": 4}}],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(probe), env.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "eval_unlearn.cli", "run", "--config", "config.json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(tmp_path / "results" / "safemax_cat_latest_report.json") as f:
        report = json.load(f)
    result = report["metric_results"]["ua_ira"]
    assert report["technique_name"] == "safemax" and 0 <= result["value"] <= 1
    assert (result["details"]["target_total"], result["details"]["retain_total"]) == (2, 2)   # all scored
    saved = sorted(p.parent.name for p in (tmp_path / "results").glob("safemax_ua_ira_*/images/*/*.png"))
    assert saved == ["retain", "retain", "target", "target"]
