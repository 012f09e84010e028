"""The SD3-architecture pipeline trained here (safemax.zoo.sd3_pipeline), at its tiny size on a tiny
Stable Diffusion pipeline's parts (seconds): the folder is a StableDiffusion3Pipeline that diffusers
loads (without T5, as SD3 allows) and that draws at SD3's own guidance; its first text encoder is
the base's CLIP, its second its own; the transformer learns on the pipeline's own prompt
embeddings; its stage resumes bit for bit; and a wrong base is one clear error."""
import json
import os

import pytest
import torch
from test_sd_pipeline import resumes_bit_for_bit, synthetic, unshipped, weights

from safemax.data import captions
from safemax.zoo import sd_parts
from safemax.zoo import sd3_pipeline as s3
from safemax.zoo import sd_pipeline as sp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return sp.train(str(root / "pipe"), "tiny", work=str(root / "work"), data=synthetic(), progress=False)


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    out = s3.train(str(root / "pipe"), "tiny", base=base, work=str(root / "work"), data=synthetic(), progress=False)
    return out, str(root / "work")


def test_the_folder_is_an_sd3_pipeline_on_the_base_s_parts(base, trained):
    from diffusers import StableDiffusion3Pipeline

    from safemax.zoo import open_pipeline
    from safemax.zoo.sd_quality import usual_call
    out, work = trained
    index = json.load(open(os.path.join(out, "model_index.json")))
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["text_encoder_3"] == [None, None]
    assert not any(f.endswith(".bin") for _, _, files in os.walk(out) for f in files)   # safetensors only
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)   # diffusers alone
    assert type(open_pipeline(out)).__name__ == "StableDiffusion3Pipeline"
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.vae.config.shift_factor == 0.0

    clip = sp.load_clip(base)   # the first text encoder is the base's CLIP text tower and projection
    for k, v in clip.text_model.state_dict().items():
        assert torch.equal(pipe.text_encoder.text_model.state_dict()[k], v), k
    assert torch.equal(pipe.text_encoder.text_projection.weight, clip.text_projection.weight)
    assert not torch.equal(pipe.text_encoder_2.text_model.embeddings.token_embedding.weight,
                           clip.text_model.embeddings.token_embedding.weight)   # the second is its own
    record = json.load(open(os.path.join(out, "training.json")))
    assert record["synonyms"] == [list(w) for w in captions.SYNONYMS] and set(record["stages"]) == set(s3.STAGES)
    assert usual_call(out) == dict(guidance_scale=7.0, num_inference_steps=28)

    # the caption table is the pipeline's own encode_prompt of each caption
    table = s3.caption_table(pipe)
    emb, _, pooled, _ = pipe.encode_prompt(["a photo of a bag", ""], None, None, do_classifier_free_guidance=False)
    row = captions.CAPTIONS.index("a photo of a bag")
    assert torch.allclose(table["prompt_embeds"][row], emb[0]) and torch.allclose(table["pooled_prompt_embeds"][0], pooled[1])

    images = pipe(["a photo of a bag", ""], num_inference_steps=2, guidance_scale=s3.GUIDANCE, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()


def test_the_transformer_stage_resumes_bit_for_bit(base, tmp_path):
    tokenizer, clip, vae = s3.base_parts(base)
    encoders = [sd_parts.text_encoder_with_projection(clip)] * 2

    def run(work, resume=False, callback=None):
        return s3.train_transformer(tokenizer, encoders, vae, synthetic(), "tiny", work=str(work), steps=4,
                                    resume=resume, progress=False, callback=callback)

    resumes_bit_for_bit(run, tmp_path)


def test_the_caption_condition_of_a_text_family_dict_drops_every_key_together():
    n = len(captions.CAPTIONS)
    table = {"prompt_embeds": torch.arange(n, dtype=torch.float32).view(-1, 1, 1).expand(-1, 4, 2),
             "pooled_prompt_embeds": torch.arange(n, dtype=torch.float32).view(-1, 1).expand(-1, 3)}
    cond = sd_parts.CaptionPrompts(table, drop=0.3)(torch.arange(10).repeat(50), torch.Generator().manual_seed(0))
    ids = cond["prompt_embeds"][:, 0, 0]
    assert torch.equal(ids, cond["pooled_prompt_embeds"][:, 0]) and 0.2 < (ids == 0).float().mean() < 0.4
    with pytest.raises(ValueError, match=r"table\['pooled_prompt_embeds'\]: one row per caption"):
        sd_parts.CaptionPrompts(dict(table, pooled_prompt_embeds=table["pooled_prompt_embeds"][:3]))


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a Stable Diffusion pipeline trained by safemax.zoo.sd_pipeline"):
        s3.train(str(tmp_path / "p"), "tiny", base=str(tmp_path), data=synthetic())
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        s3.train(str(tmp_path / "p"), "huge", data=synthetic())
    with pytest.raises(ValueError, match=r"unknown stages \['unet'\]"):
        s3.train(str(tmp_path / "p"), "tiny", data=synthetic(), steps={"unet": 3})


def test_a_concept_is_erased_from_it_through_the_command(trained, tmp_path):
    """safemax erase on the SD3 pipeline trained here (a folder with no T5): the captioned
    evaluation (its classifier, paraphrases, kept classes) runs on it, as on the Stable Diffusion one,
    with the flow's still halting."""
    from safemax.cli import main
    out, _ = trained
    assert main(["erase", "--pipeline", out, "--concept", "bag", "--out", str(tmp_path / "e"), "--steps", "2",
                 "--batch-size", "2", "--n-per-prompt", "1", "--num-inference-steps", "2", "--eval-n", "1",
                 "--flow-halt", "still", "--gaussian-fraction", "0.5"]) == 0
    manifest = json.loads((tmp_path / "e" / "safemax.json").read_text())
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert manifest["family"] == "sd3" and manifest["captioned"] and manifest["settings"]["flow_halt"] == "still"
    cell = report["after"]["guidance_7.5"]["bag"]
    assert cell["fa_erase"]["n"] == 4 and report["after"]["guidance_7.5"]["kept"]["others"]["n"] > 0


@pytest.mark.parametrize("tokens", ["word", "after"])
def test_uce_on_sd3_edits_the_text_projections_only_and_maps_the_concept_to_the_guide(trained, tokens):
    """UCE on the SD3 pipeline (this project's extension: its MMDiT's context projections read a stream
    the timestep has modulated, so the prompt-only maps are edited): only the context embedder and
    the pooled text projection change; with a vanishing λ the concept's token state and pooled
    embedding give the guide's outputs, a kept prompt's its own."""
    from safemax.concepts.uce import pooled_embeddings, text_projections, token_embeddings, uce_edit
    from safemax.zoo import open_pipeline
    out, _ = trained
    pipe = open_pipeline(out)
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    record = uce_edit(pipe, ["a photo of a bag"], ["a photo of a coat"], lamb=1e-6, tokens=tokens)
    after = pipe.transformer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"context_embedder.weight", "time_text_embed.text_embedder.linear_1.weight"}
    assert record["modules"] == 2 and record["tokens"] == tokens
    fresh = open_pipeline(out)
    bag, empty, coat = token_embeddings(fresh, ["a photo of a bag", "", "a photo of a coat"])
    p_bag, p_empty, p_coat = pooled_embeddings(fresh, ["a photo of a bag", "", "a photo of a coat"])
    for name, (m, kind) in text_projections(pipe).items():
        w_old = before[f"{name}.weight"]
        c, g, k = (bag, empty, coat) if kind == "tokens" else (p_bag, p_empty, p_coat)
        torch.testing.assert_close(m.weight @ c, w_old @ g, atol=5e-3, rtol=5e-3)   # the concept -> the guide
        torch.testing.assert_close(m.weight @ k, w_old @ k, atol=5e-3, rtol=5e-3)   # the kept prompt stays


