"""ESD-x / ESD-u (safemax.methods.esd): the negative-guidance target, which weights each variant
trains, the command, and the models it refuses."""
import pytest
import torch

pytest.importorskip("transformers")
from tiny_sd import tiny_sd_pipeline  # noqa: E402

from safemax import Unlearner  # noqa: E402
from safemax.methods import ESDu, ESDx  # noqa: E402
from safemax.methods.esd import trains  # noqa: E402
from safemax.models.pipelines import pipeline_data, prompt_embeddings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    forget = pipeline_data(pipe, ["a cat"], n_per_prompt=4, num_inference_steps=2, progress=False)
    return pipe, forget, prompt_embeddings(pipe, ["a cat"]), prompt_embeddings(pipe, [""])


def first_loss(setup, cls=ESDx, **settings):
    pipe, forget, cat, empty = setup
    unet = tiny_sd_pipeline().unet   # a fresh copy of the same weights (seeded)
    u = Unlearner(unet, pipe.scheduler, forget={"cat": cat}, method=cls(unconditional=empty, **settings), seed=3)
    history = u.fit(None, forget, steps=1, batch_size=2, progress=False)
    return history[0]["loss"], u


def test_the_target_is_negative_guidance_from_the_original():
    """At the first step the model is the original, so with the same x_t (same seed) the loss is
    (1 + η)² ‖ε*(x_t, c) − ε*(x_t)‖²: 4× the η = 0 loss at η = 1, and 0 at η = −1 (target = ε*(c))."""
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    setup = (pipe, pipeline_data(pipe, ["a cat"], n_per_prompt=4, num_inference_steps=2, progress=False),
             prompt_embeddings(pipe, ["a cat"]), prompt_embeddings(pipe, [""]))
    plain, _ = first_loss(setup, negative_guidance=0.0, ddim_steps=4)
    esd, _ = first_loss(setup, negative_guidance=1.0, ddim_steps=4)
    none, _ = first_loss(setup, negative_guidance=-1.0, ddim_steps=4)
    assert plain > 0 and esd == pytest.approx(4 * plain, rel=1e-4) and none == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("cls", [ESDx, ESDu])
def test_each_variant_trains_its_own_weights(setup, cls):
    pipe, forget, cat, empty = setup
    before = {n: p.detach().clone() for n, p in tiny_sd_pipeline().unet.named_parameters()}
    _, u = first_loss(setup, cls, ddim_steps=3)
    u.fit(None, forget, steps=3, batch_size=2, progress=False)
    changed = {n for n, p in u.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(trains(n, cls.weights) for n in changed)
    if cls is ESDx:
        assert all("attn2" in n for n in changed)
    else:
        assert not any("attn2" in n or "time_embedding" in n or n.startswith("conv_out") for n in changed)
    assert u.config(2)["method"] == cls.name and u.lr == 1e-5


def test_esd_refuses_what_it_does_not_define(setup):
    from problems import tiny_scheduler, tiny_unet
    pipe, _, cat, empty = setup
    with pytest.raises(ValueError, match="text concepts"):
        Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], method=ESDx(unconditional=empty))
    with pytest.raises(ValueError, match="needs the empty prompt's condition"):
        Unlearner(tiny_sd_pipeline().unet, pipe.scheduler, forget={"cat": cat}, method="esd-u")


def test_the_command_erases_with_esd(tmp_path):
    import json

    from safemax.cli import main
    base = tmp_path / "base"
    tiny_sd_pipeline().save_pretrained(base)
    out = tmp_path / "esd"
    assert main(["erase", "--pipeline", str(base), "--concept", "a cat", "--exact", "--method", "esd-x",
                 "--ddim-steps", "3", "--steps", "2", "--batch-size", "2", "--n-per-prompt", "1",
                 "--num-inference-steps", "2", "--no-evaluate", "--out", str(out)]) == 0
    manifest = json.loads((out / "safemax.json").read_text())
    assert manifest["method"] == "esd-x" and manifest["settings"]["ddim_steps"] == 3
    from safetensors.torch import load_file   # ESD makes its own x_t: no forget image was drawn for it
    assert not load_file(str(out / "checkpoint" / "data.safetensors"))["latents"].any()
    from safemax.concepts.erase import drawn_concept_latents   # so no attack is fitted to those rows
    from safemax.concepts.prompts import resolve
    assert drawn_concept_latents(str(out), resolve(["a cat"], exact=True)[0]) == {}
    assert manifest["settings"]["weights"] == "xattn" and manifest["settings"]["lr"] == 1e-5
