"""``safemax erase`` / ``safemax evaluate --pipeline`` (safemax.concepts): every family's tiny
pipeline saved to disk, erased by the command and loaded back by its own pipeline class; the
captioned zoo-style pipeline (trained here at tiny size) erased and evaluated end to end; resume;
one clear line for each bad input."""
import json
import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
from diffusers import DDPMPipeline, DiffusionPipeline, UNet2DModel  # noqa: E402
from tiny_pipelines import (  # noqa: E402
    SIZES,
    tiny_flux_pipeline,
    tiny_pixart_pipeline,
    tiny_sana_pipeline,
    tiny_sd3_pipeline,
    tiny_sdxl_pipeline,
)
from tiny_sd import tiny_sd_pipeline  # noqa: E402

from safemax.cli import main  # noqa: E402
from safemax.concepts import erase, load_erased  # noqa: E402
from safemax.concepts.prompts import class_named, paraphrases, resolve  # noqa: E402
from safemax.data import captions  # noqa: E402
from safemax.models.pipelines import latents_for  # noqa: E402

SEQ = {"max_sequence_length": 8}
# family -> (builder, its call options at the tiny size)
FAMILIES = {
    "sd": (tiny_sd_pipeline, {}),
    "sdxl": (tiny_sdxl_pipeline, {}),
    "sd3": (tiny_sd3_pipeline, SEQ),
    "flux": (tiny_flux_pipeline, {**SIZES["flux"], **SEQ}),
    "pixart": (tiny_pixart_pipeline, {**SIZES["pixart"], **SEQ}),
    "sana": (tiny_sana_pipeline, {**SIZES["sana"], **SEQ}),
}
TINY = ["--steps", "2", "--batch-size", "2", "--n-per-prompt", "1", "--num-inference-steps", "2", "--lr", "1e-2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def saved(builder, folder):
    builder().save_pretrained(folder, safe_serialization=True)
    return str(folder)


def options_args(options):
    return [a for k, v in options.items() for a in ("--option", f"{k}={json.dumps(v)}")]


def latents(pipe, options):
    pipe.set_progress_bar_config(disable=True)
    return latents_for(pipe, ["a church"], [3], num_inference_steps=2, guidance_scale=1.0, **options)


@pytest.mark.parametrize("lora", [False, True], ids=["denoiser", "lora"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_is_erased_by_the_command_and_loads_back(name, lora, tmp_path):
    builder, options = FAMILIES[name]
    base = saved(builder, tmp_path / "base")
    out = tmp_path / "out"
    argv = ["erase", "--pipeline", base, "--concept", "a church", "--exact", "--keep", "a dog", "--no-evaluate",
            "--save-pipeline", "--out", str(out), *TINY, *options_args(options)]
    assert main(argv + (["--lora-rank", "2"] if lora else [])) == 0
    manifest = json.loads((out / "safemax.json").read_text())
    assert manifest["family"] == name and manifest["concepts"][0]["erase_prompts"] == ["a church"]
    assert manifest["steps"] == 2 and manifest["keep"] == ["a dog"] and manifest["options"] == options
    original = latents(DiffusionPipeline.from_pretrained(base), options)
    if lora and name != "pixart":   # the family's own loader takes the LoRA file
        assert manifest["output"] == "lora"
        pipe = DiffusionPipeline.from_pretrained(base)
        pipe.load_lora_weights(str(out / "lora"))
    else:   # the edited denoiser (PixArt's LoRA merged: diffusers has no PixArt LoRA loader)
        assert manifest["output"] == "denoiser"
        pipe, _ = load_erased(str(out))
    edited = latents(pipe, options)
    assert not torch.allclose(edited, original, atol=1e-6), "the edit did not reach the loaded pipeline"
    # the whole-pipeline folder (LoRA merged) loads with diffusers alone and is the same model
    whole = DiffusionPipeline.from_pretrained(str(out / "pipeline"))
    assert type(whole).__name__ == manifest["pipeline_class"]
    torch.testing.assert_close(latents(whole, options), edited, atol=2e-4, rtol=2e-4)
    assert (out / "README.md").read_text().startswith("---\nbase_model:") and (out / "grid.png").stat().st_size
    from safemax.concepts.erase import drawn_concept_latents   # the concept's drawn rows, for the attacks
    (church,) = drawn_concept_latents(str(out), resolve(["a church"], exact=True)[0]).values()
    assert len(church) == 1 and church.abs().sum() > 0


# ------------------------------------------------------------------ the captioned pipeline

@pytest.fixture(scope="module")
def captioned_pipeline(tmp_path_factory):
    """The zoo's Stable Diffusion pipeline at the smoke size (seconds of training: it draws
    noise, but every part and file is the real one)."""
    from safemax.zoo import sd_pipeline
    folder = tmp_path_factory.mktemp("fm-sd")
    n = 40
    data = (torch.rand(n, 1, 32, 32) * 2 - 1, torch.arange(n) % 10)
    return sd_pipeline.train(str(folder / "pipe"), "tiny", work=str(folder / "work"), data=data, progress=False)


def test_a_captioned_pipeline_is_erased_and_evaluated_end_to_end(captioned_pipeline, tmp_path, capsys):
    out = tmp_path / "no-sneaker"
    assert main(["erase", "--pipeline", captioned_pipeline, "--concept", "a running shoe", "--out", str(out),
                 *TINY, "--eval-n", "1", "--save-pipeline"]) == 0
    from safemax.concepts.loading import is_captioned   # the whole-pipeline folder is measured as its base
    assert is_captioned(str(out / "pipeline")) and (out / "pipeline" / "clip" / "config.json").exists()
    manifest = json.loads((out / "safemax.json").read_text())
    concept = manifest["concepts"][0]
    assert concept["class_id"] == 7 and concept["word"] == "running shoe" and concept["neighbours"] == [9, 5]
    assert "a photo of a running shoe" in concept["erase_prompts"]
    assert all("running shoe" not in p for p in concept["paraphrases"]) and len(concept["paraphrases"]) == 10
    assert manifest["captioned"] and len(manifest["keep"]) == 9 * 4 + 1   # the other classes and ""
    report = json.loads((out / "report.json").read_text())
    for side in ("before", "after"):
        at = report[side]["guidance_7.5"]
        cell = at["a running shoe"]
        assert cell["fa_erase"]["n"] == 4 and cell["fa_paraphrase"]["n"] == 10
        assert 0 <= cell["fa_erase"]["ci95"][0] <= cell["fa_erase"]["value"] <= cell["fa_erase"]["ci95"][1] <= 1
        assert at["kept"]["neighbour_classes"] == [5, 9] and at["kept"]["neighbours"]["n"] == 8
        assert at["kept"]["others"]["n"] == 7 * 4 and at["kept"]["frechet"] >= 0 and "clip_score" in at["kept"]
        per_class = at["kept"]["per_class"]   # the kept classes one by one: they add up to the pooled shares
        assert len(per_class) == 9 and "Sneaker" not in per_class and all(c["n"] == 4 for c in per_class.values())
        hits = sum(round(c["value"] * c["n"]) for c in per_class.values())
        assert hits == round(at["kept"]["neighbours"]["value"] * 8) + round(at["kept"]["others"]["value"] * 28)
        assert "guidance_1" in report[side]
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "forget accuracy, paraphrases" in card
    # safemax evaluate on the output: its own concepts, the erased model
    capsys.readouterr()
    assert main(["evaluate", "--pipeline", str(out), "--n-per-prompt", "1", "--steps", "2", "--guidance", "7.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["base_model"] == captioned_pipeline and result["concepts"][0]["class_id"] == 7
    assert result["guidance_7.5"]["a running shoe"]["fa_erase"]["n"] == 4


def test_an_interrupted_erase_resumes_to_the_same_model(captioned_pipeline, tmp_path, monkeypatch):
    from safemax.concepts import card
    common = dict(steps=3, batch_size=2, n_per_prompt=1, num_inference_steps=2, lr=1e-2, checkpoint_every=1,
                  keep=["a photo of a bag", ""], progress=False)
    erase(captioned_pipeline, ["sneaker"], out=str(tmp_path / "whole"), **common)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(card, "save_grid", interrupted)   # after the fit, before anything is written
    with pytest.raises(KeyboardInterrupt):
        erase(captioned_pipeline, ["sneaker"], out=str(tmp_path / "cut"), **common)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume"):
        erase(captioned_pipeline, ["sneaker"], out=str(tmp_path / "cut"), **common)
    erase(captioned_pipeline, ["sneaker"], out=str(tmp_path / "cut"), resume=True, **common)
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="already holds a finished erase"):
        erase(captioned_pipeline, ["sneaker"], out=str(tmp_path / "cut"), **common)


# ------------------------------------------------------------------ prompts and bad inputs

def test_a_concept_is_the_class_its_words_name():
    assert class_named("a running shoe") == (7, "running shoe")
    assert class_named("T-Shirt") == (0, "t-shirt") and class_named("a shirt") == (6, "shirt")
    assert class_named("an ankle boot") == (9, "ankle boot") and class_named("a church") is None
    with pytest.raises(ValueError, match="several classes"):
        class_named("a sandal and a bag")
    assert paraphrases(7, "sneaker") == captions.prompts(7, "paraphrase")
    concepts, keep = resolve(["a sneaker"], captioned=True)
    assert concepts[0].erase_prompts == captions.prompts(7, "erase") and keep[-1] == ""
    assert not any(captions.class_of(k) == 7 for k in keep)
    assert resolve(["a church"], exact=True)[0][0].erase_prompts == ["a church"]


def test_the_grid_shows_the_concept_its_paraphrase_and_four_kept_classes():
    from safemax.concepts.erase import _grid_prompts
    concepts, keep = resolve(["a sneaker"], captioned=True)
    rows = _grid_prompts(concepts, keep)
    assert rows[:2] == [concepts[0].erase_prompts[0], concepts[0].paraphrases[0]] and rows[-1] == ""
    assert len({captions.class_of(r) for r in rows[2:-1]}) == 4


@pytest.mark.parametrize("concepts, keep, captioned, message", [
    (["  "], None, False, "is empty"),
    ([], None, False, "no concept given"),
    (["a church"], ["a photo of a church"], False, "both kept and erased"),
    (["a sneaker"], ["a trainer on a beach"], True, "both kept and erased"),
    (["a church"], None, True, "names no class this pipeline was trained on"),
    (["sneaker", "a trainer"], None, True, "name the same class"),
])
def test_bad_concepts_get_one_clear_line(concepts, keep, captioned, message):
    with pytest.raises(ValueError, match=message):
        resolve(concepts, keep, captioned=captioned)


def test_bad_pipelines_and_prompts_get_one_clear_line(tmp_path, capsys):
    from safemax.cli import cli

    def error(argv):
        capsys.readouterr()
        assert cli(["erase", *argv, "--out", str(tmp_path / "o"), *TINY]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("safemax: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        return lines[0]

    sd = saved(tiny_sd_pipeline, tmp_path / "sd")
    assert "takes at most 16" in error(["--pipeline", sd, "--concept", "a " + "very " * 20 + "long concept"])
    ddpm = tmp_path / "ddpm"
    DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                  down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                 scheduler=tiny_sd_pipeline().scheduler).save_pretrained(ddpm)
    assert "supports the text-to-image pipelines" in error(["--pipeline", str(ddpm), "--concept", "x"])
    no_text = tmp_path / "no-text"
    pipe = tiny_sd_pipeline()
    pipe.text_encoder = None
    pipe.register_modules(text_encoder=None)
    pipe.save_pretrained(no_text)
    assert "no text encoder" in error(["--pipeline", str(no_text), "--concept", "a church"])
    assert "neither a zoo pipeline" in error(["--pipeline", str(tmp_path / "nowhere"), "--concept", "a church"])
    assert "is empty" in error(["--pipeline", sd, "--concept", ""])
    assert "both kept and erased" in error(["--pipeline", sd, "--concept", "a church", "--keep", "church"])
    assert "write KEY=VALUE" in error(["--pipeline", sd, "--concept", "a church", "--option", "height"])


def test_the_concept_benchmark_pools_its_runs(captioned_pipeline, tmp_path, capsys):
    """benchmarks/concept_erasure.py at its smoke size: two seeds of one concept, pooled."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "concept_erasure", Path(__file__).resolve().parents[1] / "benchmarks" / "concept_erasure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "c"
    argv = ["--smoke", "--pipeline", captioned_pipeline, "--concepts", "sneaker", "--seeds", "0", "1", "--out", str(out)]
    assert script.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())["methods"]["safemax"]
    at = summary["overall"]["guidance_7.5"]
    assert summary["runs"] == 2 and at["fa_erase"]["n"] == 2 * 4 and at["fa_paraphrase"]["n"] == 2 * 10
    assert at["others"]["n"] == 2 * 7 * 4 and at["neighbours"]["ci95"][0] <= at["neighbours"]["change"]
    assert summary["overall"]["erase_seconds"]["n"] == 2 and "guidance_1" in summary["by_concept"]["sneaker"]
    text = capsys.readouterr().out
    assert "**safemax**" in text and "| all | 7.5 |" in text and "| sneaker | 1 |" in text
    # a second method beside it: UCE, the closed form, with its own row block
    assert script.main(argv + ["--methods", "uce", "--seeds", "0"]) == 0
    both = json.loads((out / "summary.json").read_text())
    # the folder's summary keeps the safemax runs the call did not name (both seeds)
    assert set(both["methods"]) == {"safemax", "uce"} and both["methods"]["uce"]["runs"] == 1
    assert both["methods"]["safemax"]["runs"] == 2 and both["seeds"] == [0, 1]
    assert (out / "summary.png").stat().st_size > 10_000   # quality against time, a point a method
    # it measured no original of its own: the safemax run's evaluation of it, taken over whole
    before = [json.loads((out / m / "sneaker-seed0" / "report.json").read_text())["before"] for m in ("safemax", "uce")]
    assert before[1] == before[0] and before[0]["seconds"] > 0
    # the same head-to-head through the command line
    assert main(["compare", "--pipeline", captioned_pipeline, "--concept", "bag", "--seeds", "0", "--methods", "uce",
                 "--quick", "--out", str(tmp_path / "cmp")]) == 0
    assert "**uce**" in capsys.readouterr().out and (tmp_path / "cmp" / "uce" / "bag-seed0" / "report.json").exists()
    # a setting to try beside the method's own: its own folder and summary
    from safemax.harness.concept_compare import method_spec
    assert method_spec("safemax:lr=3e-4,steps=5") == ("safemax", dict(steps=5, batch_size=8, n_per_prompt=8, lr=3e-4),
                                                        "safemax-lr=3e-4-steps=5")
    with pytest.raises(ValueError, match="key=value"):
        method_spec("safemax:lr")
    with pytest.raises(ValueError, match="the concept head-to-head runs"):
        method_spec("sa")
    # several concepts in one run, against their number
    assert script.main(["--smoke", "--pipeline", captioned_pipeline, "--at-once", "1", "2", "--methods", "uce",
                        "--out", str(tmp_path / "once")]) == 0
    rows = json.loads((tmp_path / "once" / "at-once.json").read_text())["rows"]
    assert [(r["method"], r["concepts"], r["fa_erase"]["n"]) for r in rows] == [("uce", 1, 4), ("uce", 2, 8)]
    capsys.readouterr()
    assert script.main(argv + ["--summarise"]) == 0   # from the files, nothing run again
    again = capsys.readouterr().out
    assert text.strip().splitlines()[-1] in again and "**uce**" in again   # every method in the folder


def test_each_erase_reports_its_own_peak_memory():
    """Several erases in one process (--at-once, a sweep) each report their own CPU peak: the
    peak resident size is reset before each (Linux), not the process's largest so far."""
    import os
    from safemax.evaluation.memory import peak_bytes, reset_peak
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident size can be reset on Linux only")
    big = torch.ones(200 * 2**20 // 4)   # 200 MiB, touched
    big.add_(1)
    before = peak_bytes("cpu")
    del big
    reset_peak("cpu")
    assert before - peak_bytes("cpu") > 150 * 2**20


def test_the_head_to_head_picture_places_each_method_at_its_time():
    from safemax.harness import concept_plot

    def cell(v, n=100):
        return dict(value=v, ci95=[max(0, v - 0.1), min(1, v + 0.1)], n=n)
    block = {"guidance_7.5": dict(fa_paraphrase=cell(0.2), others=dict(change=-0.05, ci95=[-0.08, -0.02])),
             "attacks": {"soft": cell(0.7)}, "erase_seconds": dict(mean=0.04, ci95_half=0.1)}
    summary = {"methods": {"uce": {"overall": block},
                           "safemax": {"overall": dict(block, attacks={}, erase_seconds=dict(mean=137, ci95_half=None))}}}
    points = {m: (sec, panels) for m, sec, _, panels in concept_plot._points(summary)}
    assert points["uce"][0] == 0.04 and points["safemax"][0] == 137
    assert points["uce"][1]["others"] == pytest.approx((5, 2, 8))   # points lost, its interval turned with it
    assert "soft attack" in points["uce"][1] and "soft attack" not in points["safemax"][1]
    assert not concept_plot.plot({"methods": {}}, "/nonexistent/never.png")   # nothing to place: nothing written


# ------------------------------------------------------------------ UCE

def test_uce_weight_on_a_worked_example():
    """W_old = [[1, 0]], the concept c = e1 to the guide's output 0, λ = 1: (λW + v*cᵀ)(λI + ccᵀ)⁻¹ =
    [[1, 0]] · diag(1/2, 1) = [[0.5, 0]] — halfway to the guide, the orthogonal direction kept."""
    from safemax.concepts.uce import uce_weight
    w = uce_weight(torch.tensor([[1.0, 0.0]]), [[1.0, 0.0]], [[0.0]], torch.zeros(0, 2), lamb=1.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.0]]))
    # with a vanishing λ the concept maps onto its guide and a kept embedding keeps its output
    g = torch.Generator().manual_seed(0)
    w_old = torch.randn(5, 8, generator=g, dtype=torch.float64)
    erase_c, keep_c = torch.randn(2, 8, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)
    guide_v = torch.randn(2, 5, generator=g, dtype=torch.float64)
    w_new = uce_weight(w_old, erase_c, guide_v, keep_c, lamb=1e-9)
    torch.testing.assert_close(erase_c @ w_new.T, guide_v, atol=1e-6, rtol=0)
    torch.testing.assert_close(keep_c @ w_new.T, keep_c @ w_old.T, atol=1e-6, rtol=0)


def test_uce_through_the_command_edits_the_cross_attention_only(tmp_path):
    from safemax.concepts.uce import cross_attention_projections, token_embeddings
    base = saved(tiny_sd_pipeline, tmp_path / "base")
    out = tmp_path / "uce"
    assert main(["erase", "--pipeline", base, "--concept", "a cat", "--exact", "--keep", "a dog", "--method", "uce",
                 "--lamb", "1e-6", "--no-evaluate", "--out", str(out), "--num-inference-steps", "2"]) == 0
    manifest = json.loads((out / "safemax.json").read_text())
    assert manifest["method"] == "uce" and manifest["steps"] == 0 and manifest["settings"]["modules"] > 0
    original = DiffusionPipeline.from_pretrained(base)
    edited, _ = load_erased(str(out))
    before, after = original.unet.state_dict(), edited.unet.state_dict()
    projections = {f"{n}.weight" for n in cross_attention_projections(original.unet)}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= projections
    cat, empty, dog = token_embeddings(original, ["a cat", "", "a dog"])
    for name, m in cross_attention_projections(edited.unet).items():
        w_old = before[f"{name}.weight"]
        torch.testing.assert_close(m.weight @ cat, w_old @ empty, atol=2e-3, rtol=2e-3)   # the concept → the guide
        torch.testing.assert_close(m.weight @ dog, w_old @ dog, atol=2e-3, rtol=2e-3)     # the kept prompt stays
    assert "UCE's closed-form edit" in (out / "README.md").read_text()


def test_uce_refuses_what_it_does_not_define(tmp_path):
    flux = saved(tiny_flux_pipeline, tmp_path / "flux")
    with pytest.raises(ValueError, match="cross-attention projections of Stable Diffusion"):
        erase(flux, ["a cat"], exact=True, out=str(tmp_path / "o"), method="uce", progress=False,
              options={**SIZES["flux"], **SEQ}, num_inference_steps=2)
    with pytest.raises(ValueError, match="closed-form edit"):
        erase(flux, ["a cat"], out=str(tmp_path / "o2"), method="uce", lora_rank=4)
    with pytest.raises(ValueError, match="UCE's settings"):
        erase(flux, ["a cat"], out=str(tmp_path / "o3"), lamb=0.1)


def test_several_concepts_in_one_run(captioned_pipeline, tmp_path):
    out = tmp_path / "two"
    erase(captioned_pipeline, ["a sneaker", "a handbag"], out=str(out), steps=2, batch_size=2, n_per_prompt=1,
          num_inference_steps=2, progress=False)
    manifest = json.loads((out / "safemax.json").read_text())
    assert [c["class_id"] for c in manifest["concepts"]] == [7, 8]
    assert not {captions.class_of(k) for k in manifest["keep"]} & {7, 8} and len(manifest["keep"]) == 8 * 4 + 1
    assert set(json.loads((out / "unet" / "safemax.json").read_text())["forget"]) == {"a sneaker", "a handbag"}


def test_evaluate_on_a_pipeline_without_classes_gives_the_noise_statistics(tmp_path, capsys):
    """A pipeline not trained on the captions has no classifier: the concept's latent statistics
    (and no forget accuracy) at each guidance scale."""
    base = saved(tiny_sd_pipeline, tmp_path / "base")
    capsys.readouterr()
    assert main(["evaluate", "--pipeline", base, "--concept", "a cat", "--exact", "--n-per-prompt", "2", "--steps", "2",
                 "--out", str(tmp_path / "e.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    for g in ("guidance_7.5", "guidance_1"):
        cell = result[g]["a cat"]
        assert set(cell) == {"noise"} and cell["noise"]["std"] > 0 and result[g]["kept"] == {}
    assert json.loads((tmp_path / "e.json").read_text())["concepts"][0]["erase_prompts"] == ["a cat"]


def test_kept_guidance_erases_with_the_empty_prompts_condition(captioned_pipeline, tmp_path):
    """``erase(..., kept_guidance=w)`` gives SAFEMax the empty prompt's condition (the term needs
    it) and records the setting; without ``erase`` the method says what it needs."""
    out = tmp_path / "guided"
    erase(captioned_pipeline, ["a sneaker"], out=str(out), steps=2, batch_size=2, n_per_prompt=1,
          num_inference_steps=2, progress=False, kept_guidance=7.5)
    manifest = json.loads((out / "safemax.json").read_text())
    assert manifest["method"] == "safemax" and manifest["settings"]["kept_guidance"] == 7.5


def test_the_drift_probe_measures_an_erase_against_the_class_signal(captioned_pipeline, tmp_path):
    """benchmarks/concept_drift.py at its smallest: the original against itself changes nothing;
    against an erase, the changes are measured at every step, for each kept prompt asked."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "concept_drift", Path(__file__).resolve().parents[1] / "benchmarks" / "concept_drift.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    same = script.main(["--pipeline", captioned_pipeline, "--erased", os.path.join(captioned_pipeline, "unet"),
                        "--classes", "0", "--n", "1", "--steps", "2", "--out", str(tmp_path / "d")])
    assert same is None
    (path,) = (tmp_path / "d").iterdir()
    rows = json.loads(path.read_text())["classes"]["t-shirt"]
    assert len(rows) == 2 and all(r["delta_c"] == r["delta_u"] == r["delta_guided"] == 0 for r in rows)
    out = tmp_path / "e"
    erase(captioned_pipeline, ["a sneaker"], out=str(out / "safemax" / "sneaker-seed0"), steps=2, batch_size=2,
          n_per_prompt=1, num_inference_steps=2, progress=False, lr=1e-2)
    script.main(["--pipeline", captioned_pipeline, "--erased", str(out / "safemax" / "sneaker-seed0"),
                 "--classes", "0", "2", "--n", "1", "--steps", "2", "--out", str(tmp_path / "d2")])
    record = json.loads((tmp_path / "d2" / "safemax-sneaker-seed0.json").read_text())
    assert set(record["classes"]) == {"t-shirt", "pullover"} and record["guidance"] == 7.5
    assert all(r["delta_c"] > 0 and r["signal"] >= 0 for rs in record["classes"].values() for r in rs)


def test_uce_from_the_word_on_moves_the_concept_s_states_to_the_guide_and_keeps_the_kept():
    """tokens="after": the word's state and every later one (end, padding — a CLIP keeps the
    pooled meaning there) are mapped towards their guide states, which the word-only edit leaves
    far off, while every state of the kept prompts moves less than the word-only edit moves it
    (on a tiny random encoder, whose states are all alike, neither edit leaves them in place)."""
    from tiny_sd import tiny_sd_pipeline

    from safemax.concepts.uce import all_token_embeddings, cross_attention_projections, states_from_the_word, uce_edit
    pipe = tiny_sd_pipeline()
    erase, keep = ["a photo of a cat", "cat"], ["a photo of a dog", "a tree"]
    e, g = (x.double() for x in states_from_the_word(pipe, erase))
    k = all_token_embeddings(pipe, keep).double()
    assert len(e) == len(g) == sum(pipe.tokenizer.model_max_length - len(pipe.tokenizer(p).input_ids) + 2 for p in erase)
    before = {n: m.weight.detach().double().clone() for n, m in cross_attention_projections(pipe.unet).items()}

    def residuals(edit):
        p = tiny_sd_pipeline()
        record = uce_edit(p, erase, keep, **edit)
        out = []
        for name, m in cross_attention_projections(p.unet).items():
            w, w0 = m.weight.detach().double(), before[name]
            out.append(((e @ w.T - g @ w0.T).norm() / (e @ w0.T - g @ w0.T).norm(),
                        (k @ w.T - k @ w0.T).norm() / (k @ w0.T).norm()))
        return record, torch.tensor(out)

    word_record, word = residuals({})
    after_record, after = residuals(dict(tokens="after"))
    assert word_record["tokens"] == "word" and after_record["tokens"] == "after"
    assert (after[:, 0] < 0.6 * word[:, 0]).all()          # the concept's states move to their guides
    assert (after[:, 1] < word[:, 1]).all()                # and every kept state moves less than under the word-only edit
    with pytest.raises(ValueError, match='tokens must be "word"'):
        uce_edit(pipe, erase, keep, tokens="all")