def test_the_zoo_serves_it_by_name_and_says_how_to_train_it(monkeypatch, tmp_path, trained):
    import safemax.zoo as zoo
    monkeypatch.setitem(zoo.PIPELINES, "fashion-mnist-sd3", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="not trained yet: python -m safemax.zoo.sd3_pipeline --out"):
        zoo.load_pipeline("fashion-mnist-sd3")
    monkeypatch.setitem(zoo.PIPELINES, "fashion-mnist-sd3", trained[0])
    pipe = zoo.load_pipeline("fashion-mnist-sd3")
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    assert pipe.transformer.dtype == torch.float32


def test_the_pipeline_halting_benchmark_erases_and_reads_the_std_at_two_step_counts(trained, tmp_path, capsys):
    """benchmarks/pipeline_halting.py at its smoke size on the tiny SD3: each setting's erase and
    evaluation, the concept's latent std at a second step count, one table; a finished run is kept.
    Then benchmarks/guided_residuals.py splits that run's guided residual."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "pipeline_halting", Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_halting.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, _ = trained
    still = "safemax:flow_halt=still,gaussian_fraction=0.5,forget_guidance=7"
    argv = ["--smoke", "--pipeline", out, "--concept", "dress", "--settings", "safemax", still, "--out", str(tmp_path)]
    assert script.main(argv) == 0
    run = tmp_path / "safemax-flow_halt=still-gaussian_fraction=0.5-forget_guidance=7" / "dress-seed0"
    result = json.loads((run / "halting.json").read_text())
    assert (result["guidance"], result["extra_steps"]) == (7.0, 3)   # SD3's usual guidance; the smoke's steps
    assert set(result["std_extra_steps"]) == {"guidance_7", "guidance_1"} and "provenance" in result
    assert set(result["measured"]["guidance_7"]) == {"std", "fa_erase", "fa_paraphrase", "others", "neighbours", "frechet"}
    erased = json.loads((run / "safemax.json").read_text())
    assert erased["settings"]["flow_halt"] == "still" and erased["settings"]["forget_guidance"] == 7
    table = (tmp_path / "summary.md").read_text()
    assert table.count("| `safemax` | dress |") == 2 and table.count(f"| `{still}` | dress |") == 2
    # the original was measured once: the second setting's erase took the first's evaluation of it
    befores = [json.loads((d / "dress-seed0" / "report.json").read_text())["before"] for d in sorted(tmp_path.iterdir()) if d.is_dir()]
    assert len(befores) == 2 and befores[0] == befores[1] and befores[0]["guidance"] == [7.0, 1.0]
    stamp = (run / "halting.json").stat().st_mtime
    assert script.main(argv) == 0 and (run / "halting.json").stat().st_mtime == stamp   # kept, not run again

    # why it does or does not halt: benchmarks/guided_residuals.py on that run's erased transformer —
    # the guided residual on the still chain's states is exactly its two terms' difference
    spec = importlib.util.spec_from_file_location(
        "guided_residuals", Path(__file__).resolve().parents[1] / "benchmarks" / "guided_residuals.py")
    residuals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(residuals)
    r_out = tmp_path / "residuals"
    assert residuals.main(["--smoke", "--pipeline", out, "--concept", "dress", "--runs", str(run),
                           "--out", str(r_out)]) == 0
    record = json.loads((r_out / "residuals.json").read_text())
    (r,) = record["runs"]
    assert r["flow_halt"] == "still" and record["guidance"] == 7.0 and len(r["per_sigma"]) == 2
    for row in r["per_sigma"]:   # ‖own − drift‖² = ‖own‖² + ‖drift‖² − 2⟨own, drift⟩
        assert row["guided"] == pytest.approx(row["own"] + row["drift"] + row["cross"], abs=5e-5)
    assert (r_out / "residuals.png").exists() and "| `safemax-flow_halt=still" in (r_out / "residuals.md").read_text()


def test_the_concept_head_to_head_judges_the_sd3_pipeline_at_its_own_guidance(trained, tmp_path):
    """compare_concepts on the SD3 pipeline evaluates at SD3's usual 7.0 (and 1), not Stable
    Diffusion's 7.5, and its picture and table say so."""
    from safemax.harness.concept_compare import compare_concepts, usual
    out, _ = trained
    assert usual(out) == (7.0, 28)
    text = compare_concepts(out, str(tmp_path), ["uce"], ["bag"], [0], smoke=True, progress=False)
    report = json.loads((tmp_path / "uce" / "bag-seed0" / "report.json").read_text())
    assert set(k for k in report["after"] if k.startswith("guidance_")) == {"guidance_7", "guidance_1"}
    assert "| all | 7 |" in text and json.loads((tmp_path / "summary.json").read_text())["settings"]["guidance"] == 7.0
    assert (tmp_path / "summary.png").exists()


def test_esd_runs_in_the_head_to_head_with_its_flow_recipe(base, trained, tmp_path):
    """On the SD3 pipeline ESD takes the authors' SD3.5 recipe (200 steps at 3e-5, x_t sampled by
    the original at the pipeline's own guidance and steps); on the Stable Diffusion one its SD
    recipe; and a smoke ESD-x erase runs end to end on the flow."""
    from safemax.harness.concept_compare import FLOW_ESD, METHOD_SETTINGS, compare_concepts, method_spec
    out, _ = trained
    assert method_spec("esd-u", pipeline=out)[1] == dict(FLOW_ESD, sample_guidance=7.0, ddim_steps=28)
    assert method_spec("esd-x:lr=1e-4", pipeline=out)[1]["lr"] == 1e-4
    assert method_spec("esd-x", pipeline=base)[1] == METHOD_SETTINGS["esd-x"]
    compare_concepts(out, str(tmp_path), ["esd-x"], ["bag"], [0], smoke=True, progress=False)
    manifest = json.loads((tmp_path / "esd-x" / "bag-seed0" / "safemax.json").read_text())
    assert manifest["method"] == "esd-x" and manifest["settings"]["sample_from"] == "original"
    assert manifest["settings"]["sample_guidance"] == 7.0 and manifest["settings"]["ddim_steps"] == 28


def test_every_file_of_the_pipeline_folder_is_shipped_by_the_wheel(trained):
    """pyproject's package-data globs take every file the zoo's SD3 folder will hold."""
    missing = unshipped(trained[0], "fashion_mnist_sd3")
    assert not missing, f"not in pyproject's package-data: {missing}"


def test_the_transformer_trains_further_from_its_finished_ema_and_that_phase_resumes(base, trained, tmp_path):
    """--transformer-more-steps: a second phase starts from the finished transformer's EMA (not from
    scratch), draws other batches (the next seed), records what it continued, resumes bit for bit,
    and the pipeline assembled after it carries its weights and record."""
    import shutil
    tokenizer, clip, vae = s3.base_parts(base)
    _, work = trained
    encoders = [sd_parts.text_encoder_with_projection(clip)] * 2
    first = weights(s3._load(os.path.join(work, "transformer"), "cpu"))

    def run(into, resume=False, callback=None):
        if not os.path.exists(into):
            shutil.copytree(work, into)   # the finished stages
        return s3.continue_transformer(tokenizer, encoders, vae, synthetic(), 4, work=str(into), resume=resume,
                                       progress=False, callback=callback)

    resumes_bit_for_bit(run, tmp_path)
    more = weights(s3._load(str(tmp_path / "whole" / s3.MORE), "cpu"))
    assert any(not torch.equal(first[k], more[k]) for k in first)
    moved = max((first[k] - more[k]).abs().max() / (first[k].abs().max() + 1e-12) for k in first)
    assert moved < 1.0   # a few steps on from the first phase, not a fresh start
    record = json.load(open(tmp_path / "whole" / s3.MORE / "training.json"))
    made = json.load(open(os.path.join(work, "transformer", "training.json")))["recipe"]
    assert record["recipe"] == dict(after=made, steps=4, batch_size=made["batch_size"], lr=made["lr"],
                                    seed=made["seed"] + 1) and record["steps"] == 4

    out = s3.train(str(tmp_path / "pipe"), "tiny", base=base, work=str(tmp_path / "whole"), resume=True,
                   data=synthetic(), progress=False, more_steps=4)   # reuses both phases: no training
    shipped = json.load(open(os.path.join(out, "training.json")))
    assert set(shipped["stages"]) == {*s3.STAGES, s3.MORE} and shipped["stages"][s3.MORE]["recipe"]["steps"] == 4
    from diffusers import SD3Transformer2DModel
    loaded = SD3Transformer2DModel.from_pretrained(os.path.join(out, "transformer"))
    assert all(torch.equal(v.half().float(), loaded.state_dict()[k].float()) for k, v in more.items())


def test_training_further_needs_a_finished_transformer(base, tmp_path):
    tokenizer, clip, vae = s3.base_parts(base)
    encoders = [sd_parts.text_encoder_with_projection(clip)] * 2
    with pytest.raises(FileNotFoundError, match="the transformer stage is not finished.*--transformer-more-steps"):
        s3.continue_transformer(tokenizer, encoders, vae, synthetic(), 4, work=str(tmp_path))
    with pytest.raises(ValueError, match="pass more_steps too"):
        s3.train(str(tmp_path / "p"), "tiny", base=base, work=str(tmp_path), data=synthetic(), more_lr=1e-4)
